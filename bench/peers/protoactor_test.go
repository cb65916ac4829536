package peers

import (
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// These benchmarks mirror herd's benchmarks of the same names (same names,
// same semantics) so that `benchstat` can line the two up.

// ping is the message used by the messaging benchmarks. It is sent by value;
// Proto.Actor boxes it into an interface{} like any other message.
type ping struct{ n int }

// nopActor is the trivial actor: its Receive does nothing, not even for the
// lifecycle messages (*actor.Started, *actor.Stopped, ...) that Proto.Actor
// delivers to Receive as well.
type nopActor struct{}

func (nopActor) Receive(actor.Context) {}

// counterActor counts ping messages and closes done when it has seen target.
type counterActor struct {
	target int
	n      int
	done   chan struct{}
}

func (c *counterActor) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(ping); ok {
		c.n++
		if c.n == c.target {
			close(c.done)
		}
	}
}

// echoActor answers every ping to its sender (the future, for RequestFuture).
type echoActor struct{}

func (echoActor) Receive(ctx actor.Context) {
	if p, ok := ctx.Message().(ping); ok {
		ctx.Respond(p)
	}
}

// testSystem is an actor system created for one invocation of a benchmark
// function, plus what is needed to tear it down without leaking into the next.
type testSystem struct {
	*actor.ActorSystem
	baseGoroutines int // runtime.NumGoroutine() before the system was created
	baseProcs      int // processes registered right after creation (eventstream, deadletter, ...)
}

// newSystem creates an actor system whose logger discards everything
// (Proto.Actor logs via log/slog; by default to stderr with tint).
func newSystem(b *testing.B) *testSystem {
	b.Helper()
	g := runtime.NumGoroutine()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	ts := &testSystem{ActorSystem: sys, baseGoroutines: g}
	ts.baseProcs = ts.registered()
	return ts
}

// registered is the number of processes in the system's process registry.
func (s *testSystem) registered() int {
	n := 0
	for _, m := range s.ProcessRegistry.LocalPIDs.LocalPIDs {
		n += m.Count()
	}
	return n
}

// stopAll stops the given actors and waits until they are gone from the
// process registry and their mailbox goroutines have finished. Callers must
// have stopped the benchmark timer.
func (s *testSystem) stopAll(b *testing.B, pids []*actor.PID) {
	b.Helper()
	for _, pid := range pids {
		s.Root.Stop(pid)
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.registered() > s.baseProcs {
		if time.Now().After(deadline) {
			b.Fatalf("protoactor: %d processes still registered 30s after Stop", s.registered()-s.baseProcs)
		}
		time.Sleep(time.Millisecond)
	}
	waitGoroutines(b, s.baseGoroutines, 30*time.Second)
}

// shutdown stops the given actors and shuts the system down, then checks that
// no goroutine started on behalf of this system is left running.
// ActorSystem.Shutdown only marks the system as stopped; it does not stop
// actors, hence the explicit stopAll.
func (s *testSystem) shutdown(b *testing.B, pids ...*actor.PID) {
	b.Helper()
	b.StopTimer()
	s.stopAll(b, pids)
	s.Shutdown()
}

// waitGoroutines waits until runtime.NumGoroutine() <= want and fails the
// benchmark if that takes longer than timeout.
func waitGoroutines(b *testing.B, want int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			b.Fatalf("protoactor: %d goroutines left over (want <= %d)", runtime.NumGoroutine(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// spawnBatch bounds how many actors BenchmarkSpawn keeps alive at once.
const spawnBatch = 100_000

func BenchmarkSpawn(b *testing.B) {
	b.ReportAllocs()
	sys := newSystem(b)
	props := actor.PropsFromProducer(func() actor.Actor { return nopActor{} })
	pids := make([]*actor.PID, 0, min(b.N, spawnBatch))
	defer func() { sys.shutdown(b, pids...) }()

	b.ResetTimer()
	for range b.N {
		if len(pids) == spawnBatch {
			b.StopTimer()
			sys.stopAll(b, pids)
			clear(pids)
			pids = pids[:0]
			b.StartTimer()
		}
		pids = append(pids, sys.Root.Spawn(props))
	}
	b.StopTimer()
}

func BenchmarkSend1to1(b *testing.B) {
	b.ReportAllocs()
	sys := newSystem(b)
	c := &counterActor{target: b.N, done: make(chan struct{})}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return c }))
	defer sys.shutdown(b, pid)

	b.ResetTimer()
	for i := range b.N {
		sys.Root.Send(pid, ping{n: i})
	}
	<-c.done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// senders is the number of sending goroutines in BenchmarkSendNto1.
const senders = 8

func BenchmarkSendNto1(b *testing.B) {
	b.ReportAllocs()
	sys := newSystem(b)
	c := &counterActor{target: b.N, done: make(chan struct{})}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return c }))
	defer sys.shutdown(b, pid)

	start := make(chan struct{})
	var wg sync.WaitGroup
	// Sender s sends the messages numbered [lo, hi); together the senders
	// send 0..b.N-1, the same messages as BenchmarkSend1to1.
	lo := 0
	for s := range senders {
		hi := lo + b.N/senders
		if s < b.N%senders {
			hi++
		}
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			<-start
			for i := lo; i < hi; i++ {
				sys.Root.Send(pid, ping{n: i})
			}
		}(lo, hi)
		lo = hi
	}

	b.ResetTimer()
	close(start)
	<-c.done
	b.StopTimer()
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkCallRoundTrip(b *testing.B) {
	b.ReportAllocs()
	sys := newSystem(b)
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return echoActor{} }))
	defer sys.shutdown(b, pid)

	b.ResetTimer()
	for i := range b.N {
		res, err := sys.Root.RequestFuture(pid, ping{n: i}, 5*time.Second).Result()
		if err != nil {
			b.Fatalf("RequestFuture: %v", err)
		}
		if p, ok := res.(ping); !ok || p.n != i {
			b.Fatalf("RequestFuture: got %#v, want ping{%d}", res, i)
		}
	}
	b.StopTimer()
}

// idleActors is the fixed number of actors BenchmarkIdleMemory spawns per
// iteration.
const idleActors = 10_000

// liveBytes is the memory that grows with the number of live actors: the live
// heap plus goroutine stacks (zero for idle Proto.Actor actors, which hold no
// goroutine, but measured rather than assumed).
func liveBytes() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// BenchmarkIdleMemory reports the live memory (heap + stacks) per idle actor
// as B/proc. Its ns/op includes the two forced GCs per iteration and is not
// meant to be compared.
func BenchmarkIdleMemory(b *testing.B) {
	b.ReportAllocs()
	props := actor.PropsFromProducer(func() actor.Actor { return nopActor{} })
	pids := make([]*actor.PID, 0, idleActors) // allocated outside the measurement

	var total float64
	b.ResetTimer()
	for range b.N {
		// A fresh system per iteration: the process registry is 1024x32
		// Go-map shards that keep their capacity after actors are removed, so
		// reusing one system would make later iterations cheaper and the
		// result depend on b.N. Creating it is not measured.
		b.StopTimer()
		sys := newSystem(b)
		b.StartTimer()

		before := liveBytes()
		for range idleActors {
			pids = append(pids, sys.Root.Spawn(props))
		}
		// Spawning schedules a goroutine per actor to process *actor.Started;
		// wait for those to finish so the actors are really idle.
		waitGoroutines(b, sys.baseGoroutines, 30*time.Second)
		after := liveBytes()
		total += float64(after) - float64(before)

		b.StopTimer()
		sys.shutdown(b, pids...)
		clear(pids)
		pids = pids[:0]
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total/float64(b.N)/idleActors, "B/proc")
}
