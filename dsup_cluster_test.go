package herd_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

// ckpt is a distributed child that only checkpoints: Restore without
// Stash, so its state survives only through Checkpoint.
type ckpt struct {
	herd.Base
	n int
}

func (p *ckpt) HandleCall(c *herd.Context, msg any) (any, error) {
	if msg == "inc" {
		p.n++
		if err := c.Checkpoint([]byte(strconv.Itoa(p.n))); err != nil {
			return nil, err
		}
	}
	return p.n, nil
}

func (p *ckpt) Restore(b []byte) error {
	n, err := strconv.Atoi(string(b))
	p.n = n
	return err
}

func setupKinds(t testing.TB) herdtest.Option {
	return herdtest.WithSetup(func(_ int, n *herd.Node) {
		registerTally(t, n)
		if err := herd.RegisterKind(n, "ckpt", func() herd.Process { return &ckpt{} }); err != nil {
			t.Fatal(err)
		}
	})
}

func childIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("c%04d", i)
	}
	return ids
}

// startChildren starts a named tally (or kind) child per ID from node
// from, and returns where each runs.
func startChildren(t testing.TB, n *herd.Node, kind string, ids []string) map[string]herd.PID {
	t.Helper()
	out := make(map[string]herd.PID, len(ids))
	began := time.Now()
	var slowest time.Duration
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		t0 := time.Now()
		pid, err := n.Supervisor().StartChild(ctx, herd.ChildSpec{ID: id, Kind: kind, Name: "name-" + id})
		cancel()
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		slowest = max(slowest, time.Since(t0))
		out[id] = pid
	}
	t.Logf("started %d children in %v (slowest %v)", len(ids), time.Since(began).Round(time.Millisecond), slowest.Round(time.Millisecond))
	return out
}

// instances returns, per child ID, the instances running on the nodes up.
func instances(c *herdtest.Cluster) map[string][]herd.PID {
	out := map[string][]herd.PID{}
	for _, i := range c.Up() {
		for id, pid := range c.Node(i).Supervisor().LocalChildren() {
			out[id] = append(out[id], pid)
		}
	}
	return out
}

// onceEverywhere reports why the cluster is not (yet) running each of ids
// exactly once, with every node up agreeing on where (its replica's record
// and its registry), and nothing else running; "" when it is.
func onceEverywhere(c *herdtest.Cluster, ids []string) string {
	inst := instances(c)
	if len(inst) != len(ids) {
		return fmt.Sprintf("%d children running, want %d", len(inst), len(ids))
	}
	for _, i := range c.Up() {
		if !c.Node(i).Supervisor().Settled() {
			return fmt.Sprintf("n%d busy", i+1)
		}
	}
	for _, id := range ids {
		pids := inst[id]
		if len(pids) != 1 {
			return fmt.Sprintf("%s runs %d times: %v", id, len(pids), pids)
		}
		for _, i := range c.Up() {
			n := c.Node(i)
			if ch, _ := n.Supervisor().WhichChild(id); ch.PID != pids[0] {
				return fmt.Sprintf("n%d's record of %s says %v, it runs as %v", i+1, id, ch.PID, pids[0])
			}
			if pid, ok := n.Registry().Whereis(herd.Key{Name: "name-" + id}); !ok || pid != pids[0] {
				return fmt.Sprintf("n%d resolves %s to %v, it runs as %v", i+1, id, pid, pids[0])
			}
		}
	}
	return ""
}

func waitOnceWhy(t testing.TB, c *herdtest.Cluster, ids []string, what string) {
	t.Helper()
	deadline := time.Now().Add(herdtest.DefaultTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		why := onceEverywhere(c, ids)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, herdtest.DefaultTimeout, why)
		}
		<-tick.C
	}
}

func TestSupervisorFailoverOfKilledNode(t *testing.T) {
	c := herdtest.NewCluster(t, 3, setupKinds(t))
	ids := childIDs(1000)
	started := startChildren(t, c.Node(0), "ckpt", ids)
	// Each child checkpoints 1, so it resumes from 1 wherever it goes.
	for _, id := range ids {
		if got := callInt(t, c.Node(0), herd.Name("name-"+id), "inc"); got != 1 {
			t.Fatalf("%s: %d", id, got)
		}
	}
	waitOnceWhy(t, c, ids, "children running once")
	victim := c.Node(1).ID()
	var lost []string
	for id, pid := range started {
		if pid.Node == victim {
			lost = append(lost, id)
		}
	}
	if len(lost) < 200 {
		t.Fatalf("n2 runs %d of 1000 children; uniform placement should give it about a third", len(lost))
	}
	c.Kill(1)
	waitOnceWhy(t, c, ids, "each child once on the survivors")
	moved := 0
	for id, pids := range instances(c) {
		if pids[0].Node == victim {
			t.Fatalf("%s still on the dead node", id)
		}
		if started[id] != pids[0] {
			moved++
			if started[id].Node != victim {
				t.Errorf("%s moved from a survivor: %v -> %v", id, started[id], pids[0])
			}
		}
	}
	if moved != len(lost) {
		t.Fatalf("%d children moved, want the %d of the dead node", moved, len(lost))
	}
	for _, id := range lost {
		if got := callInt(t, c.Node(2), herd.Name("name-"+id), "get"); got != 1 {
			t.Fatalf("%s resumed at %d, want its checkpoint 1", id, got)
		}
	}
	if s := c.Node(0).Supervisor().Stats().Claimed + c.Node(2).Supervisor().Stats().Claimed; s != uint64(len(lost)) {
		t.Fatalf("%d claims, want %d", s, len(lost))
	}
}

func TestSupervisorTerminateChildOnOtherNodes(t *testing.T) {
	c := herdtest.NewCluster(t, 3, setupKinds(t))
	ids := childIDs(30)
	started := startChildren(t, c.Node(0), "tally", ids)
	waitOnceWhy(t, c, ids, "children running once")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	remote := 0
	for id, pid := range started {
		if pid.Node == c.Node(0).ID() {
			continue
		}
		remote++
		if err := c.Node(0).Supervisor().TerminateChild(ctx, id); err != nil {
			t.Fatalf("terminate %s on %v: %v", id, pid.Node, err)
		}
		// It has exited on its node when TerminateChild returns.
		for _, n := range c.Nodes() {
			if n.ID() == pid.Node && n.Alive(pid) {
				t.Fatalf("%s still alive on %v", id, pid.Node)
			}
		}
	}
	if remote == 0 {
		t.Fatal("no child placed on another node")
	}
	c.Eventually(t, func() bool {
		for _, n := range c.Nodes() {
			if got := n.Supervisor().CountChildren().Specs; got != len(ids)-remote {
				return false
			}
		}
		return len(instances(c)) == len(ids)-remote
	}, "terminated children forgotten on every node")
}

// incrementer drives increments at named tally children through whichever
// node is up, counting acknowledged and attempted increments per child.
type incrementer struct {
	acked, tried map[string]*atomic.Int64
	stop         chan struct{}
	wg           sync.WaitGroup
	calls        atomic.Int64
	failed       atomic.Int64
	lastErr      atomic.Pointer[error]
}

func startIncrementer(c *herdtest.Cluster, ids []string, workers int) *incrementer {
	inc := &incrementer{acked: map[string]*atomic.Int64{}, tried: map[string]*atomic.Int64{}, stop: make(chan struct{})}
	for _, id := range ids {
		inc.acked[id], inc.tried[id] = new(atomic.Int64), new(atomic.Int64)
	}
	for w := range workers {
		inc.wg.Add(1)
		go func() {
			defer inc.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-inc.stop:
					return
				default:
				}
				up := c.Up()
				if len(up) == 0 {
					continue
				}
				n := c.Node(up[rng.IntN(len(up))])
				id := ids[rng.IntN(len(ids))]
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				inc.tried[id].Add(1)
				if _, err := herd.Call[int](ctx, n, herd.Name("name-"+id), "inc", herd.WaitForName()); err == nil {
					inc.acked[id].Add(1)
				} else {
					inc.failed.Add(1)
					err = fmt.Errorf("%s via %v: %w", id, n.ID(), err)
					inc.lastErr.Store(&err)
				}
				cancel()
				inc.calls.Add(1)
			}
		}()
	}
	return inc
}

func (inc *incrementer) finish() {
	close(inc.stop)
	inc.wg.Wait()
}

// check fails t if a child's count lost an acknowledged increment. A
// count above the increments tried is not a failure: WaitForName sends a
// call again when its first try failed with ErrNodeDown, which the
// handler may already have run (at least once, as documented).
func (inc *incrementer) check(t testing.TB, n *herd.Node, ids []string) {
	t.Helper()
	var acked, over int64
	for _, id := range ids {
		got := int64(callInt(t, n, herd.Name("name-"+id), "get"))
		a, tr := inc.acked[id].Load(), inc.tried[id].Load()
		if got < a {
			ch, _ := n.Supervisor().WhichChild(id)
			t.Errorf("%s counts %d: %d increments acknowledged, %d tried; epoch %d on %v", id, got, a, tr, ch.Epoch, ch.Node)
		}
		if got > tr {
			over += got - tr
		}
		acked += a
	}
	t.Logf("%d increments acknowledged, %d failed, %d applied twice by retries", acked, inc.failed.Load(), over)
}

func TestSupervisorRollingRestartLosesNothing(t *testing.T) {
	// The lan profile (production's): a rolling deploy involves no
	// failure, and the local profile's half-second detector, starved of
	// CPU while the other packages' tests run beside this one under
	// -race, declares live nodes dead; their children then run twice and
	// the copy stopped takes its acknowledged increments with it, which
	// is what uniform placement does in a real partition, not what this
	// test is about.
	c := herdtest.NewCluster(t, 3, setupKinds(t), herdtest.WithProfile("lan"))
	ids := childIDs(1000)
	startChildren(t, c.Node(0), "tally", ids)
	waitOnceWhy(t, c, ids, "children running once")
	inc := startIncrementer(c, ids, 4)
	flowing := func(what string) {
		t.Helper()
		before := inc.calls.Load()
		deadline := time.Now().Add(herdtest.DefaultTimeout)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for inc.calls.Load() <= before+50 {
			if time.Now().After(deadline) {
				var last error
				if e := inc.lastErr.Load(); e != nil {
					last = *e
				}
				t.Fatalf("increments not flowing %s: %d calls; cluster: %s; last error: %v", what, inc.calls.Load()-before, onceEverywhere(c, ids), last)
			}
			<-tick.C
		}
	}
	var lives []*herd.Node
	defer func() {
		for _, n := range append(lives, c.Nodes()...) {
			t.Logf("%v: %+v", n.ID(), n.Supervisor().Stats())
		}
	}()
	for i := range 3 {
		flowing(fmt.Sprintf("before n%d stops", i+1))
		lives = append(lives, c.Node(i))
		c.Stop(i)
		waitOnceWhy(t, c, ids, fmt.Sprintf("children once after n%d stopped", i+1))
		c.Restart(i)
		c.WaitConverged()
		waitOnceWhy(t, c, ids, fmt.Sprintf("children once, as the new n%d sees them too", i+1))
	}
	flowing("at the end")
	inc.finish()
	waitOnceWhy(t, c, ids, "children once at the end")
	inc.check(t, c.Node(0), ids)
	var handed uint64
	for _, n := range c.Nodes() {
		handed += n.Supervisor().Stats().HandedOff
	}
	t.Logf("%d handoffs", handed)
}

func TestSupervisorActiveRedistributionMovesOnlyWhatPlacementMoves(t *testing.T) {
	active := herdtest.WithConfig(func(_ int, cfg *herd.Config) { cfg.Redistribute = herd.RedistributeActive })
	// The lan profile, as the rolling-restart test: a join involves no
	// failure, and the local profile's detector, starved of CPU under the
	// full -race run, declares live nodes dead and restarts children in
	// place without their state.
	c := herdtest.NewCluster(t, 3, setupKinds(t), active, herdtest.WithProfile("lan"))
	ids := childIDs(300)
	started := startChildren(t, c.Node(0), "tally", ids)
	for _, id := range ids {
		callInt(t, c.Node(0), herd.Name("name-"+id), "inc")
	}
	waitOnceWhy(t, c, ids, "children running once")
	c.Add()
	c.WaitConverged()
	var nodes []herd.NodeID
	for _, n := range c.Nodes() {
		nodes = append(nodes, n.ID())
	}
	slices.SortFunc(nodes, func(a, b herd.NodeID) int { return cmpString(a.Name, b.Name) })
	want := map[string]herd.NodeID{}
	for _, id := range ids {
		want[id], _ = herd.UniformPlacement().Place(herd.PlaceRequest{Child: id, Nodes: nodes})
	}
	newNode := c.Node(3).ID()
	c.Eventually(t, func() bool {
		if onceEverywhere(c, ids) != "" {
			return false
		}
		for id, pids := range instances(c) {
			if pids[0].Node != want[id] {
				return false
			}
		}
		return true
	}, "children where the placement over four nodes puts them")
	moved := 0
	for id, pids := range instances(c) {
		if pids[0] == started[id] {
			continue
		}
		moved++
		if want[id] != newNode {
			t.Errorf("%s moved to %v, but the placement keeps it on %v", id, pids[0].Node, want[id])
		}
		if got := callInt(t, c.Node(0), herd.Name("name-"+id), "get"); got != 1 {
			t.Errorf("%s moved without its state: %d", id, got)
		}
	}
	if moved == 0 || moved > len(ids)/2 {
		t.Fatalf("%d of %d children moved to the new node", moved, len(ids))
	}
	t.Logf("%d of %d children moved to the new node", moved, len(ids))
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestSupervisorQuorumPartition(t *testing.T) {
	quorum := herdtest.WithConfig(func(_ int, cfg *herd.Config) { cfg.Placement = herd.QuorumPlacement(3) })
	c := herdtest.NewCluster(t, 3, setupKinds(t), quorum)
	ids := childIDs(300)
	startChildren(t, c.Node(0), "tally", ids)
	waitOnceWhy(t, c, ids, "children running once")
	minority := c.Node(2)
	if len(minority.Supervisor().LocalChildren()) == 0 {
		t.Fatal("n3 runs no children to begin with")
	}
	c.Partition([]int{0, 1}, []int{2})
	c.Eventually(t, func() bool {
		if len(minority.Supervisor().LocalChildren()) != 0 {
			return false
		}
		n := 0
		for _, i := range []int{0, 1} {
			n += len(c.Node(i).Supervisor().LocalChildren())
		}
		return n == len(ids)
	}, "the minority stops its children and the majority runs all of them")
	for id, pids := range instances(c) {
		if len(pids) != 1 {
			t.Fatalf("%s runs %d times", id, len(pids))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := minority.Supervisor().StartChild(ctx, herd.ChildSpec{ID: "new", Kind: "tally"}); !errors.Is(err, herd.ErrNoQuorum) {
		t.Fatalf("start on the minority: %v, want ErrNoQuorum", err)
	}
	c.Heal()
	c.WaitConverged()
	waitOnceWhy(t, c, ids, "each child once after the heal")
}

func TestSupervisorPartitionHealStopsDuplicates(t *testing.T) {
	c := herdtest.NewCluster(t, 3, setupKinds(t))
	ids := childIDs(200)
	startChildren(t, c.Node(0), "tally", ids)
	waitOnceWhy(t, c, ids, "children running once")
	onMinority := slices.Collect(maps.Keys(c.Node(2).Supervisor().LocalChildren()))
	// Counts the duplicates will carry: 2 on the minority's instances.
	for _, id := range onMinority {
		callInt(t, c.Node(2), herd.Name("name-"+id), "inc")
		callInt(t, c.Node(2), herd.Name("name-"+id), "inc")
	}
	c.Partition([]int{0, 1}, []int{2})
	c.Eventually(t, func() bool {
		n := 0
		for _, i := range []int{0, 1} {
			n += len(c.Node(i).Supervisor().LocalChildren())
		}
		// The minority keeps its children (and, seeing the others dead,
		// may claim theirs too).
		mine := c.Node(2).Supervisor().LocalChildren()
		for _, id := range onMinority {
			if _, ok := mine[id]; !ok {
				return false
			}
		}
		return n == len(ids)
	}, "both sides run the minority's children")
	c.Heal()
	c.WaitConverged()
	waitOnceWhy(t, c, ids, "each child once after the heal")
	// The stopped duplicates offered their counts to the survivors
	// (ChildStash, best effort): whichever side won, no count is above
	// what the minority's instances reached.
	for _, id := range onMinority {
		if got := callInt(t, c.Node(0), herd.Name("name-"+id), "get"); got > 2 {
			t.Fatalf("%s counts %d, more than any instance did", id, got)
		}
	}
}

func TestSupervisorFullClusterRestartResumesFromDisk(t *testing.T) {
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	durable := herdtest.WithConfig(func(i int, cfg *herd.Config) { cfg.DataDir = dirs[i] })
	c := herdtest.NewCluster(t, 3, setupKinds(t), durable)
	ids := childIDs(200)
	startChildren(t, c.Node(0), "ckpt", ids)
	// A checkpoint fails with ErrNotOwner if the child is being moved (a
	// node wrongly declared dead under load): that increment dies with
	// the copy being stopped, so it is tried again.
	for k, id := range ids {
		want := k%3 + 1
		c.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			got, err := herd.Call[int](ctx, c.Node(k%3), herd.Name("name-"+id), "inc", herd.WaitForName())
			if err != nil && !errors.Is(err, herd.ErrNotOwner) {
				t.Fatalf("inc %s: %v", id, err)
			}
			return got >= want
		}, "checkpointed increments of "+id)
	}
	waitOnceWhy(t, c, ids, "children running once")
	for i := range 3 {
		c.Stop(i)
	}
	for i := range 3 {
		c.Restart(i)
	}
	c.WaitConverged()
	waitOnceWhy(t, c, ids, "every child running once after the restart")
	for k, id := range ids {
		if got := callInt(t, c.Node(0), herd.Name("name-"+id), "get"); got != k%3+1 {
			t.Fatalf("%s resumed at %d, want its checkpoint %d", id, got, k%3+1)
		}
	}
}
