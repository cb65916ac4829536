package herd_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

// BenchmarkMapVisibleEverywhere is the time from a Put on one node of five
// until the other four have applied it (seen through their watches). Each
// op is 100 writes, one at a time, from the nodes in turn.
func BenchmarkMapVisibleEverywhere(b *testing.B) {
	c := herdtest.NewCluster(b, 5)
	type seen struct {
		key string
		at  time.Time
	}
	arrived := make(chan seen, 1024)
	ms := make([]*herd.Map, 5)
	for i := range 5 {
		ms[i] = openMap(b, c.Node(i), "bench")
		w := ms[i].Watch()
		b.Cleanup(w.Close)
		go func() {
			for ev := range w.C() {
				arrived <- seen{ev.Key, time.Now()}
			}
		}()
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		for k := range 100 {
			key := fmt.Sprintf("k%d-%d", i, k)
			start := time.Now()
			if err := ms[k%5].Put(key, []byte("v")); err != nil {
				b.Fatal(err)
			}
			var last time.Time
			for range 5 { // the writer's own watch, and the four others
				s := <-arrived
				if s.key != key {
					b.Fatalf("event for %q while waiting for %q", s.key, key)
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

// BenchmarkMapConverge100k is 100,000 writes of distinct keys spread over
// three nodes (written concurrently, a third on each), until every node
// holds all of them. It reports the bytes every node's transport sent per
// write, everything counted (deltas, digests, TLS framing).
func BenchmarkMapConverge100k(b *testing.B) {
	total := 100_000
	if testing.Short() {
		total = 30_000
	}
	for range b.N {
		b.StopTimer()
		c := herdtest.NewCluster(b, 3)
		ms := make([]*herd.Map, 3)
		var sent0 uint64
		for i := range 3 {
			ms[i] = openMap(b, c.Node(i), "bench")
			sent0 += c.Node(i).TransportStats().BytesSent
		}
		value := []byte("0123456789abcdef")
		b.StartTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 3 {
			wg.Go(func() {
				for k := i; k < total; k += 3 {
					if err := ms[i].Put(fmt.Sprintf("key-%06d", k), value); err != nil {
						panic(err)
					}
				}
			})
		}
		wg.Wait()
		written := time.Since(start)
		herdtest.Eventually(b, func() bool {
			for _, m := range ms {
				if m.Len() != total {
					return false
				}
			}
			return true
		}, time.Minute, "100k writes on every node")
		b.StopTimer()
		var sent uint64
		for i := range 3 {
			sent += c.Node(i).TransportStats().BytesSent
		}
		var states uint64
		for i := range 3 {
			states += c.Node(i).MapStats().StateTransfers
		}
		b.ReportMetric(float64(states), "state-transfers")
		b.ReportMetric(time.Since(start).Seconds()*1000, "converged-ms")
		b.ReportMetric(written.Seconds()*1000, "written-ms")
		b.ReportMetric(float64(sent-sent0)/float64(total), "wire-B/write")
		c.Close()
		b.StartTimer()
	}
}

// BenchmarkMapIdleTraffic is what a node sends per second to keep its maps
// in sync when nothing is written, with 100 entries and with 100,000
// (local profile: anti-entropy every 100ms; the lan profile's is 1s).
func BenchmarkMapIdleTraffic(b *testing.B) {
	for _, entries := range []int{100, 100_000} {
		b.Run(fmt.Sprint(entries), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				c := herdtest.NewCluster(b, 3)
				ms := make([]*herd.Map, 3)
				for i := range 3 {
					ms[i] = openMap(b, c.Node(i), "bench")
				}
				for k := range entries {
					ms[k%3].Put(fmt.Sprintf("key-%06d", k), []byte("v"))
				}
				herdtest.Eventually(b, func() bool {
					return ms[0].Len() == entries && ms[1].Len() == entries && ms[2].Len() == entries
				}, time.Minute, "entries everywhere")
				// Let anti-entropy settle what the writes left in flight.
				settle := time.Now().Add(500 * time.Millisecond)
				herdtest.Eventually(b, func() bool { return time.Now().After(settle) }, time.Second, "settling")
				var before uint64
				for i := range 3 {
					before += c.Node(i).TransportStats().BytesSent
				}
				b.StartTimer()
				window := time.Now().Add(2 * time.Second)
				herdtest.Eventually(b, func() bool { return time.Now().After(window) }, 3*time.Second, "idle window")
				b.StopTimer()
				var after uint64
				for i := range 3 {
					after += c.Node(i).TransportStats().BytesSent
				}
				b.ReportMetric(float64(after-before)/3/2, "B/node/s")
				c.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkMapMemoryPerEntry is the heap a node's replica takes per entry
// (16-byte keys, 16-byte values), measured over 100,000 entries.
func BenchmarkMapMemoryPerEntry(b *testing.B) {
	for range b.N {
		b.StopTimer()
		n, err := herd.Start(context.Background(), herd.Config{Name: "mem"})
		if err != nil {
			b.Fatal(err)
		}
		m := openMap(b, n, "bench")
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		value := []byte("0123456789abcdef")
		for k := range 100_000 {
			m.Put(fmt.Sprintf("key-%012d", k), value)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/100_000, "B/entry")
		runtime.KeepAlive(m)
		n.Stop(context.Background())
		b.StartTimer()
	}
}
