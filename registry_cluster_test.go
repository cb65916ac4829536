package herd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
	"github.com/herdkit/herd/internal/registry/registrytest"
)

// named is a process for the registry's cluster tests: it stops with any
// error it is sent, answers calls with its PID, and, started with
// trap=true, traps exits and records the NameConflict it gets.
type named struct {
	herd.Base
	lost *conflicts
}

// conflicts collects NameConflict exits, by loser.
type conflicts struct {
	mu  sync.Mutex
	got map[herd.PID]*herd.NameConflict
}

func (c *conflicts) add(pid herd.PID, nc *herd.NameConflict) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = make(map[herd.PID]*herd.NameConflict)
	}
	c.got[pid] = nc
}

func (c *conflicts) snapshot() map[herd.PID]*herd.NameConflict {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[herd.PID]*herd.NameConflict, len(c.got))
	for k, v := range c.got {
		out[k] = v
	}
	return out
}

func (p *named) Init(c *herd.Context, _ any) error {
	c.TrapExits(true)
	return nil
}

func (p *named) HandleCall(c *herd.Context, msg any) (any, error) { return c.Self(), nil }

func (p *named) HandleInfo(c *herd.Context, msg any) {
	switch m := msg.(type) {
	case herd.Exit:
		var nc *herd.NameConflict
		if errors.As(m.Reason, &nc) {
			p.lost.add(c.Self(), nc)
			c.Stop(herd.Normal) // a real process would hand its state to nc.Winner first
			return
		}
		c.Stop(m.Reason)
	case error:
		c.Stop(m)
	}
}

func registryCluster(t testing.TB, n int, lost *conflicts, opts ...herdtest.Option) *herdtest.Cluster {
	t.Helper()
	return newCluster(t, n, append(opts, herdtest.WithSetup(func(_ int, node *herd.Node) {
		if err := herd.RegisterKind(node, "named", func() herd.Process { return &named{lost: lost} }); err != nil {
			panic(err)
		}
	}))...)
}

// agree reports whether every running node reads the registry alike:
// every entry of every environment, with its PID and metadata.
func agree(c *herdtest.Cluster) bool {
	var first []herd.Entry
	for k, i := range c.Up() {
		got := c.Node(i).Registry().Select(herd.Query{AllEnvs: true})
		if k == 0 {
			first = got
			continue
		}
		if !slices.EqualFunc(first, got, func(a, b herd.Entry) bool {
			return a.Kind == b.Kind && a.Key == b.Key && a.PID == b.PID && a.Meta.Equal(b.Meta)
		}) {
			return false
		}
	}
	return true
}

// The contract suite against node 1 of a three-node cluster; at each point
// the suite settles, every node must read the registry as node 1 does.
func TestRegistryClusterContract(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Harness {
		c := registryCluster(t, 3, &conflicts{})
		n := c.Node(0)
		return registrytest.Harness{
			Registry: n.Registry(),
			Spawn: func(t *testing.T) herd.PID {
				pid, err := n.Spawn(context.Background(), "named", nil)
				if err != nil {
					t.Fatal(err)
				}
				return pid
			},
			Exit: func(t *testing.T, pid herd.PID, reason error) {
				downs, _ := n.Monitor(pid)
				if err := n.Send(pid, reason); err != nil {
					t.Fatal(err)
				}
				<-downs
			},
			Settle: func(t *testing.T) {
				c.Eventually(t, func() bool { return agree(c) }, "every node reads the registry alike")
			},
		}
	})
}

func spawnNamed(t *testing.T, n *herd.Node, key herd.Key, meta herd.Meta) herd.PID {
	t.Helper()
	pid, err := n.Spawn(context.Background(), "named", nil, herd.WithKey(key, meta))
	if err != nil {
		t.Fatalf("spawn %v on %v: %v", key, n.ID(), err)
	}
	return pid
}

// Names, groups and metadata registered on any node are read alike on
// every node; queries by capability and sends by name work from anywhere.
func TestRegistryVisibleFromEveryNode(t *testing.T) {
	c := registryCluster(t, 3, &conflicts{})
	ctx := context.Background()
	var pids []herd.PID
	for i, n := range c.Nodes() {
		meta := herd.Meta{Labels: map[string]string{"node": n.ID().Name}, Capabilities: []string{fmt.Sprint("skill", i)}}
		pid := spawnNamed(t, n, herd.Key{Name: fmt.Sprint("agent:", i)}, meta)
		pids = append(pids, pid)
		if err := n.Registry().Join(ctx, herd.Key{Env: "lobby", Name: "players"}, pid, herd.Meta{}); err != nil {
			t.Fatal(err)
		}
		// Read-your-writes on the registering node.
		if got, ok := n.Registry().Whereis(herd.Key{Name: fmt.Sprint("agent:", i)}); !ok || got != pid {
			t.Fatalf("not visible on its own node at once: %v %v", got, ok)
		}
	}
	c.Eventually(t, func() bool {
		for _, n := range c.Nodes() {
			for i, pid := range pids {
				if got, ok := n.Registry().Whereis(herd.Key{Name: fmt.Sprint("agent:", i)}); !ok || got != pid {
					return false
				}
			}
			if len(n.Registry().Members(herd.Key{Env: "lobby", Name: "players"})) != 3 {
				return false
			}
		}
		return true
	}, "every name and member visible on every node")
	for _, n := range c.Nodes() {
		got := n.Registry().Select(herd.Query{Capabilities: []string{"skill2"}})
		if len(got) != 1 || got[0].PID != pids[2] || got[0].Meta.Labels["node"] != "n3" {
			t.Fatalf("capability query on %v: %+v", n.ID(), got)
		}
		if n := n.Registry().Count(herd.Query{Env: "lobby", Kind: herd.Group}); n != 3 {
			t.Fatalf("group count %d", n)
		}
		// Calls by name reach processes on other nodes.
		for i, pid := range pids {
			got, err := herd.Call[herd.PID](ctx, n, herd.Name(fmt.Sprint("agent:", i)), "who")
			if err != nil || got != pid {
				t.Fatalf("call by name from %v: %v %v", n.ID(), got, err)
			}
		}
	}
	// A metadata update reaches every node.
	if err := c.Node(0).Registry().UpdateMeta(ctx, herd.Key{Name: "agent:0"}, pids[0], herd.Meta{Labels: map[string]string{"v": "2"}}); err != nil {
		t.Fatal(err)
	}
	c.Eventually(t, func() bool {
		e, ok := c.Node(2).Registry().Lookup(herd.Key{Name: "agent:0"})
		return ok && e.Meta.Labels["v"] == "2"
	}, "metadata update seen on n3")
	// A name held on another node cannot be taken.
	other := spawnNamed(t, c.Node(1), herd.Key{Name: "free"}, herd.Meta{})
	var taken *herd.TakenError
	if err := c.Node(1).Registry().Register(ctx, herd.Key{Name: "agent:0"}, other, herd.Meta{}); !errors.As(err, &taken) || taken.Holder != pids[0] {
		t.Fatalf("registering a name held on another node: %v", err)
	}
}

// Groups span nodes: broadcast reaches members everywhere, and members
// leave when they exit or their node dies.
func TestRegistryGroupsAcrossNodes(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	room := herd.Key{Name: "room:1"}
	var probes []herd.PID
	var notes []*probe
	for _, n := range c.Nodes() {
		for range 2 {
			p := newProbe()
			pid, err := n.SpawnProcess(ctx, p, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Registry().Join(ctx, room, pid, herd.Meta{}); err != nil {
				t.Fatal(err)
			}
			probes = append(probes, pid)
			notes = append(notes, p)
		}
	}
	c.Eventually(t, func() bool {
		for _, n := range c.Nodes() {
			if len(n.Registry().Members(room)) != 6 {
				return false
			}
		}
		return true
	}, "six members seen everywhere")
	if sent := c.Node(0).Broadcast(room, seq{N: 7}); sent != 6 {
		t.Fatalf("broadcast sent to %d", sent)
	}
	for i, p := range notes {
		if m := recv(t, p.note); m != (seq{N: 7}) {
			t.Fatalf("probe %v got %#v", probes[i], m)
		}
	}
	// A member that leaves, and the members of a killed node, go
	// everywhere.
	if err := c.Node(0).Registry().Leave(ctx, room, probes[0]); err != nil {
		t.Fatal(err)
	}
	c.Kill(2)
	for _, i := range []int{0, 1} {
		c.Eventually(t, func() bool { return len(c.Node(i).Registry().Members(room)) == 3 }, "members of the killed node and the leaver gone")
	}
}

// Names go everywhere when their process exits, and when their node is
// killed; watches on other nodes say why.
func TestRegistryExitAndNodeLoss(t *testing.T) {
	c := registryCluster(t, 3, &conflicts{})
	a := spawnNamed(t, c.Node(1), herd.Key{Name: "exits"}, herd.Meta{})
	spawnNamed(t, c.Node(2), herd.Key{Name: "dies"}, herd.Meta{})
	c.Eventually(t, func() bool { return c.Node(0).Registry().Count(herd.Query{}) == 2 }, "both names seen on n1")
	w := c.Node(0).Registry().Watch(herd.Query{}, herd.WatchOptions{})
	defer w.Close()
	if err := c.Node(1).Send(a, errors.New("done")); err != nil {
		t.Fatal(err)
	}
	ev := recvEvent(t, w)
	if ev.Type != herd.Unregistered || ev.Entry.PID != a {
		t.Fatalf("event %+v, want the exit's unregistration", ev)
	}
	c.Kill(2)
	ev = recvEvent(t, w)
	if ev.Type != herd.Unregistered || ev.Entry.Key.Name != "dies" || !errors.Is(ev.Reason, herd.ErrNodeDown) {
		t.Fatalf("event %+v, want the killed node's name gone with ErrNodeDown", ev)
	}
	for _, i := range []int{0, 1} {
		c.Eventually(t, func() bool { return c.Node(i).Registry().Count(herd.Query{}) == 0 }, "no names left")
	}
	// The killed node's life is over: a name of its next life is new.
	n := c.Restart(2)
	c.WaitConverged()
	pid := spawnNamed(t, n, herd.Key{Name: "dies"}, herd.Meta{})
	c.Eventually(t, func() bool {
		got, ok := c.Node(0).Registry().Whereis(herd.Key{Name: "dies"})
		return ok && got == pid
	}, "the restarted node's registration seen")
}

func recvEvent(t *testing.T, w *herd.Watch) herd.RegistryEvent {
	t.Helper()
	select {
	case e := <-w.Events():
		return e
	case <-time.After(herdtest.DefaultTimeout):
		t.Fatal("no registry event")
		panic("unreachable")
	}
}

// The netsplit Horde's suite skips: four nodes, a thousand named
// processes, a 2|2 partition. During the split each side restarts the
// names it lost, so every name resolves on both sides; after the heal,
// every node reads one holder per name, the earliest, and each loser has
// been told who won.
func TestRegistryNetsplit(t *testing.T) {
	const names = 1000
	lost := &conflicts{}
	c := registryCluster(t, 4, lost)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := func(i int) herd.Key { return herd.Key{Env: "game", Name: fmt.Sprint("session:", i)} }
	original := splitAndRestart(t, c, ctx, names, key)
	sides := [][]int{{0, 1}, {2, 3}}
	for _, side := range sides {
		for _, i := range side {
			c.Eventually(t, func() bool {
				for k := range names {
					pid, ok := c.Node(i).Registry().Whereis(key(k))
					if !ok || !slices.ContainsFunc(side, func(j int) bool { return c.Node(j).ID() == pid.Node }) {
						return false
					}
				}
				return true
			}, "every name resolves on its side, to a process of the side")
		}
	}

	c.Heal()
	c.WaitConverged()
	c.Eventually(t, func() bool { return resolved(c, lost, names, key) }, "one holder per name everywhere, every loser told")
	for k := range names {
		for _, i := range c.Up() {
			if pid, _ := c.Node(i).Registry().Whereis(key(k)); pid != original[k] {
				t.Fatalf("%v held by %v on %v, want the earliest registration %v", key(k), pid, c.Node(i).ID(), original[k])
			}
		}
	}
	got := lost.snapshot()
	if len(got) != names {
		t.Fatalf("%d losers told, want %d (one replacement per name)", len(got), names)
	}
	for loser, nc := range got {
		if slices.Contains(original, loser) {
			t.Fatalf("original holder %v was told it lost", loser)
		}
		if want, _ := c.Node(0).Registry().Whereis(nc.Name); nc.Winner != want {
			t.Fatalf("loser of %v told the winner is %v, holder is %v", nc.Name, nc.Winner, want)
		}
	}
}

// splitAndRestart starts names processes through GetOrStart on a
// four-node cluster, splits it 2|2, waits until each side declares the
// other dead, and has each side start again what it lost. It returns the
// processes started before the split.
func splitAndRestart(tb testing.TB, c *herdtest.Cluster, ctx context.Context, names int, key func(int) herd.Key) []herd.PID {
	tb.Helper()
	spec := herd.StartSpec{Kind: "named"}
	original := make([]herd.PID, names)
	for i := range names {
		pid, err := c.Node(i%4).GetOrStart(ctx, key(i), spec)
		if err != nil {
			tb.Fatal(err)
		}
		original[i] = pid
	}
	c.Eventually(tb, func() bool { return agree(c) && c.Node(3).Registry().Count(herd.Query{Env: key(0).Env}) == names }, "all names everywhere")
	sides := [][]int{{0, 1}, {2, 3}}
	c.Partition(sides...)
	for _, pair := range [][2]int{{0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 0}, {2, 1}, {3, 0}, {3, 1}} {
		c.Eventually(tb, func() bool {
			m, ok := c.Node(pair[0]).Member(c.Node(pair[1]).ID())
			return !ok || m.Status.Ended()
		}, "each side declares the other dead")
	}
	// Each side starts what it lost: GetOrStart from any node of the side.
	var wg sync.WaitGroup
	for _, side := range sides {
		wg.Go(func() {
			for i := range names {
				if _, err := c.Node(side[i%2]).GetOrStart(ctx, key(i), spec); err != nil {
					tb.Errorf("get or start %v during the split: %v", key(i), err)
					return
				}
			}
		})
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	return original
}

// resolved reports whether, after a split of splitAndRestart healed, every
// node reads one holder per name with no other claim, and every loser has
// been told.
func resolved(c *herdtest.Cluster, lost *conflicts, names int, key func(int) herd.Key) bool {
	if len(lost.snapshot()) < names || !agree(c) {
		return false
	}
	for _, i := range c.Up() {
		for k := range names {
			if len(c.Node(i).NameClaims(key(k))) != 1 {
				return false
			}
		}
	}
	return true
}

// GetOrStart raced from every node at once starts one process per name.
func TestGetOrStartRace(t *testing.T) {
	c := registryCluster(t, 3, &conflicts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const names, callers = 50, 4
	results := make([][]herd.PID, names)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, n := range c.Nodes() {
		for range callers {
			wg.Go(func() {
				<-start
				for i := range names {
					pid, err := n.GetOrStart(ctx, herd.Key{Name: fmt.Sprint("singleton:", i)}, herd.StartSpec{Kind: "named"})
					if err != nil {
						t.Errorf("get or start on %v: %v", n.ID(), err)
						return
					}
					mu.Lock()
					results[i] = append(results[i], pid)
					mu.Unlock()
				}
			})
		}
	}
	close(start)
	wg.Wait()
	for i, pids := range results {
		if len(slices.Compact(slices.SortedFunc(slices.Values(pids), comparePID))) != 1 {
			t.Fatalf("singleton:%d: callers got %d different processes", i, len(slices.Compact(slices.SortedFunc(slices.Values(pids), comparePID))))
		}
	}
	total := 0
	for _, n := range c.Nodes() {
		for p := range n.Processes() {
			if p.Kind == "named" {
				total++
			}
		}
	}
	if total != names {
		t.Fatalf("%d processes started for %d names", total, names)
	}
}

func comparePID(a, b herd.PID) int {
	if a == b {
		return 0
	}
	if a.String() < b.String() {
		return -1
	}
	return 1
}

// A call by name made while its holder's node is being lost waits for the
// name to come back (here, started again elsewhere by whoever sees it
// go), and succeeds.
func TestCallByNameRidesThroughFailover(t *testing.T) {
	c := registryCluster(t, 3, &conflicts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key := herd.Key{Name: "table:9"}
	old := spawnNamed(t, c.Node(2), key, herd.Meta{})
	// Both survivors must know the name before its node goes: n2 restarts
	// it when it sees it go, and cannot see that if it never saw it.
	for _, i := range []int{0, 1} {
		c.Eventually(t, func() bool { _, ok := c.Node(i).Registry().Whereis(key); return ok }, "name seen on the survivors")
	}
	// A stand-in for the distributed supervisor: n2 restarts the name
	// when it goes.
	w := c.Node(1).Registry().Watch(herd.Query{Pattern: key.Name}, herd.WatchOptions{})
	defer w.Close()
	restarted := make(chan herd.PID, 1)
	go func() {
		for ev := range w.Events() {
			if ev.Type == herd.Unregistered {
				pid, err := c.Node(1).GetOrStart(ctx, key, herd.StartSpec{Kind: "named"})
				if err != nil {
					t.Errorf("restarting the name: %v", err)
				}
				restarted <- pid
				return
			}
		}
	}()
	c.Kill(2)
	// Straight after the kill n1 may still read the old holder; the call
	// rides through its loss.
	got, err := herd.Call[herd.PID](ctx, c.Node(0), herd.Name(key.Name), "who", herd.WaitForName())
	if err != nil {
		t.Fatalf("call by name through the failover: %v", err)
	}
	if got == old || got.Node == old.Node {
		t.Fatalf("answered by %v, the old holder was %v", got, old)
	}
	// The restart may answer the call before GetOrStart has returned to
	// the goroutine that asked for it.
	if r := recv(t, restarted); r != got {
		t.Fatalf("answered by %v, the restarted process is %v", got, r)
	}
	// Without the option, a call to a name nobody holds fails at once.
	if _, err := herd.Call[herd.PID](ctx, c.Node(0), herd.Name("nobody"), "who"); !errors.Is(err, herd.ErrNoName) {
		t.Fatalf("call to an unheld name: %v", err)
	}
	// With it, it waits for the context.
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if _, err := herd.Call[herd.PID](short, c.Node(0), herd.Name("nobody"), "who", herd.WaitForName()); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, herd.ErrNoName) {
		t.Fatalf("waiting call to an unheld name: %v", err)
	}
	// A send waits for the name too.
	done := make(chan error, 1)
	go func() { done <- herd.Send(ctx, c.Node(0), herd.Name("later"), "hello", herd.WaitForName()) }()
	spawnNamed(t, c.Node(1), herd.Key{Name: "later"}, herd.Meta{})
	if err := <-done; err != nil {
		t.Fatalf("waiting send: %v", err)
	}
}

// A node that stops gracefully takes its names with it, everywhere.
func TestRegistryNodeLeaves(t *testing.T) {
	c := registryCluster(t, 3, &conflicts{})
	for i := range 10 {
		spawnNamed(t, c.Node(2), herd.Key{Name: fmt.Sprint("leaving:", i)}, herd.Meta{})
	}
	c.Eventually(t, func() bool { return c.Node(0).Registry().Count(herd.Query{Pattern: "leaving:*"}) == 10 }, "names seen on n1")
	c.Stop(2)
	for _, i := range []int{0, 1} {
		c.Eventually(t, func() bool { return c.Node(i).Registry().Count(herd.Query{}) == 0 }, "the stopped node's names gone")
	}
}

// Config.NameResolver replaces earliest-registration-wins on every node:
// here the registration on n2 keeps the name, though n1's came first (n2
// had seen it before the partition, so its own is later by causality).
func TestRegistryNameResolver(t *testing.T) {
	lost := &conflicts{}
	onN2 := func(_ herd.Key, claims []herd.NameClaim) int {
		for i, c := range claims {
			if c.Entry.PID.Node.Name == "n2" {
				return i
			}
		}
		return 0
	}
	c := registryCluster(t, 2, lost, herdtest.WithConfig(func(_ int, cfg *herd.Config) { cfg.NameResolver = onN2 }))
	key := herd.Key{Name: "contested"}
	first := spawnNamed(t, c.Node(0), key, herd.Meta{})
	c.Eventually(t, func() bool { _, ok := c.Node(1).Registry().Whereis(key); return ok }, "n2 sees n1's registration")
	c.Partition([]int{0}, []int{1})
	c.Eventually(t, func() bool {
		m, ok := c.Node(1).Member(c.Node(0).ID())
		return !ok || m.Status.Ended()
	}, "n2 declares n1 dead")
	second := spawnNamed(t, c.Node(1), key, herd.Meta{})
	c.Heal()
	c.WaitConverged()
	c.Eventually(t, func() bool {
		for _, n := range c.Nodes() {
			if pid, _ := n.Registry().Whereis(key); pid != second || len(n.NameClaims(key)) != 1 {
				return false
			}
		}
		return len(lost.snapshot()) == 1
	}, "n2's registration holds the name everywhere")
	if nc := lost.snapshot()[first]; nc == nil || nc.Winner != second {
		t.Fatalf("the earlier registration was told %+v", nc)
	}
}

// GetOrStart whose arbiter is killed: asked again, the next arbiter (once
// membership declares the old one dead) starts the process on a survivor.
func TestGetOrStartArbiterLost(t *testing.T) {
	c := registryCluster(t, 3, &conflicts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	spec := herd.StartSpec{Kind: "named"}
	// The arbiter starts the process on itself: find a name n3 arbitrates.
	var key herd.Key
	for i := 0; ; i++ {
		key = herd.Key{Name: fmt.Sprint("arbitrated:", i)}
		pid, err := c.Node(0).GetOrStart(ctx, key, spec)
		if err != nil {
			t.Fatal(err)
		}
		if pid.Node == c.Node(2).ID() {
			break
		}
	}
	c.Kill(2)
	// Straight after the kill, n1 may still read the name and count n3 as
	// up: GetOrStart must neither fail nor return the dead holder for good.
	c.Eventually(t, func() bool {
		pid, err := c.Node(0).GetOrStart(ctx, key, spec)
		if err != nil {
			t.Fatalf("get or start with the arbiter lost: %v", err)
		}
		return pid.Node != c.Node(2).ID()
	}, "a survivor started the name")
	// n2 may read the dead holder a little longer than n1 did; then both
	// read the one survivor's process.
	c.Eventually(t, func() bool {
		a, errA := c.Node(0).GetOrStart(ctx, key, spec)
		b, errB := c.Node(1).GetOrStart(ctx, key, spec)
		if errA != nil || errB != nil {
			t.Fatalf("get or start: %v, %v", errA, errB)
		}
		return a == b && a.Node != c.Node(2).ID()
	}, "the survivors agree on a process of theirs")
}
