package herd_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
	"github.com/herdkit/herd/internal/pki"
)

// rping is the remote benchmarks' message: a small struct with one field.
type rping struct{ N int }

func benchSetup(_ int, n *herd.Node) {
	if err := herd.RegisterMessage[rping](n, "bench.rping"); err != nil {
		panic(err)
	}
}

type rsink struct {
	herd.Base
	target, n int
	done      chan struct{}
}

func (s *rsink) HandleInfo(_ *herd.Context, msg any) {
	if _, ok := msg.(rping); ok {
		s.n++
		if s.n == s.target {
			close(s.done)
		}
	}
}

// BenchmarkRemoteSend is one-way messages from one node to a process on
// another, over mutual TLS on loopback, counted when handled.
func BenchmarkRemoteSend(b *testing.B) { remoteSend(b) }

// BenchmarkRemoteSendPlain is BenchmarkRemoteSend over plain TCP, as
// Proto.Actor's remote runs by default.
func BenchmarkRemoteSendPlain(b *testing.B) { remoteSend(b, herdtest.WithoutTLS()) }

func remoteSend(b *testing.B, opts ...herdtest.Option) {
	c := herdtest.NewCluster(b, 2, append(opts, herdtest.WithSetup(benchSetup))...)
	s := &rsink{target: b.N, done: make(chan struct{})}
	pid, err := c.Node(1).SpawnProcess(context.Background(), s, nil)
	if err != nil {
		b.Fatal(err)
	}
	a := c.Node(0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := a.Send(pid, rping{N: i}); err != nil {
			b.Fatal(err)
		}
	}
	<-s.done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkRemoteCall is sequential request/response calls from one node
// to a process on another, over mutual TLS; it reports the latency
// percentiles.
func BenchmarkRemoteCall(b *testing.B) { remoteCall(b) }

// BenchmarkRemoteCallPlain is BenchmarkRemoteCall over plain TCP.
func BenchmarkRemoteCallPlain(b *testing.B) { remoteCall(b, herdtest.WithoutTLS()) }

func remoteCall(b *testing.B, opts ...herdtest.Option) {
	c := herdtest.NewCluster(b, 2, append(opts, herdtest.WithSetup(benchSetup))...)
	ctx := context.Background()
	pid, err := c.Node(1).SpawnProcess(ctx, echoPing{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	a := c.Node(0)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		got, err := herd.Call[rping](ctx, a, pid, rping{N: i})
		lat = append(lat, time.Since(start))
		if err != nil || got.N != i {
			b.Fatalf("call %d: %v, %v", i, got, err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkKillToDead measures the time from a fault until every survivor
// has declared the member dead. "killed" is a crashed node (its sockets
// close: the connection-loss path); "silent" is a node cut off by a
// network that drops its packets (the failure detector's path). Each
// iteration builds a new cluster; the figures are the median and the worst
// over the iterations, in milliseconds.
func BenchmarkKillToDead(b *testing.B) {
	for _, mode := range []string{"killed", "silent"} {
		for _, profile := range []string{"local", "lan"} {
			for _, n := range []int{3, 10} {
				b.Run(fmt.Sprintf("%s/%s/%d", mode, profile, n), func(b *testing.B) {
					var times []time.Duration
					for range b.N {
						times = append(times, killToDead(b, mode, profile, n))
					}
					slices.Sort(times)
					b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "max-ms")
				})
			}
		}
	}
}

func killToDead(b *testing.B, mode, profile string, n int) time.Duration {
	c := herdtest.NewCluster(b, n, herdtest.WithProfile(profile))
	defer c.Close()
	victim := n - 1
	id := c.Node(victim).ID()
	var subs []*herd.MemberSubscription
	for i := range victim {
		sub, err := c.Node(i).SubscribeMembers()
		if err != nil {
			b.Fatal(err)
		}
		<-sub.C() // the snapshot
		subs = append(subs, sub)
	}
	start := time.Now()
	if mode == "killed" {
		c.Kill(victim)
	} else {
		c.Partition([]int{victim})
	}
	var worst time.Duration
	for _, sub := range subs {
		deadline := time.After(herdtest.DefaultTimeout)
	wait:
		for {
			select {
			case batch := <-sub.C():
				for _, ch := range batch {
					if ch.Member.ID == id && ch.Member.Status == herd.MemberDead {
						worst = max(worst, time.Since(start))
						break wait
					}
				}
			case <-deadline:
				b.Fatalf("%s/%s/%d: %v not declared dead", mode, profile, n, id)
			}
		}
		sub.Close()
	}
	c.Heal()
	return worst
}

// BenchmarkJoinTogether starts one node, then nine more at once, all
// joining it, and measures the time until all ten see all ten alive.
func BenchmarkJoinTogether(b *testing.B) {
	for _, profile := range []string{"local", "lan"} {
		b.Run(profile, func(b *testing.B) {
			var times []time.Duration
			for range b.N {
				times = append(times, joinTogether(b, profile, 10))
			}
			slices.Sort(times)
			b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "max-ms")
		})
	}
}

func joinTogether(b *testing.B, profile string, n int) time.Duration {
	ctx := context.Background()
	ca, err := pki.NewCA("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	key := bytes.Repeat([]byte{7}, 32)
	cfg := func(name string, join []string) herd.Config {
		cert, err := ca.Issue(name, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		return herd.Config{Name: name, Bind: "127.0.0.1:0", Profile: profile, Join: join,
			TLS: &herd.TLS{CA: ca.Pool(), Cert: &cert}, GossipKeys: [][]byte{key}, Logger: slog.New(slog.DiscardHandler)}
	}
	first, err := herd.Start(ctx, cfg("j1", nil))
	if err != nil {
		b.Fatal(err)
	}
	nodes := []*herd.Node{first}
	defer func() {
		for _, nd := range nodes {
			nd.Halt()
		}
	}()
	cfgs := make([]herd.Config, n-1)
	for i := range cfgs {
		cfgs[i] = cfg(fmt.Sprintf("j%d", i+2), []string{first.GossipAddr()})
	}
	start := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range cfgs {
		wg.Go(func() {
			nd, err := herd.Start(ctx, c)
			if err != nil {
				b.Error(err)
				return
			}
			mu.Lock()
			nodes = append(nodes, nd)
			mu.Unlock()
		})
	}
	wg.Wait()
	herdtest.Eventually(b, func() bool {
		for _, nd := range nodes {
			alive := 0
			for _, m := range nd.Members() {
				if m.Status == herd.MemberAlive {
					alive++
				}
			}
			if alive != n {
				return false
			}
		}
		return true
	}, herdtest.DefaultTimeout, "all ten see all ten")
	return time.Since(start)
}
