package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/proctest"
	"github.com/herdkit/herd/internal/replica"
)

// conflictFixture is one node's cluster backend, with entries of other
// nodes arriving through the map's observer as the replica would apply
// them.
type conflictFixture struct {
	t   *testing.T
	rt  *proc.Runtime
	mp  *replica.Map
	r   *Replicated
	now crdt.Timestamp
}

func newConflictFixture(t *testing.T, resolve ConflictResolver) *conflictFixture {
	rt := proctest.NewRuntimeWith(t, proc.Config{Node: proc.NodeID{Name: "a", Incarnation: 1}})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reps, err := replica.New(replica.Config{Self: rt.Node(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	mp, err := reps.Open("herd.registry", nil, false)
	if err != nil {
		t.Fatal(err)
	}
	f := &conflictFixture{t: t, rt: rt, mp: mp, now: crdt.MakeTimestamp(1_000_000, 0)}
	// A clock the test controls: registrations here happen at f.now.
	f.r = NewReplicated(ReplicatedConfig{Runtime: rt, Map: mp, Clock: func() crdt.Timestamp { return f.now }, Logger: log, Resolve: resolve})
	t.Cleanup(func() {
		f.r.Close()
		reps.Close()
	})
	return f
}

// trapper spawns a local process that traps exits and reports them.
func (f *conflictFixture) trapper() (proc.PID, <-chan any) {
	got := make(chan any, 4)
	pid, err := f.rt.SpawnProcess(&proctest.Func{
		OnInit: func(c *proc.Context, _ any) error { c.TrapExits(true); return nil },
		OnInfo: func(_ *proc.Context, m any) { got <- m },
	}, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return pid, got
}

// arrive applies another node's registration of key, made at at.
func (f *conflictFixture) arrive(key Key, pid proc.PID, at crdt.Timestamp) {
	v, err := entryValue(at, &Meta{})
	if err != nil {
		f.t.Fatal(err)
	}
	f.r.observe(crdt.Change{Key: entryKey(Unique, key, pid), New: &crdt.Version{Value: v}})
}

func remotePID(node string, id uint64) proc.PID {
	return proc.PID{Node: proc.NodeID{Name: node, Incarnation: 1}, ID: id}
}

func next(t *testing.T, w *Watch) Event {
	t.Helper()
	select {
	case e := <-w.Events():
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
		panic("unreachable")
	}
}

// An earlier registration arriving from another node takes the name: every
// watch hears of the conflict and the new holder, and this node removes
// its loser's entry and sends the loser NameConflict naming the winner.
func TestConflictEarlierRemoteWins(t *testing.T) {
	f := newConflictFixture(t, nil)
	key := K("", "game:1")
	local, exits := f.trapper()
	if err := f.r.Register(context.Background(), key, local, Meta{}); err != nil {
		t.Fatal(err)
	}
	w := f.r.Watch(Query{}, WatchOptions{})
	defer w.Close()
	winner := remotePID("b", 7)
	f.arrive(key, winner, f.now-1)

	if got, _ := f.r.Whereis(key); got != winner {
		t.Fatalf("holder %v, want the earlier registration %v", got, winner)
	}
	if e := next(t, w); e.Type != Conflict || e.Entry.PID != local || e.Winner != winner {
		t.Fatalf("first event %+v, want the local loser's conflict", e)
	}
	if e := next(t, w); e.Type != Registered || e.Entry.PID != winner {
		t.Fatalf("second event %+v, want the winner registered", e)
	}
	m := proctest.Recv(t, exits)
	ex, ok := m.(proc.Exit)
	var nc *NameConflict
	if !ok || !errors.As(ex.Reason, &nc) || nc.Name != key || nc.Winner != winner || ex.From != winner {
		t.Fatalf("loser got %#v, want an Exit with NameConflict from the winner", m)
	}
	if !errors.Is(ex.Reason, ErrNameConflict) {
		t.Fatal("NameConflict does not match ErrNameConflict")
	}
	// The loser's entry is gone from the replicated map, not just hidden.
	if _, ok := f.mp.Get(entryKey(Unique, key, local)); ok {
		t.Fatal("the loser's entry is still in the map")
	}
	if cs := f.r.Candidates(key); len(cs) != 1 || cs[0].Entry.PID != winner {
		t.Fatalf("candidates after resolution: %+v", cs)
	}
	// The loser lives on (it trapped the exit) without the name; a
	// successor of the winner can be registered once the winner goes.
	if !f.rt.Alive(local) {
		t.Fatal("a trapping loser was stopped")
	}
}

// A later registration arriving loses: the holder stays, watches hear of
// the conflict, and this node does nothing (the loser's node acts).
func TestConflictLaterRemoteLoses(t *testing.T) {
	f := newConflictFixture(t, nil)
	key := K("tenant", "leader")
	local, exits := f.trapper()
	if err := f.r.Register(context.Background(), key, local, Meta{}); err != nil {
		t.Fatal(err)
	}
	w := f.r.Watch(Query{Env: "tenant"}, WatchOptions{})
	defer w.Close()
	late := remotePID("b", 3)
	f.arrive(key, late, f.now+1)
	if got, _ := f.r.Whereis(key); got != local {
		t.Fatalf("holder %v, want %v", got, local)
	}
	if e := next(t, w); e.Type != Conflict || e.Entry.PID != late || e.Winner != local {
		t.Fatalf("event %+v, want the late registration's conflict", e)
	}
	// The other node withdraws its loser.
	f.r.observe(crdt.Change{Key: entryKey(Unique, key, late), Old: &crdt.Version{}})
	if cs := f.r.Candidates(key); len(cs) != 1 {
		t.Fatalf("candidates: %+v", cs)
	}
	select {
	case m := <-exits:
		t.Fatalf("the holder got %v", m)
	case e := <-w.Events():
		t.Fatalf("withdrawing a loser made an event: %+v", e)
	case <-time.After(50 * time.Millisecond):
	}
}

// Equal times fall back to node identity, so every node picks alike.
func TestConflictTieBreaksOnNodeIdentity(t *testing.T) {
	f := newConflictFixture(t, nil)
	key := K("", "tie")
	f.arrive(key, remotePID("c", 1), f.now)
	f.arrive(key, remotePID("b", 1), f.now)
	if got, _ := f.r.Whereis(key); got.Node.Name != "b" {
		t.Fatalf("holder on %v, want b (the lower node identity)", got.Node)
	}
}

// A resolver replaces the default: here the latest registration wins.
func TestConflictResolver(t *testing.T) {
	latest := func(_ Key, cs []Candidate) int { return len(cs) - 1 }
	f := newConflictFixture(t, latest)
	key := K("", "newest")
	f.arrive(key, remotePID("b", 1), f.now-5)
	f.arrive(key, remotePID("c", 1), f.now+5)
	f.arrive(key, remotePID("d", 1), f.now)
	if got, _ := f.r.Whereis(key); got.Node.Name != "c" {
		t.Fatalf("holder on %v, want c (the latest)", got.Node)
	}
}

// An entry arriving from a broken peer is ignored: no entry, no event.
func TestReplicatedIgnoresMalformedEntries(t *testing.T) {
	f := newConflictFixture(t, nil)
	w := f.r.Watch(Query{AllEnvs: true}, WatchOptions{})
	defer w.Close()
	good := entryKey(Unique, K("", "ok"), remotePID("b", 1))
	v, _ := entryValue(f.now, &Meta{})
	for _, c := range []crdt.Change{
		{Key: "", New: &crdt.Version{Value: v}},
		{Key: "x" + good[1:], New: &crdt.Version{Value: v}},
		{Key: good + "trailing", New: &crdt.Version{Value: v}},
		{Key: entryKey(Unique, K("a/b", "x"), remotePID("b", 1)), New: &crdt.Version{Value: v}},
		{Key: good, New: &crdt.Version{Value: []byte{2, 0, 0}}},
		{Key: good, New: &crdt.Version{Value: append(v[:valueHeader:valueHeader], 0xff)}},
	} {
		f.r.observe(c)
	}
	if n := f.r.Count(Query{AllEnvs: true}); n != 0 {
		t.Fatalf("malformed entries made %d entries", n)
	}
	select {
	case e := <-w.Events():
		t.Fatalf("malformed entry made an event: %+v", e)
	default:
	}
}

func TestEntryKeyRoundTrip(t *testing.T) {
	for _, c := range []struct {
		kind Kind
		key  Key
		pid  proc.PID
	}{
		{Unique, K("", "game:1"), remotePID("n1", 1)},
		{Group, K("tenant", "room\x00with nul"), proc.PID{Node: proc.NodeID{Name: "x", Incarnation: 1 << 62}, ID: 1 << 40}},
	} {
		s := entryKey(c.kind, c.key, c.pid)
		if !utf8.ValidString(s) {
			t.Errorf("key %q is not UTF-8: the replica's wire refuses it", s)
		}
		kind, key, pid, err := parseEntryKey(s)
		if err != nil || kind != c.kind || key != c.key || pid != c.pid {
			t.Errorf("round trip of %+v: %v %v %v %v", c, kind, key, pid, err)
		}
	}
	meta := Meta{Labels: map[string]string{"zone": "eu"}, Capabilities: []string{"a", "b"}}
	v, err := entryValue(42, &meta)
	if err != nil {
		t.Fatal(err)
	}
	at, back, err := parseEntryValue(v)
	if err != nil || at != 42 || !back.Equal(meta) {
		t.Fatalf("value round trip: %v %+v %v", at, back, err)
	}
}

// FuzzEntry feeds the entry decoders what a broken or hostile peer could
// put in the registry's map: they return an error or an entry that passes
// the checks every write passes, and never panic.
func FuzzEntry(f *testing.F) {
	v, _ := entryValue(7, &Meta{Labels: map[string]string{"k": "v"}, Capabilities: []string{"c"}})
	f.Add(entryKey(Unique, K("env", "name"), remotePID("n", 3)), v)
	f.Add(entryKey(Group, K("", "g"), remotePID("m", 1)), []byte{1, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		if kind, k, pid, err := parseEntryKey(key); err == nil {
			if k.Validate() != nil || pid.IsZero() {
				t.Fatalf("accepted an invalid key %+v %v", k, pid)
			}
			again := entryKey(kind, k, pid)
			if !utf8.ValidString(again) {
				t.Fatalf("re-encoded key %q is not UTF-8", again)
			}
			if kind2, k2, pid2, err := parseEntryKey(again); err != nil || kind2 != kind || k2 != k || pid2 != pid {
				t.Fatalf("re-encoded key %q reads back as %v %v %v %v", again, kind2, k2, pid2, err)
			}
		}
		if _, m, err := parseEntryValue(value); err == nil {
			if m.Validate() != nil {
				t.Fatalf("accepted invalid metadata %+v", m)
			}
		}
	})
}

// The holder is a pure function of the registrations a node holds: two
// nodes that apply the same registrations and withdrawals, in different
// orders, read every name alike, with the same candidates in the same
// order. (The replicated map guarantees they end up holding the same
// registrations; the simulator of package crdt checks that.)
func TestHolderIsAFunctionOfRegistrations(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 11))
		type op struct {
			key  Key
			pid  proc.PID
			at   crdt.Timestamp
			gone bool
		}
		var ops []op
		for i := range 30 {
			key := K("", fmt.Sprint("n", rng.IntN(4)))
			pid := remotePID(string(rune('b'+rng.IntN(4))), uint64(i+1))
			at := crdt.MakeTimestamp(1000+int64(rng.IntN(5)), uint16(rng.IntN(2)))
			ops = append(ops, op{key: key, pid: pid, at: at})
			if rng.IntN(3) == 0 {
				ops = append(ops, op{key: key, pid: pid, gone: true})
			}
		}
		apply := func(f *conflictFixture, order []op) {
			for _, o := range order {
				if o.gone {
					f.r.observe(crdt.Change{Key: entryKey(Unique, o.key, o.pid), Old: &crdt.Version{}})
				} else {
					f.arrive(o.key, o.pid, o.at)
				}
			}
		}
		// Half the seeds with a resolver (the latest registration wins),
		// which must see the same candidates in the same order on both.
		var resolve ConflictResolver
		if seed%2 == 1 {
			resolve = func(_ Key, cs []Candidate) int { return len(cs) - 1 }
		}
		a, b := newConflictFixture(t, resolve), newConflictFixture(t, resolve)
		apply(a, ops)
		// Another order that keeps each withdrawal after its registration.
		shuffled := slices.Clone(ops)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		var adds, removes []op
		for _, o := range shuffled {
			if o.gone {
				removes = append(removes, o)
			} else {
				adds = append(adds, o)
			}
		}
		apply(b, append(adds, removes...))
		for k := range 4 {
			key := K("", fmt.Sprint("n", k))
			ca, cb := a.r.Candidates(key), b.r.Candidates(key)
			if !slices.EqualFunc(ca, cb, func(x, y Candidate) bool { return x.Entry.PID == y.Entry.PID && x.At == y.At }) {
				t.Fatalf("seed %d: %v: candidates differ:\n%+v\n%+v", seed, key, ca, cb)
			}
			ha, oka := a.r.Whereis(key)
			hb, okb := b.r.Whereis(key)
			if ha != hb || oka != okb || (oka && ha != ca[0].Entry.PID) {
				t.Fatalf("seed %d: %v: holders %v %v", seed, key, ha, hb)
			}
			for i := 1; i < len(ca) && resolve == nil; i++ {
				if compareCandidates(ca[i-1], ca[i]) >= 0 {
					t.Fatalf("seed %d: candidates out of order: %+v", seed, ca)
				}
			}
		}
		a.r.Close()
		b.r.Close()
	}
}
