package herd

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/replica"
)

// Map is a replicated map: every node of the cluster holds a replica of it,
// and the replicas converge. A write applies to this node's replica before
// it returns (a Get right after it sees it) and reaches every other live
// node within milliseconds; anti-entropy repairs what a lost message or a
// partition kept from a node. A read never crosses the network.
//
// Concurrent writes of one key on different nodes resolve alike on every
// node: by default the latest write (hybrid logical clock, then node
// identity) wins; MapResolver sets a merge of the map's own. A write and a
// concurrent delete of a key leave the write.
//
// Plain entries (Put) outlive every node. Owned entries (PutOwned) belong to
// a process: they go when it exits, are hidden while its node is
// unreachable, and go for good when its node leaves or stays down for
// longer than ten minutes.
//
// All methods are safe for concurrent use.
type Map struct {
	n  *Node
	mp *replica.Map

	mu     sync.Mutex
	hooked map[uint64]struct{} // local processes whose exit removes their entries
}

// MapVersion is one version of a key, as a MapResolver sees it.
type MapVersion struct {
	Value []byte
	// Time is when it was written, by its writer's hybrid clock.
	Time time.Time
	// Node is the node life that wrote it.
	Node NodeID
	// Owner is the process that owns it (zero for a plain entry).
	Owner PID
}

// MapOption configures a map when it is opened.
type MapOption func(*mapOptions)

type mapOptions struct {
	resolve crdt.Resolver
	durable bool
}

// MapResolver makes concurrent writes of a key read as fn's result. fn gets
// two or more versions, oldest first, and must be a pure function of them
// (every node must read the key alike, so every node must open the map with
// the same resolver).
func MapResolver(fn func(key string, versions []MapVersion) []byte) MapOption {
	return func(o *mapOptions) {
		o.resolve = func(key string, vs []crdt.Version) crdt.Version {
			mv := make([]MapVersion, len(vs))
			for i, v := range vs {
				mv[i] = mapVersion(v)
			}
			out := vs[len(vs)-1]
			out.Value = fn(key, mv)
			return out
		}
	}
}

// MapDurable keeps the map in the node's data directory (Config.DataDir),
// so that a cluster stopped as a whole comes back with its data. Writes
// reach the disk in batches about every 10ms; Stop writes the rest.
func MapDurable() MapOption { return func(o *mapOptions) { o.durable = true } }

func mapVersion(v crdt.Version) MapVersion {
	mv := MapVersion{Value: v.Value, Time: time.UnixMilli(v.Time.WallMillis()), Node: v.Dot.Node}
	if v.Owner.Process != 0 {
		mv.Owner = PID{Node: v.Owner.Node, ID: v.Owner.Process}
	}
	return mv
}

// Map opens the replicated map called name on this node. Opening the same
// name again returns a handle to the same replica. A map exists on a node
// once any node writes to it, so Map may find data already there.
func (n *Node) Map(name string, opts ...MapOption) (*Map, error) {
	var o mapOptions
	for _, opt := range opts {
		opt(&o)
	}
	if name == "" {
		return nil, fmt.Errorf("herd: map name is empty")
	}
	if strings.HasPrefix(name, reservedMaps) {
		return nil, fmt.Errorf("herd: map name %q: names starting with %q are herd's own", name, reservedMaps)
	}
	mp, err := n.reps.Open(name, o.resolve, o.durable)
	if err != nil {
		return nil, fmt.Errorf("herd: %w", err)
	}
	n.mapsMu.Lock()
	defer n.mapsMu.Unlock()
	if m := n.maps[name]; m != nil {
		return m, nil
	}
	m := &Map{n: n, mp: mp, hooked: make(map[uint64]struct{})}
	n.maps[name] = m
	return m, nil
}

// Name returns the map's name.
func (m *Map) Name() string { return m.mp.Name() }

// Get returns the value key reads as on this node.
func (m *Map) Get(key string) ([]byte, bool) {
	v, ok := m.mp.Get(key)
	return v.Value, ok
}

// Versions returns the versions of key that concurrent writes left, oldest
// first (one when there was no conflict).
func (m *Map) Versions(key string) []MapVersion {
	vs := m.mp.Versions(key)
	out := make([]MapVersion, len(vs))
	for i, v := range vs {
		out[i] = mapVersion(v)
	}
	return out
}

// Put writes value under key, as a plain entry. value must not be modified
// afterwards.
func (m *Map) Put(key string, value []byte) error {
	if err := m.mp.Put(key, value, crdt.Owner{}); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	return nil
}

// PutOwned writes value under key as an entry owned by owner, a live
// process of this node: the entry goes when the process exits. It fails
// with ErrNoProcess if the process is not alive here.
func (m *Map) PutOwned(key string, value []byte, owner PID) error {
	if owner.Node != m.n.id {
		return fmt.Errorf("herd: map %q: owner %v is not a process of this node: %w", m.Name(), owner, ErrNoProcess)
	}
	m.mu.Lock()
	if _, ok := m.hooked[owner.ID]; !ok {
		_, alive := m.n.rt.ExitHook(owner, func(pid proc.PID, _ error) {
			m.mu.Lock()
			delete(m.hooked, pid.ID)
			m.mu.Unlock()
			m.mp.RemoveOwner(crdt.Owner{Node: pid.Node, Process: pid.ID})
		})
		if !alive {
			m.mu.Unlock()
			return fmt.Errorf("herd: map %q: owner %v: %w", m.Name(), owner, ErrNoProcess)
		}
		m.hooked[owner.ID] = struct{}{}
	}
	m.mu.Unlock()
	o := crdt.Owner{Node: owner.Node, Process: owner.ID}
	if err := m.mp.Put(key, value, o); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	// The process may have exited (and its exit hook run) between the hook
	// and the write: then nobody else will remove the entry.
	if !m.n.rt.Alive(owner) {
		m.mp.RemoveOwner(o)
		return fmt.Errorf("herd: map %q: owner %v: %w", m.Name(), owner, ErrNoProcess)
	}
	return nil
}

// Delete removes key and reports whether it was present here.
func (m *Map) Delete(key string) (bool, error) {
	ok, err := m.mp.Delete(key)
	if err != nil {
		return false, fmt.Errorf("herd: %w", err)
	}
	return ok, nil
}

// Range calls fn for every key present on this node, in no set order, until
// fn returns false. fn must not write to the map.
func (m *Map) Range(fn func(key string, value []byte) bool) {
	m.mp.Range(func(key string, v crdt.Version) bool { return fn(key, v.Value) })
}

// Len returns the number of keys present on this node.
func (m *Map) Len() int { return m.mp.Len() }

// MapEvent is a change of one key on this node: a write (here or on another
// node), a delete, or an owned entry that went with its owner.
type MapEvent struct {
	Key     string
	Value   []byte // the new value; nil when Deleted
	Deleted bool
}

// MapWatch delivers a map's changes. Close it when done.
type MapWatch struct {
	w  *replica.Watch
	ch chan MapEvent
}

// Watch delivers every change of the map on this node from now on, in the
// order this node applied them. Events queue without bound until read.
func (m *Map) Watch() *MapWatch {
	w := &MapWatch{w: m.mp.Watch(), ch: make(chan MapEvent)}
	go func() {
		defer close(w.ch)
		for c := range w.w.C() {
			ev := MapEvent{Key: c.Key, Deleted: c.New == nil}
			if c.New != nil {
				ev.Value = c.New.Value
			}
			w.ch <- ev
		}
	}()
	return w
}

// C returns the channel events arrive on; it is closed after Close.
func (w *MapWatch) C() <-chan MapEvent { return w.ch }

// Close stops the watch. Events not yet read are dropped.
func (w *MapWatch) Close() {
	w.w.Close()
	for range w.ch {
	}
}

// MapStats counts this node's replicated-map traffic.
type MapStats = replica.Stats

// MapStats returns the counters of this node's replicated-map traffic so
// far.
func (n *Node) MapStats() MapStats { return n.reps.Stats() }
