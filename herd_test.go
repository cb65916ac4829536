package herd_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/herdkit/herd"
)

const wait = 10 * time.Second

func newNode(t *testing.T, name string) *herd.Node {
	t.Helper()
	n, err := herd.Start(context.Background(), herd.Config{
		Name:   name,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Stop(context.Background()); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return n
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("nothing within %v", wait)
		panic("unreachable")
	}
}

type Add struct{ N int }
type Get struct{}

type Counter struct {
	herd.Base
	n int
}

func (c *Counter) Init(_ *herd.Context, args any) error {
	if n, ok := args.(int); ok {
		c.n = n
	}
	return nil
}

func (c *Counter) HandleCall(ctx *herd.Context, msg any) (any, error) {
	switch m := msg.(type) {
	case Add:
		c.n += m.N
		return c.n, nil
	case Get:
		return c.n, nil
	case string:
		if m == "crash" {
			panic("counter crashed on purpose")
		}
	}
	return c.Base.HandleCall(ctx, msg)
}

func (c *Counter) HandleCast(_ *herd.Context, msg any) {
	if m, ok := msg.(Add); ok {
		c.n += m.N
	}
}

func TestStartValidatesConfig(t *testing.T) {
	for _, name := range []string{"-bad", "has space", "a@b", strings.Repeat("x", 254), "ünï"} {
		if _, err := herd.Start(context.Background(), herd.Config{Name: name}); err == nil {
			t.Errorf("Start with name %q succeeded", name)
		}
	}
	n, err := herd.Start(context.Background(), herd.Config{})
	if err != nil {
		t.Fatalf("Start with the host name: %v", err)
	}
	defer n.Stop(context.Background())
	if n.ID().Name == "" || n.ID().Incarnation == 0 {
		t.Fatalf("ID = %+v", n.ID())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := herd.Start(ctx, herd.Config{Name: "n"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with an ended context: %v", err)
	}
}

func TestKindsNamesAndTypedCalls(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	if err := herd.RegisterKind(n, "counter", func() herd.Process { return &Counter{} }); err != nil {
		t.Fatal(err)
	}
	if err := herd.RegisterKind(n, "counter", func() herd.Process { return &Counter{} }); err == nil {
		t.Fatal("a kind registered twice")
	}
	pid, err := n.Spawn(ctx, "counter", 10, herd.WithName("c"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := herd.Call[int](ctx, n, herd.Name("c"), Add{N: 5})
	if err != nil || got != 15 {
		t.Fatalf("Call by name = %d, %v", got, err)
	}
	if err := n.Cast(pid, Add{N: 1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := herd.Call[int](ctx, n, pid, Get{}); got != 16 {
		t.Fatalf("after cast: %d", got)
	}
	if _, err := herd.Call[string](ctx, n, pid, Get{}); !errors.Is(err, herd.ErrBadReply) {
		t.Fatalf("wrongly typed reply: %v", err)
	}
	if _, err := herd.Call[int](ctx, n, pid, 3.5); !errors.Is(err, herd.ErrUnhandled) {
		t.Fatalf("unhandled call: %v", err)
	}
	// The name is taken while the process lives.
	_, err = n.Spawn(ctx, "counter", 0, herd.WithName("c"))
	var taken *herd.TakenError
	if !errors.As(err, &taken) || taken.Holder != pid {
		t.Fatalf("second spawn under a held name: %v", err)
	}
	if _, err := n.Spawn(ctx, "nope", nil); !errors.Is(err, herd.ErrUnknownKind) {
		t.Fatalf("unknown kind: %v", err)
	}
	if ks := n.Kinds(); len(ks) != 1 || ks[0] != "counter" {
		t.Fatalf("Kinds = %v", ks)
	}
}

func TestEnvironmentsAndRegistry(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	a, _ := n.SpawnProcess(ctx, &Counter{}, 1, herd.WithKey(herd.Key{Env: "tenant-a", Name: "svc"}, herd.Meta{Capabilities: []string{"count"}}))
	b, _ := n.SpawnProcess(ctx, &Counter{}, 2, herd.WithKey(herd.Key{Env: "tenant-b", Name: "svc"}, herd.Meta{}))
	if got, _ := herd.Call[int](ctx, n, herd.InEnv("tenant-a", "svc"), Get{}); got != 1 {
		t.Fatalf("tenant-a/svc = %d", got)
	}
	if got, _ := herd.Call[int](ctx, n, herd.InEnv("tenant-b", "svc"), Get{}); got != 2 {
		t.Fatalf("tenant-b/svc = %d", got)
	}
	if _, err := herd.Call[int](ctx, n, herd.Name("svc"), Get{}); !errors.Is(err, herd.ErrNoName) {
		t.Fatalf("svc in the default environment: %v", err)
	}
	found := n.Registry().Select(herd.Query{Env: "tenant-a", Capabilities: []string{"count"}})
	if len(found) != 1 || found[0].PID != a {
		t.Fatalf("capability query = %+v", found)
	}
	if err := n.Registry().Join(ctx, herd.Key{Name: "all"}, a, herd.Meta{}); err != nil {
		t.Fatal(err)
	}
	if err := n.Registry().Join(ctx, herd.Key{Name: "all"}, b, herd.Meta{}); err != nil {
		t.Fatal(err)
	}
	if m := n.Registry().Members(herd.Key{Name: "all"}); len(m) != 2 {
		t.Fatalf("group = %+v", m)
	}
}

func TestNameFollowsRestartedChild(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	restarted := make(chan herd.SupervisorEvent, 10)
	sup, err := herd.StartSupervisor(ctx, n, herd.SupervisorSpec{
		Observer: func(e herd.SupervisorEvent) {
			if e.Kind == herd.ChildRestarted {
				restarted <- e
			}
		},
		Children: []herd.ChildSpec{{ID: "counter", New: func() herd.Process { return &Counter{} }, Args: 100, Name: "counter"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := herd.Call[int](ctx, n, herd.Name("counter"), Add{N: 1}); got != 101 {
		t.Fatalf("before crash: %d", got)
	}
	first, _ := n.Registry().Whereis(herd.Key{Name: "counter"})
	_, err = herd.Call[int](ctx, n, herd.Name("counter"), "crash")
	var exitErr *herd.ExitError
	if !errors.As(err, &exitErr) || !errors.Is(err, herd.ErrNoProcess) {
		t.Fatalf("call that crashed the callee: %v", err)
	}
	if _, ok := errors.AsType[*herd.CrashError](err); !ok {
		t.Fatalf("crash reason not carried: %v", err)
	}
	e := recv(t, restarted)
	if e.Previous != first {
		t.Fatalf("restart event %+v", e)
	}
	// The name now leads to the new process, which started from its Args.
	if got, err := herd.Call[int](ctx, n, herd.Name("counter"), Get{}); err != nil || got != 100 {
		t.Fatalf("after restart: %d, %v", got, err)
	}
	kids, _ := sup.WhichChildren(ctx)
	if len(kids) != 1 || kids[0].PID != e.PID {
		t.Fatalf("children %+v", kids)
	}
	if err := sup.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Registry().Whereis(herd.Key{Name: "counter"}); ok {
		t.Fatal("name still registered after its supervisor stopped")
	}
}

func TestNestedAndDynamicSupervisors(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	if err := herd.RegisterKind(n, "counter", func() herd.Process { return &Counter{} }); err != nil {
		t.Fatal(err)
	}
	top, err := herd.StartSupervisor(ctx, n, herd.SupervisorSpec{
		Strategy: herd.RestForOne,
		Children: []herd.ChildSpec{
			{ID: "config", Kind: "counter", Name: "config"},
			{ID: "sessions", Supervisor: &herd.SupervisorSpec{Dynamic: true, MaxChildren: 2}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	kids, _ := top.WhichChildren(ctx)
	if len(kids) != 2 || !kids[1].Supervisor {
		t.Fatalf("top children %+v", kids)
	}
	counts, _ := top.CountChildren(ctx)
	if counts != (herd.ChildCounts{Specs: 2, Active: 2, Supervisors: 1, Workers: 1}) {
		t.Fatalf("counts %+v", counts)
	}
	if _, err := top.StartChild(ctx, herd.ChildSpec{ID: "x", Env: "e"}); err == nil {
		t.Fatal("a child spec with Env and no Name was accepted")
	}
}

func TestMonitorFromOutside(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	pid, _ := n.SpawnProcess(ctx, &Counter{}, nil, herd.WithName("m"))
	downs, _ := n.Monitor(herd.Name("m"))
	if err := n.Exit(herd.Name("m"), herd.Shutdown); err != nil {
		t.Fatal(err)
	}
	if d := recv(t, downs); d.PID != pid || d.Reason != herd.Shutdown {
		t.Fatalf("Down %+v", d)
	}
	if d := recv(t, mustMonitor(n, pid)); !errors.Is(d.Reason, herd.ErrNoProcess) {
		t.Fatalf("monitor of a dead pid: %+v", d)
	}
	if d := recv(t, mustMonitor(n, herd.Name("none"))); !errors.Is(d.Reason, herd.ErrNoProcess) {
		t.Fatalf("monitor of an unknown name: %+v", d)
	}
	other, _ := herd.ParsePID("elsewhere@1.1")
	if d := recv(t, mustMonitor(n, other)); !errors.Is(d.Reason, herd.ErrNodeDown) {
		t.Fatalf("monitor of a pid on another node: %+v", d)
	}
	alive, _ := n.SpawnProcess(ctx, &Counter{}, nil)
	downs, cancel := n.Monitor(alive)
	cancel()
	_ = n.Exit(alive, herd.Kill)
	if p, _ := n.Info(alive); p.PID == alive {
		t.Fatal("killed process still has info")
	}
	select {
	case d := <-downs:
		t.Fatalf("Down after cancel: %+v", d)
	default:
	}
}

func mustMonitor(n *herd.Node, to herd.Target) <-chan herd.Down {
	ch, _ := n.Monitor(to)
	return ch
}

func TestNodeOfAndProcesses(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	got := make(chan *herd.Node, 1)
	_, err := n.SpawnProcess(ctx, &initFunc{fn: func(c *herd.Context) { got <- herd.NodeOf(c) }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if recv(t, got) != n {
		t.Fatal("NodeOf returned another node")
	}
	count := 0
	for p := range n.Processes() {
		if p.PID.Node != n.ID() {
			t.Fatalf("process %v of another node", p.PID)
		}
		count++
	}
	if count != n.CountProcesses() || count != 1 {
		t.Fatalf("Processes yielded %d, CountProcesses %d", count, n.CountProcesses())
	}
}

type initFunc struct {
	herd.Base
	fn func(*herd.Context)
}

func (f *initFunc) Init(c *herd.Context, _ any) error { f.fn(c); return nil }

func TestStopIsIdempotentAndRefusesWork(t *testing.T) {
	n, err := herd.Start(context.Background(), herd.Config{Name: "n1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	terminated := make(chan error, 1)
	_, _ = n.SpawnProcess(context.Background(), &terminator{ch: terminated}, nil)
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := recv(t, terminated); r != herd.Shutdown {
		t.Fatalf("process terminated with %v", r)
	}
	if err := n.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := n.SpawnProcess(context.Background(), &Counter{}, nil); !errors.Is(err, herd.ErrStopped) {
		t.Fatalf("spawn after Stop: %v", err)
	}
}

type terminator struct {
	herd.Base
	ch chan error
}

func (p *terminator) Terminate(_ *herd.Context, r error) { p.ch <- r }

func TestStopKillsWhatWillNotStop(t *testing.T) {
	n, _ := herd.Start(context.Background(), herd.Config{Name: "n1", StopTimeout: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	release := make(chan struct{})
	defer close(release)
	blocked := make(chan struct{})
	pid, _ := n.SpawnProcess(context.Background(), &blocker{entered: blocked, release: release}, nil)
	_ = n.Send(pid, "block")
	recv(t, blocked)
	if err := n.Stop(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop: %v", err)
	}
	if n.CountProcesses() != 0 {
		t.Fatalf("%d processes after Stop", n.CountProcesses())
	}
}

type blocker struct {
	herd.Base
	entered chan struct{}
	release chan struct{}
}

func (b *blocker) HandleInfo(*herd.Context, any) {
	close(b.entered)
	<-b.release
}

// Named siblings restarted together (one_for_all) take their names back
// every time: a stopped child's names are released before its supervisor
// moves on.
func TestNamedSiblingsRestartTogether(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	events := make(chan herd.SupervisorEvent, 1000)
	var children []herd.ChildSpec
	for _, id := range []string{"a", "b", "c"} {
		children = append(children, herd.ChildSpec{ID: id, Name: id, New: func() herd.Process { return &Counter{} }})
	}
	_, err := herd.StartSupervisor(ctx, n, herd.SupervisorSpec{
		Strategy: herd.OneForAll, Intensity: 1000, Period: time.Hour, Children: children,
		Observer: func(e herd.SupervisorEvent) { events <- e },
	})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 100 {
		for len(events) > 0 {
			<-events
		}
		if _, err := herd.Call[int](ctx, n, herd.Name("a"), "crash"); !errors.Is(err, herd.ErrNoProcess) {
			t.Fatalf("round %d: crash call: %v", round, err)
		}
		restarted := map[string]bool{}
		for len(restarted) < 3 {
			e := recv(t, events)
			switch e.Kind {
			case herd.StartFailed, herd.GaveUp:
				t.Fatalf("round %d: %s %s: %v", round, e.Kind, e.ID, e.Reason)
			case herd.ChildRestarted:
				restarted[e.ID] = true
			}
		}
		for _, id := range []string{"a", "b", "c"} {
			if _, err := herd.Call[int](ctx, n, herd.Name(id), Get{}); err != nil {
				t.Fatalf("round %d: %s: %v", round, id, err)
			}
		}
	}
}

func TestStopNestedSupervisorIsRefused(t *testing.T) {
	n := newNode(t, "n1")
	ctx := context.Background()
	top, err := herd.StartSupervisor(ctx, n, herd.SupervisorSpec{Children: []herd.ChildSpec{
		{ID: "inner", Supervisor: &herd.SupervisorSpec{Dynamic: true}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	kids, _ := top.WhichChildren(ctx)
	inner := herd.SupervisorOf(n, kids[0].PID)
	if err := inner.Stop(ctx); err == nil || !strings.Contains(err.Error(), "TerminateChild") {
		t.Fatalf("Stop of a nested supervisor: %v", err)
	}
	if err := top.TerminateChild(ctx, "inner"); err != nil || n.Alive(kids[0].PID) {
		t.Fatalf("TerminateChild: %v, alive %v", err, n.Alive(kids[0].PID))
	}
	if err := top.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
