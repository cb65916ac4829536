package proc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	. "github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
)

// watch spawns a probe that monitors target and returns the probe's channel.
func watch(t testing.TB, rt *Runtime, target PID) (PID, chan any, Ref) {
	t.Helper()
	refs := make(chan Ref, 1)
	p := newProbe()
	pid, err := rt.SpawnProcess(&monitorProbe{probe: p, target: target, refs: refs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pid, p.ch, Recv(t, refs)
}

type monitorProbe struct {
	*probe
	target PID
	refs   chan Ref
}

func (m *monitorProbe) Init(c *Context, _ any) error {
	m.refs <- c.Monitor(m.target)
	return nil
}

func TestExitReasons(t *testing.T) {
	rt := NewRuntime(t)
	custom := errors.New("game over")
	cases := []struct {
		name          string
		stop          func(c *Context, pid PID)
		want          error
		wantTerminate bool
	}{
		{"normal", func(c *Context, _ PID) { c.Stop(nil) }, Normal, true},
		{"custom", func(c *Context, _ PID) { c.Stop(custom) }, custom, true},
		{"shutdown signal", func(_ *Context, pid PID) { _ = rt.Exit(PID{}, pid, Shutdown) }, Shutdown, true},
		{"kill", func(_ *Context, pid PID) { _ = rt.Exit(PID{}, pid, Kill) }, Killed, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			terminated := make(chan error, 1)
			pid, _ := rt.SpawnProcess(&Func{
				OnInfo:      func(c *Context, m any) { tc.stop(c, m.(PID)) },
				OnTerminate: func(_ *Context, r error) { terminated <- r },
			}, nil)
			_, downs, ref := watch(t, rt, pid)
			_ = rt.Send(pid, pid)
			d := RecvType[Down](t, downs)
			if d.Ref != ref || d.PID != pid || !errors.Is(d.Reason, tc.want) {
				t.Fatalf("Down = %+v, want reason %v", d, tc.want)
			}
			select {
			case r := <-terminated:
				if !tc.wantTerminate || !errors.Is(r, tc.want) {
					t.Fatalf("Terminate(%v), want it run: %v", r, tc.wantTerminate)
				}
			default:
				if tc.wantTerminate {
					t.Fatal("Terminate did not run before the Down")
				}
			}
		})
	}
}

func TestIsAbnormal(t *testing.T) {
	for reason, want := range map[error]bool{
		Normal:                                 false,
		Shutdown:                               false,
		fmt.Errorf("draining: %w", Shutdown):   false,
		Killed:                                 true,
		errors.New("x"):                        true,
		&CrashError{Value: Shutdown}:           true,
		&CrashError{Value: "boom"}:             true,
		ErrNoProcess:                           true,
		&ExitError{Reason: errors.New("gone")}: true,
	} {
		if got := IsAbnormal(reason); got != want {
			t.Errorf("IsAbnormal(%v) = %v, want %v", reason, got, want)
		}
	}
	if IsAbnormal(nil) {
		t.Error("IsAbnormal(nil)")
	}
}

func TestMonitorDeadAndMissingPID(t *testing.T) {
	rt := NewRuntime(t)
	pid, _ := rt.SpawnProcess(&Func{}, nil)
	_ = rt.Exit(PID{}, pid, Kill)
	_, downs, ref := watch(t, rt, pid)
	if d := RecvType[Down](t, downs); d.Ref != ref || d.PID != pid || !errors.Is(d.Reason, ErrNoProcess) {
		t.Fatalf("monitor of dead pid: %+v", d)
	}
	never := PID{Node: rt.Node(), ID: 1 << 40}
	_, downs, ref = watch(t, rt, never)
	if d := RecvType[Down](t, downs); d.Ref != ref || !errors.Is(d.Reason, ErrNoProcess) {
		t.Fatalf("monitor of never-existing pid: %+v", d)
	}
	remote := PID{Node: NodeID{Name: "far", Incarnation: 1}, ID: 1}
	_, downs, _ = watch(t, rt, remote)
	if d := RecvType[Down](t, downs); !errors.Is(d.Reason, ErrNodeDown) {
		t.Fatalf("monitor of pid on unknown node: %+v", d)
	}
}

func TestExactlyOneDownPerMonitor(t *testing.T) {
	rt := NewRuntime(t)
	target, _ := rt.SpawnProcess(&Func{}, nil)
	refs := make(chan Ref, 3)
	w := newProbe()
	watcher, _ := rt.SpawnProcess(&Func{
		OnInit: func(c *Context, _ any) error {
			for range 3 {
				refs <- c.Monitor(target)
			}
			return nil
		},
		OnInfo: func(_ *Context, m any) { w.ch <- m },
		OnCall: func(*Context, any) (any, error) { return nil, nil },
	}, nil)
	want := map[Ref]bool{Recv(t, refs): true, Recv(t, refs): true, Recv(t, refs): true}
	_ = rt.Exit(PID{}, target, Kill)
	for range 3 {
		d := RecvType[Down](t, w.ch)
		if !want[d.Ref] {
			t.Fatalf("unexpected or repeated Down %+v", d)
		}
		delete(want, d.Ref)
	}
	syncWith(t, rt, watcher)
	none(t, w.ch)
}

func TestDemonitor(t *testing.T) {
	rt := NewRuntime(t)
	target, _ := rt.SpawnProcess(&Func{}, nil)
	results := make(chan any, 4)
	var ref Ref
	watcher, _ := rt.SpawnProcess(&Func{
		OnInit: func(c *Context, _ any) error { ref = c.Monitor(target); return nil },
		OnInfo: func(c *Context, m any) {
			switch m {
			case "kill-then-demonitor":
				// The target dies, so its Down is queued behind this
				// message; Demonitor must still keep it from being handled.
				_ = c.Exit(target, Kill)
				for rt.Alive(target) {
				}
				results <- c.Demonitor(ref)
				results <- c.Demonitor(ref)
			default:
				results <- m
			}
		},
		OnCall: func(*Context, any) (any, error) { return nil, nil },
	}, nil)
	_ = rt.Send(watcher, "kill-then-demonitor")
	if v := Recv(t, results); v != true {
		t.Fatalf("first Demonitor = %v, want true", v)
	}
	if v := Recv(t, results); v != false {
		t.Fatalf("second Demonitor = %v, want false", v)
	}
	syncWith(t, rt, watcher)
	none(t, results)
	if in, _ := rt.Info(watcher); in.Monitors != 0 {
		t.Fatalf("watcher has %d monitors", in.Monitors)
	}
}

func TestMonitorsHeldByDeadProcessAreRemoved(t *testing.T) {
	rt := NewRuntime(t)
	target, _ := rt.SpawnProcess(&Func{}, nil)
	watcher, _, _ := watch(t, rt, target)
	if in, _ := rt.Info(target); in.Monitors != 1 {
		t.Fatalf("target has %d monitors, want 1", in.Monitors)
	}
	_ = rt.Exit(PID{}, watcher, Kill)
	if in, _ := rt.Info(target); in.Monitors != 0 {
		t.Fatalf("target still has %d monitors after the watcher died", in.Monitors)
	}
}

// linkedPair spawns a and b linked, with b trapping exits if trap is set.
func linkedPair(t *testing.T, rt *Runtime, trap bool) (a PID, b PID, bp *probe) {
	t.Helper()
	b, bp = spawnProbe(t, rt, trap)
	a, err := rt.SpawnProcess(&Func{
		OnInit: func(c *Context, _ any) error { return c.Link(b) },
		OnInfo: func(c *Context, m any) {
			if r, ok := m.(error); ok {
				c.Stop(r)
			}
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a, b, bp
}

func TestLinkPropagatesAbnormalExit(t *testing.T) {
	rt := NewRuntime(t)
	a, b, bp := linkedPair(t, rt, false)
	exits := Exits(t, rt, b)
	boom := errors.New("boom")
	_ = rt.Send(a, boom)
	if r := Recv(t, bp.exit); r != boom {
		t.Fatalf("linked process terminated with %v, want %v", r, boom)
	}
	// Terminate runs before the process is gone; wait for the exit itself.
	if r := Recv(t, exits); r != boom {
		t.Fatalf("linked process exited with %v, want %v", r, boom)
	}
}

func TestLinkIgnoresNormalExitUnlessTrapping(t *testing.T) {
	rt := NewRuntime(t)
	a, b, bp := linkedPair(t, rt, false)
	_ = rt.Send(a, Normal)
	// The exit signal reaches b after a's monitors hear of the exit (links
	// come last), so wait for its effect: the link is gone.
	Eventually(t, "link to the exited process removed", func() bool {
		in, _ := rt.Info(b)
		return in.Links == 0
	})
	syncWith(t, rt, b)
	if !rt.Alive(b) {
		t.Fatal("a normal exit killed the linked process")
	}
	none(t, bp.ch)

	a, _, bp = linkedPair(t, rt, true)
	_ = rt.Send(a, Normal)
	if ex := RecvType[Exit](t, bp.ch); ex.From != a || ex.Reason != Normal {
		t.Fatalf("trapping process got %+v", ex)
	}
}

func TestTrapExitTurnsSignalsIntoMessages(t *testing.T) {
	rt := NewRuntime(t)
	a, b, bp := linkedPair(t, rt, true)
	boom := errors.New("boom")
	_ = rt.Send(a, boom)
	if ex := RecvType[Exit](t, bp.ch); ex.From != a || ex.Reason != boom {
		t.Fatalf("Exit = %+v", ex)
	}
	// Exit signals not from links arrive the same way, Kill excepted.
	_ = rt.Exit(a, b, Shutdown)
	if ex := RecvType[Exit](t, bp.ch); ex.From != a || ex.Reason != Shutdown {
		t.Fatalf("Exit = %+v", ex)
	}
	_, downs, _ := watch(t, rt, b)
	_ = rt.Exit(PID{}, b, Kill)
	if d := RecvType[Down](t, downs); d.Reason != Killed {
		t.Fatalf("Kill of a trapping process: %v", d.Reason)
	}
}

func TestLinkedKilledIsTrappable(t *testing.T) {
	rt := NewRuntime(t)
	a, _, bp := linkedPair(t, rt, true)
	_ = rt.Exit(PID{}, a, Kill)
	if ex := RecvType[Exit](t, bp.ch); ex.From != a || ex.Reason != Killed {
		t.Fatalf("linked process of a killed one got %+v", ex)
	}
}

func TestSignalFromParentStopsTrappingProcess(t *testing.T) {
	rt := NewRuntime(t)
	children := make(chan PID, 1)
	child := newProbe()
	child.trap = true
	parent, _ := rt.SpawnProcess(&Func{
		OnInit: func(c *Context, _ any) error {
			c.TrapExits(true)
			pid, err := c.SpawnProcess(child, nil, Linked())
			children <- pid
			return err
		},
		OnInfo: func(c *Context, m any) {
			if m == "stop-child" {
				_ = c.Exit(<-children, Shutdown)
			}
		},
	}, nil)
	childPID := Recv(t, children)
	children <- childPID
	_ = rt.Send(parent, "stop-child")
	if r := Recv(t, child.exit); r != Shutdown {
		t.Fatalf("child terminated with %v", r)
	}
	none(t, child.ch) // stopped, not told

	// The node is the parent of what it spawned: its signal stops a
	// trapping root process too.
	root, rp := spawnProbe(t, rt, true)
	_ = rt.Exit(PID{}, root, Normal)
	if r := Recv(t, rp.exit); r != Normal {
		t.Fatalf("root terminated with %v", r)
	}
}

func TestExitNormalSignalIgnored(t *testing.T) {
	rt := NewRuntime(t)
	pid, p := spawnProbe(t, rt, false)
	_ = rt.Exit(PID{}, pid, Normal)
	_ = rt.Exit(PID{}, pid, nil)
	syncWith(t, rt, pid)
	if !rt.Alive(pid) {
		t.Fatal("Exit(Normal) stopped a process that does not trap exits")
	}
	none(t, p.ch)
}

func TestUnlink(t *testing.T) {
	rt := NewRuntime(t)
	b, bp := spawnProbe(t, rt, true)
	a, _ := rt.SpawnProcess(&Func{
		OnInit: func(c *Context, _ any) error { return c.Link(b) },
		OnCall: func(c *Context, m any) (any, error) {
			c.Unlink(b)
			return nil, nil
		},
		OnInfo: func(c *Context, m any) { c.Stop(errors.New("after unlink")) },
	}, nil)
	if _, err := rt.Call(context.Background(), a, "unlink"); err != nil {
		t.Fatal(err)
	}
	// Unlink removes both sides at once.
	for _, pid := range []PID{a, b} {
		if in, _ := rt.Info(pid); in.Links != 0 {
			t.Fatalf("%v still has %d links after Unlink", pid, in.Links)
		}
	}
	exits := Exits(t, rt, a)
	_ = rt.Send(a, "stop")
	Recv(t, exits)
	syncWith(t, rt, b)
	none(t, bp.ch)
}

func TestLinkToDeadProcess(t *testing.T) {
	rt := NewRuntime(t)
	dead, _ := rt.SpawnProcess(&Func{}, nil)
	_ = rt.Exit(PID{}, dead, Kill)
	res := make(chan error, 1)
	pid, p := spawnProbe(t, rt, false)
	_, _ = rt.SpawnProcess(&Func{OnInit: func(c *Context, _ any) error {
		res <- c.Link(dead)
		return nil
	}}, nil)
	if err := Recv(t, res); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Link to dead pid: %v", err)
	}
	_ = pid
	none(t, p.ch)
}

func TestLinkChain(t *testing.T) {
	rt := NewRuntime(t)
	// c <- b <- a: a's crash takes b, and b's exit takes c.
	c, cp := spawnProbe(t, rt, false)
	b, _ := rt.SpawnProcess(&Func{OnInit: func(ctx *Context, _ any) error { return ctx.Link(c) }}, nil)
	a, _ := rt.SpawnProcess(&Func{
		OnInit: func(ctx *Context, _ any) error { return ctx.Link(b) },
		OnInfo: func(*Context, any) { panic("chain") },
	}, nil)
	_ = rt.Send(a, "go")
	r := Recv(t, cp.exit)
	if crash, ok := errors.AsType[*CrashError](r); !ok || crash.Value != "chain" {
		t.Fatalf("end of the chain exited with %v", r)
	}
}

func TestStopProcess(t *testing.T) {
	rt := NewRuntime(t)
	pid, p := spawnProbe(t, rt, false)
	if reason, err := rt.StopProcess(context.Background(), PID{}, pid, Shutdown, time.Second); err != nil || reason != Shutdown {
		t.Fatalf("StopProcess = %v, %v", reason, err)
	}
	if r := Recv(t, p.exit); r != Shutdown {
		t.Fatalf("Terminate(%v)", r)
	}
	if _, err := rt.StopProcess(context.Background(), PID{}, pid, Shutdown, time.Second); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("stop of dead process: %v", err)
	}

	// A process that ignores the signal is killed when the budget runs out.
	// (It traps exits and the signal is not from its parent, so it becomes
	// a message the probe just forwards.)
	stubborn, _ := spawnProbe(t, rt, true)
	reason, err := rt.StopProcess(context.Background(), pid, stubborn, Shutdown, 20*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || reason != Killed || rt.Alive(stubborn) {
		t.Fatalf("stop of a stubborn process: %v, %v, alive %v", reason, err, rt.Alive(stubborn))
	}

	// A zero budget kills at once: Terminate does not run.
	brutal, bp := spawnProbe(t, rt, false)
	if reason, err := rt.StopProcess(context.Background(), PID{}, brutal, Shutdown, 0); err != nil || reason != Killed {
		t.Fatalf("brutal stop = %v, %v", reason, err)
	}
	none(t, bp.exit)
}

// Exit hooks (the registry releasing names) run before anything that
// observes the exit: StopProcess's return, MonitorFunc, callers, Down.
func TestExitHooksRunBeforeObservers(t *testing.T) {
	rt := NewRuntime(t)
	for i := range 200 {
		var mu sync.Mutex
		var log []string
		note := func(s string) { mu.Lock(); log = append(log, s); mu.Unlock() }
		pid, _ := spawnProbe(t, rt, false)
		_, downs, _ := watch(t, rt, pid)
		// Several observers and hooks, so map order cannot hide a bad tier.
		for range 3 {
			rt.MonitorFunc(pid, func(PID, error) { note("observer") })
		}
		for range 3 {
			rt.ExitHook(pid, func(PID, error) { note("hook") })
		}
		var reason error
		if i%2 == 0 {
			reason, _ = rt.StopProcess(context.Background(), PID{}, pid, Shutdown, time.Second)
		} else {
			reason, _ = rt.StopProcess(context.Background(), PID{}, pid, Shutdown, 0)
		}
		note("stopped")
		RecvType[Down](t, downs)
		mu.Lock()
		got := fmt.Sprint(log[:3])
		mu.Unlock()
		if got != "[hook hook hook]" || reason == nil {
			t.Fatalf("round %d: order %v (reason %v): observers ran before the exit hooks", i, log, reason)
		}
	}
}

// A handler that never returns is abandoned by Kill: the process is gone
// at once for everyone else.
func TestKillAbandonsStuckHandler(t *testing.T) {
	rt := NewRuntime(t)
	stuck := make(chan struct{})
	entered := make(chan *Context, 1)
	pid, _ := rt.SpawnProcess(&Func{OnInfo: func(c *Context, _ any) {
		entered <- c
		<-stuck
		// Abandoned: acting in the dead process's name fails.
		if err := c.Send(c.Self(), "zombie"); !errors.Is(err, ErrNoProcess) {
			panic("zombie send accepted")
		}
	}}, nil)
	_, downs, _ := watch(t, rt, pid)
	_ = rt.Send(pid, "block")
	Recv(t, entered)
	if _, err := rt.StopProcess(context.Background(), PID{}, pid, Shutdown, 10*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("StopProcess: %v", err)
	}
	if d := RecvType[Down](t, downs); d.Reason != Killed {
		t.Fatalf("Down %+v", d)
	}
	if rt.Alive(pid) {
		t.Fatal("killed process is alive")
	}
	// The count drops as the last step of the exit, after the Down.
	Eventually(t, "only the watcher left", func() bool { return rt.Count() == 1 })
	close(stuck)
}

func TestShutdownStopsEverything(t *testing.T) {
	rt := NewRuntime(t)
	terminated := make(chan error, 100)
	term := func(_ *Context, r error) { terminated <- r }
	orphans := make(chan PID, 10)
	for range 5 {
		// Roots that trap exits stop too: the node is their parent.
		_, err := rt.SpawnProcess(&Func{
			OnInit: func(c *Context, _ any) error {
				c.TrapExits(true)
				// An unlinked child outlives its parent and is stopped in
				// the second pass.
				pid, err := c.SpawnProcess(&Func{OnTerminate: term}, nil)
				orphans <- pid
				return err
			},
			OnTerminate: term,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if r := Recv(t, terminated); r != Shutdown {
			t.Fatalf("terminated with %v", r)
		}
	}
	if rt.Count() != 0 {
		t.Fatalf("%d processes after Shutdown", rt.Count())
	}
	if _, err := rt.SpawnProcess(&Func{}, nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("spawn after Shutdown: %v", err)
	}
}

// A process left behind by its parent, trapping exits, is still stopped
// (with Terminate) by the node's shutdown.
func TestShutdownStopsTrappingOrphans(t *testing.T) {
	rt := NewRuntime(t)
	orphan := newProbe()
	orphan.trap = true
	_, err := rt.SpawnProcess(&Func{OnInit: func(c *Context, _ any) error {
		_, err := c.SpawnProcess(orphan, nil) // not linked
		return err
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if r := Recv(t, orphan.exit); r != Shutdown {
		t.Fatalf("orphan terminated with %v", r)
	}
}

func TestShutdownKillsWhatWillNotStop(t *testing.T) {
	rt := NewRuntime(t)
	stuck := make(chan struct{})
	defer close(stuck)
	entered := make(chan struct{})
	pid, _ := rt.SpawnProcess(&Func{OnInfo: func(*Context, any) { close(entered); <-stuck }}, nil)
	_ = rt.Send(pid, "block")
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := rt.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if rt.Count() != 0 {
		t.Fatalf("%d processes after Shutdown", rt.Count())
	}
}

// Many processes sending, calling, linking, monitoring and dying at random.
// Run with -race; at the end every process is accounted for and no call hung.
func TestStress(t *testing.T) {
	rt := NewRuntime(t)
	const n = 200
	pids := make([]PID, n)
	for i := range pids {
		pid, err := rt.SpawnProcess(&Func{
			OnInfo: func(c *Context, m any) {
				switch m := m.(type) {
				case PID:
					switch rand.IntN(4) {
					case 0:
						_ = c.Link(m)
					case 1:
						c.Monitor(m)
					case 2:
						ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
						_, _ = c.Call(ctx, m, "hi")
						cancel()
					case 3:
						_ = c.Send(m, "hello")
					}
				case string:
					if m == "die" {
						panic("random death")
					}
				}
			},
			OnCall: func(_ *Context, m any) (any, error) { return m, nil },
		}, nil, TrapExits())
		if err != nil {
			t.Fatal(err)
		}
		pids[i] = pid
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range 2000 {
				from, to := pids[r.IntN(n)], pids[r.IntN(n)]
				if r.IntN(50) == 0 {
					_ = rt.Send(from, "die")
				} else {
					_ = rt.Send(from, to)
				}
			}
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		rt.Processes(func(i Info) bool { t.Logf("left: %+v", i); return true })
		t.Fatal(err)
	}
	if rt.Count() != 0 {
		t.Fatalf("%d processes left", rt.Count())
	}
}
