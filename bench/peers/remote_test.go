package peers

import (
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The remote benchmarks mirror herd's BenchmarkRemoteSend and
// BenchmarkRemoteCall: two nodes (here: two actor systems, each with
// Proto.Actor's gRPC remote started) in one process, talking over loopback.
//
// Proto.Actor's remote serializes messages with protobuf (its default
// serializer; the JSON one is not used here), so the messages are
// *wrapperspb.Int64Value: a protobuf message with one field, the closest
// analogue of herd's rping{N int}, and one that needs no code generation.
//
// Unlike herd's remote benchmarks, which run over mutual TLS, Proto.Actor's
// remote runs over plaintext gRPC (HTTP/2 without TLS) unless configured
// otherwise: its default dial option is grpc.WithInsecure() and it passes no
// server credentials. These benchmarks keep the defaults.

// warmUp is the message the remote actors answer (and do not count) so that
// the connections in both directions are set up before the timer starts.
var warmUp = &wrapperspb.StringValue{Value: "warm-up"}

// remoteCounterActor counts *wrapperspb.Int64Value messages and closes done
// when it has seen target. It answers warmUp.
type remoteCounterActor struct {
	target int
	n      int
	done   chan struct{}
}

func (c *remoteCounterActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *wrapperspb.Int64Value:
		c.n++
		if c.n == c.target {
			close(c.done)
		}
	case *wrapperspb.StringValue:
		ctx.Respond(m)
	}
}

// remoteEchoActor answers every *wrapperspb.Int64Value (and warmUp) to its
// sender with the same message.
type remoteEchoActor struct{}

func (remoteEchoActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *wrapperspb.Int64Value:
		ctx.Respond(m)
	case *wrapperspb.StringValue:
		ctx.Respond(m)
	}
}

// remoteNode is an actor system with Proto.Actor's remote started on it.
type remoteNode struct {
	*testSystem
	remote *remote.Remote
}

// remotePair is the two nodes of a remote benchmark: messages go from a to b.
type remotePair struct {
	a, b           remoteNode
	baseGoroutines int // runtime.NumGoroutine() before either node was created
	idleGoroutines int // runtime.NumGoroutine() with both remotes started but not connected
}

// newRemoteNode creates an actor system (with logging discarded, see
// newSystem) and starts remote on 127.0.0.1 with port 0: Remote.Start
// listens on the configured address and, without an advertised host, takes
// the system's address from the listener, so the OS picks a free port.
// Remote.Start also silences gRPC's global logger.
func newRemoteNode(b *testing.B) remoteNode {
	b.Helper()
	sys := newSystem(b)
	r := remote.NewRemote(sys.ActorSystem, remote.Configure("127.0.0.1", 0))
	r.Start()
	// Start spawns two actors, "activator" and "EndpointSupervisor", which
	// Shutdown stops again, under a guardian process that stays registered
	// for the life of the system (Proto.Actor never removes guardians; they
	// hold no goroutine). So after Shutdown, the registry is back to what it
	// is now minus those two actors.
	sys.baseProcs = sys.registered() - 2
	return remoteNode{testSystem: sys, remote: r}
}

func newRemotePair(b *testing.B) *remotePair {
	b.Helper()
	p := &remotePair{baseGoroutines: runtime.NumGoroutine()}
	p.a = newRemoteNode(b)
	p.b = newRemoteNode(b)
	p.idleGoroutines = runtime.NumGoroutine()
	return p
}

// spawnOnB spawns producer's actor on node b under name and returns the PID
// node a uses to address it: b's address plus the name.
func (p *remotePair) spawnOnB(b *testing.B, name string, producer actor.Producer) (local, fromA *actor.PID) {
	b.Helper()
	local, err := p.b.Root.SpawnNamed(actor.PropsFromProducer(producer), name)
	if err != nil {
		b.Fatalf("SpawnNamed: %v", err)
	}
	return local, actor.NewPID(p.b.Address(), name)
}

// warmUp does one request/response round trip from a to pid on b, so that
// a's connection to b (for the request) and b's connection to a (for the
// reply, which goes to a future on a) are both established.
func (p *remotePair) warmUp(b *testing.B, pid *actor.PID) {
	b.Helper()
	res, err := p.a.Root.RequestFuture(pid, warmUp, 10*time.Second).Result()
	if err != nil {
		b.Fatalf("warm-up RequestFuture: %v", err)
	}
	if s, ok := res.(*wrapperspb.StringValue); !ok || s.GetValue() != warmUp.GetValue() {
		b.Fatalf("warm-up RequestFuture: got %#v, want %v", res, warmUp)
	}
}

// shutdown stops the timer, stops the given actors on b, shuts down both
// remotes and both systems, and waits until every process and goroutine
// created for the pair is gone, so that the next benchmark starts clean.
//
// The order matters. Remote.Shutdown(true) is racy if a connection to or
// from the node is still going away while it runs: it tells each peer whose
// stream it still has registered to disconnect by sending on a channel that
// the stream's handler closes when the stream ends (before another goroutine
// unregisters it), which panics with "send on closed channel"; and it sets
// its endpoint map to nil while a writer whose connection just dropped may
// still deliver an EndpointTerminatedEvent to it, which panics with a nil
// dereference. Both were seen here when shutting the second node down right
// after the first. So the nodes are disconnected first, and shut down only
// once every goroutine the connections created has finished.
func (p *remotePair) shutdown(b *testing.B, pidsOnB ...*actor.PID) {
	b.Helper()
	b.StopTimer()
	for _, pid := range pidsOnB {
		if err := p.b.Root.StopFuture(pid).Wait(); err != nil {
			b.Fatalf("protoactor: stopping %v: %v", pid, err)
		}
	}
	// EndpointTerminatedEvent is what Proto.Actor publishes itself when a
	// connection is lost: the endpoint manager stops the endpoint's writer
	// (closing its gRPC client connection, which ends the peer's inbound
	// stream) and watcher.
	p.a.EventStream.Publish(&remote.EndpointTerminatedEvent{Address: p.b.Address()})
	p.b.EventStream.Publish(&remote.EndpointTerminatedEvent{Address: p.a.Address()})
	waitGoroutines(b, p.idleGoroutines, 30*time.Second)
	// With no connections left, a graceful shutdown only stops the endpoint
	// manager's actors and the gRPC server.
	p.a.remote.Shutdown(true)
	p.b.remote.Shutdown(true)
	for _, n := range []remoteNode{p.a, p.b} {
		n.Shutdown()
		deadline := time.Now().Add(30 * time.Second)
		for n.registered() > n.baseProcs {
			if time.Now().After(deadline) {
				b.Fatalf("protoactor: %d processes still registered 30s after shutdown", n.registered()-n.baseProcs)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitGoroutines(b, p.baseGoroutines, 30*time.Second)
}

// BenchmarkRemoteSend is one-way messages from a to a counting actor on b,
// counted when handled. Root.Send to a remote PID never blocks: it appends to
// the endpoint writer's unbounded in-memory queue, and the writer serializes
// what has queued up (up to EndpointWriterBatchSize, 1000 by default) into one
// MessageBatch per gRPC stream send. So the loop mostly measures how fast the
// writer, gRPC and b's reader drain that queue, and the batch sizes (hence
// the result) depend on how far the sender runs ahead.
func BenchmarkRemoteSend(b *testing.B) {
	b.ReportAllocs()
	p := newRemotePair(b)
	c := &remoteCounterActor{target: b.N, done: make(chan struct{})}
	local, pid := p.spawnOnB(b, "sink", func() actor.Actor { return c })
	defer p.shutdown(b, local)
	p.warmUp(b, pid)

	b.ResetTimer()
	for i := range b.N {
		p.a.Root.Send(pid, &wrapperspb.Int64Value{Value: int64(i)})
	}
	<-c.done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkRemoteCall is sequential request/response calls from a to an echo
// actor on b; it reports the latency percentiles. Each call registers a future
// on a; the reply travels back over b's own connection to a.
func BenchmarkRemoteCall(b *testing.B) {
	b.ReportAllocs()
	p := newRemotePair(b)
	local, pid := p.spawnOnB(b, "echo", func() actor.Actor { return remoteEchoActor{} })
	defer p.shutdown(b, local)
	p.warmUp(b, pid)
	lat := make([]time.Duration, 0, b.N)

	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		res, err := p.a.Root.RequestFuture(pid, &wrapperspb.Int64Value{Value: int64(i)}, 5*time.Second).Result()
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatalf("RequestFuture %d: %v", i, err)
		}
		if v, ok := res.(*wrapperspb.Int64Value); !ok || v.GetValue() != int64(i) {
			b.Fatalf("RequestFuture %d: got %#v, want Int64Value{%d}", i, res, i)
		}
	}
	b.StopTimer()
	// Same computation as herd's BenchmarkRemoteCall (whole microseconds).
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
