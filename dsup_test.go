package herd_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

// tally is a distributed child for the supervisor's tests: a counter that
// can hand its count over (Stasher) and checkpoint it.
//
// Calls: "inc" adds one and returns the count; "inc+cp" also checkpoints
// it; "get" returns it; "crash" panics; "finish" stops it normally.
type tally struct {
	herd.Base
	n int
}

func (p *tally) Init(_ *herd.Context, args any) error {
	if args == "fail" {
		return errors.New("tally: told to fail")
	}
	return nil
}

func (p *tally) HandleCall(c *herd.Context, msg any) (any, error) {
	switch msg {
	case "inc":
		p.n++
	case "inc+cp":
		p.n++
		if err := c.Checkpoint([]byte(strconv.Itoa(p.n))); err != nil {
			return nil, err
		}
	case "get":
	case "crash":
		panic("tally: told to crash")
	case "finish":
		c.Stop(herd.Normal)
	default:
		return nil, fmt.Errorf("tally: unknown call %v", msg)
	}
	return p.n, nil
}

func (p *tally) HandleInfo(_ *herd.Context, msg any) {
	if s, ok := msg.(herd.ChildStash); ok {
		// A duplicate's count: keep the larger.
		if n, err := strconv.Atoi(string(s.State)); err == nil && n > p.n {
			p.n = n
		}
	}
}

func (p *tally) Stash() ([]byte, error) { return []byte(strconv.Itoa(p.n)), nil }

func (p *tally) Restore(b []byte) error {
	n, err := strconv.Atoi(string(b))
	p.n = n
	return err
}

func registerTally(t testing.TB, n *herd.Node) {
	t.Helper()
	if err := herd.RegisterKind(n, "tally", func() herd.Process { return &tally{} }); err != nil {
		t.Fatal(err)
	}
}

func callInt(t testing.TB, n *herd.Node, to herd.Target, msg string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	v, err := herd.Call[int](ctx, n, to, msg, herd.WaitForName())
	if err != nil {
		t.Fatalf("call %v %q: %v", to, msg, err)
	}
	return v
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	herdtest.Eventually(t, cond, wait, what)
}

func TestSupervisorAlone(t *testing.T) {
	n := newNode(t, "alone")
	registerTally(t, n)
	sup := n.Supervisor()
	ctx := context.Background()

	pid, err := sup.StartChild(ctx, herd.ChildSpec{ID: "c1", Kind: "tally", Name: "tally:1"})
	if err != nil {
		t.Fatal(err)
	}
	if !n.Alive(pid) {
		t.Fatal("child not alive")
	}
	if _, err := sup.StartChild(ctx, herd.ChildSpec{ID: "c1", Kind: "tally"}); !errors.Is(err, herd.ErrAlreadyStarted) {
		t.Fatalf("same ID again: %v", err)
	}
	if got := callInt(t, n, herd.Name("tally:1"), "inc+cp"); got != 1 {
		t.Fatalf("inc: %d", got)
	}
	kids := sup.WhichChildren()
	if len(kids) != 1 || kids[0].ID != "c1" || kids[0].PID != pid || kids[0].Node != n.ID() || !kids[0].HasState {
		t.Fatalf("WhichChildren: %+v", kids)
	}
	if c := sup.CountChildren(); c.Specs != 1 || c.Running != 1 || c.Failed != 0 {
		t.Fatalf("CountChildren: %+v", c)
	}

	// A crash restarts it from its checkpoint, under the same name.
	callCrash(t, n, herd.Name("tally:1"))
	eventually(t, "restart", func() bool { c, _ := sup.WhichChild("c1"); return c.PID != pid && n.Alive(c.PID) })
	if got := callInt(t, n, herd.Name("tally:1"), "get"); got != 1 {
		t.Fatalf("after restart: count %d, want the checkpointed 1", got)
	}

	// TerminateChild stops it and forgets it.
	c, _ := sup.WhichChild("c1")
	if err := sup.TerminateChild(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if n.Alive(c.PID) || len(sup.WhichChildren()) != 0 {
		t.Fatalf("after TerminateChild: alive %v, children %+v", n.Alive(c.PID), sup.WhichChildren())
	}
	if err := sup.TerminateChild(ctx, "c1"); !errors.Is(err, herd.ErrNoChild) {
		t.Fatalf("terminate twice: %v", err)
	}
}

func callCrash(t testing.TB, n *herd.Node, to herd.Target) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var exit *herd.ExitError
	if _, err := n.Call(ctx, to, "crash"); !errors.As(err, &exit) {
		t.Fatalf("crash call: %v", err)
	}
}

func TestSupervisorRestartTypes(t *testing.T) {
	n := newNode(t, "alone")
	registerTally(t, n)
	sup := n.Supervisor()
	ctx := context.Background()
	start := func(id string, r herd.Restart) herd.PID {
		pid, err := sup.StartChild(ctx, herd.ChildSpec{ID: id, Kind: "tally", Restart: r})
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	gone := func(id string) func() bool {
		return func() bool { _, ok := sup.WhichChild(id); return !ok }
	}

	// Transient: a normal exit forgets it; a crash restarts it.
	tr := start("transient", herd.Transient)
	callCrash(t, n, tr)
	eventually(t, "transient restarted", func() bool { c, _ := sup.WhichChild("transient"); return c.PID != tr && n.Alive(c.PID) })
	c, _ := sup.WhichChild("transient")
	if got := callInt(t, n, c.PID, "finish"); got != 0 {
		t.Fatalf("finish: %d", got)
	}
	eventually(t, "transient forgotten after a normal exit", gone("transient"))

	// Temporary: even a crash forgets it.
	callCrash(t, n, start("temporary", herd.Temporary))
	eventually(t, "temporary forgotten after a crash", gone("temporary"))

	// Permanent: a normal exit restarts it too.
	pm := start("permanent", herd.Permanent)
	callInt(t, n, pm, "finish")
	eventually(t, "permanent restarted", func() bool { c, _ := sup.WhichChild("permanent"); return c.PID != pm && n.Alive(c.PID) })

	// An Init error fails the start and leaves nothing behind.
	if _, err := sup.StartChild(ctx, herd.ChildSpec{ID: "bad", Kind: "tally", Args: "fail"}); err == nil {
		t.Fatal("start with a failing Init succeeded")
	}
	if _, ok := sup.WhichChild("bad"); ok {
		t.Fatal("a child whose Init failed is recorded")
	}
}

func TestSupervisorIntensityGivesUpOneChild(t *testing.T) {
	n, err := herd.Start(context.Background(), herd.Config{Name: "alone", ChildIntensity: 2, ChildPeriod: time.Minute, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Stop(context.Background()) })
	registerTally(t, n)
	sup := n.Supervisor()
	ctx := context.Background()
	for _, id := range []string{"flaky", "steady"} {
		if _, err := sup.StartChild(ctx, herd.ChildSpec{ID: id, Kind: "tally"}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; ; i++ {
		c, _ := sup.WhichChild("flaky")
		if c.Failed != "" {
			if i != 3 {
				t.Fatalf("given up after %d crashes, want 3 (intensity 2)", i)
			}
			break
		}
		if i > 3 {
			t.Fatalf("not given up after %d crashes: %+v", i, c)
		}
		eventually(t, "flaky running", func() bool { c, _ = sup.WhichChild("flaky"); return n.Alive(c.PID) || c.Failed != "" })
		if c.Failed != "" {
			continue
		}
		callCrash(t, n, c.PID)
		eventually(t, "flaky restarted or given up", func() bool {
			d, _ := sup.WhichChild("flaky")
			return d.Failed != "" || (d.PID != c.PID && n.Alive(d.PID))
		})
	}
	if c := sup.CountChildren(); c.Specs != 2 || c.Running != 1 || c.Failed != 1 {
		t.Fatalf("counts: %+v", c)
	}
	if _, ok := sup.LocalChildren()["steady"]; !ok {
		t.Fatal("the steady child was affected")
	}
	if _, ok := sup.LocalChildren()["flaky"]; ok {
		t.Fatal("the given-up child still runs")
	}
}

func TestSupervisorRefusesBadSpecs(t *testing.T) {
	n := newNode(t, "alone")
	registerTally(t, n)
	sup := n.Supervisor()
	type notRegistered struct{ X int }
	for name, spec := range map[string]herd.ChildSpec{
		"no ID":               {Kind: "tally"},
		"no kind":             {ID: "x"},
		"New":                 {ID: "x", New: func() herd.Process { return &tally{} }},
		"supervisor":          {ID: "x", Supervisor: &herd.SupervisorSpec{}},
		"env without name":    {ID: "x", Kind: "tally", Env: "e"},
		"bad name":            {ID: "x", Kind: "tally", Name: string([]byte{0xff})},
		"args not registered": {ID: "x", Kind: "tally", Args: notRegistered{1}},
	} {
		if _, err := sup.StartChild(context.Background(), spec); err == nil {
			t.Errorf("%s: started", name)
		}
	}
	if len(sup.WhichChildren()) != 0 {
		t.Fatalf("children after refused starts: %+v", sup.WhichChildren())
	}
}
