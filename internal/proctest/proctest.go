// Package proctest has helpers for tests of packages built on proc: a
// runtime torn down with the test, processes made of functions, a probe
// that forwards what it receives, and receives that fail after a deadline
// instead of sleeping. It is imported only by tests.
package proctest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

// Wait is how long a test waits for something that should happen promptly.
const Wait = 10 * time.Second

// NewRuntime returns a runtime for node "test" that is shut down when the
// test ends; a shutdown error fails the test.
func NewRuntime(t testing.TB) *proc.Runtime {
	t.Helper()
	return NewRuntimeWith(t, proc.Config{})
}

// NewRuntimeWith is NewRuntime with the test's own Config; an empty node
// name becomes "test" and a nil logger discards.
func NewRuntimeWith(t testing.TB, cfg proc.Config) *proc.Runtime {
	t.Helper()
	if cfg.Node.Name == "" {
		cfg.Node = proc.NodeID{Name: "test", Incarnation: 1}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rt, err := proc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Wait)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("runtime shutdown: %v", err)
		}
	})
	return rt
}

// Func is a process made of functions; a nil one behaves as proc.Base.
type Func struct {
	proc.Base
	OnInit      func(*proc.Context, any) error
	OnCall      func(*proc.Context, any) (any, error)
	OnCast      func(*proc.Context, any)
	OnInfo      func(*proc.Context, any)
	OnTerminate func(*proc.Context, error)
}

// Init runs OnInit.
func (f *Func) Init(c *proc.Context, a any) error {
	if f.OnInit != nil {
		return f.OnInit(c, a)
	}
	return nil
}

// HandleCall runs OnCall.
func (f *Func) HandleCall(c *proc.Context, m any) (any, error) {
	if f.OnCall != nil {
		return f.OnCall(c, m)
	}
	return f.Base.HandleCall(c, m)
}

// HandleCast runs OnCast.
func (f *Func) HandleCast(c *proc.Context, m any) {
	if f.OnCast != nil {
		f.OnCast(c, m)
	}
}

// HandleInfo runs OnInfo.
func (f *Func) HandleInfo(c *proc.Context, m any) {
	if f.OnInfo != nil {
		f.OnInfo(c, m)
	}
}

// Terminate runs OnTerminate.
func (f *Func) Terminate(c *proc.Context, r error) {
	if f.OnTerminate != nil {
		f.OnTerminate(c, r)
	}
}

// Recv waits for the next value on ch, failing the test after Wait.
func Recv[T any](t testing.TB, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Wait):
		t.Fatalf("nothing received within %v", Wait)
		panic("unreachable")
	}
}

// RecvType is Recv for a channel of any, asserting the value's type.
func RecvType[M any](t testing.TB, ch <-chan any) M {
	t.Helper()
	v := Recv(t, ch)
	m, ok := v.(M)
	if !ok {
		t.Fatalf("received %T (%v), want %T", v, v, m)
	}
	return m
}

// Exits returns a channel that receives pid's exit reason. It fails the
// test if pid is not alive: watch before causing the exit.
func Exits(t testing.TB, rt *proc.Runtime, pid proc.PID) <-chan error {
	t.Helper()
	ch := make(chan error, 1)
	if _, ok := rt.MonitorFunc(pid, func(_ proc.PID, r error) { ch <- r }); !ok {
		t.Fatalf("%v is not alive", pid)
	}
	return ch
}

// Eventually polls cond until it holds, failing the test after Wait. Use it
// for state that has no event to wait on.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", Wait, what)
		}
		time.Sleep(time.Millisecond)
	}
}
