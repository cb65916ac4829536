package crdt

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/proc"
)

// Owner ties an entry to something whose end removes it: a node life, or a
// process of that node (Process is then the process's local id). The zero
// Owner marks a plain entry, which outlives every node.
type Owner struct {
	_       struct{} `cbor:",toarray"`
	Node    proc.NodeID
	Process uint64
}

// IsZero reports whether o is the zero Owner (a plain entry).
func (o Owner) IsZero() bool { return o.Node.IsZero() && o.Process == 0 }

// Version is one write of a key: the dot that made it, its timestamp, its
// owner and its value. A key holds one version, or several when writes on
// different replicas were concurrent (neither saw the other).
type Version struct {
	_     struct{} `cbor:",toarray"`
	Dot   Dot
	Time  Timestamp
	Owner Owner
	Value []byte
}

// Entry is a key with one of its versions.
type Entry struct {
	_       struct{} `cbor:",toarray"`
	Key     string
	Version Version
}

// Delta is a piece of a replica's state that another replica joins into its
// own: what mutators return, and what a whole state exports as. Deltas may
// be joined in any order, more than once, or after later ones: the result
// is the same. A Delta is immutable once made; joins do not keep its slices.
type Delta struct {
	_ struct{} `cbor:",toarray"`
	// Op is the dot of the operation that made the delta; zero for a
	// whole state.
	Op Dot
	// Entries are versions added.
	Entries []Entry
	// Drop names keys whose versions Context may cover (removed ones).
	Drop []string
	// Context holds every dot the delta speaks for: Op, the dots of
	// Entries, and the dots of versions it removes.
	Context Context
	// Retired are node lives whose owned entries are gone for good.
	Retired []proc.NodeID
	// Full marks a whole state: its Context covers every key.
	Full bool
	// Applied, in a whole state, holds the ops whose effect it holds.
	Applied Context
}

// Resolver decides what a key reads as when concurrent writes left it
// several visible versions. vs holds two or more, ordered by (Time, Dot);
// it must not be modified or kept. A Resolver must be a pure function of its
// arguments, so that every replica reads a key alike. It may return one of
// vs or a new Version with a merged Value.
type Resolver func(key string, vs []Version) Version

// LastWriterWins is the default Resolver: the version with the highest
// timestamp, ties broken by the writer's node identity.
func LastWriterWins(_ string, vs []Version) Version { return vs[len(vs)-1] }

// Change is how one key's reading changed: Old and New are nil when the
// key was absent before or after.
type Change struct {
	Key      string
	Old, New *Version
}

// MaxSeq is the highest sequence number a delta may carry; no replica makes
// that many ops, and refusing more keeps a forged delta from exhausting a
// replica's own sequence.
const MaxSeq = 1 << 62

// Errors of mutators.
var (
	// ErrRetired: the owner's node life has been retired; nothing it owns
	// may be written.
	ErrRetired = errors.New("crdt: owner's node life is retired")
)

// Map is one replica of a replicated map: string keys, byte values, an
// add-wins rule between a write and a concurrent delete, and concurrent
// writes read through a Resolver. It is not safe for concurrent use.
//
// Owned entries vanish from reads while their owner's node is down (see
// SetDown) and go for good when it is retired (see Retire) or when their
// owner is removed (RemoveOwner).
type Map struct {
	self     proc.NodeID
	resolve  Resolver
	entries  map[string][]Version // sorted by (Time, Dot)
	ctx      Context              // every dot seen: ops, and versions written or removed
	applied  Context              // the ops whose effect this replica holds
	retired  map[proc.NodeID]struct{}
	down     map[proc.NodeID]struct{}
	owned    map[proc.NodeID]map[string]int // owner node -> key -> versions it owns
	onChange func(Change)
	onStore  func(key string)
}

// NewMap returns an empty replica for node life self. resolve may be nil for
// LastWriterWins.
func NewMap(self proc.NodeID, resolve Resolver) *Map {
	if resolve == nil {
		resolve = LastWriterWins
	}
	return &Map{
		self: self, resolve: resolve, entries: make(map[string][]Version),
		retired: make(map[proc.NodeID]struct{}), down: make(map[proc.NodeID]struct{}),
		owned: make(map[proc.NodeID]map[string]int),
	}
}

// Self returns the node life the replica makes dots for.
func (m *Map) Self() proc.NodeID { return m.self }

// SetResolver replaces the Resolver (nil for LastWriterWins). Reads change
// at once; no change events are emitted for it.
func (m *Map) SetResolver(r Resolver) {
	if r == nil {
		r = LastWriterWins
	}
	m.resolve = r
}

// OnChange sets a function called for every change of a key's reading,
// during the call that caused it. It must not call back into the Map.
func (m *Map) OnChange(fn func(Change)) { m.onChange = fn }

// OnStore sets a function called with every key whose stored versions
// change (visible or not), during the call that changed them; a driver
// that persists the map uses it to know what to write. It must not call
// back into the Map.
func (m *Map) OnStore(fn func(key string)) { m.onStore = fn }

// Stored returns every version of key, visible or not, as they are kept.
// The caller must not modify the slice.
func (m *Map) Stored(key string) []Version { return m.entries[key] }

// Owners returns the node lives that own entries.
func (m *Map) Owners() []proc.NodeID {
	out := make([]proc.NodeID, 0, len(m.owned))
	for n := range m.owned {
		out = append(out, n)
	}
	return out
}

// RetiredLives returns the retired node lives.
func (m *Map) RetiredLives() []proc.NodeID {
	out := make([]proc.NodeID, 0, len(m.retired))
	for n := range m.retired {
		out = append(out, n)
	}
	return out
}

// Applied returns the ops (by dot) whose effect the replica holds: its own,
// those of the deltas it joined, and those a whole state it joined held.
// Two replicas that applied the same ops hold the same state, so this, not
// Context, is what replicas compare to find what the other lacks. (Context
// also holds the dots of versions a delta removed, whose own ops the
// replica may never have seen.) The caller must not modify it, nor keep it
// across calls that change the map.
func (m *Map) Applied() *Context { return &m.applied }

// Context returns the dots the replica has seen. The caller must not modify
// it, nor keep it across calls that change the map.
func (m *Map) Context() *Context { return &m.ctx }

func (m *Map) nextDot() Dot {
	d := Dot{Node: m.self, Seq: m.ctx.Upto(m.self) + 1} // own dots never leave gaps
	m.ctx.Add(d)
	m.applied.Add(d)
	return d
}

func (m *Map) visible(v *Version) bool {
	if len(m.down) == 0 || v.Owner.Node.IsZero() {
		return true
	}
	_, down := m.down[v.Owner.Node]
	return !down
}

// read returns what key reads as, from its versions.
func (m *Map) read(key string, vs []Version) (Version, bool) {
	if len(m.down) == 0 {
		switch len(vs) {
		case 0:
			return Version{}, false
		case 1:
			return vs[0], true
		}
		return m.resolve(key, vs), true
	}
	seen := make([]Version, 0, len(vs))
	for i := range vs {
		if m.visible(&vs[i]) {
			seen = append(seen, vs[i])
		}
	}
	switch len(seen) {
	case 0:
		return Version{}, false
	case 1:
		return seen[0], true
	}
	return m.resolve(key, seen), true
}

// Get returns what key reads as.
func (m *Map) Get(key string) (Version, bool) { return m.read(key, m.entries[key]) }

// Versions returns the visible versions of key, ordered by (Time, Dot).
func (m *Map) Versions(key string) []Version {
	var out []Version
	for _, v := range m.entries[key] {
		if m.visible(&v) {
			out = append(out, v)
		}
	}
	return out
}

// Range calls fn for every key that reads as present, in no set order,
// until fn returns false. fn must not modify the map.
func (m *Map) Range(fn func(key string, v Version) bool) {
	for k, vs := range m.entries {
		if v, ok := m.read(k, vs); ok && !fn(k, v) {
			return
		}
	}
}

// Keys returns every key holding versions, visible or not.
func (m *Map) Keys() []string {
	out := make([]string, 0, len(m.entries))
	for k := range m.entries {
		out = append(out, k)
	}
	return out
}

// Len returns the number of keys holding versions, visible or not.
func (m *Map) Len() int { return len(m.entries) }

// Put writes value under key and returns the delta to ship. The write
// supersedes every version of key the replica can see; versions whose owner
// is down stay, to be resolved against it if the owner comes back. now must
// come from the node's Clock.
func (m *Map) Put(key string, value []byte, owner Owner, now Timestamp) (Delta, error) {
	if !owner.Node.IsZero() {
		if _, gone := m.retired[owner.Node]; gone {
			return Delta{}, fmt.Errorf("put %q owned by %v: %w", key, owner.Node, ErrRetired)
		}
	}
	dot := m.nextDot()
	v := Version{Dot: dot, Time: now, Owner: owner, Value: value}
	d := Delta{Op: dot, Entries: []Entry{{Key: key, Version: v}}}
	d.Context.Add(dot)
	old, had := m.Get(key)
	kept := m.entries[key][:0:0]
	for _, x := range m.entries[key] {
		if m.visible(&x) {
			d.Context.Add(x.Dot)
			m.unindex(key, &x)
		} else {
			kept = append(kept, x)
		}
	}
	m.set(key, insertSorted(kept, v))
	m.index(key, &v)
	m.emit(key, old, had)
	return d, nil
}

// Delete removes the versions of key the replica can see and returns the
// delta to ship, or false if there was nothing to remove.
func (m *Map) Delete(key string) (Delta, bool) {
	vs := m.entries[key]
	var kept []Version
	var d Delta
	for _, x := range vs {
		if m.visible(&x) {
			d.Context.Add(x.Dot)
		} else {
			kept = append(kept, x)
		}
	}
	if d.Context.Len() == 0 {
		return Delta{}, false
	}
	old, had := m.Get(key)
	for _, x := range vs {
		if m.visible(&x) {
			m.unindex(key, &x)
		}
	}
	m.set(key, kept)
	d.Op = m.nextDot()
	d.Context.Add(d.Op)
	d.Drop = []string{key}
	m.emit(key, old, had)
	return d, true
}

// RemoveOwner removes every version owned by owner (visible or not) and
// returns the delta to ship, or false if it owned nothing. A process's end
// removes its entries this way, on its own node.
func (m *Map) RemoveOwner(owner Owner) (Delta, bool) {
	var d Delta
	for key := range m.owned[owner.Node] {
		vs := m.entries[key]
		old, had := m.Get(key)
		kept := vs[:0:0]
		for _, x := range vs {
			if x.Owner == owner {
				d.Context.Add(x.Dot)
				m.unindex(key, &x)
			} else {
				kept = append(kept, x)
			}
		}
		if len(kept) != len(vs) {
			m.set(key, kept)
			d.Drop = append(d.Drop, key)
			m.emit(key, old, had)
		}
	}
	if len(d.Drop) == 0 {
		return Delta{}, false
	}
	slices.Sort(d.Drop)
	d.Op = m.nextDot()
	d.Context.Add(d.Op)
	return d, true
}

// Retire removes for good every entry owned by node life n and refuses any
// that arrives later, and returns the delta to ship (false if n was
// already retired). Retire a life that has left, or been superseded by a
// later life of its name, or been dead too long to wait for.
func (m *Map) Retire(n proc.NodeID) (Delta, bool) {
	if _, ok := m.retired[n]; ok || n.IsZero() {
		return Delta{}, false
	}
	m.retireLocal(n)
	d := Delta{Op: m.nextDot(), Retired: []proc.NodeID{n}}
	d.Context.Add(d.Op)
	return d, true
}

// Retired reports whether node life n has been retired.
func (m *Map) Retired(n proc.NodeID) bool {
	_, ok := m.retired[n]
	return ok
}

func (m *Map) retireLocal(n proc.NodeID) {
	m.retired[n] = struct{}{}
	keys := m.owned[n]
	delete(m.owned, n)
	for key := range keys {
		vs := m.entries[key]
		old, had := m.Get(key)
		kept := vs[:0:0]
		for _, x := range vs {
			if x.Owner.Node != n {
				kept = append(kept, x)
			}
		}
		m.set(key, kept)
		m.emit(key, old, had)
	}
}

// SetDown hides (down) or shows again the entries owned by node life n,
// as membership sees it dead or alive. It is local: no delta.
func (m *Map) SetDown(n proc.NodeID, down bool) {
	if _, was := m.down[n]; was == down {
		return
	}
	keys := m.owned[n]
	type before struct {
		v  Version
		ok bool
	}
	olds := make(map[string]before, len(keys))
	for key := range keys {
		v, ok := m.Get(key)
		olds[key] = before{v, ok}
	}
	if down {
		m.down[n] = struct{}{}
	} else {
		delete(m.down, n)
	}
	for key := range keys {
		m.emit(key, olds[key].v, olds[key].ok)
	}
}

// Down reports whether the entries of node life n are hidden.
func (m *Map) Down(n proc.NodeID) bool {
	_, ok := m.down[n]
	return ok
}

// Join merges a delta (or a whole state) from any replica.
func (m *Map) Join(d *Delta) {
	for _, n := range d.Retired {
		if _, ok := m.retired[n]; !ok {
			m.retireLocal(n)
		}
	}
	// Versions the delta adds, by key, and every key it touches.
	add := make(map[string][]Version, len(d.Entries))
	for _, e := range d.Entries {
		add[e.Key] = append(add[e.Key], e.Version)
	}
	touched := func(key string) {
		cur := m.entries[key]
		incoming := add[key]
		var next []Version
		changed := false
		for _, x := range cur {
			if !d.Context.Contains(x.Dot) || hasDot(incoming, x.Dot) {
				next = append(next, x)
			} else {
				changed = true
			}
		}
		for _, v := range incoming {
			if m.ctx.Contains(v.Dot) || hasDot(next, v.Dot) {
				continue
			}
			if _, gone := m.retired[v.Owner.Node]; gone && !v.Owner.Node.IsZero() {
				continue
			}
			next = insertSorted(next, v)
			changed = true
		}
		if !changed {
			return
		}
		old, had := m.Get(key)
		for _, x := range cur {
			m.unindex(key, &x)
		}
		for i := range next {
			m.index(key, &next[i])
		}
		m.set(key, next)
		m.emit(key, old, had)
	}
	if d.Full {
		for key := range m.entries {
			if _, ok := add[key]; !ok {
				touched(key)
			}
		}
	} else {
		for _, key := range d.Drop {
			if _, ok := add[key]; !ok {
				touched(key)
			}
		}
	}
	for key := range add {
		touched(key)
	}
	m.ctx.Merge(&d.Context)
	if d.Full {
		m.applied.Merge(&d.Applied)
	} else {
		m.applied.Add(d.Op)
	}
}

// State returns the whole state as a delta, to ship to a replica that is
// too far behind for deltas.
func (m *Map) State() Delta {
	d := Delta{Full: true, Context: m.ctx.Clone(), Applied: m.applied.Clone()}
	for key, vs := range m.entries {
		for _, v := range vs {
			d.Entries = append(d.Entries, Entry{Key: key, Version: v})
		}
	}
	slices.SortFunc(d.Entries, func(a, b Entry) int {
		if c := cmp.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return compareDots(a.Version.Dot, b.Version.Dot)
	})
	for n := range m.retired {
		d.Retired = append(d.Retired, n)
	}
	slices.SortFunc(d.Retired, func(a, b proc.NodeID) int { return compareDots(Dot{Node: a}, Dot{Node: b}) })
	return d
}

// Equal reports whether m and o hold the same state: versions, context and
// retired lives. (Which lives are down is local and not compared.)
func (m *Map) Equal(o *Map) bool {
	if len(m.entries) != len(o.entries) || len(m.retired) != len(o.retired) || !m.ctx.Equal(&o.ctx) || !m.applied.Equal(&o.applied) {
		return false
	}
	for n := range m.retired {
		if _, ok := o.retired[n]; !ok {
			return false
		}
	}
	for k, vs := range m.entries {
		ws := o.entries[k]
		if len(vs) != len(ws) {
			return false
		}
		for i := range vs {
			if !sameVersion(&vs[i], &ws[i]) {
				return false
			}
		}
	}
	return true
}

// Check verifies the replica's invariants and returns what is broken: every
// version's dot is in the context, versions of a key are sorted and
// distinct, no retired owner's entry is present, and the owner index
// matches the entries.
func (m *Map) Check() error {
	if !m.ctx.Covers(&m.applied) {
		return fmt.Errorf("an applied op is not in the context")
	}
	count := make(map[proc.NodeID]map[string]int)
	for k, vs := range m.entries {
		if len(vs) == 0 {
			return fmt.Errorf("key %q: empty version list kept", k)
		}
		for i := range vs {
			v := &vs[i]
			if !m.ctx.Contains(v.Dot) {
				return fmt.Errorf("key %q: dot %v not in context", k, v.Dot)
			}
			if i > 0 && compareVersions(&vs[i-1], v) >= 0 {
				return fmt.Errorf("key %q: versions out of order", k)
			}
			if n := v.Owner.Node; !n.IsZero() {
				if _, gone := m.retired[n]; gone {
					return fmt.Errorf("key %q: owned by retired %v", k, n)
				}
				if count[n] == nil {
					count[n] = make(map[string]int)
				}
				count[n][k]++
			}
		}
	}
	if len(count) != len(m.owned) {
		return fmt.Errorf("owner index has %d owners, entries %d", len(m.owned), len(count))
	}
	for n, keys := range count {
		if len(keys) != len(m.owned[n]) {
			return fmt.Errorf("owner index of %v: %d keys, entries %d", n, len(m.owned[n]), len(keys))
		}
		for k, c := range keys {
			if m.owned[n][k] != c {
				return fmt.Errorf("owner index of %v, key %q: %d, entries %d", n, k, m.owned[n][k], c)
			}
		}
	}
	return nil
}

func (m *Map) set(key string, vs []Version) {
	if m.onStore != nil {
		m.onStore(key)
	}
	if len(vs) == 0 {
		delete(m.entries, key)
		return
	}
	m.entries[key] = vs
}

func (m *Map) index(key string, v *Version) {
	n := v.Owner.Node
	if n.IsZero() {
		return
	}
	keys := m.owned[n]
	if keys == nil {
		keys = make(map[string]int)
		m.owned[n] = keys
	}
	keys[key]++
}

func (m *Map) unindex(key string, v *Version) {
	n := v.Owner.Node
	if n.IsZero() {
		return
	}
	keys := m.owned[n]
	if keys[key] <= 1 {
		delete(keys, key)
		if len(keys) == 0 {
			delete(m.owned, n)
		}
		return
	}
	keys[key]--
}

func (m *Map) emit(key string, old Version, had bool) {
	if m.onChange == nil {
		return
	}
	cur, has := m.Get(key)
	if had == has && (!has || sameVersion(&old, &cur)) {
		return
	}
	c := Change{Key: key}
	if had {
		c.Old = &old
	}
	if has {
		c.New = &cur
	}
	m.onChange(c)
}

func sameVersion(a, b *Version) bool {
	return a.Dot == b.Dot && a.Time == b.Time && a.Owner == b.Owner && bytes.Equal(a.Value, b.Value)
}

func compareVersions(a, b *Version) int {
	if c := cmp.Compare(a.Time, b.Time); c != 0 {
		return c
	}
	return compareDots(a.Dot, b.Dot)
}

func insertSorted(vs []Version, v Version) []Version {
	i, _ := slices.BinarySearchFunc(vs, &v, func(x Version, t *Version) int { return compareVersions(&x, t) })
	return slices.Insert(vs, i, v)
}

func hasDot(vs []Version, d Dot) bool {
	for i := range vs {
		if vs[i].Dot == d {
			return true
		}
	}
	return false
}

// Encoding of deltas for the wire and the disk: CBOR with limits, since a
// delta may come from a peer. DecMode is what drivers decode messages that
// carry deltas with.
var (
	cborEnc, _ = cbor.CoreDetEncOptions().EncMode()
	cborDec    = DecMode
)

// DecMode decodes CBOR from peers with limits on nesting and sizes.
var (
	DecMode, _ = cbor.DecOptions{
		MaxNestedLevels: 16, MaxArrayElements: 1 << 20, MaxMapPairs: 1 << 10,
		DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden, TagsMd: cbor.TagsForbidden,
	}.DecMode()
)

// ErrMalformed: bytes that do not decode as a delta.
var ErrMalformed = errors.New("crdt: malformed delta")

// AppendDelta appends the encoding of d to dst.
func AppendDelta(dst []byte, d *Delta) ([]byte, error) {
	b, err := cborEnc.Marshal(d)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// DecodeDelta decodes a delta and checks it is well formed: every entry's
// dot is in its context, no dot is zero.
func DecodeDelta(data []byte) (Delta, error) {
	var d Delta
	if err := cborDec.Unmarshal(data, &d); err != nil {
		return Delta{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := d.Validate(); err != nil {
		return Delta{}, err
	}
	return d, nil
}

// Validate checks that a delta from elsewhere is well formed: every entry
// has a dot, in the delta's context, and so has the op. Join assumes it.
func (d *Delta) Validate() error {
	for _, e := range d.Entries {
		if e.Version.Dot.Seq == 0 {
			return fmt.Errorf("%w: entry %q with a zero dot", ErrMalformed, e.Key)
		}
		if !d.Context.Contains(e.Version.Dot) {
			return fmt.Errorf("%w: entry %q's dot outside the context", ErrMalformed, e.Key)
		}
	}
	if !d.Full && !d.Op.IsZero() && !d.Context.Contains(d.Op) {
		return fmt.Errorf("%w: op dot outside the context", ErrMalformed)
	}
	if d.Context.maxSeq() > MaxSeq || d.Applied.maxSeq() > MaxSeq {
		return fmt.Errorf("%w: sequence number beyond %d", ErrMalformed, uint64(MaxSeq))
	}
	if d.Full && !d.Context.Covers(&d.Applied) {
		return fmt.Errorf("%w: applied ops outside the context", ErrMalformed)
	}
	return nil
}
