// Package registry is the Registry contract (names and process groups,
// scoped by environment, with metadata, queries and watches) and its local
// backend. The cluster backend, over replicated state, implements the same
// contract and passes the same suite (registrytest). It depends only on proc.
package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/herdkit/herd/internal/proc"
)

// Key is a name within an environment. The empty Env is the default
// environment. A name is unique within its environment only: the same name
// in two environments names two different things.
type Key struct {
	_    struct{} `cbor:",toarray"`
	Env  string
	Name string
}

// K returns the key of name in environment env.
func K(env, name string) Key { return Key{Env: env, Name: name} }

func (k Key) String() string {
	if k.Env == "" {
		return k.Name
	}
	return k.Env + "/" + k.Name
}

// Kind says whether an entry is a unique name or a group membership. Unique
// names and groups are separate namespaces: "x" can be both a unique name
// and a group.
type Kind uint8

const (
	// AnyKind, in a Query, matches both kinds.
	AnyKind Kind = iota
	// Unique: at most one process holds the name.
	Unique
	// Group: any number of processes are members (a process group).
	Group
)

func (k Kind) String() string {
	return [...]string{"any", "unique", "group"}[k]
}

// Meta is what an entry says about its process. Registries store a copy of
// what they are given; a Meta read from a registry is shared and must not be
// modified.
type Meta struct {
	// Labels are matched exactly by Query.Labels.
	Labels map[string]string
	// Capabilities is a set; Query.Capabilities finds entries that have
	// all of the capabilities asked for.
	Capabilities []string
}

// Limits on what an entry may carry, so every backend can store and
// replicate it.
const (
	MaxNameLen       = 1024
	MaxEnvLen        = 255
	MaxLabels        = 64
	MaxLabelKeyLen   = 128
	MaxLabelValueLen = 1024
	MaxCapabilities  = 64
	MaxCapabilityLen = 128
)

// Entry is one registration: a unique name held by a process, or a process's
// membership of a group.
type Entry struct {
	Kind Kind
	Key  Key
	PID  proc.PID
	Meta Meta
}

// Query selects entries. Every set field must match; the zero Query selects
// every entry of the default environment.
type Query struct {
	// Env is the environment searched. Entries of other environments are
	// never returned unless AllEnvs is set.
	Env string
	// AllEnvs searches every environment: for operators, not tenants.
	AllEnvs bool
	// Kind restricts to unique names or groups. AnyKind: both.
	Kind Kind
	// Pattern matches the name: '*' any run of characters, '?' any one,
	// '\' escapes the next. Empty matches every name.
	Pattern string
	// Labels must all be present with these values.
	Labels map[string]string
	// Capabilities must all be present.
	Capabilities []string
	// PID restricts to the entries of one process.
	PID proc.PID
	// Limit caps the number of entries returned by Select. Zero: no cap.
	Limit int
}

// EventType says what happened to an entry.
type EventType uint8

const (
	// Registered: a unique name was taken, or a process joined a group.
	Registered EventType = iota + 1
	// Unregistered: a name was released or a process left a group,
	// explicitly (Reason nil) or because the process exited (Reason is its
	// exit reason).
	Unregistered
	// Updated: an entry's metadata changed.
	Updated
	// Conflict: after a partition healed, two processes held one unique
	// name; the entry is the loser's and Winner the holder that remains.
	// Only the cluster backend reports it.
	Conflict
)

func (t EventType) String() string {
	return [...]string{"?", "registered", "unregistered", "updated", "conflict"}[t]
}

// Event is one change, as a watch reports it.
type Event struct {
	Type   EventType
	Entry  Entry
	Reason error    // for Unregistered: the exit reason, or nil if explicit
	Winner proc.PID // for Conflict
}

// Registry is the contract every backend keeps. Lookups, Select and Count
// read only local state: they never cross the network. A write is visible to
// lookups on the same node when it returns. Entries of a process are removed
// when it exits, before anyone is told of the exit (monitors, links,
// callers), so a successor can take its names at once.
type Registry interface {
	// Register gives the unique name key to pid. If another process holds
	// it the error is a *TakenError (errors.Is ErrTaken); if pid holds it
	// already, its metadata is replaced. A pid that is not alive gives
	// an error matching proc.ErrNoProcess.
	Register(ctx context.Context, key Key, pid proc.PID, meta Meta) error
	// Unregister releases key if pid holds it; otherwise it does nothing.
	Unregister(ctx context.Context, key Key, pid proc.PID) error
	// Lookup returns the entry holding key.
	Lookup(key Key) (Entry, bool)
	// Whereis returns the PID holding key: Lookup without the copying.
	Whereis(key Key) (proc.PID, bool)
	// UpdateMeta replaces the metadata of pid's unique name key; the error
	// matches ErrNotRegistered if pid does not hold it.
	UpdateMeta(ctx context.Context, key Key, pid proc.PID, meta Meta) error

	// Join adds pid to the group key; if it is a member already, its
	// metadata is replaced.
	Join(ctx context.Context, key Key, pid proc.PID, meta Meta) error
	// Leave removes pid from the group key; it does nothing if pid is not
	// a member.
	Leave(ctx context.Context, key Key, pid proc.PID) error
	// Members returns the members of group key, ordered by PID.
	Members(key Key) []Entry
	// UpdateMemberMeta replaces the metadata of pid's membership of key.
	UpdateMemberMeta(ctx context.Context, key Key, pid proc.PID, meta Meta) error

	// Select returns the entries q selects, ordered by environment, name,
	// kind (unique first) and PID.
	Select(q Query) []Entry
	// Count returns len(Select(q)) without building the slice (Limit is
	// ignored).
	Count(q Query) int
	// Watch reports the changes to entries q selects, from now on (and,
	// with Replay, the entries already there first, as Registered
	// events). Limit is ignored.
	Watch(q Query, opts WatchOptions) *Watch
}

// WatchOptions adjust a Watch.
type WatchOptions struct {
	// Replay first reports every entry the query selects now, as
	// Registered events, atomically with the start of the watch.
	Replay bool
}

// Errors. Test for them with errors.Is.
var (
	// ErrTaken: the unique name is held by another process; see TakenError.
	ErrTaken = errors.New("registry: name is taken")
	// ErrNotRegistered: the process does not hold that name or membership.
	ErrNotRegistered = errors.New("registry: not registered")
	// ErrInvalid: a key, PID or metadata breaks the rules or limits.
	ErrInvalid = errors.New("registry: invalid")
)

// TakenError says who holds a name that could not be registered.
type TakenError struct {
	Key    Key
	Holder proc.PID
}

func (e *TakenError) Error() string {
	return fmt.Sprintf("registry: name %q is taken by %v", e.Key.String(), e.Holder)
}

// Is reports true for ErrTaken.
func (e *TakenError) Is(target error) bool { return target == ErrTaken }

// Validate checks a key against the rules every backend enforces.
func (k Key) Validate() error {
	switch {
	case k.Name == "":
		return fmt.Errorf("%w: empty name", ErrInvalid)
	case len(k.Name) > MaxNameLen:
		return fmt.Errorf("%w: name is %d bytes, the limit is %d", ErrInvalid, len(k.Name), MaxNameLen)
	case !utf8.ValidString(k.Name):
		return fmt.Errorf("%w: name is not valid UTF-8", ErrInvalid)
	case len(k.Env) > MaxEnvLen:
		return fmt.Errorf("%w: environment is %d bytes, the limit is %d", ErrInvalid, len(k.Env), MaxEnvLen)
	case !utf8.ValidString(k.Env) || strings.ContainsAny(k.Env, "/\x00"):
		return fmt.Errorf("%w: environment %q must be UTF-8 without '/'", ErrInvalid, k.Env)
	}
	return nil
}

// Validate checks metadata against the limits every backend enforces.
func (m Meta) Validate() error {
	if len(m.Labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels, the limit is %d", ErrInvalid, len(m.Labels), MaxLabels)
	}
	for k, v := range m.Labels {
		if k == "" || len(k) > MaxLabelKeyLen || len(v) > MaxLabelValueLen || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: label %q: keys are 1 to %d bytes and values up to %d, UTF-8", ErrInvalid, k, MaxLabelKeyLen, MaxLabelValueLen)
		}
	}
	if len(m.Capabilities) > MaxCapabilities {
		return fmt.Errorf("%w: %d capabilities, the limit is %d", ErrInvalid, len(m.Capabilities), MaxCapabilities)
	}
	for _, c := range m.Capabilities {
		if c == "" || len(c) > MaxCapabilityLen || !utf8.ValidString(c) {
			return fmt.Errorf("%w: capability %q: 1 to %d bytes, UTF-8", ErrInvalid, c, MaxCapabilityLen)
		}
	}
	return nil
}

// Clone returns a deep copy of m with capabilities sorted and deduplicated,
// so a stored Meta shares nothing with what the caller keeps.
func (m Meta) Clone() Meta {
	out := Meta{}
	if len(m.Labels) > 0 {
		out.Labels = maps.Clone(m.Labels)
	}
	if len(m.Capabilities) > 0 {
		out.Capabilities = slices.Compact(slices.Sorted(slices.Values(m.Capabilities)))
	}
	return out
}

// Equal reports whether two Metas say the same.
func (m Meta) Equal(o Meta) bool {
	return maps.Equal(m.Labels, o.Labels) && slices.Equal(m.Capabilities, o.Capabilities)
}

// Matches reports whether e is selected by q.
func (q *Query) Matches(e *Entry) bool {
	if !q.AllEnvs && e.Key.Env != q.Env {
		return false
	}
	if q.Kind != AnyKind && e.Kind != q.Kind {
		return false
	}
	if !q.PID.IsZero() && e.PID != q.PID {
		return false
	}
	if q.Pattern != "" && !Match(q.Pattern, e.Key.Name) {
		return false
	}
	for k, v := range q.Labels {
		if got, ok := e.Meta.Labels[k]; !ok || got != v {
			return false
		}
	}
	for _, c := range q.Capabilities {
		if _, ok := slices.BinarySearch(e.Meta.Capabilities, c); !ok {
			return false
		}
	}
	return true
}

// Validate checks a query's pattern.
func (q *Query) Validate() error {
	if q.Limit < 0 {
		return fmt.Errorf("%w: negative limit", ErrInvalid)
	}
	if strings.HasSuffix(q.Pattern, `\`) && !strings.HasSuffix(q.Pattern, `\\`) {
		return fmt.Errorf("%w: pattern %q ends with a lone escape", ErrInvalid, q.Pattern)
	}
	return nil
}

// Match reports whether name matches pattern: '*' matches any run of
// characters (including none), '?' any one character, '\' makes the next
// character literal. It runs in O(len(pattern)·len(name)) at worst.
func Match(pattern, name string) bool {
	// Greedy matching with backtracking to the last star only: linear in
	// practice, never exponential.
	p, n := 0, 0
	starP, starN := -1, 0
	for n < len(name) {
		if p < len(pattern) {
			c := pattern[p]
			switch {
			case c == '*':
				starP, starN = p, n
				p++
				continue
			case c == '?':
				_, size := utf8.DecodeRuneInString(name[n:])
				p++
				n += size
				continue
			case c == '\\' && p+1 < len(pattern):
				if pattern[p+1] == name[n] {
					p += 2
					n++
					continue
				}
			case c == name[n]:
				p++
				n++
				continue
			}
		}
		if starP < 0 {
			return false
		}
		// Let the last star absorb one more character and retry.
		_, size := utf8.DecodeRuneInString(name[starN:])
		starN += size
		p, n = starP+1, starN
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// QuoteName returns a pattern that matches name alone: its '*', '?' and
// '\' escaped.
func QuoteName(name string) string {
	if !strings.ContainsAny(name, `*?\`) {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '*' || c == '?' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(name[i])
	}
	return b.String()
}

// Less orders entries as Select returns them.
func Less(a, b *Entry) int {
	if c := strings.Compare(a.Key.Env, b.Key.Env); c != 0 {
		return c
	}
	if c := strings.Compare(a.Key.Name, b.Key.Name); c != 0 {
		return c
	}
	if a.Kind != b.Kind {
		return int(a.Kind) - int(b.Kind)
	}
	return ComparePIDs(a.PID, b.PID)
}

// ComparePIDs orders PIDs by node name, incarnation and id.
func ComparePIDs(a, b proc.PID) int {
	if c := strings.Compare(a.Node.Name, b.Node.Name); c != 0 {
		return c
	}
	if a.Node.Incarnation != b.Node.Incarnation {
		if a.Node.Incarnation < b.Node.Incarnation {
			return -1
		}
		return 1
	}
	switch {
	case a.ID < b.ID:
		return -1
	case a.ID > b.ID:
		return 1
	}
	return 0
}
