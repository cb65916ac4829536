package crdt

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/proc"
)

var (
	nodeA = proc.NodeID{Name: "a", Incarnation: 1}
	nodeB = proc.NodeID{Name: "b", Incarnation: 1}
	nodeC = proc.NodeID{Name: "c", Incarnation: 1}
)

func ts(ms int64) Timestamp { return MakeTimestamp(ms, 0) }

// put writes key on m and returns the delta to ship; the test stops on an
// error or a broken invariant.
func put(t testing.TB, m *Map, key, value string, owner Owner, now Timestamp) Delta {
	t.Helper()
	d, err := m.Put(key, []byte(value), owner, now)
	if err != nil {
		t.Fatalf("%v: Put(%q): %v", m.Self(), key, err)
	}
	if err := m.Check(); err != nil {
		t.Fatalf("%v: after Put(%q): %v", m.Self(), key, err)
	}
	return d
}

// del deletes key on m, which must have had something to delete.
func del(t testing.TB, m *Map, key string) Delta {
	t.Helper()
	d, ok := m.Delete(key)
	if !ok {
		t.Fatalf("%v: Delete(%q) found nothing to delete", m.Self(), key)
	}
	if err := m.Check(); err != nil {
		t.Fatalf("%v: after Delete(%q): %v", m.Self(), key, err)
	}
	return d
}

// join joins deltas into m in order, checking the invariants after each.
func join(t testing.TB, m *Map, ds ...Delta) {
	t.Helper()
	for i := range ds {
		m.Join(&ds[i])
		if err := m.Check(); err != nil {
			t.Fatalf("%v: after Join: %v", m.Self(), err)
		}
	}
}

// valueOf returns what key reads as on m, "-" when absent: short to compare.
func valueOf(m *Map, key string) string {
	v, ok := m.Get(key)
	if !ok {
		return "-"
	}
	return string(v.Value)
}

// values returns the values of key's visible versions, in (Time, Dot) order.
func values(m *Map, key string) string {
	var out []string
	for _, v := range m.Versions(key) {
		out = append(out, string(v.Value))
	}
	return strings.Join(out, ",")
}

// clone returns a replica of the same life holding m's state, made through
// State and Join: what a replica receiving m's state would hold.
func clone(m *Map) *Map {
	c := NewMap(m.Self(), nil)
	s := m.State()
	c.Join(&s)
	return c
}

// joined returns a copy of a with b's whole state joined in.
func joined(a, b *Map) *Map {
	c := clone(a)
	s := b.State()
	c.Join(&s)
	return c
}

func dotString(d Dot) string { return fmt.Sprintf("%v:%d", d.Node, d.Seq) }

func versionString(v *Version) string {
	s := fmt.Sprintf("%s@%s/t%d.%d", v.Value, dotString(v.Dot), v.Time.WallMillis(), v.Time.Logical())
	if !v.Owner.IsZero() {
		s += fmt.Sprintf("/own(%v,%d)", v.Owner.Node, v.Owner.Process)
	}
	return s
}

// reading mirrors a replica's readings from its OnChange events alone, so a
// test can tell whether the events reported every change of a reading and
// nothing else.
type reading struct {
	vals map[string]Version
	err  error
}

func watch(m *Map) *reading {
	r := &reading{vals: make(map[string]Version)}
	m.Range(func(k string, v Version) bool { r.vals[k] = v; return true })
	m.OnChange(func(c Change) {
		if r.err != nil {
			return
		}
		old, had := r.vals[c.Key]
		switch {
		case had != (c.Old != nil) || had && !sameVersion(&old, c.Old):
			r.err = fmt.Errorf("key %q: event's Old is %s, but the key read %s", c.Key, optString(c.Old), optString(pick(old, had)))
		case c.Old == nil && c.New == nil, c.Old != nil && c.New != nil && sameVersion(c.Old, c.New):
			r.err = fmt.Errorf("key %q: event for no change (%s)", c.Key, optString(c.New))
		}
		if c.New == nil {
			delete(r.vals, c.Key)
		} else {
			r.vals[c.Key] = *c.New
		}
	})
	return r
}

// verify compares the readings the events told of with m's.
func (r *reading) verify(m *Map) error {
	if r.err != nil {
		return fmt.Errorf("OnChange: %w", r.err)
	}
	n := 0
	var err error
	m.Range(func(k string, v Version) bool {
		n++
		if w, ok := r.vals[k]; !ok || !sameVersion(&w, &v) {
			err = fmt.Errorf("OnChange: key %q reads %s, the events said %s", k, versionString(&v), optString(pick(w, ok)))
			return false
		}
		return true
	})
	if err == nil && n != len(r.vals) {
		err = fmt.Errorf("OnChange: %d keys read present, the events said %d", n, len(r.vals))
	}
	return err
}

func pick(v Version, ok bool) *Version {
	if !ok {
		return nil
	}
	return &v
}

func optString(v *Version) string {
	if v == nil {
		return "nothing"
	}
	return versionString(v)
}

// ---- Clock ----

func TestTimestampParts(t *testing.T) {
	x := MakeTimestamp(1234, 56)
	if x.WallMillis() != 1234 || x.Logical() != 56 {
		t.Fatalf("MakeTimestamp(1234, 56) = (%d, %d)", x.WallMillis(), x.Logical())
	}
	if MakeTimestamp(-7, 3) != MakeTimestamp(0, 3) {
		t.Fatal("a negative wall time does not clamp to 0")
	}
	// The wall part orders before the logical part.
	if MakeTimestamp(1, math.MaxUint16) >= MakeTimestamp(2, 0) {
		t.Fatal("(1, max logical) is not before (2, 0)")
	}
}

func TestClockMonotonic(t *testing.T) {
	var c Clock
	steps := []struct {
		wall        int64
		wantMs      int64
		wantLogical uint16
	}{
		{100, 100, 0},
		{100, 100, 1},
		{100, 100, 2},
		{99, 100, 3}, // the wall going back does not take the clock back
		{50, 100, 4},
		{101, 101, 0},
		{-5, 101, 1},
		{200, 200, 0},
	}
	var last Timestamp
	for i, s := range steps {
		got := c.Now(s.wall)
		if got.WallMillis() != s.wantMs || got.Logical() != s.wantLogical {
			t.Fatalf("step %d: Now(%d) = (%d, %d), want (%d, %d)", i, s.wall, got.WallMillis(), got.Logical(), s.wantMs, s.wantLogical)
		}
		if got <= last {
			t.Fatalf("step %d: Now = %d, not after %d", i, got, last)
		}
		if c.Last() != got {
			t.Fatalf("step %d: Last = %d, Now returned %d", i, c.Last(), got)
		}
		last = got
	}
	// Seeded random walls: never back, never behind the wall.
	rng := rand.New(rand.NewPCG(1, 2))
	var d Clock
	last = 0
	for i := range 10000 {
		wall := int64(rng.IntN(2000))
		got := d.Now(wall)
		if got <= last || got < MakeTimestamp(wall, 0) {
			t.Fatalf("random step %d: Now(%d) = %d after %d", i, wall, got, last)
		}
		last = got
	}
}

func TestClockObserve(t *testing.T) {
	var c Clock
	c.Now(100)
	remote := MakeTimestamp(500, 7)
	c.Observe(remote)
	if c.Last() != remote {
		t.Fatalf("Last = %d after observing %d", c.Last(), remote)
	}
	// A write after seeing the remote one is later, though the wall lags.
	if got := c.Now(100); got != MakeTimestamp(500, 8) {
		t.Fatalf("Now(100) after observing (500, 7) = (%d, %d)", got.WallMillis(), got.Logical())
	}
	c.Observe(MakeTimestamp(10, 0)) // an older timestamp changes nothing
	if c.Last() != MakeTimestamp(500, 8) {
		t.Fatalf("observing an older timestamp moved the clock to %d", c.Last())
	}
	if got := c.Now(600); got != MakeTimestamp(600, 0) {
		t.Fatalf("Now(600) = (%d, %d), want the wall back in charge", got.WallMillis(), got.Logical())
	}
}

func TestClockLogicalOverflowCarries(t *testing.T) {
	var c Clock
	c.Observe(MakeTimestamp(10, math.MaxUint16-1))
	if got := c.Now(10); got != MakeTimestamp(10, math.MaxUint16) {
		t.Fatalf("Now = (%d, %d), want (10, max)", got.WallMillis(), got.Logical())
	}
	got := c.Now(10)
	if got != MakeTimestamp(11, 0) {
		t.Fatalf("the overflowing counter gave (%d, %d), want a carry to (11, 0)", got.WallMillis(), got.Logical())
	}
	// The clock is now a millisecond ahead of the wall; the wall catching up
	// does not take it back.
	if got := c.Now(11); got != MakeTimestamp(11, 1) {
		t.Fatalf("Now(11) = (%d, %d), want (11, 1)", got.WallMillis(), got.Logical())
	}
	// A full millisecond's worth of counts with the wall stuck still moves
	// forward every time.
	var d Clock
	last := d.Now(5)
	for i := range 3 << 16 {
		next := d.Now(5)
		if next != last+1 {
			t.Fatalf("count %d: Now = %d after %d", i, next, last)
		}
		last = next
	}
	if last.WallMillis() != 8 {
		t.Fatalf("after 3*2^16 counts from (5, 0) the clock is at %d ms, want 8", last.WallMillis())
	}
}

// ---- Context ----

// checkCompact verifies the context's representation: no zero entry in the
// version vector, and no cloud dot the version vector covers or could
// absorb (so Covers and Missing can stop at the first gap).
func checkCompact(c *Context) error {
	for n, s := range c.vv {
		if s == 0 {
			return fmt.Errorf("zero version-vector entry for %v", n)
		}
	}
	for d := range c.cloud {
		if d.Seq <= c.vv[d.Node]+1 {
			return fmt.Errorf("cloud dot %s not compacted into version %d", dotString(d), c.vv[d.Node])
		}
	}
	return nil
}

func TestContextAddCompacts(t *testing.T) {
	var c Context
	if c.Contains(Dot{Node: nodeA, Seq: 1}) || c.Len() != 0 {
		t.Fatal("the zero Context is not empty")
	}
	if !c.Contains(Dot{Node: nodeA}) {
		t.Fatal("sequence number 0 names no operation, so it counts as seen")
	}
	c.Add(Dot{Node: nodeA, Seq: 1})
	c.Add(Dot{Node: nodeA, Seq: 3})
	c.Add(Dot{Node: nodeA, Seq: 5})
	c.Add(Dot{Node: nodeA, Seq: 3}) // twice changes nothing
	c.Add(Dot{Node: nodeA})         // nor does a zero dot
	if c.Upto(nodeA) != 1 || c.Max(nodeA) != 5 || c.Len() != 3 {
		t.Fatalf("Upto %d Max %d Len %d, want 1 5 3", c.Upto(nodeA), c.Max(nodeA), c.Len())
	}
	if c.Contains(Dot{Node: nodeA, Seq: 2}) || !c.Contains(Dot{Node: nodeA, Seq: 3}) {
		t.Fatal("Contains disagrees with what was added")
	}
	c.Add(Dot{Node: nodeA, Seq: 2}) // fills the gap: 3 joins the version vector
	if c.Upto(nodeA) != 3 || c.Len() != 2 {
		t.Fatalf("after filling the gap: Upto %d Len %d, want 3 2", c.Upto(nodeA), c.Len())
	}
	c.Add(Dot{Node: nodeA, Seq: 4})
	if c.Upto(nodeA) != 5 || c.Len() != 1 {
		t.Fatalf("after 4: Upto %d Len %d, want 5 1", c.Upto(nodeA), c.Len())
	}
	if err := checkCompact(&c); err != nil {
		t.Fatal(err)
	}
	c.Add(Dot{Node: nodeB, Seq: 2})
	if got := c.Nodes(); !slices.Equal(got, []proc.NodeID{nodeA, nodeB}) {
		t.Fatalf("Nodes = %v", got)
	}
	cl := c.Clone()
	cl.Add(Dot{Node: nodeC, Seq: 1})
	if c.Contains(Dot{Node: nodeC, Seq: 1}) {
		t.Fatal("a Clone shares state with its original")
	}
}

// dotSet is the plain set a Context must behave as.
type dotSet map[Dot]bool

// randomContext adds a random set of dots of nodes, up to maxSeq each, in
// random order (and some twice): dense prefixes and scattered clouds both.
func randomContext(rng *rand.Rand, nodes []proc.NodeID, maxSeq int) (Context, dotSet) {
	var dots []Dot
	for _, n := range nodes {
		prefix := rng.IntN(maxSeq + 1)
		for q := 1; q <= maxSeq; q++ {
			if q <= prefix || rng.IntN(4) == 0 {
				dots = append(dots, Dot{Node: n, Seq: uint64(q)})
			}
		}
	}
	rng.Shuffle(len(dots), func(i, j int) { dots[i], dots[j] = dots[j], dots[i] })
	var c Context
	set := make(dotSet)
	for i, d := range dots {
		c.Add(d)
		set[d] = true
		if i%3 == 0 {
			c.Add(d)
		}
	}
	return c, set
}

// checkContextIs verifies c holds exactly set, and its accessors say so.
func checkContextIs(c *Context, set dotSet, nodes []proc.NodeID, maxSeq int) error {
	if err := checkCompact(c); err != nil {
		return err
	}
	wantLen := 0
	var wantNodes []proc.NodeID
	for _, n := range nodes {
		upto, max := uint64(0), uint64(0)
		for q := uint64(1); q <= uint64(maxSeq)+2; q++ {
			d := Dot{Node: n, Seq: q}
			if c.Contains(d) != set[d] {
				return fmt.Errorf("Contains(%s) = %v, want %v", dotString(d), c.Contains(d), set[d])
			}
			if set[d] {
				max = q
				if upto == q-1 {
					upto = q
				}
			}
		}
		if c.Upto(n) != upto || c.Max(n) != max {
			return fmt.Errorf("%v: Upto %d Max %d, want %d %d", n, c.Upto(n), c.Max(n), upto, max)
		}
		if max > 0 {
			wantNodes = append(wantNodes, n)
		}
		if upto > 0 {
			wantLen++
		}
		for q := upto + 1; q <= max; q++ {
			if set[Dot{Node: n, Seq: q}] {
				wantLen++
			}
		}
	}
	if c.Len() != wantLen {
		return fmt.Errorf("Len = %d, want %d", c.Len(), wantLen)
	}
	if got := c.Nodes(); !slices.Equal(got, wantNodes) {
		return fmt.Errorf("Nodes = %v, want %v", got, wantNodes)
	}
	return nil
}

// TestContextAgainstSet checks Context against a plain set of dots, over
// random contexts: Add, Merge, Missing, Covers, Equal and the CBOR form.
func TestContextAgainstSet(t *testing.T) {
	nodes := []proc.NodeID{nodeA, nodeB, {Name: "b", Incarnation: 2}, nodeC}
	const maxSeq = 12
	for seed := uint64(1); seed <= 500; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0xc0de))
		a, as := randomContext(rng, nodes, maxSeq)
		b, bs := randomContext(rng, nodes, maxSeq)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: %s", seed, fmt.Sprintf(format, args...))
		}
		if err := checkContextIs(&a, as, nodes, maxSeq); err != nil {
			fail("after Add: %v", err)
		}
		union := make(dotSet)
		for d := range as {
			union[d] = true
		}
		for d := range bs {
			union[d] = true
		}
		ab, ba := a.Clone(), b.Clone()
		ab.Merge(&b)
		ba.Merge(&a)
		if err := checkContextIs(&ab, union, nodes, maxSeq); err != nil {
			fail("after Merge: %v", err)
		}
		if err := checkContextIs(&ba, union, nodes, maxSeq); err != nil {
			fail("after Merge the other way: %v", err)
		}
		if err := checkContextIs(&a, as, nodes, maxSeq); err != nil {
			fail("Merge into a clone changed the original: %v", err)
		}
		self := a.Clone()
		self.Merge(&self)
		if err := checkContextIs(&self, as, nodes, maxSeq); err != nil {
			fail("after merging a context with itself: %v", err)
		}

		// Missing reports exactly a \ b, each dot once.
		missing := make(dotSet)
		a.Missing(&b, func(d Dot) bool {
			if missing[d] {
				fail("Missing reported %s twice", dotString(d))
			}
			missing[d] = true
			return true
		})
		for d := range as {
			if !bs[d] && !missing[d] {
				fail("Missing left out %s", dotString(d))
			}
		}
		for d := range missing {
			if !as[d] || bs[d] {
				fail("Missing reported %s, which is not in a \\ b", dotString(d))
			}
		}
		calls := 0
		a.Missing(&Context{}, func(Dot) bool { calls++; return false })
		if len(as) > 0 && calls != 1 {
			fail("Missing went on after fn returned false: %d calls", calls)
		}

		subset := func(x, y dotSet) bool {
			for d := range x {
				if !y[d] {
					return false
				}
			}
			return true
		}
		if a.Covers(&b) != subset(bs, as) || b.Covers(&a) != subset(as, bs) {
			fail("Covers disagrees with the sets")
		}
		if !ab.Covers(&a) || !ab.Covers(&b) || !ab.Equal(&ba) {
			fail("a merge does not cover its parts, or depends on order")
		}
		if a.Equal(&b) != (subset(as, bs) && subset(bs, as)) {
			fail("Equal disagrees with the sets")
		}

		// The CBOR form: round trip, and equal contexts encode alike.
		enc, err := cbor.Marshal(ab)
		if err != nil {
			fail("Marshal: %v", err)
		}
		var back Context
		if err := cbor.Unmarshal(enc, &back); err != nil {
			fail("Unmarshal: %v", err)
		}
		if err := checkContextIs(&back, union, nodes, maxSeq); err != nil {
			fail("after a CBOR round trip: %v", err)
		}
		if enc2, _ := cbor.Marshal(ba); !bytes.Equal(enc, enc2) {
			fail("equal contexts encode differently")
		}
	}
}

// TestContextDecodeNormalizes feeds the decoder a context no encoder makes:
// duplicate and zero version entries, cloud dots inside or next to the
// version vector. It must come out in canonical form.
func TestContextDecodeNormalizes(t *testing.T) {
	w := wireContext{
		VV: []Dot{{Node: nodeA, Seq: 2}, {Node: nodeA, Seq: 4}, {Node: nodeA, Seq: 3}, {Node: nodeB, Seq: 0}},
		Cloud: []Dot{
			{Node: nodeA, Seq: 7}, {Node: nodeA, Seq: 1}, {Node: nodeA, Seq: 5}, {Node: nodeA, Seq: 6},
			{Node: nodeB, Seq: 2}, {Node: nodeC, Seq: 0},
		},
	}
	enc, err := cbor.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	var c Context
	if err := cbor.Unmarshal(enc, &c); err != nil {
		t.Fatal(err)
	}
	want := dotSet{}
	for q := uint64(1); q <= 7; q++ {
		want[Dot{Node: nodeA, Seq: q}] = true
	}
	want[Dot{Node: nodeB, Seq: 2}] = true
	if err := checkContextIs(&c, want, []proc.NodeID{nodeA, nodeB, nodeC}, 8); err != nil {
		t.Fatal(err)
	}
}

// TestContextHighestSeq: comparing contexts that hold a life's last possible
// sequence number must end. (A peer's delta or context can carry any
// number, so this is reachable from the network.)
func TestContextHighestSeq(t *testing.T) {
	top := func(seq uint64) Context {
		var c Context
		enc, err := cbor.Marshal(wireContext{VV: []Dot{{Node: nodeA, Seq: seq}}})
		if err == nil {
			err = cbor.Unmarshal(enc, &c)
		}
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b, below := top(math.MaxUint64), top(math.MaxUint64), top(math.MaxUint64-1)
	done := make(chan string, 1)
	go func() {
		if !a.Equal(&b) {
			done <- "equal contexts compare unequal"
			return
		}
		var got []Dot
		a.Missing(&below, func(d Dot) bool { got = append(got, d); return true })
		if len(got) != 1 || got[0].Seq != math.MaxUint64 {
			done <- fmt.Sprintf("Missing reported %d dots, want the one top dot", len(got))
			return
		}
		done <- ""
	}()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	select {
	case msg := <-done:
		if msg != "" {
			t.Fatal(msg)
		}
	case <-deadline.C:
		t.Fatal("Context.Equal/Missing did not return for a version vector at MaxUint64: " +
			"Missing's loop counter (q <= s; q++) wraps to 0 and runs forever")
	}
}

// ---- Map ----

func TestMapPutGetDelete(t *testing.T) {
	m := NewMap(nodeA, nil)
	if m.Self() != nodeA {
		t.Fatalf("Self = %v", m.Self())
	}
	if _, ok := m.Get("k"); ok {
		t.Fatal("an empty map reads a key")
	}
	d := put(t, m, "k", "v1", Owner{}, ts(1))
	if d.Op != (Dot{Node: nodeA, Seq: 1}) || len(d.Entries) != 1 || d.Full {
		t.Fatalf("Put's delta: op %s, %d entries, full %v", dotString(d.Op), len(d.Entries), d.Full)
	}
	v, ok := m.Get("k")
	if !ok || string(v.Value) != "v1" || v.Dot != d.Op || v.Time != ts(1) || !v.Owner.IsZero() {
		t.Fatalf("Get = %s, %v", versionString(&v), ok)
	}
	d2 := put(t, m, "k", "v2", Owner{}, ts(2))
	if got := values(m, "k"); got != "v2" {
		t.Fatalf("after overwriting, versions %q", got)
	}
	if !d2.Context.Contains(d.Op) {
		t.Fatal("an overwrite's delta does not speak for the version it replaced")
	}
	put(t, m, "other", "x", Owner{}, ts(3))
	dd := del(t, m, "k")
	if !slices.Equal(dd.Drop, []string{"k"}) || !dd.Context.Contains(d2.Op) || !dd.Context.Contains(dd.Op) {
		t.Fatalf("Delete's delta: drop %v", dd.Drop)
	}
	if _, ok := m.Get("k"); ok || m.Len() != 1 {
		t.Fatalf("after Delete: k present %v, Len %d", ok, m.Len())
	}
	if _, ok := m.Delete("k"); ok {
		t.Fatal("deleting a deleted key reported a change")
	}
	if _, ok := m.Delete("never"); ok {
		t.Fatal("deleting an absent key reported a change")
	}
	var keys []string
	m.Range(func(k string, _ Version) bool { keys = append(keys, k); return true })
	if !slices.Equal(keys, []string{"other"}) {
		t.Fatalf("Range saw %v", keys)
	}
	if got := m.Context().Upto(nodeA); got != 4 {
		t.Fatalf("4 operations took dots up to %d", got)
	}
}

func TestMapConcurrentPutsLWW(t *testing.T) {
	a, b, c := NewMap(nodeA, nil), NewMap(nodeB, nil), NewMap(nodeC, nil)
	da := put(t, a, "k", "a", Owner{}, ts(10))
	db := put(t, b, "k", "b", Owner{}, ts(20))
	dc := put(t, c, "k", "c", Owner{}, ts(15))
	join(t, a, db, dc)
	join(t, b, dc, da, db) // an echo of its own delta changes nothing
	join(t, c, db, da, dc)
	for _, m := range []*Map{a, b, c} {
		if got := valueOf(m, "k"); got != "b" {
			t.Errorf("%v reads %q, want the latest write b", m.Self(), got)
		}
		if got := values(m, "k"); got != "a,c,b" {
			t.Errorf("%v holds versions %q, want a,c,b in time order", m.Self(), got)
		}
	}
	if !a.Equal(b) || !b.Equal(c) {
		t.Fatal("replicas hold different states after the same deltas")
	}

	// Equal timestamps: the node identity decides, name then incarnation.
	x1, x2, w9 := proc.NodeID{Name: "x", Incarnation: 1}, proc.NodeID{Name: "x", Incarnation: 2}, proc.NodeID{Name: "w", Incarnation: 9}
	ms := []*Map{NewMap(x1, nil), NewMap(x2, nil), NewMap(w9, nil)}
	var ds []Delta
	for _, m := range ms {
		ds = append(ds, put(t, m, "k", m.Self().String(), Owner{}, ts(5)))
	}
	for i, m := range ms {
		order := slices.Clone(ds)
		rand.New(rand.NewPCG(uint64(i), 1)).Shuffle(len(order), func(x, y int) { order[x], order[y] = order[y], order[x] })
		join(t, m, order...)
		if got := valueOf(m, "k"); got != x2.String() {
			t.Errorf("%v reads %q, want %v (same time, highest identity)", m.Self(), got, x2)
		}
	}

	// A write that saw the others supersedes them, whatever its timestamp.
	dl := put(t, a, "k", "last", Owner{}, ts(1))
	join(t, b, dl)
	join(t, c, dl)
	for _, m := range []*Map{a, b, c} {
		if got := values(m, "k"); got != "last" {
			t.Errorf("%v holds %q after a write that saw every version", m.Self(), got)
		}
	}
}

func TestMapAddWins(t *testing.T) {
	a, b, c := NewMap(nodeA, nil), NewMap(nodeB, nil), NewMap(nodeC, nil)
	d1 := put(t, a, "k", "v1", Owner{}, ts(1))
	join(t, b, d1)
	// a deletes what it saw while b, having seen the same, writes again.
	dd := del(t, a, "k")
	d2 := put(t, b, "k", "v2", Owner{}, ts(2))
	join(t, a, d2)
	join(t, b, dd)
	for _, m := range []*Map{a, b} {
		if got := values(m, "k"); got != "v2" {
			t.Errorf("%v holds %q, want the concurrent write v2 to survive the delete", m.Self(), got)
		}
	}
	// A delete that arrives before the write it removed still removes it.
	join(t, c, dd, d1)
	if got := values(c, "k"); got != "" {
		t.Errorf("c holds %q after a delete and the older write it removed", got)
	}
	join(t, c, d2)
	if !c.Equal(a) || valueOf(c, "k") != "v2" {
		t.Errorf("c reads %q, and Equal to a %v", valueOf(c, "k"), c.Equal(a))
	}
	// Concurrent deletes of the same version: gone everywhere.
	xa, xb := del(t, a, "k"), del(t, b, "k")
	join(t, a, xb)
	join(t, b, xa)
	join(t, c, xb, xa)
	for _, m := range []*Map{a, b, c} {
		if _, ok := m.Get("k"); ok || m.Len() != 0 {
			t.Errorf("%v still holds k after both deleted it", m.Self())
		}
	}
	// A delete removes only what its replica saw: a write it had not seen
	// survives though it is older.
	e1 := put(t, a, "j", "seen", Owner{}, ts(10))
	e2 := put(t, b, "j", "unseen", Owner{}, ts(5))
	join(t, c, e1)
	ec := del(t, c, "j")
	join(t, a, e2, ec)
	join(t, b, e1, ec)
	join(t, c, e2)
	for _, m := range []*Map{a, b, c} {
		if got := values(m, "j"); got != "unseen" {
			t.Errorf("%v holds %q, want only the write the delete had not seen", m.Self(), got)
		}
	}
}

func TestMapResolver(t *testing.T) {
	var bad []string
	concat := func(key string, vs []Version) Version {
		if len(vs) < 2 || !slices.IsSortedFunc(vs, func(a, b Version) int { return compareVersions(&a, &b) }) {
			bad = append(bad, fmt.Sprintf("%s: %d versions, sorted %v", key, len(vs), len(vs) > 1))
		}
		var parts []string
		for _, v := range vs {
			parts = append(parts, string(v.Value))
		}
		out := vs[len(vs)-1]
		out.Value = []byte(strings.Join(parts, "+"))
		return out
	}
	a, b := NewMap(nodeA, concat), NewMap(nodeB, concat)
	da := put(t, a, "k", "x", Owner{}, ts(2))
	db := put(t, b, "k", "y", Owner{}, ts(1))
	if valueOf(a, "k") != "x" {
		t.Fatal("a single version did not read as itself")
	}
	var events []Change
	a.OnChange(func(c Change) { events = append(events, c) })
	join(t, a, db)
	join(t, b, da)
	for _, m := range []*Map{a, b} {
		if got := valueOf(m, "k"); got != "y+x" {
			t.Errorf("%v reads %q, want the resolver's y+x", m.Self(), got)
		}
	}
	if len(events) != 1 || string(events[0].New.Value) != "y+x" {
		t.Fatalf("the join's change events: %d, want one carrying the resolved value", len(events))
	}
	events = nil
	a.SetResolver(nil)
	if got := valueOf(a, "k"); got != "x" {
		t.Errorf("with the default resolver a reads %q, want x (later timestamp)", got)
	}
	a.SetResolver(concat)
	if got := valueOf(a, "k"); got != "y+x" || len(events) != 0 {
		t.Errorf("after SetResolver: %q, %d events (SetResolver emits none)", got, len(events))
	}
	// A version hidden by its owner's node being down is not resolved.
	dc := put(t, NewMap(nodeC, nil), "k", "z", Owner{Node: nodeC}, ts(3))
	join(t, a, dc)
	if got := valueOf(a, "k"); got != "y+x+z" {
		t.Errorf("with the owned version: %q", got)
	}
	a.SetDown(nodeC, true)
	if got := valueOf(a, "k"); got != "y+x" {
		t.Errorf("with its owner down: %q, want y+x", got)
	}
	if bad != nil {
		t.Errorf("resolver called badly: %v", bad)
	}
}

// describe renders a change as "key:old>new" with "-" for absent.
func describe(c Change) string {
	o, n := "-", "-"
	if c.Old != nil {
		o = string(c.Old.Value)
	}
	if c.New != nil {
		n = string(c.New.Value)
	}
	return c.Key + ":" + o + ">" + n
}

func TestMapOnChangeExact(t *testing.T) {
	a, b, c := NewMap(nodeA, nil), NewMap(nodeB, nil), NewMap(nodeC, nil)
	var got []string
	a.OnChange(func(c Change) { got = append(got, describe(c)) })
	expect := func(what string, want ...string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Fatalf("%s: events %q, want %q", what, got, want)
		}
		got = nil
	}
	put(t, a, "k", "v1", Owner{}, ts(10))
	expect("first put", "k:->v1")
	put(t, a, "k", "v2", Owner{}, ts(11))
	expect("overwrite", "k:v1>v2")
	old := put(t, b, "k", "old", Owner{}, ts(5))
	join(t, a, old)
	expect("a concurrent version that loses")
	join(t, a, old)
	expect("a duplicate delta")
	join(t, a, put(t, c, "k", "new", Owner{}, ts(50)))
	expect("a concurrent version that wins", "k:v2>new")
	owned := put(t, b, "o", "ob", Owner{Node: nodeB, Process: 1}, ts(6))
	join(t, a, owned)
	expect("an owned entry arrives", "o:->ob")
	a.SetDown(nodeB, true)
	expect("owner down", "o:ob>-")
	a.SetDown(nodeB, true)
	expect("owner down again")
	a.SetDown(nodeC, true)
	expect("a node owning nothing goes down")
	a.SetDown(nodeB, false)
	expect("owner back", "o:->ob")
	del(t, a, "k")
	expect("delete", "k:new>-")
	if _, ok := a.Delete("k"); ok {
		t.Fatal("deleted twice")
	}
	expect("delete of nothing")
	a.Retire(nodeB)
	expect("owner retired", "o:ob>-")
	join(t, a, owned)
	expect("a retired owner's entry arrives late")
	s := b.State()
	join(t, a, s)
	expect("b's whole state; all b has is removed or retired here")
}

func TestMapSetDownHidesAndRestores(t *testing.T) {
	a, b := NewMap(nodeA, nil), NewMap(nodeB, nil)
	join(t, a,
		put(t, b, "plain", "p", Owner{}, ts(1)),
		put(t, b, "owned", "o", Owner{Node: nodeB, Process: 3}, ts(2)),
		put(t, a, "mixed", "mine", Owner{}, ts(3)),
		put(t, b, "mixed", "theirs", Owner{Node: nodeB}, ts(4)),
	)
	seen := watch(a)
	a.SetDown(nodeB, true)
	if !a.Down(nodeB) || a.Down(nodeA) {
		t.Fatal("Down disagrees with SetDown")
	}
	if valueOf(a, "plain") != "p" || valueOf(a, "owned") != "-" || valueOf(a, "mixed") != "mine" || values(a, "mixed") != "mine" {
		t.Fatalf("owner down: plain %q owned %q mixed %q", valueOf(a, "plain"), valueOf(a, "owned"), values(a, "mixed"))
	}
	if a.Len() != 3 {
		t.Fatalf("Len = %d: hidden entries are kept", a.Len())
	}
	if !a.Equal(clone(a)) {
		t.Fatal("hiding changed the state")
	}
	n := 0
	a.Range(func(string, Version) bool { n++; return true })
	if n != 2 {
		t.Fatalf("Range saw %d keys, want 2 visible", n)
	}
	a.SetDown(nodeB, false)
	if valueOf(a, "owned") != "o" || values(a, "mixed") != "mine,theirs" || valueOf(a, "mixed") != "theirs" {
		t.Fatalf("owner back: owned %q mixed %q", valueOf(a, "owned"), values(a, "mixed"))
	}
	if err := seen.verify(a); err != nil {
		t.Fatal(err)
	}
}

func TestMapRetire(t *testing.T) {
	a, b, c := NewMap(nodeA, nil), NewMap(nodeB, nil), NewMap(nodeC, nil)
	early := put(t, b, "k", "b1", Owner{Node: nodeB, Process: 1}, ts(1))
	plain := put(t, b, "p", "fact", Owner{}, ts(2))
	late := put(t, b, "k2", "b2", Owner{Node: nodeB}, ts(3)) // reaches a only after the retirement
	join(t, a, early, plain)
	rd, ok := c.Retire(nodeB)
	if !ok || !slices.Equal(rd.Retired, []proc.NodeID{nodeB}) || !c.Retired(nodeB) {
		t.Fatalf("Retire: ok %v, delta retires %v", ok, rd.Retired)
	}
	join(t, a, rd)
	if !a.Retired(nodeB) || valueOf(a, "k") != "-" {
		t.Fatalf("after the retirement a reads k=%q", valueOf(a, "k"))
	}
	if valueOf(a, "p") != "fact" {
		t.Fatal("retiring a node removed a plain entry it wrote")
	}
	join(t, a, late, early)
	if valueOf(a, "k2") != "-" || valueOf(a, "k") != "-" {
		t.Fatal("an entry of a retired owner was accepted after the retirement")
	}
	before := a.Context().Upto(nodeA)
	if _, err := a.Put("k3", []byte("x"), Owner{Node: nodeB, Process: 9}, ts(4)); !errors.Is(err, ErrRetired) {
		t.Fatalf("Put owned by a retired life: %v, want ErrRetired", err)
	}
	if a.Context().Upto(nodeA) != before || a.Len() != 1 {
		t.Fatal("a refused Put took a dot or wrote")
	}
	if _, ok := c.Retire(nodeB); ok {
		t.Fatal("retired twice")
	}
	if _, ok := c.Retire(proc.NodeID{}); ok {
		t.Fatal("retired the zero node")
	}
	// The retirement travels in whole states too, and keeps refusing.
	fresh := NewMap(proc.NodeID{Name: "d", Incarnation: 1}, nil)
	join(t, fresh, a.State(), late, early)
	if !fresh.Retired(nodeB) || valueOf(fresh, "k") != "-" || valueOf(fresh, "k2") != "-" {
		t.Fatal("a replica that learned the retirement from a state accepted the retired life's entries")
	}
	// Where the entries arrived first, the retirement removes them.
	join(t, b, rd)
	if values(b, "k") != "" || values(b, "k2") != "" || valueOf(b, "p") != "fact" {
		t.Fatal("the retiring delta did not remove b's own owned entries")
	}
	// A later life of the same name is another owner.
	b2 := proc.NodeID{Name: "b", Incarnation: 2}
	put(t, a, "k", "b2life", Owner{Node: b2}, ts(5))
	if valueOf(a, "k") != "b2life" {
		t.Fatal("a later life of a retired node was refused")
	}
}

func TestMapRemoveOwner(t *testing.T) {
	a, b := NewMap(nodeA, nil), NewMap(nodeB, nil)
	p1, p2, node := Owner{Node: nodeA, Process: 1}, Owner{Node: nodeA, Process: 2}, Owner{Node: nodeA}
	d1 := put(t, a, "k1", "p1", p1, ts(1))
	d2 := put(t, b, "k1", "plain", Owner{}, ts(0)) // concurrent with p1's
	join(t, a, d2)
	join(t, b, d1)
	join(t, b,
		put(t, a, "k2", "p2", p2, ts(2)),
		put(t, a, "k3", "node", node, ts(3)),
		put(t, a, "k4", "p1 again", p1, ts(4)),
	)
	if values(a, "k1") != "plain,p1" {
		t.Fatalf("k1 holds %q", values(a, "k1"))
	}
	seen := watch(b)
	d, ok := a.RemoveOwner(p1)
	if !ok || !slices.Equal(d.Drop, []string{"k1", "k4"}) {
		t.Fatalf("RemoveOwner: ok %v, drop %v", ok, d.Drop)
	}
	join(t, b, d)
	for _, m := range []*Map{a, b} {
		if values(m, "k1") != "plain" || valueOf(m, "k4") != "-" || valueOf(m, "k2") != "p2" || valueOf(m, "k3") != "node" {
			t.Errorf("%v after removing process 1: k1 %q k2 %q k3 %q k4 %q", m.Self(),
				values(m, "k1"), valueOf(m, "k2"), valueOf(m, "k3"), valueOf(m, "k4"))
		}
	}
	if err := seen.verify(b); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.RemoveOwner(p1); ok {
		t.Fatal("removed an owner twice")
	}
	if _, ok := a.RemoveOwner(Owner{Node: nodeC, Process: 1}); ok {
		t.Fatal("removed an owner that owns nothing")
	}
	// Hidden versions go too: a process's end is not undone by its node
	// being down somewhere.
	b.SetDown(nodeA, true)
	d, ok = b.RemoveOwner(p2)
	if !ok || b.Len() != 2 {
		t.Fatalf("RemoveOwner of a down node's process: ok %v, Len %d", ok, b.Len())
	}
	b.SetDown(nodeA, false)
	join(t, a, d)
	if valueOf(a, "k2") != "-" || valueOf(b, "k2") != "-" || !a.Equal(b) {
		t.Fatal("a hidden version survived its owner's removal")
	}
}

func TestMapPutKeepsDownOwnersVersions(t *testing.T) {
	a, b, c := NewMap(nodeA, nil), NewMap(nodeB, nil), NewMap(nodeC, nil)
	owned := put(t, b, "k", "b's", Owner{Node: nodeB, Process: 1}, ts(50))
	join(t, a, owned)
	a.SetDown(nodeB, true)
	if _, ok := a.Delete("k"); ok {
		t.Fatal("Delete removed a version it cannot see")
	}
	over := put(t, a, "k", "a's", Owner{}, ts(10))
	if over.Context.Contains(owned.Op) {
		t.Fatal("a Put's delta speaks for a version whose owner is down")
	}
	if values(a, "k") != "a's" || a.Len() != 1 {
		t.Fatalf("a holds %q while b is down", values(a, "k"))
	}
	a.SetDown(nodeB, false)
	if values(a, "k") != "a's,b's" || valueOf(a, "k") != "b's" {
		t.Fatalf("b back: a holds %q reading %q, want both, b's winning on time", values(a, "k"), valueOf(a, "k"))
	}
	join(t, c, over, owned)
	join(t, b, over)
	if !a.Equal(b) || !b.Equal(c) {
		t.Fatal("replicas differ")
	}
	// With the owner up, the same write supersedes it.
	d := put(t, a, "k", "a again", Owner{}, ts(11))
	join(t, b, d)
	if values(b, "k") != "a again" {
		t.Fatalf("b holds %q after a write that saw every version", values(b, "k"))
	}
}

// TestAppliedOpsMeanEqualStates: anti-entropy compares what replicas have
// applied. A delta's context also names the versions its operation removed:
// joined before that operation's own delta, it gives a replica the
// operation's dot without the operation's effect, so contexts can be equal
// while states differ; the applied ops must tell them apart, and the
// missing op's delta must repair the difference.
func TestAppliedOpsMeanEqualStates(t *testing.T) {
	a, b, c := NewMap(nodeA, nil), NewMap(nodeB, nil), NewMap(nodeC, nil)
	d1 := put(t, a, "k", "v1", Owner{}, ts(1))
	join(t, b, d1)
	join(t, c, d1)
	d2 := put(t, a, "k", "v2", Owner{}, ts(2)) // supersedes v1; lost on its way to c
	join(t, b, d2)
	d3 := put(t, b, "k", "v3", Owner{}, ts(3)) // supersedes v2: its context names a's dot 2
	d4 := del(t, b, "k")
	join(t, a, d3, d4)
	join(t, c, d3, d4)
	if !c.Context().Equal(a.Context()) || !c.Context().Equal(b.Context()) {
		t.Fatal("setup: the contexts differ")
	}
	var lacking []Dot
	a.Applied().Missing(c.Applied(), func(d Dot) bool { lacking = append(lacking, d); return true })
	if len(lacking) != 1 || lacking[0] != d2.Op {
		t.Fatalf("c lacks ops %v by the applied sets; want exactly a's op 2 (%v)", lacking, d2.Op)
	}
	join(t, c, d2)
	if !c.Equal(a) || !c.Equal(b) {
		t.Fatalf("after the missing op, c reads k=%q where a and b read %q", valueOf(c, "k"), valueOf(a, "k"))
	}
}

// ---- Deltas on the wire ----

func TestDeltaRoundTrip(t *testing.T) {
	g := newGen(t, 7, 3)
	for range 150 {
		g.step()
	}
	all := slices.Clone(g.deltas)
	for _, m := range g.maps {
		all = append(all, m.State())
	}
	for i := range all {
		enc, err := AppendDelta([]byte("prefix"), &all[i])
		if err != nil {
			t.Fatalf("delta %d: %v", i, err)
		}
		if !bytes.HasPrefix(enc, []byte("prefix")) {
			t.Fatal("AppendDelta lost what dst held")
		}
		back, err := DecodeDelta(enc[len("prefix"):])
		if err != nil {
			t.Fatalf("delta %d: %v", i, err)
		}
		if again, _ := AppendDelta(nil, &back); !bytes.Equal(again, enc[len("prefix"):]) {
			t.Fatalf("delta %d encodes differently after a round trip", i)
		}
		x, y := clone(g.maps[0]), clone(g.maps[0])
		join(t, x, all[i])
		join(t, y, back)
		if !x.Equal(y) {
			t.Fatalf("delta %d joins differently after a round trip", i)
		}
	}
}

func TestDecodeDeltaRejects(t *testing.T) {
	valid := Delta{Op: Dot{Node: nodeA, Seq: 1}, Entries: []Entry{{Key: "k", Version: Version{Dot: Dot{Node: nodeA, Seq: 1}}}}}
	valid.Context.Add(valid.Op)
	outside := valid
	outside.Context = Context{}
	outside.Context.Add(Dot{Node: nodeA, Seq: 2})
	zero := valid
	zero.Entries = []Entry{{Key: "k"}}
	opOutside := Delta{Op: Dot{Node: nodeA, Seq: 5}, Drop: []string{"k"}}
	opOutside.Context.Add(Dot{Node: nodeB, Seq: 1})

	encode := func(d Delta) []byte {
		b, err := AppendDelta(nil, &d)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := DecodeDelta(encode(valid)); err != nil {
		t.Fatalf("a valid delta: %v", err)
	}
	wrongShape, _ := cbor.Marshal([]int{1, 2})
	for name, b := range map[string][]byte{
		"empty":              nil,
		"garbage":            []byte("\xff\x00garbage"),
		"wrong shape":        wrongShape,
		"truncated":          encode(valid)[:5],
		"entry outside":      encode(outside),
		"zero dot":           encode(zero),
		"op outside context": encode(opOutside),
	} {
		if _, err := DecodeDelta(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// TestOwnSequenceExhausted: a delta whose context claims a life's last
// sequence number decodes, and once joined, that life's next write takes
// sequence 0, a dot every peer then rejects. DecodeDelta should refuse such
// sequence numbers.
func TestOwnSequenceExhausted(t *testing.T) {
	forged := Delta{Op: Dot{Node: nodeB, Seq: 1}}
	forged.Context.Add(forged.Op)
	w := wireContext{VV: []Dot{{Node: nodeA, Seq: math.MaxUint64}, {Node: nodeB, Seq: 1}}}
	raw, _ := cbor.Marshal(w)
	if err := cbor.Unmarshal(raw, &forged.Context); err != nil {
		t.Fatal(err)
	}
	enc, _ := AppendDelta(nil, &forged)
	d, err := DecodeDelta(enc)
	if err != nil {
		return // refused at the door: fine
	}
	a := NewMap(nodeA, nil)
	join(t, a, d)
	out := put(t, a, "k", "v", Owner{}, ts(1))
	enc, _ = AppendDelta(nil, &out)
	if _, err := DecodeDelta(enc); err != nil {
		t.Fatalf("after joining a delta claiming %v's dot MaxUint64, its own Put makes dot %s, which peers refuse: %v",
			nodeA, dotString(out.Op), err)
	}
}

// TestCheckDetectsCorruption makes sure Check, which every other test leans
// on, does see each kind of broken state.
func TestCheckDetectsCorruption(t *testing.T) {
	base := NewMap(nodeA, nil)
	put(t, base, "k", "v1", Owner{}, ts(1))
	put(t, base, "o", "ob", Owner{Node: nodeB, Process: 1}, ts(2))
	for name, corrupt := range map[string]func(m *Map){
		"empty version list": func(m *Map) { m.entries["k"] = []Version{} },
		"dot not in context": func(m *Map) {
			m.entries["k"] = append(m.entries["k"], Version{Dot: Dot{Node: nodeC, Seq: 9}, Time: ts(99)})
		},
		"versions out of order": func(m *Map) {
			m.ctx.Add(Dot{Node: nodeC, Seq: 1})
			m.entries["k"] = append([]Version{{Dot: Dot{Node: nodeC, Seq: 1}, Time: ts(99)}}, m.entries["k"]...)
		},
		"retired owner's entry": func(m *Map) { m.retired[nodeB] = struct{}{} },
		"owner index count":     func(m *Map) { m.owned[nodeB]["o"] = 2 },
		"owner index missing":   func(m *Map) { delete(m.owned, nodeB) },
		"owner index extra":     func(m *Map) { m.owned[nodeC] = map[string]int{"k": 1} },
	} {
		m := clone(base)
		if err := m.Check(); err != nil {
			t.Fatalf("%s: a clean clone fails Check: %v", name, err)
		}
		corrupt(m)
		if err := m.Check(); err == nil {
			t.Errorf("%s: Check passed", name)
		}
	}
}

// ---- Join laws ----

// gen drives a few replicas through random operations and a random,
// lossy, reordered, duplicating exchange of their deltas, and keeps every
// delta made. Each replica's readings are mirrored from its change events.
type gen struct {
	t      testing.TB
	seed   uint64
	rng    *rand.Rand
	maps   []*Map
	seen   []*reading
	clocks []Clock
	deltas []Delta
	lives  []proc.NodeID // owners: the replicas' lives and two that never write
	keys   []string
	wall   int64
}

func newGen(t testing.TB, seed uint64, replicas int) *gen {
	g := &gen{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x1a75)), keys: []string{"k0", "k1", "k2", "k3", "k4"}}
	for i := range replicas {
		n := proc.NodeID{Name: fmt.Sprintf("r%d", i), Incarnation: uint64(1 + g.rng.IntN(2))}
		m := NewMap(n, nil)
		g.maps = append(g.maps, m)
		g.seen = append(g.seen, watch(m))
		g.lives = append(g.lives, n)
	}
	g.clocks = make([]Clock, replicas)
	g.lives = append(g.lives, proc.NodeID{Name: "gone", Incarnation: 1}, proc.NodeID{Name: "gone", Incarnation: 2})
	return g
}

func (g *gen) fatalf(format string, args ...any) {
	g.t.Helper()
	g.t.Fatalf("gen seed %d: %s", g.seed, fmt.Sprintf(format, args...))
}

func (g *gen) keep(d Delta) { g.deltas = append(g.deltas, d) }

// step does one random thing on one random replica and checks it.
func (g *gen) step() {
	g.t.Helper()
	i := g.rng.IntN(len(g.maps))
	m := g.maps[i]
	g.wall += int64(g.rng.IntN(2)) // the wall often stands still: timestamps tie across replicas
	key := g.keys[g.rng.IntN(len(g.keys))]
	switch r := g.rng.IntN(100); {
	case r < 30:
		d, err := m.Put(key, fmt.Appendf(nil, "%d", len(g.deltas)), Owner{}, g.clocks[i].Now(g.wall))
		if err != nil {
			g.fatalf("plain Put: %v", err)
		}
		g.keep(d)
	case r < 45:
		owner := Owner{Node: g.lives[g.rng.IntN(len(g.lives))], Process: uint64(g.rng.IntN(3))}
		d, err := m.Put(key, fmt.Appendf(nil, "%d", len(g.deltas)), owner, g.clocks[i].Now(g.wall))
		switch {
		case errors.Is(err, ErrRetired) && m.Retired(owner.Node):
		case err != nil:
			g.fatalf("owned Put: %v", err)
		default:
			g.keep(d)
		}
	case r < 57:
		if d, ok := m.Delete(key); ok {
			g.keep(d)
		}
	case r < 62:
		if d, ok := m.RemoveOwner(Owner{Node: g.lives[g.rng.IntN(len(g.lives))], Process: uint64(g.rng.IntN(3))}); ok {
			g.keep(d)
		}
	case r < 64:
		if d, ok := m.Retire(g.lives[g.rng.IntN(len(g.lives))]); ok {
			g.keep(d)
		}
	case r < 70:
		n := g.lives[g.rng.IntN(len(g.lives))]
		m.SetDown(n, !m.Down(n))
	case r < 92:
		if len(g.deltas) > 0 {
			d := &g.deltas[g.rng.IntN(len(g.deltas))]
			m.Join(d)
			for _, e := range d.Entries {
				g.clocks[i].Observe(e.Version.Time)
			}
		}
	default:
		s := g.maps[g.rng.IntN(len(g.maps))].State()
		m.Join(&s)
	}
	if err := m.Check(); err != nil {
		g.fatalf("%v: %v", m.Self(), err)
	}
	if err := g.seen[i].verify(m); err != nil {
		g.fatalf("%v: %v", m.Self(), err)
	}
}

// partial returns a fresh replica holding a random subset of the deltas.
func (g *gen) partial() *Map {
	p := NewMap(proc.NodeID{Name: "partial", Incarnation: 1}, nil)
	for i := range g.deltas {
		if g.rng.IntN(3) == 0 {
			p.Join(&g.deltas[i])
		}
	}
	return p
}

// shuffled returns every delta, some twice, in random order.
func (g *gen) shuffled() []Delta {
	out := slices.Clone(g.deltas)
	for i := range g.deltas {
		if g.rng.IntN(4) == 0 {
			out = append(out, g.deltas[i])
		}
	}
	g.rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func lawCases() int {
	if testing.Short() || raceEnabled {
		return 60
	}
	return 400
}

// TestJoinLaws: Join on whole states is idempotent, commutative and
// associative, and a join covers what it joined, over states made by
// random histories.
func TestJoinLaws(t *testing.T) {
	for seed := uint64(1); seed <= uint64(lawCases()); seed++ {
		g := newGen(t, seed, 3)
		for range 20 + g.rng.IntN(100) {
			g.step()
		}
		states := append(slices.Clone(g.maps), g.partial(), NewMap(nodeA, nil))
		pick := func() *Map { return states[g.rng.IntN(len(states))] }
		for range 6 {
			a, b, c := pick(), pick(), pick()
			if !clone(a).Equal(a) {
				g.fatalf("a replica rebuilt from its State differs from it")
			}
			if !joined(a, a).Equal(a) {
				g.fatalf("a ⊔ a ≠ a")
			}
			ab, ba := joined(a, b), joined(b, a)
			if !ab.Equal(ba) {
				g.fatalf("a ⊔ b ≠ b ⊔ a")
			}
			if !ab.Context().Covers(a.Context()) || !ab.Context().Covers(b.Context()) {
				g.fatalf("a ⊔ b does not cover a and b")
			}
			if !joined(ab, c).Equal(joined(a, joined(b, c))) {
				g.fatalf("(a ⊔ b) ⊔ c ≠ a ⊔ (b ⊔ c)")
			}
			if !joined(ab, b).Equal(ab) {
				g.fatalf("(a ⊔ b) ⊔ b ≠ a ⊔ b")
			}
			for _, m := range []*Map{ab, ba} {
				if err := m.Check(); err != nil {
					g.fatalf("a join's result: %v", err)
				}
			}
		}
	}
}

// TestJoinDeltasEqualsState: the deltas every operation made, joined in any
// order and with duplicates, into an empty replica or into any replica, give
// the join of all the replicas' whole states.
func TestJoinDeltasEqualsState(t *testing.T) {
	for seed := uint64(1); seed <= uint64(lawCases()); seed++ {
		g := newGen(t, seed, 2+int(seed%3))
		for range 20 + g.rng.IntN(150) {
			g.step()
		}
		all := NewMap(nodeA, nil)
		for _, m := range g.maps {
			s := m.State()
			all.Join(&s)
		}
		targets := []*Map{NewMap(nodeA, nil), NewMap(nodeB, nil), clone(g.maps[0]), g.partial()}
		for i, m := range targets {
			for _, d := range g.shuffled() {
				m.Join(&d)
				if err := m.Check(); err != nil {
					g.fatalf("target %d: %v", i, err)
				}
			}
			if !m.Equal(all) {
				g.fatalf("target %d: the joined deltas differ from the joined states", i)
			}
		}
		// Deltas are joined one at a time by replicas that keep reading: the
		// replicas themselves reach the same state.
		for i, m := range g.maps {
			for _, d := range g.shuffled() {
				m.Join(&d)
			}
			if err := g.seen[i].verify(m); err != nil {
				g.fatalf("%v: %v", m.Self(), err)
			}
			if !m.Equal(all) {
				g.fatalf("%v: after every delta, differs from the joined states", m.Self())
			}
		}
	}
}
