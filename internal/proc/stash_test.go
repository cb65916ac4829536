package proc_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	. "github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
)

// counter is a Stasher: its state is a number, incremented by calls.
type counter struct {
	Base
	n          int
	terminated chan int // the count Terminate saw
	restoreErr error
	block      chan struct{} // a call on "block" waits on it
	entered    chan struct{} // told when a "block" call starts
}

func (c *counter) HandleCall(_ *Context, m any) (any, error) {
	if m == "block" {
		c.entered <- struct{}{}
		<-c.block
	}
	c.n++
	return c.n, nil
}

func (c *counter) Terminate(_ *Context, _ error) {
	if c.terminated != nil {
		c.terminated <- c.n
	}
}

func (c *counter) Stash() ([]byte, error) { return []byte(strconv.Itoa(c.n)), nil }

func (c *counter) Restore(b []byte) error {
	if c.restoreErr != nil {
		return c.restoreErr
	}
	n, err := strconv.Atoi(string(b))
	c.n = n
	return err
}

func TestStashAndStopStashesBeforeTerminate(t *testing.T) {
	rt := NewRuntime(t)
	ctx := context.Background()
	c := &counter{terminated: make(chan int, 1)}
	pid, err := rt.SpawnProcess(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := rt.Call(ctx, pid, "inc"); err != nil {
			t.Fatal(err)
		}
	}
	state, stashErr, err := rt.StashAndStop(ctx, PID{}, pid, time.Second)
	if err != nil || stashErr != nil {
		t.Fatalf("StashAndStop: %v, %v", stashErr, err)
	}
	if string(state) != "3" {
		t.Fatalf("state %q, want 3", state)
	}
	if got := Recv(t, c.terminated); got != 3 {
		t.Fatalf("Terminate saw %d", got)
	}
	if rt.Alive(pid) {
		t.Fatal("still alive")
	}

	// The state restores into a new process before its first message.
	pid2, err := rt.SpawnProcess(&counter{}, nil, RestoreState(state))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := rt.Call(ctx, pid2, "inc"); err != nil || n != 4 {
		t.Fatalf("after restore: %v, %v; want 4", n, err)
	}
}

func TestStashAndStopWithoutStasher(t *testing.T) {
	rt := NewRuntime(t)
	pid, _ := rt.SpawnProcess(&Func{}, nil)
	_, stashErr, err := rt.StashAndStop(context.Background(), PID{}, pid, time.Second)
	if err != nil || !errors.Is(stashErr, ErrNoStash) {
		t.Fatalf("got %v, %v; want ErrNoStash", stashErr, err)
	}
	_, stashErr, err = rt.StashAndStop(context.Background(), PID{}, pid, time.Second)
	if !errors.Is(err, ErrNoProcess) || !errors.Is(stashErr, ErrNoStash) {
		t.Fatalf("dead process: %v, %v", stashErr, err)
	}
}

func TestStashAndStopKilledGivesNoState(t *testing.T) {
	rt := NewRuntime(t)
	c := &counter{block: make(chan struct{}), entered: make(chan struct{}, 1)}
	defer close(c.block)
	pid, _ := rt.SpawnProcess(c, nil)
	go rt.Call(context.Background(), pid, "block") //nolint:errcheck
	// Wait until the call is being handled, so the stop must kill.
	Recv(t, c.entered)
	_, stashErr, err := rt.StashAndStop(context.Background(), PID{}, pid, 20*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || !errors.Is(stashErr, ErrNoStash) {
		t.Fatalf("got %v, %v; want ErrTimeout and ErrNoStash", stashErr, err)
	}
}

func TestRestoreErrorFailsSpawn(t *testing.T) {
	rt := NewRuntime(t)
	bad := errors.New("bad state")
	_, err := rt.SpawnProcess(&counter{restoreErr: bad}, nil, RestoreState([]byte("1")))
	if !errors.Is(err, bad) {
		t.Fatalf("spawn: %v", err)
	}
	if rt.Count() != 0 {
		t.Fatalf("%d processes left", rt.Count())
	}
}

type checkpoints struct{ got chan []byte }

func (c checkpoints) Checkpoint(_ PID, state []byte) error { c.got <- state; return nil }

func TestCheckpoint(t *testing.T) {
	rt := NewRuntime(t)
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(c *Context, m any) (any, error) {
		return nil, c.Checkpoint(m.([]byte))
	}}, nil)
	if _, err := rt.Call(context.Background(), pid, []byte("x")); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("without a store: %v", err)
	}
	cp := checkpoints{got: make(chan []byte, 1)}
	rt.SetCheckpointer(cp)
	if _, err := rt.Call(context.Background(), pid, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := Recv(t, cp.got); string(got) != "x" {
		t.Fatalf("stored %q", got)
	}
}
