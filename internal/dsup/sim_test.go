package dsup

// The simulator below runs the distributed supervisor's decisions (Decide,
// over records read through Resolve) on several simulated nodes at once, with
// faults chosen by a seed, and checks the design's invariant at quiescence:
// every permanent child runs exactly once, on the node life its record names
// as owner, and that owner is a live member. Time is simulated (steps of
// 100ms); nothing runs concurrently.
//
// What it models, each node mirroring what Supervisor does:
//   - a node life (proc.NodeID), restarted as a new incarnation with its
//     replica kept (a durable DataDir, clock included) or empty;
//   - its replica of the children map: a real crdt.Map read through Resolve,
//     written with a hybrid clock (wall clocks skewed per node), whose deltas
//     travel a network that delays, duplicates, reorders and drops them, and
//     loses them across a partition or to a node life that has ended; every
//     tick each node exchanges whole states with its next peer in turn
//     (anti-entropy), if it can reach it;
//   - its membership: a real membership.Table fed by a failure detector that
//     moves each observer's view of each life towards the truth (alive,
//     leaving, dead, left) at its own pace, through suspect, with the odd
//     false suspicion;
//   - the supervisor loop: one view per pass built like Supervisor.view (Up,
//     Alive, Ended with the left grace and seenLeaving, Settled, quorum), a
//     pass over the children whose records changed, and a full pass on every
//     membership change, every tick and when a drain begins;
//   - each Op's effect as the driver has it: Start and Claim write Owner and
//     PID once the start is recorded (Claim adds one to the epoch; either is
//     refused if the record changed meanwhile), Adopt and a Handoff with
//     nothing running write at once, Stop/Drop/Park/Handoff of a running
//     instance stop it and then write (Handoff: new owner, no PID, epoch+1;
//     Park: no PID); starts and stops take a few steps, during which the
//     child is Busy on that node;
//   - StartChild (placement with From, refusals from leaving or quorumless
//     nodes, unreachable targets skipped), startHere's record at epoch 0;
//   - Node.Stop: the node is announced leaving and drains (Handoff/Park),
//     waits until nothing runs and every child it handed over has been
//     started (Drain's confirmed) or its stop budget runs out, kills what
//     is left, and leaves;
//   - crashes of nodes (their instances vanish) and of child instances
//     (restarted by their owner).
//
// What it does not model: failed starts and their retry timers (a start
// always succeeds, so Busy never comes from a retry wait), restart intensity
// and giving a child up (Failed), TerminateChild and temporary or transient
// children, stashes and checkpoints (State), a registered name's conflicts,
// the durable store lagging behind the replica, retirement of owned
// entries (child records are plain), membership pruning, Random and
// OnCaller placement. A start or a stop takes effect in one step when it
// completes; a remote StartChild across a partition fails at once rather
// than at a timeout.
//
// Checked besides the invariant at quiescence: no node ever runs two
// instances of a child; a running child's record names its instance's PID
// (a node handed a child it already ran adopts its instance); with
// QuorumUniform(3), a node cut off from the other two runs nothing once it
// sees them gone.
//
// A failure reports its seed and last events. Run one seed with its whole
// trace:
//
//	go test ./internal/dsup -run 'TestSimulateExactlyOnce/seed=123$' -v -dsup.simtrace
//	go test ./internal/dsup -run TestSimulateExactlyOnce -dsup.simseed=123456 -v

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/supervisor"
)

var (
	simTraceFlag = flag.Bool("dsup.simtrace", false, "log every event of the TestSimulate runs")
	simSeedFlag  = flag.Uint64("dsup.simseed", 0, "run the TestSimulate tests for this seed only")
)

const (
	simStep      = 100 * time.Millisecond // simulated time per step
	simGrace     = 2 * time.Second        // Config.Grace
	simTickSteps = 10                     // steps between full passes (Config.Tick)
	simDrainMax  = 150                    // steps a drain may take before the node stops anyway
	simQuietMax  = 40                     // decision rounds allowed to reach quiescence
	simTraceLen  = 60                     // events kept for a failure's report
	simWallBase  = 1_700_000_000_000      // ms: the simulated wall clock's origin
)

var simSpec = Spec{Kind: "sim", Restart: supervisor.Permanent}

func TestSimulateExactlyOnce(t *testing.T) { runSims(t, false, 300, 60) }

// TestSimulateQuorum runs three nodes with QuorumUniform(3), whose
// partitions are always two against one: when a partition heals, the
// minority node, once it sees the others gone, must run nothing.
func TestSimulateQuorum(t *testing.T) { runSims(t, true, 100, 20) }

func runSims(t *testing.T, quorum bool, seeds, short int) {
	if testing.Short() {
		seeds = short
	}
	first, last := uint64(1), uint64(seeds)
	if *simSeedFlag != 0 {
		first, last = *simSeedFlag, *simSeedFlag
	}
	for seed := first; seed <= last; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			var logf func(string, ...any)
			if *simTraceFlag {
				logf = t.Logf
			}
			if err := runSim(seed, quorum, logf); err != nil {
				t.Fatalf("seed %d: %v\nreplay: go test ./internal/dsup -run '%s$' -v -dsup.simtrace", seed, err, t.Name())
			}
		})
	}
}

// simConfig is one run's shape, drawn from its seed.
type simConfig struct {
	quorum    bool // QuorumUniform(nodes), 2|1 partitions
	nodes     int
	children  int
	steps     int  // of the fault phase
	active    bool // Config.Active
	drop, dup float64
	maxDelay  int     // steps a delta may take
	maxJob    int     // steps a start or stop may take
	faults    float64 // chance of a fault per step
	durable   float64 // chance a restarted node keeps its replica
	maxSkew   int64   // wall clocks differ by up to ±maxSkew ms
	detect    float64 // chance per step that an observer's view of a life moves towards the truth
}

func newSimConfig(rng *rand.Rand, quorum bool) simConfig {
	c := simConfig{
		quorum:   quorum,
		nodes:    3 + rng.IntN(3),
		children: 20 + rng.IntN(31),
		steps:    300 + rng.IntN(400),
		active:   rng.IntN(3) == 0,
		drop:     []float64{0, 0.05, 0.2, 0.5}[rng.IntN(4)],
		dup:      []float64{0, 0.1, 0.3}[rng.IntN(3)],
		maxDelay: rng.IntN(15),
		maxJob:   []int{0, 2, 8}[rng.IntN(3)],
		faults:   []float64{0.01, 0.03, 0.06}[rng.IntN(3)],
		durable:  []float64{0, 0.5, 1}[rng.IntN(3)],
		maxSkew:  []int64{0, 3, 150}[rng.IntN(3)],
		detect:   []float64{0.05, 0.2, 0.6}[rng.IntN(3)],
	}
	if quorum {
		c.nodes = 3
	}
	return c
}

// lifeState is where a node life stands in truth (what the failure
// detector makes the members see, in time).
type lifeState uint8

const (
	lifeUp lifeState = iota
	lifeLeaving
	lifeLeft
	lifeKilled
)

type simLife struct {
	id    proc.NodeID
	state lifeState
}

// simInst is the supervisor's bookkeeping of one child on one node (its
// instance struct); the processes themselves are simNode.procs.
type simInst struct {
	state instState
	pid   proc.PID
}

// simJob is a start or stop under way: it takes effect at step due.
type simJob struct {
	due    int
	id     string
	op     Op
	rec    *Record  // the record the decision read
	pid    proc.PID // the instance to stop
	target proc.NodeID
}

type simMsg struct {
	due      int
	from, to proc.NodeID
	delta    crdt.Delta
}

// simNode is a node's slot: its current (or last) life and that life's
// replica, membership view, supervisor state and processes.
type simNode struct {
	name  string
	life  *simLife
	up    bool
	since time.Duration // when the life started
	skew  int64
	rep   *crdt.Map
	clock crdt.Clock
	mem   *membership.Table

	// The supervisor's state (see Supervisor).
	leaving     bool
	drainFrom   int // passes when the drain began
	drainStep   int
	passes      int
	handed      map[string]proc.NodeID
	leftAt      map[proc.NodeID]time.Duration
	unknownAt   map[proc.NodeID]time.Duration
	seenLeaving map[proc.NodeID]bool
	inst        map[string]*simInst
	dirty       map[string]bool
	all         bool
	jobs        []*simJob

	// The runtime: live processes, by PID, to the child they run.
	procs   map[proc.PID]string
	nextPID uint64

	aeTurn int // the peer anti-entropy compares with next
}

type sim struct {
	cfg      simConfig
	rng      *rand.Rand
	place    Placement
	step     int
	now      time.Duration
	nodes    []*simNode
	lives    []*simLife     // every life, in birth order
	side     map[string]int // partition side by node name; nil when whole
	net      []simMsg
	create   map[int][]string // children to StartChild, by step
	created  []string
	decoded  map[string]*Record // records by encoding, decoded once
	trace    []string
	logf     func(string, ...any)
	err      error
	failStep int
}

func runSim(seed uint64, quorum bool, logf func(string, ...any)) error {
	rng := rand.New(rand.NewPCG(seed, 0x68657264))
	s := &sim{rng: rng, cfg: newSimConfig(rng, quorum), logf: logf, create: map[int][]string{}, decoded: map[string]*Record{}}
	s.place = Uniform()
	if quorum {
		s.place = QuorumUniform(s.cfg.nodes)
	}
	s.event("config %+v", s.cfg)
	for i := range s.cfg.nodes {
		n := &simNode{name: fmt.Sprintf("n%d", i+1)}
		if s.cfg.maxSkew > 0 {
			n.skew = rng.Int64N(2*s.cfg.maxSkew+1) - s.cfg.maxSkew
		}
		s.nodes = append(s.nodes, n)
		s.boot(n, false)
	}
	s.convergeMembers() // the cluster has formed
	for i := range s.cfg.children {
		at := 1 + rng.IntN(s.cfg.steps*2/3)
		s.create[at] = append(s.create[at], fmt.Sprintf("c%02d", i))
	}

	// Faults.
	for s.step = 1; s.step <= s.cfg.steps && s.err == nil; s.step++ {
		s.tick(true)
	}
	// Calm: the partition heals, drains finish or run out of time.
	s.heal()
	for i := 0; i <= simDrainMax && s.err == nil && s.anyLeaving(); i++ {
		s.step++
		s.tick(false)
	}
	s.restartDown()
	s.quiesce()
	s.check()
	if s.err != nil {
		return fmt.Errorf("step %d: %w\nlast events:\n%s", s.failStep, s.err, strings.Join(s.trace, "\n"))
	}
	return nil
}

func (s *sim) event(format string, args ...any) {
	line := fmt.Sprintf("%4d %6.1fs ", s.step, s.now.Seconds()) + fmt.Sprintf(format, args...)
	if s.logf != nil {
		s.logf("%s", line)
	}
	s.trace = append(s.trace, line)
	if len(s.trace) > simTraceLen {
		s.trace = s.trace[len(s.trace)-simTraceLen:]
	}
}

// fail records the first invariant broken.
func (s *sim) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf(format, args...)
		s.failStep = s.step
		s.event("FAIL: %v", s.err)
	}
}

// tick is one step of simulated time.
func (s *sim) tick(faults bool) {
	s.now += simStep
	if faults && s.rng.Float64() < s.cfg.faults {
		s.fault()
	}
	for _, id := range s.create[s.step] {
		s.startChild(id)
	}
	s.detect(s.cfg.detect)
	s.deliver(false)
	s.antiEntropy()
	s.finishJobs(false)
	for i, n := range s.nodes {
		if !n.up {
			continue
		}
		if (s.step+i)%simTickSteps == 0 {
			n.all = true
		}
		if s.rng.Float64() < 0.7 { // the loop gets to it now or a step later
			s.runLoop(n)
		}
	}
	s.drainChecks()
}

// ---- nodes ----

func (s *sim) connected(a, b string) bool { return s.side == nil || s.side[a] == s.side[b] }

func (s *sim) upNodes() []*simNode {
	var out []*simNode
	for _, n := range s.nodes {
		if n.up {
			out = append(out, n)
		}
	}
	return out
}

// nodeOf returns the node running life id, if it is up.
func (s *sim) nodeOf(id proc.NodeID) *simNode {
	for _, n := range s.nodes {
		if n.up && n.life.id == id {
			return n
		}
	}
	return nil
}

func (s *sim) anyLeaving() bool {
	return slices.ContainsFunc(s.nodes, func(n *simNode) bool { return n.up && n.leaving })
}

// boot starts a new life of n, with the replica of its last life if
// durable (and its clock, which the store keeps too).
func (s *sim) boot(n *simNode, durable bool) {
	inc := uint64(1)
	if n.life != nil {
		inc = n.life.id.Incarnation + 1
	}
	n.life = &simLife{id: proc.NodeID{Name: n.name, Incarnation: inc}}
	s.lives = append(s.lives, n.life)
	old := n.rep
	n.rep = crdt.NewMap(n.life.id, Resolve)
	if durable && old != nil {
		st := old.State()
		n.rep.Join(&st)
	} else {
		n.clock = crdt.Clock{}
	}
	n.dirty = map[string]bool{}
	n.rep.OnChange(func(c crdt.Change) { n.dirty[c.Key] = true })
	n.mem = membership.NewTable(n.life.id)
	n.mem.Apply(membership.Event{Kind: membership.EvAlive, Member: membership.Member{ID: n.life.id}}, s.wall())
	n.up, n.since, n.all = true, s.now, true
	n.leaving, n.drainFrom, n.drainStep, n.passes = false, 0, 0, 0
	n.handed, n.leftAt, n.unknownAt, n.seenLeaving = map[string]proc.NodeID{}, map[proc.NodeID]time.Duration{}, map[proc.NodeID]time.Duration{}, map[proc.NodeID]bool{}
	n.inst, n.jobs, n.procs, n.nextPID = map[string]*simInst{}, nil, map[proc.PID]string{}, 0
	s.event("%v boots (durable %v, %d records)", n.life.id, durable && old != nil, n.rep.Len())
}

// halt ends n's life: its processes and work vanish; what it sent is
// still on its way.
func (s *sim) halt(n *simNode, st lifeState) {
	n.up, n.life.state = false, st
	n.inst, n.jobs, n.procs = nil, nil, nil
}

func (s *sim) wall() time.Time { return time.UnixMilli(simWallBase).Add(s.now) }

func (s *sim) wallMillis(n *simNode) int64 { return simWallBase + s.now.Milliseconds() + n.skew }

// ---- faults ----

func (s *sim) fault() {
	up := s.upNodes()
	var stay []*simNode // up and not leaving
	for _, n := range up {
		if !n.leaving {
			stay = append(stay, n)
		}
	}
	switch s.rng.IntN(7) {
	case 0:
		if s.side == nil {
			s.partition()
		} else {
			s.heal()
		}
	case 1:
		if len(stay) >= 2 {
			n := up[s.rng.IntN(len(up))]
			s.event("%v is killed (%d instances)", n.life.id, len(n.procs))
			s.halt(n, lifeKilled)
		}
	case 2, 3:
		var down []*simNode
		for _, n := range s.nodes {
			if !n.up {
				down = append(down, n)
			}
		}
		if len(down) > 0 {
			s.boot(down[s.rng.IntN(len(down))], s.rng.Float64() < s.cfg.durable)
		}
	case 4:
		if len(stay) >= 2 {
			s.leave(stay[s.rng.IntN(len(stay))])
		}
	default:
		s.crashChild(up)
	}
}

func (s *sim) partition() {
	names := make([]string, len(s.nodes))
	for i, n := range s.nodes {
		names[i] = n.name
	}
	s.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	cut := 1 // the quorum runs cut one node off the other two
	if !s.cfg.quorum {
		cut = 1 + s.rng.IntN(len(names)-1)
	}
	s.side = map[string]int{}
	for i, name := range names {
		if i < cut {
			s.side[name] = 1
		}
	}
	s.event("partition %v | %v", names[:cut], names[cut:])
}

func (s *sim) heal() {
	if s.side == nil {
		return
	}
	if s.cfg.quorum {
		s.checkMinority()
	}
	s.side = nil
	s.event("partition heals")
}

// leave begins a graceful stop (Node.Stop): the others are told it is
// leaving, and Drain begins.
func (s *sim) leave(n *simNode) {
	n.leaving, n.life.state = true, lifeLeaving
	n.drainFrom, n.drainStep, n.all = n.passes, s.step, true
	s.event("%v begins to leave (%d instances)", n.life.id, len(n.procs))
}

// drainChecks ends the drains that are done (Drain returns) or out of
// time: the node stops its processes and leaves.
func (s *sim) drainChecks() {
	for _, n := range s.nodes {
		if !n.up || !n.leaving {
			continue
		}
		done := n.passes > n.drainFrom && len(n.inst) == 0 && s.confirmed(n)
		if done {
			s.event("%v leaves, drained", n.life.id)
			s.halt(n, lifeLeft)
		} else if s.step-n.drainStep > simDrainMax {
			var waits []string
			for _, id := range sortedKeys(n.handed) {
				waits = append(waits, fmt.Sprintf("%s to %v (record %s)", id, n.handed[id], describeRecord(s.record(n, id))))
			}
			s.event("%v leaves, out of time: %d instances killed, %d in flux, handed over unconfirmed: %v",
				n.life.id, len(n.procs), len(n.inst), waits)
			s.halt(n, lifeLeft)
		}
	}
}

// confirmed mirrors Supervisor.confirmed.
func (s *sim) confirmed(n *simNode) bool {
	for _, id := range sortedKeys(n.handed) {
		target := n.handed[id]
		r := s.record(n, id)
		if r != nil && r.Owner == target && r.PID.IsZero() && r.Failed == "" && !s.ended(n, target) {
			return false
		}
		delete(n.handed, id)
	}
	return true
}

// crashChild ends a random child instance abnormally (Supervisor.exited).
func (s *sim) crashChild(up []*simNode) {
	if len(up) == 0 {
		return
	}
	n := up[s.rng.IntN(len(up))]
	pids := sortedPIDs(n.procs)
	if len(pids) == 0 {
		return
	}
	pid := pids[s.rng.IntN(len(pids))]
	id := n.procs[pid]
	delete(n.procs, pid)
	s.event("%s's instance %v crashes", id, pid)
	in := n.inst[id]
	if in == nil || in.pid != pid || in.state != running {
		return // stopped on purpose: that path handles it
	}
	in.state, in.pid = idle, proc.PID{}
	n.dirty[id] = true // a permanent child restarts (intensity is not modelled)
}

// restartDown brings back nodes that are down: all of them with a quorum
// to keep, otherwise some, and at least one node is up.
func (s *sim) restartDown() {
	for _, n := range s.nodes {
		if !n.up && (s.cfg.quorum || s.rng.IntN(2) == 0) {
			s.boot(n, s.rng.Float64() < s.cfg.durable)
		}
	}
	if len(s.upNodes()) == 0 {
		s.boot(s.nodes[0], s.rng.Float64() < s.cfg.durable)
	}
}

// checkMinority is the quorum check made as a 2|1 partition heals: the
// node cut off, once it sees the others gone and has acted on it, runs
// nothing.
func (s *sim) checkMinority() {
	var n *simNode
	for _, m := range s.nodes {
		if s.side[m.name] == 1 {
			n = m
		}
	}
	if n == nil || !n.up {
		return
	}
	s.convergeMember(n)
	for range 20 {
		n.all = true
		ops := s.runLoop(n)
		s.finishNode(n, true)
		if ops == 0 {
			break
		}
	}
	if len(n.procs) > 0 {
		s.fail("%v, cut off from a majority, runs %d instances (%v)", n.life.id, len(n.procs), sortedPIDs(n.procs))
	}
}

// ---- membership ----

// truth is the status observer o's view of life l tends to.
func (s *sim) truth(o *simNode, l *simLife) membership.Status {
	reach := s.connected(o.name, l.id.Name)
	switch {
	case l.state == lifeKilled || !reach:
		return membership.Dead
	case l.state == lifeUp:
		return membership.Alive
	case l.state == lifeLeaving:
		return membership.Leaving
	}
	return membership.Left
}

// detect moves each observer's view of each life one event towards the
// truth, each with chance p.
func (s *sim) detect(p float64) {
	for _, o := range s.nodes {
		if !o.up {
			continue
		}
		for _, l := range s.lives {
			if l.id.Name != o.name && s.rng.Float64() < p {
				s.moveMember(o, l, true)
			}
		}
	}
}

// moveMember feeds o's table the next event towards the truth about l;
// false if there is none to feed.
func (s *sim) moveMember(o *simNode, l *simLife, noise bool) bool {
	want := s.truth(o, l)
	m, known := o.mem.Member(l.id)
	var kind membership.EventKind
	switch {
	case !known && want != membership.Alive && want != membership.Leaving:
		return false // never seen alive: nobody tells it
	case known && m.Status == want:
		if noise && want == membership.Alive && s.rng.IntN(500) == 0 {
			kind = membership.EvSuspect // a false suspicion
			break
		}
		return false
	case want == membership.Alive:
		kind = membership.EvAlive
	case want == membership.Leaving:
		kind = membership.EvLeaving
	case want == membership.Left:
		kind = membership.EvLeft
	case m.Status == membership.Alive:
		kind = membership.EvSuspect
	default:
		kind = membership.EvDead
	}
	ch := o.mem.Apply(membership.Event{Kind: kind, Member: membership.Member{ID: l.id}}, s.wall())
	if len(ch) == 0 {
		return false
	}
	o.all = true // the supervisor looks at everything on a membership change
	m, _ = o.mem.Member(l.id)
	s.event("%v sees %v %v", o.life.id, l.id, m.Status)
	return true
}

func (s *sim) convergeMember(o *simNode) {
	for _, l := range s.lives {
		if l.id.Name == o.name {
			continue
		}
		for range 4 { // at most Alive, Suspect, Dead, Left
			if !s.moveMember(o, l, false) {
				break
			}
		}
	}
}

func (s *sim) convergeMembers() {
	for _, o := range s.nodes {
		if o.up {
			s.convergeMember(o)
		}
	}
}

// ---- replication ----

func (s *sim) record(n *simNode, id string) *Record {
	v, ok := n.rep.Get(id)
	if !ok {
		return nil
	}
	r, ok := s.decoded[string(v.Value)]
	if !ok {
		var err error
		if r, err = decodeRecord(v.Value); err != nil {
			s.fail("%v reads a malformed record for %s: %v", n.life.id, id, err)
			return nil
		}
		s.decoded[string(v.Value)] = r
	}
	c := *r // callers change Owner, PID and Epoch only
	return &c
}

func (s *sim) put(n *simNode, id string, r *Record) {
	b, err := encodeRecord(r)
	if err != nil {
		s.fail("encode %s: %v", id, err)
		return
	}
	d, err := n.rep.Put(id, b, crdt.Owner{}, n.clock.Now(s.wallMillis(n)))
	if err != nil {
		s.fail("put %s on %v: %v", id, n.life.id, err)
		return
	}
	s.broadcast(n, d)
}

// update mirrors Supervisor.update: fn rewrites the record as it reads
// now, or declines.
func (s *sim) update(n *simNode, id string, fn func(r *Record) bool) bool {
	r := s.record(n, id)
	if r == nil || !fn(r) {
		return false
	}
	s.put(n, id, r)
	return true
}

// broadcast sends a delta to every node up now; the network may drop,
// duplicate or delay each copy.
func (s *sim) broadcast(from *simNode, d crdt.Delta) {
	for _, to := range s.nodes {
		if to == from || !to.up {
			continue
		}
		copies := 1
		if s.rng.Float64() < s.cfg.dup {
			copies = 2
		}
		for range copies {
			if s.rng.Float64() < s.cfg.drop {
				continue
			}
			s.net = append(s.net, simMsg{due: s.step + s.rng.IntN(s.cfg.maxDelay+1), from: from.life.id, to: to.life.id, delta: d})
		}
	}
}

// deliver joins the messages due (all of them if all), in the order they
// fall due; a message is lost if its sender and receiver are cut off, or
// the life it was sent to has ended.
func (s *sim) deliver(all bool) {
	var due, later []simMsg
	for _, m := range s.net {
		if all || m.due <= s.step {
			due = append(due, m)
		} else {
			later = append(later, m)
		}
	}
	s.net = later
	slices.SortStableFunc(due, func(a, b simMsg) int { return cmp.Compare(a.due, b.due) })
	for _, m := range due {
		to := s.nodeOf(m.to)
		if to == nil || !s.connected(m.from.Name, m.to.Name) {
			continue
		}
		s.join(to, &m.delta)
	}
}

func (s *sim) join(n *simNode, d *crdt.Delta) {
	for _, e := range d.Entries {
		n.clock.Observe(e.Version.Time)
	}
	n.rep.Join(d)
}

// antiEntropy: every tick, each node compares its replica with the next
// peer in turn, and each side gets what it lacks, if they can reach each
// other.
func (s *sim) antiEntropy() {
	for i, a := range s.nodes {
		if !a.up || (s.step+3*i)%simTickSteps != 0 {
			continue
		}
		a.aeTurn = (a.aeTurn + 1) % len(s.nodes)
		b := s.nodes[a.aeTurn]
		if b == a || !b.up || !s.connected(a.name, b.name) {
			continue
		}
		sa, sb := a.rep.State(), b.rep.State()
		s.join(b, &sa)
		s.join(a, &sb)
	}
}

// syncAll makes every replica up equal (the network whole).
func (s *sim) syncAll() {
	up := s.upNodes()
	for _, n := range up[1:] {
		st := n.rep.State()
		s.join(up[0], &st)
	}
	st := up[0].rep.State()
	for _, n := range up[1:] {
		s.join(n, &st)
		if !n.rep.Equal(up[0].rep) {
			s.fail("replicas of %v and %v differ after a full exchange", n.life.id, up[0].life.id)
		}
	}
}

// ---- the supervisor ----

// view mirrors Supervisor.view.
func (s *sim) view(n *simNode) *View {
	self, now := n.life.id, s.now
	v := &View{Self: self, Leaving: n.leaving, Quorum: true, Active: s.cfg.active, Placement: s.place}
	status := map[proc.NodeID]membership.Status{}
	seen := 1
	for _, m := range n.mem.Members() {
		status[m.ID] = m.Status
		if m.Status == membership.Leaving {
			n.seenLeaving[m.ID] = true
		}
		if m.ID != self {
			seen++
		}
	}
	if !n.leaving {
		v.Up = append(v.Up, self)
	}
	for id, st := range status {
		if id != self && (st == membership.Alive || st == membership.Suspect) {
			v.Up = append(v.Up, id)
		}
	}
	slices.SortFunc(v.Up, func(a, b proc.NodeID) int { return strings.Compare(a.Name, b.Name) })
	if q, ok := s.place.(Quorum); ok {
		v.Quorum = q.HasQuorum(seen)
	}
	v.Alive = func(id proc.NodeID) bool { return id == self || status[id] == membership.Alive }
	v.Settled = now-n.since >= simGrace
	v.Ended = func(id proc.NodeID) bool { return id != self && s.ended(n, id) }
	return v
}

// ended mirrors Supervisor.ended.
func (s *sim) ended(n *simNode, id proc.NodeID) bool {
	if id.Name == n.name {
		return id.Incarnation < n.life.id.Incarnation
	}
	if m, ok := n.mem.Member(id); ok {
		delete(n.unknownAt, id)
		if m.Status == membership.Left || m.Status == membership.Dead && n.seenLeaving[id] {
			at, seen := n.leftAt[id]
			if !seen {
				at = s.now
				n.leftAt[id] = at
			}
			return s.now-at >= simGrace
		}
		return m.Status.Ended()
	}
	if m, ok := n.mem.Latest(id.Name); ok && m.ID.Incarnation > id.Incarnation {
		return true
	}
	at, seen := n.unknownAt[id]
	if !seen {
		at = s.now
		n.unknownAt[id] = at
	}
	return s.now-at >= unknownGrace*simGrace
}

// runLoop is one turn of Supervisor.loop: one view, and a decision about
// every child marked (all of them after a membership change or a tick).
// It returns how many decisions were not None.
func (s *sim) runLoop(n *simNode) int {
	all, dirty := n.all, n.dirty
	n.all, n.dirty = false, map[string]bool{}
	if !all && len(dirty) == 0 {
		return 0
	}
	v := s.view(n)
	if all {
		for _, k := range n.rep.Keys() {
			dirty[k] = true
		}
		for id := range n.inst {
			dirty[id] = true
		}
	}
	ops := 0
	for _, id := range sortedKeys(dirty) {
		if s.reconcile(n, v, id) != None {
			ops++
		}
	}
	if all {
		n.passes++
	}
	return ops
}

// reconcile mirrors Supervisor.reconcile: decide, and start acting.
func (s *sim) reconcile(n *simNode, v *View, id string) Op {
	rec := s.record(n, id)
	in := n.inst[id]
	var l Local
	if in != nil {
		// No start ever fails here, so an idle instance has no retry
		// to wait for.
		l = Local{Running: in.state == running, Busy: in.state == starting || in.state == stopping}
		if l.Running {
			l.PID = in.pid
		}
	}
	act := Decide(v, id, rec, l)
	if act.Op == None {
		if in != nil && in.state == idle {
			delete(n.inst, id)
		}
		return None
	}
	s.event("%v %s: %v %v (record %s; running %v)", n.life.id, id, act.Op, act.Target, describeRecord(rec), l.Running)
	if in == nil {
		in = &simInst{}
		n.inst[id] = in
	}
	switch act.Op {
	case Start, Claim:
		in.state = starting
	case Stop, Drop, Park:
		in.state = stopping
	case Handoff:
		if in.state == running {
			in.state = stopping
		}
	}
	pid := in.pid
	job := &simJob{due: s.step + s.rng.IntN(s.cfg.maxJob+1), id: id, op: act.Op, rec: rec, pid: pid, target: act.Target}
	switch act.Op {
	case Start, Claim, Stop, Drop, Park:
		n.jobs = append(n.jobs, job)
	case Adopt:
		self := n.life.id
		s.update(n, id, func(r *Record) bool { return adopt(r, rec.Owner, self, pid) })
	case Handoff:
		if l.Running {
			n.jobs = append(n.jobs, job)
			break
		}
		s.update(n, id, func(r *Record) bool { return s.handOver(n, id, r, act.Target) })
	}
	return act.Op
}

// handOver mirrors Supervisor.handOver (without the state).
func (s *sim) handOver(n *simNode, id string, r *Record, target proc.NodeID) bool {
	if r.Owner != n.life.id {
		return false
	}
	r.Owner, r.PID, r.Epoch = target, proc.PID{}, r.Epoch+1
	if n.leaving {
		n.handed[id] = target
	}
	return true
}

// finishJobs completes the starts and stops due (all of them if all), in
// an order the seed picks.
func (s *sim) finishJobs(all bool) {
	for _, n := range s.nodes {
		if n.up {
			s.finishNode(n, all)
		}
	}
}

func (s *sim) finishNode(n *simNode, all bool) {
	var due, later []*simJob
	for _, j := range n.jobs {
		if all || j.due <= s.step {
			due = append(due, j)
		} else {
			later = append(later, j)
		}
	}
	n.jobs = later
	s.rng.Shuffle(len(due), func(i, j int) { due[i], due[j] = due[j], due[i] })
	for _, j := range due {
		s.finish(n, j)
	}
}

// finish completes a start (Supervisor.restart) or a stop
// (Supervisor.stop).
func (s *sim) finish(n *simNode, j *simJob) {
	self, id := n.life.id, j.id
	defer func() { n.dirty[id] = true }()
	switch j.op {
	case Start, Claim:
		n.nextPID++
		pid := proc.PID{Node: self, ID: n.nextPID}
		ok := s.update(n, id, func(r *Record) bool {
			if r.Failed != "" || (j.op == Start && r.Owner != self) || (j.op == Claim && r.Owner != j.rec.Owner) {
				return false
			}
			if r.Owner != self {
				r.Epoch++
			}
			r.Owner, r.PID = self, pid
			return true
		})
		in := n.inst[id]
		if in == nil {
			in = &simInst{}
			n.inst[id] = in
		}
		if !ok {
			s.event("%v %s: %v superseded", self, id, j.op)
			in.state = idle
			return
		}
		s.spawn(n, id, pid)
		in.state, in.pid = running, pid
		s.event("%v %s: %v done, %v", self, id, j.op, pid)
	default:
		delete(n.procs, j.pid)
		switch j.op {
		case Handoff:
			s.update(n, id, func(r *Record) bool { return s.handOver(n, id, r, j.target) })
		case Park:
			s.update(n, id, func(r *Record) bool {
				if r.Owner != self || r.PID != j.pid {
					return false
				}
				r.PID = proc.PID{}
				return true
			})
		}
		if in := n.inst[id]; in != nil && in.pid == j.pid {
			delete(n.inst, id)
		}
		s.event("%v %s: %v of %v done", self, id, j.op, j.pid)
	}
}

// spawn starts a process for child id on n: never a second one there.
func (s *sim) spawn(n *simNode, id string, pid proc.PID) {
	for _, p := range sortedPIDs(n.procs) {
		if n.procs[p] == id {
			s.fail("%v starts %s as %v while %v runs it there", n.life.id, id, pid, p)
		}
	}
	n.procs[pid] = id
}

// startChild mirrors Supervisor.StartChild, called on a random node.
func (s *sim) startChild(id string) {
	up := s.upNodes()
	if len(up) == 0 {
		return
	}
	n := up[s.rng.IntN(len(up))]
	if s.record(n, id) != nil {
		return
	}
	var skip []proc.NodeID
	for {
		v := s.view(n)
		if !v.Quorum {
			s.event("start %s from %v: no quorum", id, n.life.id)
			return
		}
		nodes := slices.DeleteFunc(slices.Clone(v.Up), func(x proc.NodeID) bool { return slices.Contains(skip, x) })
		target, ok := v.Placement.Place(PlaceRequest{Child: id, From: n.life.id, Nodes: nodes})
		if !ok {
			s.event("start %s from %v: no node", id, n.life.id)
			return
		}
		var err error
		t := s.nodeOf(target)
		switch {
		case target == n.life.id:
			err = s.startHere(n, id)
		case t == nil || !s.connected(n.name, t.name):
			err = proc.ErrNodeDown
		default:
			err = s.startHere(t, id)
		}
		if err == nil {
			s.created = append(s.created, id)
			return
		}
		if !errors.Is(err, ErrLeaving) && !errors.Is(err, ErrNoQuorum) && !errors.Is(err, proc.ErrNodeDown) {
			s.event("start %s from %v on %v: %v", id, n.life.id, target, err)
			return
		}
		skip = append(skip, target)
	}
}

// startHere mirrors Supervisor.startHere.
func (s *sim) startHere(n *simNode, id string) error {
	v := s.view(n)
	switch {
	case v.Leaving:
		return ErrLeaving
	case !v.Quorum:
		return ErrNoQuorum
	}
	if in := n.inst[id]; in != nil && in.state != idle {
		return supervisor.ErrAlreadyStarted
	}
	if s.record(n, id) != nil {
		return supervisor.ErrAlreadyStarted
	}
	n.nextPID++
	pid := proc.PID{Node: n.life.id, ID: n.nextPID}
	s.put(n, id, &Record{Spec: simSpec, Owner: n.life.id, PID: pid})
	s.spawn(n, id, pid)
	n.inst[id] = &simInst{state: running, pid: pid}
	s.event("%v starts %s as %v", n.life.id, id, pid)
	return nil
}

// ---- quiescence ----

// quiesce makes the cluster whole and calm (members agree, every delta
// delivered, replicas equal, every node settled) and runs decision rounds
// until two rounds in a row decide nothing on any node. Each round is a
// grace period later than the last, so owners seen left are taken for
// ended by the next round.
func (s *sim) quiesce() {
	quiet := 0
	for round := 1; round <= simQuietMax && s.err == nil; round++ {
		s.step++
		s.now += simGrace
		s.convergeMembers()
		s.deliver(true)
		s.syncAll()
		ops := 0
		for _, n := range s.upNodes() {
			n.all = true
			ops += s.runLoop(n)
		}
		s.finishJobs(true)
		s.drainChecks()
		if ops > 0 {
			quiet = 0
			continue
		}
		// Quiet for longer than a life unheard of is waited for (each
		// round is a grace period).
		if quiet++; quiet == unknownGrace+1 {
			s.event("quiescent after %d rounds", round)
			return
		}
	}
	s.fail("no quiescence after %d rounds", simQuietMax)
}

// check asserts the invariant at quiescence.
func (s *sim) check() {
	if s.err != nil {
		return
	}
	up := s.upNodes()
	ref := up[0]
	runs := map[string][]proc.PID{}
	for _, n := range up {
		for _, pid := range sortedPIDs(n.procs) {
			runs[n.procs[pid]] = append(runs[n.procs[pid]], pid)
		}
	}
	keys := ref.rep.Keys()
	slices.Sort(keys)
	for _, id := range keys {
		rec := s.record(ref, id)
		if rec == nil {
			s.fail("child %s has no record", id)
			continue
		}
		pids := runs[id]
		switch {
		case rec.Failed != "":
			s.fail("child %s given up: %s", id, rec.Failed)
		case len(pids) != 1:
			s.fail("child %s runs %d times %v; record %s", id, len(pids), pids, describeRecord(rec))
		case pids[0].Node != rec.Owner:
			s.fail("child %s runs as %v, not on its owner; record %s", id, pids[0], describeRecord(rec))
		case pids[0] != rec.PID:
			s.fail("child %s runs as %v, its record names %v", id, pids[0], rec.PID)
		}
		owner := s.nodeOf(rec.Owner)
		if owner == nil || owner.leaving {
			s.fail("child %s's owner %v is not a live member", id, rec.Owner)
			continue
		}
		for _, n := range up {
			if m, ok := n.mem.Member(rec.Owner); n != owner && (!ok || m.Status != membership.Alive) {
				s.fail("child %s's owner %v is not alive to %v", id, rec.Owner, n.life.id)
			}
		}
	}
	for _, id := range sortedKeys(runs) {
		if !slices.Contains(keys, id) {
			s.fail("child %s runs %v with no record", id, runs[id])
		}
	}
	lost := 0
	for _, id := range s.created {
		if !slices.Contains(keys, id) {
			lost++ // its first record died with a node before it was sent
		}
	}
	s.event("checked: %d children created, %d kept, %d lost with their only replica", len(s.created), len(keys), lost)
}

// ---- helpers ----

func describeRecord(r *Record) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("owner %v pid %v epoch %d", r.Owner, r.PID, r.Epoch)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sortedPIDs(m map[proc.PID]string) []proc.PID {
	out := make([]proc.PID, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b proc.PID) int {
		return cmp.Or(strings.Compare(a.Node.Name, b.Node.Name), cmp.Compare(a.Node.Incarnation, b.Node.Incarnation), cmp.Compare(a.ID, b.ID))
	})
	return out
}
