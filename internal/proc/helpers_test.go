package proc_test

import (
	"context"
	"errors"
	"testing"

	. "github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
)

// The tests of proc use only its exported API, with proctest's helpers:
// NewRuntime, Func, Recv, RecvType, Exits, Eventually.

// probe is a process that forwards every message to a channel, answers
// syncMsg calls, and records its exit reason.
type probe struct {
	Base
	ch   chan any
	trap bool
	exit chan error
}

type syncMsg struct{}

func newProbe() *probe { return &probe{ch: make(chan any, 1024), exit: make(chan error, 1)} }

func (p *probe) Init(c *Context, _ any) error {
	c.TrapExits(p.trap)
	return nil
}
func (p *probe) HandleInfo(_ *Context, m any)       { p.ch <- m }
func (p *probe) HandleCast(_ *Context, m any)       { p.ch <- m }
func (p *probe) Terminate(_ *Context, reason error) { p.exit <- reason }
func (p *probe) HandleCall(_ *Context, m any) (any, error) {
	if _, ok := m.(syncMsg); ok {
		return nil, nil
	}
	p.ch <- m
	return m, nil
}

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

// syncWith waits until pid has handled everything sent to it before this
// call, by a round trip through its mailbox. The process must answer the
// syncMsg call (probes do; Func processes return anything).
func syncWith(t testing.TB, rt *Runtime, pid PID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	if _, err := rt.Call(ctx, pid, syncMsg{}); err != nil && !isUnhandled(err) {
		t.Fatalf("sync with %v: %v", pid, err)
	}
}

// echo answers every call with the message.
type echo struct{ Base }

func (echo) HandleCall(_ *Context, msg any) (any, error) { return msg, nil }

func isUnhandled(err error) bool { return errors.Is(err, ErrUnhandled) }
