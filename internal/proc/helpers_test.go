package proc

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// wait is how long a test waits for something that should happen promptly.
// Tests never sleep: they wait for a condition and fail after this deadline.
const wait = 5 * time.Second

func newRT(t testing.TB) *Runtime {
	t.Helper()
	return newRTWith(t, Config{})
}

func newRTWith(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	if cfg.Node.Name == "" {
		cfg.Node = NodeID{Name: "test", Incarnation: 1}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return rt
}

// fn is a Process built from functions; nil ones default to Base.
type fn struct {
	Base
	init func(*Context, any) error
	call func(*Context, any) (any, error)
	cast func(*Context, any)
	info func(*Context, any)
	term func(*Context, error)
}

func (f *fn) Init(c *Context, a any) error {
	if f.init != nil {
		return f.init(c, a)
	}
	return nil
}

func (f *fn) HandleCall(c *Context, m any) (any, error) {
	if f.call != nil {
		return f.call(c, m)
	}
	return f.Base.HandleCall(c, m)
}

func (f *fn) HandleCast(c *Context, m any) {
	if f.cast != nil {
		f.cast(c, m)
	}
}

func (f *fn) HandleInfo(c *Context, m any) {
	if f.info != nil {
		f.info(c, m)
	}
}

func (f *fn) Terminate(c *Context, r error) {
	if f.term != nil {
		f.term(c, r)
	}
}

// probe is a process that forwards every info message to a channel, and
// records its exit reason.
type probe struct {
	Base
	ch   chan any
	trap bool
	exit chan error
}

func newProbe() *probe { return &probe{ch: make(chan any, 1024), exit: make(chan error, 1)} }

func (p *probe) Init(c *Context, _ any) error {
	c.TrapExits(p.trap)
	return nil
}
func (p *probe) HandleInfo(_ *Context, m any)       { p.ch <- m }
func (p *probe) HandleCast(_ *Context, m any)       { p.ch <- m }
func (p *probe) Terminate(_ *Context, reason error) { p.exit <- reason }

func spawnProbe(t testing.TB, rt *Runtime, trap bool) (PID, *probe) {
	t.Helper()
	p := newProbe()
	p.trap = trap
	pid, err := rt.SpawnProcess(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pid, p
}

// recv waits for the next value on ch.
func recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("nothing received within %v", wait)
		panic("unreachable")
	}
}

// recvType waits for the next value on ch and asserts its type.
func recvType[M any](t testing.TB, ch <-chan any) M {
	t.Helper()
	v := recv(t, ch)
	m, ok := v.(M)
	if !ok {
		t.Fatalf("received %T (%v), want %T", v, v, m)
	}
	return m
}

// none asserts that nothing is waiting on ch. Callers first make sure that
// anything that could have been sent would already be there (for instance
// with a round trip through the same mailbox), so this is not a timing guess.
func none[T any](t testing.TB, ch <-chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %T: %v", v, v)
	default:
	}
}

// sync waits until pid has handled everything sent to it before this call,
// by a round trip through its mailbox. The process must answer calls; fn and
// probe processes answer the syncMsg call.
func syncWith(t testing.TB, rt *Runtime, pid PID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := rt.Call(ctx, pid, syncMsg{}); err != nil {
		t.Fatalf("sync with %v: %v", pid, err)
	}
}

type syncMsg struct{}

func (p *probe) HandleCall(_ *Context, m any) (any, error) {
	if _, ok := m.(syncMsg); ok {
		return nil, nil
	}
	p.ch <- m
	return m, nil
}

// exited waits for pid to exit and returns its reason.
func exited(t testing.TB, rt *Runtime, pid PID) error {
	t.Helper()
	ch := make(chan error, 1)
	if _, ok := rt.MonitorFunc(pid, func(_ PID, r error) { ch <- r }); !ok {
		t.Fatalf("%v is not alive", pid)
	}
	return recv(t, ch)
}

type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) add() {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// echo answers every call with the message.
type echo struct{ Base }

func (echo) HandleCall(_ *Context, msg any) (any, error) { return msg, nil }
