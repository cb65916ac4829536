package herd_test

// Benchmarks through the public API. Their names and semantics match
// bench/peers (Proto.Actor), so one benchstat table compares them; see
// BENCHMARKS.md for the commands and figures.

import (
	"context"
	"runtime"
	"sync"
	"testing"

	"github.com/herdkit/herd"
)

type ping struct{ n int }

type nop struct{ herd.Base }

type sink struct {
	herd.Base
	target, n int
	done      chan struct{}
}

func (s *sink) HandleInfo(_ *herd.Context, msg any) {
	if _, ok := msg.(ping); ok {
		s.n++
		if s.n == s.target {
			close(s.done)
		}
	}
}

type echoPing struct{ herd.Base }

func (echoPing) HandleCall(_ *herd.Context, msg any) (any, error) { return msg, nil }

func benchNode(b *testing.B) *herd.Node {
	b.Helper()
	n, err := herd.Start(context.Background(), herd.Config{Name: "bench", MailboxWarn: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n
}

const spawnBatch = 100_000

// BenchmarkSpawn spawns processes that do nothing; Init has returned when
// Spawn returns. Every 100k they are stopped, outside the timer.
func BenchmarkSpawn(b *testing.B) {
	b.ReportAllocs()
	n := benchNode(b)
	ctx := context.Background()
	pids := make([]herd.PID, 0, min(b.N, spawnBatch))
	stopAll := func() {
		for _, p := range pids {
			_ = n.Exit(p, herd.Kill)
		}
		pids = pids[:0]
	}
	b.ResetTimer()
	for range b.N {
		if len(pids) == spawnBatch {
			b.StopTimer()
			stopAll()
			b.StartTimer()
		}
		pid, err := n.SpawnProcess(ctx, &nop{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		pids = append(pids, pid)
	}
	b.StopTimer()
	stopAll()
}

// BenchmarkSend1to1 is one sender sending b.N messages to one process;
// it ends when the process has handled them all.
func BenchmarkSend1to1(b *testing.B) {
	b.ReportAllocs()
	n := benchNode(b)
	s := &sink{target: b.N, done: make(chan struct{})}
	pid, _ := n.SpawnProcess(context.Background(), s, nil)
	b.ResetTimer()
	for i := range b.N {
		_ = n.Send(pid, ping{n: i})
	}
	<-s.done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

const senders = 8

// BenchmarkSendNto1 is 8 senders sharing b.N messages to one process.
func BenchmarkSendNto1(b *testing.B) {
	b.ReportAllocs()
	n := benchNode(b)
	s := &sink{target: b.N, done: make(chan struct{})}
	pid, _ := n.SpawnProcess(context.Background(), s, nil)
	start := make(chan struct{})
	var wg sync.WaitGroup
	lo := 0
	for w := range senders {
		first, hi := lo, lo+b.N/senders
		if w < b.N%senders {
			hi++
		}
		wg.Go(func() {
			<-start
			for i := first; i < hi; i++ {
				_ = n.Send(pid, ping{n: i})
			}
		})
		lo = hi
	}
	b.ResetTimer()
	close(start)
	<-s.done
	b.StopTimer()
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkCallRoundTrip is sequential calls from outside any process to
// a process that echoes the message.
func BenchmarkCallRoundTrip(b *testing.B) {
	b.ReportAllocs()
	n := benchNode(b)
	ctx := context.Background()
	pid, _ := n.SpawnProcess(ctx, echoPing{}, nil)
	b.ResetTimer()
	for i := range b.N {
		got, err := herd.Call[ping](ctx, n, pid, ping{n: i})
		if err != nil || got.n != i {
			b.Fatalf("call %d: %v, %v", i, got, err)
		}
	}
}

// BenchmarkCallBetweenProcesses is the same round trip made by a process,
// which reuses its own reply waiter.
func BenchmarkCallBetweenProcesses(b *testing.B) {
	b.ReportAllocs()
	n := benchNode(b)
	ctx := context.Background()
	callee, _ := n.SpawnProcess(ctx, echoPing{}, nil)
	done := make(chan error, 1)
	caller, _ := n.SpawnProcess(ctx, &callLoop{callee: callee, n: b.N, done: done}, nil)
	b.ResetTimer()
	_ = n.Send(caller, "go")
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

type callLoop struct {
	herd.Base
	callee herd.PID
	n      int
	done   chan error
}

func (c *callLoop) HandleInfo(ctx *herd.Context, _ any) {
	for i := range c.n {
		if _, err := ctx.Call(ctx, c.callee, ping{n: i}); err != nil {
			c.done <- err
			return
		}
	}
	c.done <- nil
}

const idleProcs = 10_000

func liveBytes() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// BenchmarkIdleMemory reports the heap and stack held per idle process,
// over 10k processes spawned on a fresh node.
func BenchmarkIdleMemory(b *testing.B) {
	b.ReportAllocs()
	ctx := context.Background()
	pids := make([]herd.PID, 0, idleProcs)
	var total float64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		n, err := herd.Start(ctx, herd.Config{Name: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		before := liveBytes()
		for range idleProcs {
			pid, _ := n.SpawnProcess(ctx, &nop{}, nil)
			pids = append(pids, pid)
		}
		after := liveBytes()
		total += float64(after) - float64(before)
		b.StopTimer()
		_ = n.Stop(ctx)
		pids = pids[:0]
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total/float64(b.N)/idleProcs, "B/proc")
}

// BenchmarkFanOut sends one message to each of 1000 idle processes and
// waits until all have handled it: the cost of waking many processes.
func BenchmarkFanOut(b *testing.B) {
	b.ReportAllocs()
	n := benchNode(b)
	ctx := context.Background()
	const width = 1000
	done := make(chan struct{}, width)
	pids := make([]herd.PID, width)
	for i := range pids {
		pids[i], _ = n.SpawnProcess(ctx, &acker{done: done}, nil)
	}
	b.ResetTimer()
	for range b.N {
		for _, p := range pids {
			_ = n.Send(p, ping{})
		}
		for range width {
			<-done
		}
	}
	b.ReportMetric(float64(b.N*width)/b.Elapsed().Seconds(), "msgs/s")
}

type acker struct {
	herd.Base
	done chan struct{}
}

func (a *acker) HandleInfo(*herd.Context, any) { a.done <- struct{}{} }
