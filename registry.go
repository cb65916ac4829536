package herd

import (
	"context"
	"fmt"
	"time"

	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
)

// The registry: unique names and process groups, scoped by environment, with
// metadata, queries and watches. Lookups read local state only. Names go
// when their process exits, before anyone hears of the exit.
type (
	// Registry is the contract every registry backend keeps.
	Registry = registry.Registry
	// Key is a name within an environment (Env "" is the default).
	Key = registry.Key
	// Meta is what an entry says about its process: labels and a
	// capability set. A Meta read from a registry must not be modified.
	Meta = registry.Meta
	// Entry is a unique name held by a process, or a group membership.
	Entry = registry.Entry
	// EntryKind tells unique names from group memberships.
	EntryKind = registry.Kind
	// Query selects entries by environment, kind, name pattern, labels,
	// capabilities and PID.
	Query = registry.Query
	// RegistryEvent is one change reported by a Watch.
	RegistryEvent = registry.Event
	// RegistryEventType says what changed.
	RegistryEventType = registry.EventType
	// Watch delivers registry changes in order; Close it when done.
	Watch = registry.Watch
	// WatchOptions adjust a watch (Replay).
	WatchOptions = registry.WatchOptions
	// TakenError says who holds a name that could not be registered.
	TakenError = registry.TakenError
)

// NameConflict is the exit signal of a process that lost its unique name
// after a partition healed (see Registry): Winner holds Name now. It is
// trappable, and comes from the winner, so a loser that traps exits can
// hand its state over before it stops.
type NameConflict = registry.NameConflict

// ErrNameConflict matches a NameConflict exit reason.
var ErrNameConflict = registry.ErrNameConflict

// NameClaim is one registration of a unique name, as a NameResolver sees
// it: the entry, and when it was registered (by its node's hybrid clock;
// metadata updates do not change it).
type NameClaim struct {
	Entry Entry
	At    time.Time
}

// NameResolver picks which of two or more registrations of a unique name
// keeps it after a partition heals, by index in claims, which come
// earliest first. It must be a pure function of its arguments and the same
// on every node (see Config.NameResolver).
type NameResolver func(name Key, claims []NameClaim) int

// startRegistry opens the node's registry: the cluster backend over the
// replicated map herd.registry, which works alone too.
func (n *Node) startRegistry(cfg *Config) error {
	mp, err := n.reps.Open(registryMap, nil, false)
	if err != nil {
		return fmt.Errorf("herd: registry: %w", err)
	}
	rc := registry.ReplicatedConfig{
		Runtime: n.rt, Map: mp, Clock: n.reps.Now, Logger: n.log,
		NodeUp: n.nodeUp,
	}
	if fn := cfg.NameResolver; fn != nil {
		rc.Resolve = func(key Key, cs []registry.Candidate) int {
			return fn(key, nameClaims(cs))
		}
	}
	n.reg = registry.NewReplicated(rc)
	n.rt.SetResolver(n.reg.Resolver())
	return nil
}

// nodeUp reports whether a node life is up as this node sees it.
func (n *Node) nodeUp(id NodeID) bool {
	if id == n.id {
		return true
	}
	mem := n.mem.Load()
	if mem == nil {
		return false
	}
	m, ok := mem.Member(id)
	return ok && !m.Status.Ended()
}

// Internal replicated maps. Names starting with "herd." are reserved.
const (
	reservedMaps = "herd."
	registryMap  = "herd.registry"
)

// Entry kinds.
const (
	AnyKind = registry.AnyKind
	Unique  = registry.Unique
	Group   = registry.Group
)

// Registry event types.
const (
	Registered   = registry.Registered
	Unregistered = registry.Unregistered
	Updated      = registry.Updated
	Conflict     = registry.Conflict
)

// Registry errors.
var (
	ErrTaken         = registry.ErrTaken
	ErrNotRegistered = registry.ErrNotRegistered
	ErrInvalid       = registry.ErrInvalid
)

// Match reports whether a registry name matches a Query pattern ('*', '?',
// '\' escapes).
func Match(pattern, name string) bool { return registry.Match(pattern, name) }

// WithName registers the new process under a unique name in the default
// environment before its Init runs; the spawn fails (ErrTaken) if the name
// is held. The name goes when the process exits.
func WithName(name string) SpawnOption {
	return WithKey(Key{Name: name}, Meta{})
}

// WithKey registers the new process under key, with meta, before its Init
// runs; see WithName.
func WithKey(key Key, meta Meta) SpawnOption {
	return proc.BeforeInit(func(c *Context) error {
		n := NodeOf(c)
		return n.reg.Register(context.Background(), key, c.Self(), meta)
	})
}

// Broadcast sends msg to every member of the process group key, on every
// node, as Send does (at most once each, in order per member), and returns
// how many members it was sent to. Members are read from this node's
// replica.
func (n *Node) Broadcast(key Key, msg any) int {
	sent := 0
	for _, e := range n.reg.Members(key) {
		if n.rt.Send(e.PID, msg) == nil {
			sent++
		}
	}
	return sent
}

// NameClaims returns every registration of the unique name key this node
// sees, the holder first: more than one only while a conflict found after
// a partition is being resolved.
func (n *Node) NameClaims(key Key) []NameClaim {
	return nameClaims(n.reg.Candidates(key))
}

func nameClaims(cs []registry.Candidate) []NameClaim {
	out := make([]NameClaim, len(cs))
	for i, c := range cs {
		out[i] = NameClaim{Entry: c.Entry, At: time.UnixMilli(c.At.WallMillis())}
	}
	return out
}
