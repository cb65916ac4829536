package crdt

import (
	"cmp"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/herdkit/herd/internal/proc"
)

// The simulator runs replicas of one Map over a faulty network, with crashes,
// restarts and membership changes, and checks every replica against a
// reference model built from the history of operations alone.
//
// The model: a replica's state is made of the deltas of a set of operations
// (its own, those it joined, and those in whole states it joined); the
// simulator tracks that set beside each replica and each message. Its
// context is not that set: a delta's context also names the versions its
// operation removed, so a replica can hold an operation's dot without its
// effects (see TestEqualContextsMeanEqualStates). A version written by a
// put is live on a replica when the put is in the replica's set, no
// operation that removed it is, and no retirement of its owner's life is.
// An operation removes exactly what its replica showed at the time (the
// model's own visible set there, which is checked against the replica's
// reading before every operation). A replica's versions of a key must be the
// live ones whose owner it does not see down, and its reading their
// last-writer-wins winner. This holds at every step, not only at the end.

var simSeed = flag.Int64("seed", 0, "run TestSimulator for this seed only, logging every step")

func simSeeds() int64 {
	switch {
	case raceEnabled && testing.Short():
		return 40
	case raceEnabled:
		return 200
	case testing.Short():
		return 300
	}
	return 2000
}

func TestSimulator(t *testing.T) {
	if *simSeed != 0 {
		if err := runSim(*simSeed, t.Logf); err != nil {
			t.Fatalf("seed %d: %v", *simSeed, err)
		}
		return
	}
	for seed := int64(1); seed <= simSeeds(); seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			if err := runSim(seed, nil); err != nil {
				t.Fatalf("seed %d: %v\nreplay with a trace: go test ./internal/crdt -run TestSimulator -seed=%d -v", seed, err, seed)
			}
		})
	}
}

// simConfig is one run's shape, drawn from its seed.
type simConfig struct {
	replicas  int
	steps     int
	keys      int
	drop, dup float64 // chance a message copy is lost, or sent twice
	maxDelay  int     // steps a message may take
	crash     int     // 0-2: how often a node crashes
	durable   float64 // chance a restart keeps the state it had
	maxSkew   int64   // wall clocks differ by up to ±maxSkew ms
	retireEnd float64 // chance a dead life is retired before the end
}

func newSimConfig(rng *rand.Rand) simConfig {
	return simConfig{
		replicas:  3 + rng.IntN(5),
		steps:     150 + rng.IntN(350),
		keys:      2 + rng.IntN(8),
		drop:      []float64{0, 0.05, 0.2, 0.5}[rng.IntN(4)],
		dup:       []float64{0, 0.1, 0.3}[rng.IntN(3)],
		maxDelay:  rng.IntN(20),
		crash:     rng.IntN(3),
		durable:   []float64{0, 0.5, 1}[rng.IntN(3)],
		maxSkew:   []int64{0, 3, 100}[rng.IntN(3)],
		retireEnd: []float64{0, 0.5, 1}[rng.IntN(3)],
	}
}

type opKind uint8

const (
	opPut opKind = iota
	opDelete
	opRemoveOwner
	opRetire
)

// simOp is one operation in the history.
type simOp struct {
	kind    opKind
	by      proc.NodeID
	dot     Dot
	key     string      // put, delete
	v       Version     // put: what it wrote
	owner   Owner       // remove owner
	life    proc.NodeID // retire
	removes []int       // the puts whose versions it removed
}

// opSet is a set of operations by index in the history.
type opSet []uint64

func (s opSet) has(i int) bool { return i/64 < len(s) && s[i/64]&(uint64(1)<<(i%64)) != 0 }

func (s *opSet) add(i int) {
	for len(*s) <= i/64 {
		*s = append(*s, 0)
	}
	(*s)[i/64] |= uint64(1) << (i % 64)
}

func (s *opSet) union(o opSet) {
	for len(*s) < len(o) {
		*s = append(*s, 0)
	}
	for i, w := range o {
		(*s)[i] |= w
	}
}

// simNode is a node's slot: its current life and that life's replica.
type simNode struct {
	slot    int
	life    proc.NodeID
	up      bool
	m       *Map
	seen    *reading
	clock   Clock
	skew    int64
	down    map[proc.NodeID]bool // lives this replica was told are down
	ops     opSet                // the operations its state is made of
	last    Delta                // the state it had when it crashed
	lastOps opSet
}

type simLife struct {
	slot int
	dead bool
	from proc.NodeID // the life whose state this one restarted with, if any
}

type simMsg struct {
	from int // sender's slot
	to   proc.NodeID
	due  int
	data []byte
	ops  opSet // the operations the delta is made of
}

type sim struct {
	rng   *rand.Rand
	logf  func(format string, args ...any)
	cfg   simConfig
	now   int
	nodes []*simNode
	net   []simMsg
	group []int // partition side of each slot; nil when whole
	keys  []string
	lives map[proc.NodeID]*simLife
	order []proc.NodeID // every life, in birth order: choices must not range over maps

	ops      []simOp
	removers [][]int // by op: the ops that removed the version it wrote
	byDot    map[Dot]int
	puts     map[string][]int
	retires  map[proc.NodeID][]int
}

// lazy formats only when a trace is being written.
type lazy func() string

func (f lazy) String() string { return f() }

func (s *sim) tracef(format string, args ...any) {
	if s.logf != nil {
		s.logf("t%d: %s", s.now, fmt.Sprintf(format, args...))
	}
}

func runSim(seed int64, logf func(format string, args ...any)) error {
	s := newSim(seed, logf)
	for s.now = 1; s.now <= s.cfg.steps; s.now++ {
		if err := s.act(); err != nil {
			return fmt.Errorf("step %d: %w", s.now, err)
		}
		if err := s.deliverDue(); err != nil {
			return fmt.Errorf("step %d: %w", s.now, err)
		}
	}
	if err := s.settle(); err != nil {
		return fmt.Errorf("after healing: %w", err)
	}
	return nil
}

func newSim(seed int64, logf func(format string, args ...any)) *sim {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x51a1))
	s := &sim{
		rng: rng, logf: logf, cfg: newSimConfig(rng),
		lives: make(map[proc.NodeID]*simLife), byDot: make(map[Dot]int),
		puts: make(map[string][]int), retires: make(map[proc.NodeID][]int),
	}
	for i := range s.cfg.keys {
		s.keys = append(s.keys, fmt.Sprintf("k%d", i))
	}
	for i := range s.cfg.replicas {
		life := proc.NodeID{Name: fmt.Sprintf("n%d", i), Incarnation: 1}
		m := NewMap(life, nil)
		s.nodes = append(s.nodes, &simNode{
			slot: i, life: life, up: true, m: m, seen: watch(m),
			skew: rng.Int64N(2*s.cfg.maxSkew+1) - s.cfg.maxSkew, down: make(map[proc.NodeID]bool),
		})
		s.lives[life] = &simLife{slot: i}
		s.order = append(s.order, life)
	}
	s.tracef("config %+v", s.cfg)
	return s
}

func (s *sim) upNodes() []*simNode {
	var out []*simNode
	for _, n := range s.nodes {
		if n.up {
			out = append(out, n)
		}
	}
	return out
}

func (s *sim) wall(n *simNode) int64 { return 1000 + int64(s.now) + n.skew }

func (s *sim) key() string { return s.keys[s.rng.IntN(len(s.keys))] }

// act does one random thing.
func (s *sim) act() error {
	ups := s.upNodes()
	n := ups[s.rng.IntN(len(ups))]
	switch r := s.rng.IntN(100); {
	case r < 22:
		return s.put(n)
	case r < 30:
		return s.del(n)
	case r < 34:
		return s.removeOwner(n)
	case r < 40:
		return s.antiEntropy(n)
	case r < 46:
		return s.detect(n)
	case r < 49:
		return s.retireDead(n)
	case r < 52:
		return s.flap(n)
	case r < 54:
		if s.group == nil {
			s.group = make([]int, len(s.nodes))
			for i := range s.group {
				s.group[i] = s.rng.IntN(2)
			}
			s.tracef("partition %v", s.group)
		} else {
			s.group = nil
			s.tracef("heal")
		}
	case r < 57:
		if s.rng.IntN(3) < s.cfg.crash && len(ups) > 1 {
			s.crash(n)
		}
	case r < 62:
		var gone []*simNode
		for _, x := range s.nodes {
			if !x.up {
				gone = append(gone, x)
			}
		}
		if len(gone) > 0 {
			return s.restart(gone[s.rng.IntN(len(gone))])
		}
	}
	return nil
}

// ---- the model ----

// record adds n's operation to the history and returns the set holding just
// it, the delta's.
func (s *sim) record(n *simNode, op simOp) (opSet, error) {
	if op.dot.Node != op.by || op.dot.Seq == 0 {
		return nil, fmt.Errorf("%v made an operation with dot %s", op.by, dotString(op.dot))
	}
	if i, dup := s.byDot[op.dot]; dup {
		return nil, fmt.Errorf("%v reused dot %s of operation %d", op.by, dotString(op.dot), i)
	}
	i := len(s.ops)
	s.ops = append(s.ops, op)
	s.removers = append(s.removers, nil)
	s.byDot[op.dot] = i
	for _, p := range op.removes {
		s.removers[p] = append(s.removers[p], i)
	}
	n.ops.add(i)
	switch op.kind {
	case opPut:
		s.puts[op.key] = append(s.puts[op.key], i)
	case opRetire:
		s.retires[op.life] = append(s.retires[op.life], i)
	}
	var one opSet
	one.add(i)
	return one, nil
}

func (s *sim) retiredAt(n *simNode, life proc.NodeID) bool {
	for _, o := range s.retires[life] {
		if n.ops.has(o) {
			return true
		}
	}
	return false
}

func (s *sim) removedAt(n *simNode, p int) bool {
	for _, o := range s.removers[p] {
		if n.ops.has(o) {
			return true
		}
	}
	return false
}

// live reports whether put p's version is held by n, visible or hidden.
func (s *sim) live(n *simNode, p int) bool {
	op := &s.ops[p]
	if !n.ops.has(p) || s.removedAt(n, p) {
		return false
	}
	return op.v.Owner.Node.IsZero() || !s.retiredAt(n, op.v.Owner.Node)
}

// visible returns the puts of key n must show, in (Time, Dot) order.
func (s *sim) visible(n *simNode, key string) []int {
	var out []int
	for _, p := range s.puts[key] {
		if o := s.ops[p].v.Owner.Node; s.live(n, p) && (o.IsZero() || !n.down[o]) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b int) int { return lww(&s.ops[a].v, &s.ops[b].v) })
	return out
}

// lww is the model's own last-writer-wins order, kept apart from the
// package's so that a wrong tie-break there shows here: timestamp, then the
// writer's name, incarnation and sequence number.
func lww(a, b *Version) int {
	return cmp.Or(
		cmp.Compare(a.Time, b.Time),
		cmp.Compare(a.Dot.Node.Name, b.Dot.Node.Name),
		cmp.Compare(a.Dot.Node.Incarnation, b.Dot.Node.Incarnation),
		cmp.Compare(a.Dot.Seq, b.Dot.Seq),
	)
}

func (s *sim) opsString(ps []int) string {
	var out []string
	for _, p := range ps {
		out = append(out, versionString(&s.ops[p].v))
	}
	return "[" + strings.Join(out, " ") + "]"
}

func versionsString(vs []Version) string {
	var out []string
	for i := range vs {
		out = append(out, versionString(&vs[i]))
	}
	return "[" + strings.Join(out, " ") + "]"
}

// checkKey compares n's versions and reading of key with the model's.
func (s *sim) checkKey(n *simNode, key string) error {
	want := s.visible(n, key)
	got := n.m.Versions(key)
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		same = sameVersion(&got[i], &s.ops[want[i]].v)
	}
	if !same {
		return fmt.Errorf("%v, key %q: holds %s, the history says %s", n.life, key, versionsString(got), s.opsString(want))
	}
	v, ok := n.m.Get(key)
	if ok != (len(want) > 0) || ok && !sameVersion(&v, &s.ops[want[len(want)-1]].v) {
		return fmt.Errorf("%v, key %q: reads %s, want the last writer of %s", n.life, key, optString(pick(v, ok)), s.opsString(want))
	}
	return nil
}

// checkNode checks n's invariants, its change events, and keys (all when
// keys is nil) against the model.
func (s *sim) checkNode(n *simNode, keys []string) error {
	if err := n.m.Check(); err != nil {
		return fmt.Errorf("%v: %w", n.life, err)
	}
	if err := n.seen.verify(n.m); err != nil {
		return fmt.Errorf("%v: %w", n.life, err)
	}
	if keys == nil {
		keys = s.keys
	}
	for _, k := range keys {
		if err := s.checkKey(n, k); err != nil {
			return err
		}
	}
	return nil
}

// ---- operations ----

func (s *sim) put(n *simNode) error {
	key := s.key()
	var owner Owner
	if s.rng.IntN(3) == 0 {
		owner = Owner{Node: n.life, Process: uint64(s.rng.IntN(3))}
	}
	if err := s.checkKey(n, key); err != nil {
		return err
	}
	before := s.visible(n, key)
	v := Version{Time: n.clock.Now(s.wall(n)), Owner: owner, Value: fmt.Appendf(nil, "v%d", len(s.ops))}
	d, err := n.m.Put(key, v.Value, owner, v.Time)
	if err != nil {
		return fmt.Errorf("%v: Put(%q): %w", n.life, key, err)
	}
	v.Dot = d.Op
	s.tracef("%v puts %s=%s over %s", n.life, key, lazy(func() string { return versionString(&v) }), lazy(func() string { return s.opsString(before) }))
	if err := s.commit(n, simOp{kind: opPut, by: n.life, dot: d.Op, key: key, v: v, removes: before}, &d); err != nil {
		return err
	}
	return s.checkNode(n, []string{key})
}

func (s *sim) del(n *simNode) error {
	key := s.key()
	if err := s.checkKey(n, key); err != nil {
		return err
	}
	before := s.visible(n, key)
	d, ok := n.m.Delete(key)
	if ok != (len(before) > 0) {
		return fmt.Errorf("%v: Delete(%q) = %v, but it shows %s", n.life, key, ok, s.opsString(before))
	}
	if ok {
		s.tracef("%v deletes %s: %s", n.life, key, lazy(func() string { return s.opsString(before) }))
		if err := s.commit(n, simOp{kind: opDelete, by: n.life, dot: d.Op, key: key, removes: before}, &d); err != nil {
			return err
		}
	}
	return s.checkNode(n, []string{key})
}

func (s *sim) removeOwner(n *simNode) error {
	owner := Owner{Node: n.life, Process: uint64(s.rng.IntN(3))}
	var before []int
	keys := []string{}
	for _, key := range s.keys {
		for _, p := range s.puts[key] {
			if s.ops[p].v.Owner == owner && s.live(n, p) {
				before = append(before, p)
				keys = append(keys, key)
			}
		}
	}
	d, ok := n.m.RemoveOwner(owner)
	if ok != (len(before) > 0) {
		return fmt.Errorf("%v: RemoveOwner(process %d) = %v, but it holds %s", n.life, owner.Process, ok, s.opsString(before))
	}
	if ok {
		s.tracef("%v removes process %d's entries: %s", n.life, owner.Process, lazy(func() string { return s.opsString(before) }))
		if err := s.commit(n, simOp{kind: opRemoveOwner, by: n.life, dot: d.Op, owner: owner, removes: before}, &d); err != nil {
			return err
		}
	}
	return s.checkNode(n, keys)
}

func (s *sim) retire(n *simNode, life proc.NodeID) error {
	want := !s.retiredAt(n, life)
	if n.m.Retired(life) == want {
		return fmt.Errorf("%v: Retired(%v) = %v, but the history says %v", n.life, life, want, !want)
	}
	d, ok := n.m.Retire(life)
	if ok != want {
		return fmt.Errorf("%v: Retire(%v) = %v, want %v", n.life, life, ok, want)
	}
	if ok {
		s.tracef("%v retires %v", n.life, life)
		if err := s.commit(n, simOp{kind: opRetire, by: n.life, dot: d.Op, life: life}, &d); err != nil {
			return err
		}
	}
	return s.checkNode(n, nil)
}

func (s *sim) setDown(n *simNode, life proc.NodeID, down bool) error {
	n.m.SetDown(life, down)
	if down {
		n.down[life] = true
	} else {
		delete(n.down, life)
	}
	s.tracef("%v sees %v down: %v", n.life, life, down)
	return s.checkNode(n, nil)
}

// ---- membership, as the failure detector would drive it ----

// detect: n learns that a dead life is down.
func (s *sim) detect(n *simNode) error {
	var dead []proc.NodeID
	for _, l := range s.order {
		if s.lives[l].dead && !n.down[l] {
			dead = append(dead, l)
		}
	}
	if len(dead) == 0 {
		return nil
	}
	return s.setDown(n, dead[s.rng.IntN(len(dead))], true)
}

// retireDead: n retires a life it knows is dead (perhaps again).
func (s *sim) retireDead(n *simNode) error {
	var dead []proc.NodeID
	for _, l := range s.order {
		if s.lives[l].dead && n.down[l] {
			dead = append(dead, l)
		}
	}
	if len(dead) == 0 {
		return nil
	}
	return s.retire(n, dead[s.rng.IntN(len(dead))])
}

// flap: n wrongly suspects a live life, or stops suspecting it.
func (s *sim) flap(n *simNode) error {
	var alive []proc.NodeID
	for _, x := range s.nodes {
		if x.up && x != n {
			alive = append(alive, x.life)
		}
	}
	if len(alive) == 0 {
		return nil
	}
	l := alive[s.rng.IntN(len(alive))]
	return s.setDown(n, l, !n.down[l])
}

func (s *sim) crash(n *simNode) {
	n.up = false
	n.last, n.lastOps = n.m.State(), slices.Clone(n.ops)
	s.lives[n.life].dead = true
	s.tracef("%v crashes", n.life)
}

// restart starts a new life in a crashed node's slot, with the state the
// old life had (a durable restart) or none, and retires the lives before it.
func (s *sim) restart(n *simNode) error {
	old := n.life
	life := proc.NodeID{Name: old.Name, Incarnation: old.Incarnation + 1}
	durable := s.rng.Float64() < s.cfg.durable
	m := NewMap(life, nil)
	n.life, n.m, n.seen, n.up, n.clock, n.down, n.ops = life, m, watch(m), true, Clock{}, make(map[proc.NodeID]bool), nil
	info := &simLife{slot: n.slot}
	if durable {
		m.Join(&n.last)
		n.ops = n.lastOps
		for _, e := range n.last.Entries {
			n.clock.Observe(e.Version.Time)
		}
		info.from = old
	}
	n.last, n.lastOps = Delta{}, nil
	s.lives[life] = info
	s.order = append(s.order, life)
	s.tracef("%v starts, durable %v", life, durable)
	if err := s.checkNode(n, nil); err != nil {
		return err
	}
	if durable || s.rng.IntN(2) == 0 {
		for _, l := range s.order {
			if l.Name == life.Name && l != life && !s.retiredAt(n, l) {
				if err := s.retire(n, l); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// ---- the network ----

func (s *sim) cut(a, b int) bool { return s.group != nil && s.group[a] != s.group[b] }

// commit records n's operation, checks that its delta speaks for exactly
// the operation and the versions it removed, and sends the delta to every
// live node.
func (s *sim) commit(n *simNode, op simOp, d *Delta) error {
	one, err := s.record(n, op)
	if err != nil {
		return err
	}
	var want Context
	want.Add(op.dot)
	for _, p := range op.removes {
		want.Add(s.ops[p].dot)
	}
	if !want.Equal(&d.Context) {
		return fmt.Errorf("%v: the delta of %s speaks for other dots than the operation and what it removed", n.life, dotString(op.dot))
	}
	data, err := AppendDelta(nil, d)
	if err != nil {
		return fmt.Errorf("%v: AppendDelta: %w", n.life, err)
	}
	for _, x := range s.nodes {
		if x.up && x != n {
			s.send(n.slot, x.life, data, one)
		}
	}
	return nil
}

func (s *sim) send(from int, to proc.NodeID, data []byte, ops opSet) {
	if s.rng.Float64() < s.cfg.drop {
		s.tracef("  lost: n%d -> %v", from, to)
		return
	}
	copies := 1
	if s.rng.Float64() < s.cfg.dup {
		copies = 2
	}
	for range copies {
		s.net = append(s.net, simMsg{from: from, to: to, due: s.now + s.rng.IntN(s.cfg.maxDelay+1), data: data, ops: ops})
	}
}

// antiEntropy: n sends its whole state to a peer it can reach.
func (s *sim) antiEntropy(n *simNode) error {
	var peers []*simNode
	for _, p := range s.nodes {
		if p.up && p != n && !s.cut(n.slot, p.slot) {
			peers = append(peers, p)
		}
	}
	if len(peers) == 0 {
		return nil
	}
	p := peers[s.rng.IntN(len(peers))]
	st := n.m.State()
	data, err := AppendDelta(nil, &st)
	if err != nil {
		return err
	}
	s.tracef("%v sends its state to %v", n.life, p.life)
	s.send(n.slot, p.life, data, slices.Clone(n.ops))
	return nil
}

func (s *sim) deliverDue() error {
	var due []simMsg
	rest := s.net[:0]
	for _, m := range s.net {
		if m.due <= s.now {
			due = append(due, m)
		} else {
			rest = append(rest, m)
		}
	}
	s.net = rest
	return s.deliverAll(due)
}

func (s *sim) deliverAll(msgs []simMsg) error {
	s.rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
	for _, m := range msgs {
		if err := s.deliver(m); err != nil {
			return err
		}
	}
	return nil
}

func (s *sim) deliver(msg simMsg) error {
	dst := s.nodes[s.lives[msg.to].slot]
	if !dst.up || dst.life != msg.to {
		s.tracef("  lost: %v is gone", msg.to)
		return nil
	}
	if s.cut(msg.from, dst.slot) {
		s.tracef("  lost: n%d -> %v cut off", msg.from, msg.to)
		return nil
	}
	d, err := DecodeDelta(msg.data)
	if err != nil {
		return fmt.Errorf("%v: a delta from n%d does not decode: %w", dst.life, msg.from, err)
	}
	dst.m.Join(&d)
	dst.ops.union(msg.ops)
	for _, e := range d.Entries {
		dst.clock.Observe(e.Version.Time)
	}
	s.tracef("  %v joins from n%d: %s", dst.life, msg.from, lazy(func() string { return deltaString(&d) }))
	if !dst.m.Context().Covers(&d.Context) {
		return fmt.Errorf("%v: after a join its context does not cover the delta's", dst.life)
	}
	var keys []string
	if !d.Full && len(d.Retired) == 0 {
		keys = append(keys, d.Drop...)
		for _, e := range d.Entries {
			keys = append(keys, e.Key)
		}
	}
	return s.checkNode(dst, keys)
}

func deltaString(d *Delta) string {
	var b strings.Builder
	if d.Full {
		fmt.Fprintf(&b, "state of %d versions", len(d.Entries))
	} else {
		fmt.Fprintf(&b, "op %s", dotString(d.Op))
		for i := range d.Entries {
			fmt.Fprintf(&b, " +%s=%s", d.Entries[i].Key, versionString(&d.Entries[i].Version))
		}
		for _, k := range d.Drop {
			fmt.Fprintf(&b, " -%s", k)
		}
	}
	for _, l := range d.Retired {
		fmt.Fprintf(&b, " retired %v", l)
	}
	return b.String()
}

// ---- the end ----

// settle heals everything, lets membership catch up, runs anti-entropy to
// quiescence and checks the result.
func (s *sim) settle() error {
	s.group = nil
	s.cfg.drop, s.cfg.dup = 0, 0
	s.tracef("heal everything")
	msgs := s.net
	s.net = nil
	if err := s.deliverAll(msgs); err != nil {
		return err
	}
	ups := s.upNodes()
	for _, n := range ups {
		for _, l := range s.order {
			dead := s.lives[l].dead
			if dead && !n.down[l] || !dead && n.down[l] {
				if err := s.setDown(n, l, dead); err != nil {
					return err
				}
			}
		}
	}
	for _, l := range s.order {
		if s.lives[l].dead && s.rng.Float64() < s.cfg.retireEnd {
			if n := ups[s.rng.IntN(len(ups))]; !s.retiredAt(n, l) {
				if err := s.retire(n, l); err != nil {
					return err
				}
			}
		}
	}
	msgs = s.net
	s.net = nil
	if err := s.deliverAll(msgs); err != nil {
		return err
	}
	for round := 0; !s.converged(ups); round++ {
		if round == 50*len(ups) {
			return fmt.Errorf("no convergence after %d rounds of anti-entropy", round)
		}
		for _, n := range ups {
			p := ups[s.rng.IntN(len(ups))]
			if p == n {
				continue
			}
			st := n.m.State()
			data, err := AppendDelta(nil, &st)
			if err != nil {
				return err
			}
			if err := s.deliver(simMsg{from: n.slot, to: p.life, data: data, ops: slices.Clone(n.ops)}); err != nil {
				return err
			}
		}
	}
	return s.checkEnd(ups)
}

func (s *sim) converged(ups []*simNode) bool {
	for _, n := range ups[1:] {
		if !n.m.Equal(ups[0].m) {
			return false
		}
	}
	return true
}

// surviving returns the lives whose state lives on: the current ones, and
// those a durable restart carried forward.
func (s *sim) surviving(ups []*simNode) map[proc.NodeID]bool {
	out := make(map[proc.NodeID]bool)
	for _, n := range ups {
		for l := n.life; !l.IsZero(); l = s.lives[l].from {
			out[l] = true
		}
	}
	return out
}

func (s *sim) checkEnd(ups []*simNode) error {
	// The replicas hold equal states, each the join of the deltas of its
	// operations; so each is also the join of all their operations, though
	// one's set may lack an operation whose effect others already carried.
	var all opSet
	for _, n := range ups {
		all.union(n.ops)
	}
	for _, n := range ups {
		n.ops = slices.Clone(all)
	}
	for _, n := range ups {
		if err := s.checkNode(n, nil); err != nil {
			return err
		}
	}
	ref := ups[0]
	ctx := ref.m.Context()
	st := ref.m.State()
	// Nothing is held that no put wrote, and no retired life's entry.
	for _, e := range st.Entries {
		i, ok := s.byDot[e.Version.Dot]
		if !ok || s.ops[i].kind != opPut || s.ops[i].key != e.Key || !sameVersion(&s.ops[i].v, &e.Version) {
			return fmt.Errorf("key %q holds %s, which no put wrote", e.Key, versionString(&e.Version))
		}
		if o := e.Version.Owner.Node; !o.IsZero() && s.retiredAt(ref, o) {
			return fmt.Errorf("key %q holds %s, owned by retired %v", e.Key, versionString(&e.Version), o)
		}
	}
	for _, l := range s.order {
		if ref.m.Retired(l) != s.retiredAt(ref, l) {
			return fmt.Errorf("Retired(%v) = %v, the history says otherwise", l, ref.m.Retired(l))
		}
	}
	// Every operation of a life whose state survived reached every replica,
	// and the context holds exactly the dots of the operations the state is
	// made of and of the versions they removed.
	live := s.surviving(ups)
	var want Context
	for i := range s.ops {
		op := &s.ops[i]
		if live[op.by] && !ref.ops.has(i) {
			return fmt.Errorf("operation %s of surviving %v was lost", dotString(op.dot), op.by)
		}
		if ref.ops.has(i) {
			want.Add(op.dot)
			for _, p := range op.removes {
				want.Add(s.ops[p].dot)
			}
		}
	}
	if !want.Equal(ctx) {
		return fmt.Errorf("the context is not the dots of the operations joined and what they removed")
	}
	// No write lost: a plain write that arrived is readable, or lost to a
	// concurrent write that wins, unless an operation that saw it removed it.
	for _, key := range s.keys {
		vs := ref.m.Versions(key)
		got, ok := ref.m.Get(key)
		for _, p := range s.puts[key] {
			op := &s.ops[p]
			if !op.v.Owner.IsZero() || !ref.ops.has(p) || s.removedAt(ref, p) {
				continue
			}
			if !slices.ContainsFunc(vs, func(v Version) bool { return sameVersion(&v, &op.v) }) {
				return fmt.Errorf("write lost: %s of key %q, which nothing that saw it removed, is gone", versionString(&op.v), key)
			}
			if !ok || lww(&got, &op.v) < 0 {
				return fmt.Errorf("key %q reads %s, older than the held write %s", key, optString(pick(got, ok)), versionString(&op.v))
			}
		}
	}
	s.tracef("converged: %d versions, %d operations, %d lives", len(st.Entries), len(s.ops), len(s.order))
	return nil
}
