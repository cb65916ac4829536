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

// BenchmarkRegistryVisibleEverywhere is the time from a Register on one
// node of five until the other four read the name (seen through their
// watches). Each op is 100 registrations, one at a time, from the nodes in
// turn.
func BenchmarkRegistryVisibleEverywhere(b *testing.B) {
	c := herdtest.NewCluster(b, 5)
	type seen struct {
		key string
		at  time.Time
	}
	arrived := make(chan seen, 1024)
	holders := make([]herd.PID, 5)
	for i, n := range c.Nodes() {
		w := n.Registry().Watch(herd.Query{Env: "bench"}, herd.WatchOptions{})
		b.Cleanup(w.Close)
		go func() {
			for ev := range w.Events() {
				if ev.Type == herd.Registered {
					arrived <- seen{ev.Entry.Key.Name, time.Now()}
				}
			}
		}()
		pid, err := n.SpawnProcess(context.Background(), newProbe(), nil)
		if err != nil {
			b.Fatal(err)
		}
		holders[i] = pid
	}
	ctx := context.Background()
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		for k := range 100 {
			key := herd.Key{Env: "bench", Name: fmt.Sprintf("k%d-%d", i, k)}
			start := time.Now()
			if err := c.Node(k%5).Registry().Register(ctx, key, holders[k%5], herd.Meta{}); err != nil {
				b.Fatal(err)
			}
			var last time.Time
			for range 5 {
				s := <-arrived
				if s.key != key.Name {
					b.Fatalf("event for %q while waiting for %q", s.key, key.Name)
				}
				last = s.at
			}
			lat = append(lat, last.Sub(start))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkRegistryRegisterUnregister is one Register and one Unregister
// of a fresh name per op on a node of three, each write replicated to the
// other two, from two goroutines.
func BenchmarkRegistryRegisterUnregister(b *testing.B) {
	c := herdtest.NewCluster(b, 3)
	n := c.Node(0)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(1)
	b.RunParallel(func(pb *testing.PB) {
		pid, err := n.SpawnProcess(ctx, newProbe(), nil)
		if err != nil {
			b.Error(err)
			return
		}
		_ = n.Registry().Register(ctx, herd.Key{Name: "anchor:" + pid.String()}, pid, herd.Meta{})
		i := 0
		for pb.Next() {
			key := herd.Key{Name: fmt.Sprintf("%v:%d", pid, i%1024)}
			if err := n.Registry().Register(ctx, key, pid, herd.Meta{}); err != nil {
				b.Error(err)
				return
			}
			if err := n.Registry().Unregister(ctx, key, pid); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkRegistryNetsplitHeal is the netsplit of TestRegistryNetsplit:
// four nodes, 1000 names, a 2|2 partition in which each side restarts
// what it lost. It reports the time from the heal being detected (every
// node sees every other alive) to every conflict resolved (one holder per
// name on every node, every loser told), and from the network healing to
// the same point (detection included).
func BenchmarkRegistryNetsplitHeal(b *testing.B) {
	const names = 1000
	var resolve, fromHeal []time.Duration
	for range b.N {
		b.StopTimer()
		lost := &conflicts{}
		c := registryCluster(b, 4, lost)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		key := func(i int) herd.Key { return herd.Key{Name: fmt.Sprint("session:", i)} }
		splitAndRestart(b, c, ctx, names, key)
		c.Heal()
		healCalled := time.Now()
		c.WaitConverged()
		healed := time.Now()
		b.StartTimer()
		c.Eventually(b, func() bool { return resolved(c, lost, names, key) }, "every conflict resolved")
		resolve = append(resolve, time.Since(healed))
		fromHeal = append(fromHeal, time.Since(healCalled))
		b.StopTimer()
		cancel()
		c.Close()
	}
	slices.Sort(resolve)
	b.ReportMetric(float64(resolve[len(resolve)/2].Milliseconds()), "p50-resolve-ms")
	b.ReportMetric(float64(resolve[len(resolve)-1].Milliseconds()), "max-resolve-ms")
	slices.Sort(fromHeal)
	b.ReportMetric(float64(fromHeal[len(fromHeal)/2].Milliseconds()), "p50-from-heal-ms")
	b.ReportMetric(float64(fromHeal[len(fromHeal)-1].Milliseconds()), "max-from-heal-ms")
}
