package proc

import (
	"context"
	"runtime"
	"sync"
	"testing"
)

type sink struct {
	Base
	n, want int
	done    chan struct{}
}

func (s *sink) HandleInfo(_ *Context, _ any) {
	s.n++
	if s.n == s.want {
		close(s.done)
	}
}

type echo struct{ Base }

func (echo) HandleCall(_ *Context, msg any) (any, error) { return msg, nil }

type ping struct{ n int }

func benchRuntime(b *testing.B) *Runtime {
	rt, err := New(Config{Node: NodeID{Name: "bench", Incarnation: 1}, MailboxWarn: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	return rt
}

func BenchmarkSpawn(b *testing.B) {
	rt := benchRuntime(b)
	b.ReportAllocs()
	pids := make([]PID, 0, 100_000)
	for b.Loop() {
		pid, err := rt.SpawnProcess(&echo{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		pids = append(pids, pid)
		if len(pids) == cap(pids) {
			b.StopTimer()
			for _, p := range pids {
				rt.Exit(PID{}, p, Kill)
			}
			pids = pids[:0]
			b.StartTimer()
		}
	}
}

func BenchmarkSend1to1(b *testing.B) {
	rt := benchRuntime(b)
	s := &sink{want: b.N, done: make(chan struct{})}
	pid, _ := rt.SpawnProcess(s, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		rt.Send(pid, ping{i})
	}
	<-s.done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkSendNto1(b *testing.B) {
	rt := benchRuntime(b)
	s := &sink{want: b.N, done: make(chan struct{})}
	pid, _ := rt.SpawnProcess(s, nil)
	b.ReportAllocs()
	b.ResetTimer()
	const senders = 8
	var wg sync.WaitGroup
	for w := range senders {
		n := b.N / senders
		if w < b.N%senders {
			n++
		}
		wg.Go(func() {
			for i := range n {
				rt.Send(pid, ping{i})
			}
		})
	}
	wg.Wait()
	<-s.done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkCallRoundTrip(b *testing.B) {
	rt := benchRuntime(b)
	pid, _ := rt.SpawnProcess(&echo{}, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rt.Call(ctx, pid, 1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIdleMemory(b *testing.B) {
	rt := benchRuntime(b)
	const n = 10000
	var perProc float64
	for b.Loop() {
		b.StopTimer()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		pids := make([]PID, n)
		for i := range pids {
			pids[i], _ = rt.SpawnProcess(&echo{}, nil)
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		perProc = float64(after.HeapAlloc+after.StackInuse-before.HeapAlloc-before.StackInuse) / n
		for _, p := range pids {
			rt.Exit(PID{}, p, Kill)
		}
		b.StartTimer()
	}
	b.ReportMetric(perProc, "B/proc")
}
