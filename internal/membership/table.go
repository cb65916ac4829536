// Package membership says which node lives are in the cluster and how they
// are: alive, suspect, dead, leaving, left. A pure core (Table) holds the
// one status machine every later layer subscribes to; a driver feeds it from
// hashicorp/memberlist, adds discovery (seeds, DNS), named timing profiles,
// gossip encryption, batched change delivery, and a fast path that confirms
// a peer's death when its connections are refused. It depends on proc (for
// NodeID) and memberlist.
package membership

import (
	"fmt"
	"maps"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

// Status is where a node life stands.
type Status uint8

const (
	// None: not (or no longer) known; only the From of a first Change.
	None Status = iota
	// Alive: answering probes.
	Alive
	// Suspect: missed probes; may still be alive. Nothing fails over.
	Suspect
	// Leaving: announced a graceful stop; still reachable.
	Leaving
	// Dead: failed, or cut off by a partition. Failover acts on it. If it
	// was a partition, the same life comes back Alive when it heals.
	Dead
	// Left: stopped gracefully. Final: this life never returns.
	Left
)

func (s Status) String() string {
	return [...]string{"none", "alive", "suspect", "leaving", "dead", "left"}[s]
}

// Ended reports whether the cluster should act as if the life were gone:
// Dead or Left.
func (s Status) Ended() bool { return s == Dead || s == Left }

// Member is one node life as the cluster sees it.
type Member struct {
	ID         proc.NodeID
	Addr       string            // herd transport address
	GossipAddr string            // membership address
	Version    string            // herd version the node runs
	Tags       map[string]string // user tags (roles); read-only
	Status     Status
}

// Change is one status change, as subscribers receive it.
type Change struct {
	Member Member // as it is after the change
	From   Status
	Cause  string // why, for logs and events
}

// EventKind is what the driver tells the core.
type EventKind uint8

const (
	// EvAlive: the node answers (join, refute, or back from suspect), with
	// its current metadata.
	EvAlive EventKind = iota + 1
	// EvSuspect: the node missed probes.
	EvSuspect
	// EvLeaving: the node announced it is leaving.
	EvLeaving
	// EvLeft: the node left gracefully.
	EvLeft
	// EvDead: the node was declared failed, by the membership protocol or
	// by the fast path.
	EvDead
)

// Event is an input to the core.
type Event struct {
	Kind   EventKind
	Member Member // identity and, for EvAlive, metadata
	Cause  string
}

// Table is the pure core: the status machine of every known node life. It
// has no goroutines, no I/O and no clock; time comes in as a value. It is
// not safe for concurrent use: the driver owns it.
type Table struct {
	self    proc.NodeID
	members map[proc.NodeID]*entry
	// latest incarnation seen per node name, so an older life that shows
	// up late is never taken for alive.
	latest map[string]uint64
	// the highest incarnation per name known to be final; kept when the
	// final lives themselves are pruned.
	finalUpTo map[string]uint64
}

type entry struct {
	m     Member
	ended time.Time // when it became Dead or Left, for pruning
	// final: Left, or superseded by a later life of its name. A final
	// life never changes again; a Dead one that is not final may come
	// back (a partition healed).
	final bool
}

// NewTable returns a table for the cluster as node self sees it.
func NewTable(self proc.NodeID) *Table {
	return &Table{self: self, members: make(map[proc.NodeID]*entry), latest: make(map[string]uint64), finalUpTo: make(map[string]uint64)}
}

// Apply feeds one event and returns the changes it caused, in order.
func (t *Table) Apply(ev Event, now time.Time) []Change {
	id := ev.Member.ID
	if id.Name == "" {
		return nil
	}
	var out []Change
	e := t.members[id]
	if e != nil && e.final {
		return nil // a life that left or was superseded stays ended
	}
	if latest, ok := t.latest[id.Name]; ok && id.Incarnation < latest {
		return nil // news of an earlier life, after a later one was seen
	}
	if upTo, ok := t.finalUpTo[id.Name]; ok && id.Incarnation <= upTo && e == nil {
		return nil // a final life, since pruned
	}
	if ev.Kind != EvDead && ev.Kind != EvLeft || id.Incarnation > t.latest[id.Name] {
		// A later life of the name, alive or not, ends every earlier one
		// for good.
		for oid, other := range t.members {
			if oid.Name == id.Name && oid.Incarnation < id.Incarnation && !other.final {
				if other.m.Status.Ended() {
					other.final = true
					t.markFinal(oid)
					continue
				}
				out = append(out, t.end(other, Dead, now, fmt.Sprintf("restarted as %v", id)))
				other.final = true
				t.markFinal(oid)
			}
		}
		t.latest[id.Name] = max(t.latest[id.Name], id.Incarnation)
	}
	switch ev.Kind {
	case EvAlive:
		if e == nil {
			m := ev.Member
			m.Status = Alive
			m.Tags = maps.Clone(m.Tags)
			t.members[id] = &entry{m: m}
			return append(out, Change{Member: m, From: None, Cause: orDefault(ev.Cause, "joined")})
		}
		from := e.m.Status
		status := from
		cause := orDefault(ev.Cause, "answers again")
		switch from {
		case Suspect:
			status = Alive
		case Dead:
			status = Alive
			cause = orDefault(ev.Cause, "back after being declared dead")
		}
		meta := ev.Member
		e.m.Addr, e.m.GossipAddr, e.m.Version, e.m.Tags = meta.Addr, meta.GossipAddr, meta.Version, maps.Clone(meta.Tags)
		if status != from {
			e.m.Status = status
			e.ended = time.Time{}
			out = append(out, Change{Member: e.m, From: from, Cause: cause})
		}
	case EvSuspect:
		if e != nil && e.m.Status == Alive {
			e.m.Status = Suspect
			out = append(out, Change{Member: e.m, From: Alive, Cause: orDefault(ev.Cause, "missed probes")})
		}
	case EvLeaving:
		if e == nil {
			m := ev.Member
			m.Status = Leaving
			t.members[id] = &entry{m: m}
			return append(out, Change{Member: m, From: None, Cause: orDefault(ev.Cause, "leaving")})
		}
		if e.m.Status == Alive || e.m.Status == Suspect || e.m.Status == Dead {
			from := e.m.Status
			e.m.Status = Leaving
			out = append(out, Change{Member: e.m, From: from, Cause: orDefault(ev.Cause, "leaving")})
		}
	case EvLeft, EvDead:
		to := Dead
		if ev.Kind == EvLeft {
			to = Left
		}
		if e == nil {
			// A life never seen alive: nobody was told of it, so there is
			// nothing to announce. Earlier lives of the name are out of
			// date either way, and one that left never comes back.
			if latest, ok := t.latest[id.Name]; !ok || id.Incarnation > latest {
				t.latest[id.Name] = id.Incarnation
			}
			if to == Left {
				t.markFinal(id)
			}
			return out
		}
		if e.m.Status == to {
			return out
		}
		out = append(out, t.end(e, to, now, ev.Cause))
	}
	return out
}

// end is the one place a node life becomes Dead or Left.
func (t *Table) end(e *entry, to Status, now time.Time, cause string) Change {
	from := e.m.Status
	e.m.Status = to
	e.ended = now
	if to == Left {
		e.final = true
		t.markFinal(e.m.ID)
	}
	if cause == "" {
		cause = to.String()
	}
	return Change{Member: e.m, From: from, Cause: cause}
}

func (t *Table) markFinal(id proc.NodeID) {
	if upTo, ok := t.finalUpTo[id.Name]; !ok || id.Incarnation > upTo {
		t.finalUpTo[id.Name] = id.Incarnation
	}
}

// Member returns a node life's current state.
func (t *Table) Member(id proc.NodeID) (Member, bool) {
	if e := t.members[id]; e != nil {
		return e.m, true
	}
	return Member{}, false
}

// Members returns every life that has not ended.
func (t *Table) Members() []Member {
	out := make([]Member, 0, len(t.members))
	for _, e := range t.members {
		if !e.m.Status.Ended() {
			out = append(out, e.m)
		}
	}
	return out
}

// Dead returns the lives that are Dead but not final, that ended after
// since: the ones worth trying to reach again, in case a partition healed.
func (t *Table) Dead(since time.Time) []Member {
	var out []Member
	for _, e := range t.members {
		if e.m.Status == Dead && !e.final && e.ended.After(since) {
			out = append(out, e.m)
		}
	}
	return out
}

// Latest returns the latest known life of a node name that has not ended.
func (t *Table) Latest(name string) (Member, bool) {
	inc, ok := t.latest[name]
	if !ok {
		return Member{}, false
	}
	e := t.members[proc.NodeID{Name: name, Incarnation: inc}]
	if e == nil || e.m.Status.Ended() {
		return Member{}, false
	}
	return e.m, true
}

// Prune forgets lives that ended before cutoff. The latest incarnation of
// each name, and the highest final one, are kept, so a final life is never
// taken for alive again. (A pruned Dead life that comes back is a new
// arrival.)
func (t *Table) Prune(cutoff time.Time) {
	for id, e := range t.members {
		if e.m.Status.Ended() && e.ended.Before(cutoff) {
			delete(t.members, id)
		}
	}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
