package herd_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

// BenchmarkSupervisorStartChild is StartChild of a named child from one
// node of three, placed uniformly (two thirds on other nodes).
func BenchmarkSupervisorStartChild(b *testing.B) {
	c := herdtest.NewCluster(b, 3, setupKinds(b))
	sup := c.Node(0).Supervisor()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("b%d", i)
		if _, err := sup.StartChild(ctx, herd.ChildSpec{ID: id, Kind: "tally", Name: id}); err != nil {
			b.Fatal(err)
		}
	}
}

// failoverTrial starts three nodes on the given profile, puts 1000 named
// children on node 2 (LocalPlacement from it), waits out the grace period
// in which a new node claims nothing, then cuts node 2 off with fault and
// returns the time until all 1000 run on the survivors and both survivors
// resolve every name to a live instance there.
func failoverTrial(b *testing.B, profile string, fault func(c *herdtest.Cluster)) time.Duration {
	b.Helper()
	local := herdtest.WithConfig(func(_ int, cfg *herd.Config) { cfg.Placement = herd.LocalPlacement() })
	c := herdtest.NewCluster(b, 3, setupKinds(b), local, herdtest.WithProfile(profile))
	defer c.Close()
	ids := childIDs(1000)
	startChildren(b, c.Node(1), "tally", ids)
	grace := time.Second
	if profile == "lan" {
		grace = 5 * time.Second
	}
	ready := time.Now().Add(grace)
	c.Eventually(b, func() bool { return time.Now().After(ready) && onceEverywhere(c, ids) == "" }, "children placed and grace over")
	victim := c.Node(1).ID()
	start := time.Now()
	fault(c)
	survivors := []*herd.Node{c.Node(0), c.Node(2)}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for !movedOff(survivors, victim, ids) {
		if time.Now().After(deadline) {
			b.Fatalf("failover not done within 30s: %s", onceEverywhere(c, ids))
		}
		<-tick.C
	}
	return time.Since(start)
}

// movedOff reports whether every child runs on one of the survivors and
// every survivor resolves each child's name to an instance off victim.
func movedOff(survivors []*herd.Node, victim herd.NodeID, ids []string) bool {
	running := 0
	for _, n := range survivors {
		running += len(n.Supervisor().LocalChildren())
	}
	if running != len(ids) {
		return false
	}
	for _, n := range survivors {
		for _, id := range ids {
			if pid, ok := n.Registry().Whereis(herd.Key{Name: "name-" + id}); !ok || pid.Node == victim {
				return false
			}
		}
	}
	return true
}

func reportLatencies(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1-len(lat)/100].Milliseconds()), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSupervisorFailoverKill: the time from killing the node running
// 1000 children (its connections close: the fast path) until all of them
// run on the survivors and resolve by name there. lan profile.
func BenchmarkSupervisorFailoverKill(b *testing.B) {
	var lat []time.Duration
	for range b.N {
		lat = append(lat, failoverTrial(b, "lan", func(c *herdtest.Cluster) { c.Kill(1) }))
	}
	reportLatencies(b, lat)
}

// BenchmarkSupervisorFailoverSilent: the same when the node is cut off by
// silent packet loss (a partition), so only the failure detector's
// timeouts find it. lan profile.
func BenchmarkSupervisorFailoverSilent(b *testing.B) {
	var lat []time.Duration
	for range b.N {
		lat = append(lat, failoverTrial(b, "lan", func(c *herdtest.Cluster) { c.Partition([]int{0, 2}, []int{1}) }))
	}
	reportLatencies(b, lat)
}

// BenchmarkSupervisorHandoff: the time from a graceful Stop of the node
// running 1000 stateful children until all of them run elsewhere, each
// with its state, and resolve by name on the survivors.
func BenchmarkSupervisorHandoff(b *testing.B) {
	var lat []time.Duration
	for range b.N {
		local := herdtest.WithConfig(func(_ int, cfg *herd.Config) { cfg.Placement = herd.LocalPlacement() })
		c := herdtest.NewCluster(b, 3, setupKinds(b), local)
		ids := childIDs(1000)
		startChildren(b, c.Node(1), "tally", ids)
		for _, id := range ids {
			callInt(b, c.Node(1), herd.Name("name-"+id), "inc")
		}
		victim := c.Node(1).ID()
		survivors := []*herd.Node{c.Node(0), c.Node(2)}
		start := time.Now()
		stopped := make(chan struct{})
		go func() { c.Stop(1); close(stopped) }()
		c.Eventually(b, func() bool { return movedOff(survivors, victim, ids) }, "children handed over")
		lat = append(lat, time.Since(start))
		<-stopped
		for _, id := range ids[:50] {
			if got := callInt(b, survivors[0], herd.Name("name-"+id), "get"); got != 1 {
				b.Fatalf("%s handed over with %d, want 1", id, got)
			}
		}
		c.Close()
	}
	reportLatencies(b, lat)
}
