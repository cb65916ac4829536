package proc_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	. "github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
)

func TestSpawnRunsInitWithArgsBeforeMessages(t *testing.T) {
	rt := NewRuntime(t)
	got := make(chan any, 10)
	var self PID
	b := &Func{
		OnInit: func(c *Context, args any) error {
			self = c.Self()
			got <- args
			// A message sent to itself during Init waits until Init is done.
			_ = c.Send(c.Self(), "from-init")
			got <- "init-done"
			return nil
		},
		OnInfo: func(_ *Context, m any) { got <- m },
	}
	pid, err := rt.SpawnProcess(b, "the-args")
	if err != nil {
		t.Fatal(err)
	}
	if pid != self || pid.Node != rt.Node() || pid.ID == 0 {
		t.Fatalf("pid %v, Self in Init %v, node %v", pid, self, rt.Node())
	}
	for _, want := range []any{"the-args", "init-done", "from-init"} {
		if v := Recv(t, got); v != want {
			t.Fatalf("got %v, want %v", v, want)
		}
	}
}

func TestSpawnInitErrorAndPanic(t *testing.T) {
	rt := NewRuntime(t)
	boom := errors.New("boom")
	_, err := rt.SpawnProcess(&Func{OnInit: func(*Context, any) error { return boom }}, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("Init error: spawn returned %v, want it to wrap %v", err, boom)
	}
	_, err = rt.SpawnProcess(&Func{OnInit: func(*Context, any) error { panic("init exploded") }}, nil)
	crash, ok := errors.AsType[*CrashError](err)
	if !ok || crash.Value != "init exploded" || !strings.Contains(string(crash.Stack), "runtime_test.go") {
		t.Fatalf("Init panic: spawn returned %v, want a CrashError with the value and stack", err)
	}
	if n := rt.Count(); n != 0 {
		t.Fatalf("%d processes alive after failed spawns", n)
	}
}

func TestInitFailureReleasesWhatInitTook(t *testing.T) {
	rt := NewRuntime(t)
	watcher, w := spawnProbe(t, rt, true)
	_ = watcher
	var failed PID
	_, err := rt.SpawnProcess(&Func{OnInit: func(c *Context, _ any) error {
		failed = c.Self()
		if err := c.Link(watcher); err != nil {
			return err
		}
		return errors.New("no")
	}}, nil)
	if err == nil {
		t.Fatal("spawn succeeded")
	}
	// The process linked during Init, so its linked peer hears of the exit.
	ex := RecvType[Exit](t, w.ch)
	if ex.From != failed || ex.Reason.Error() != "no" {
		t.Fatalf("linked peer got %+v", ex)
	}
	if rt.Alive(failed) {
		t.Fatal("failed process is alive")
	}
}

func TestStopInInit(t *testing.T) {
	rt := NewRuntime(t)
	terminated := make(chan error, 1)
	pid, err := rt.SpawnProcess(&Func{
		OnInit:      func(c *Context, _ any) error { c.Stop(nil); return nil },
		OnTerminate: func(_ *Context, r error) { terminated <- r },
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := Recv(t, terminated); r != Normal {
		t.Fatalf("Terminate reason %v, want Normal", r)
	}
	exitedOrGone(t, rt, pid) // Terminate runs before the process is gone
	if rt.Alive(pid) {
		t.Fatal("still alive")
	}
}

func TestKinds(t *testing.T) {
	rt := NewRuntime(t)
	if err := rt.RegisterKind("echo", func() Process { return &echo{} }); err != nil {
		t.Fatal(err)
	}
	if err := rt.RegisterKind("echo", func() Process { return &echo{} }); err == nil {
		t.Fatal("registering a kind twice succeeded")
	}
	if err := rt.RegisterKind("", nil); err == nil {
		t.Fatal("registering an unnamed kind succeeded")
	}
	pid, err := rt.Spawn("echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if in, _ := rt.Info(pid); in.Kind != "echo" {
		t.Fatalf("Info.Kind = %q", in.Kind)
	}
	if _, err := rt.Spawn("nope", nil); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("unknown kind: %v", err)
	}
	if ks := rt.Kinds(); len(ks) != 1 || ks[0] != "echo" {
		t.Fatalf("Kinds = %v", ks)
	}
}

func TestSendCastCall(t *testing.T) {
	rt := NewRuntime(t)
	pid, p := spawnProbe(t, rt, false)
	if err := rt.Send(pid, "info"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Cast(pid, "cast"); err != nil {
		t.Fatal(err)
	}
	if v := Recv(t, p.ch); v != "info" {
		t.Fatalf("got %v", v)
	}
	if v := Recv(t, p.ch); v != "cast" {
		t.Fatalf("got %v", v)
	}
	reply, err := rt.Call(context.Background(), pid, "question")
	if err != nil || reply != "question" {
		t.Fatalf("Call = %v, %v", reply, err)
	}
}

func TestCallReturnsHandlerError(t *testing.T) {
	rt := NewRuntime(t)
	bad := errors.New("bad request")
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(_ *Context, m any) (any, error) { return "partial", bad }}, nil)
	reply, err := rt.Call(context.Background(), pid, 1)
	if !errors.Is(err, bad) || reply != "partial" {
		t.Fatalf("Call = %v, %v", reply, err)
	}
	// An error reply does not stop the process.
	if !rt.Alive(pid) {
		t.Fatal("process died after returning an error")
	}
	// Base answers calls with ErrUnhandled.
	pid2, _ := rt.SpawnProcess(&Func{}, nil)
	if _, err := rt.Call(context.Background(), pid2, 1); !errors.Is(err, ErrUnhandled) {
		t.Fatalf("Base.HandleCall: %v", err)
	}
}

func TestSendToMissingTargets(t *testing.T) {
	rt := NewRuntime(t)
	missing := PID{Node: rt.Node(), ID: 999}
	if err := rt.Send(missing, 1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("send to missing pid: %v", err)
	}
	previousLife := PID{Node: NodeID{Name: rt.Node().Name, Incarnation: rt.Node().Incarnation - 1}, ID: 1}
	if err := rt.Send(previousLife, 1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("send to a previous incarnation: %v", err)
	}
	other := PID{Node: NodeID{Name: "elsewhere", Incarnation: 1}, ID: 1}
	if err := rt.Send(other, 1); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("send to an unknown node: %v", err)
	}
	if _, err := rt.Call(context.Background(), other, 1); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call to an unknown node: %v", err)
	}
	if err := rt.Send(Name("nobody"), 1); !errors.Is(err, ErrNoName) || !errors.Is(err, ErrNoProcess) {
		t.Fatalf("send to unregistered name: %v", err)
	}
	if _, err := rt.Call(context.Background(), missing, 1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("call to missing pid: %v", err)
	}
	var nilTarget Target
	if err := rt.Send(nilTarget, 1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("send to nil target: %v", err)
	}
}

func TestResolverRoutesNames(t *testing.T) {
	rt := NewRuntime(t)
	pid, p := spawnProbe(t, rt, false)
	rt.SetResolver(func(n EnvName) (PID, bool) {
		if n == (EnvName{Env: "tenant", Name: "svc"}) || n == (EnvName{Name: "svc"}) {
			return pid, true
		}
		return PID{}, false
	})
	if err := rt.Send(Name("svc"), "a"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Send(InEnv("tenant", "svc"), "b"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Send(InEnv("other", "svc"), "c"); !errors.Is(err, ErrNoName) {
		t.Fatalf("name in another environment resolved: %v", err)
	}
	if v := Recv(t, p.ch); v != "a" {
		t.Fatal(v)
	}
	if v := Recv(t, p.ch); v != "b" {
		t.Fatal(v)
	}
	if r, err := rt.Call(context.Background(), Name("svc"), "q"); err != nil || r != "q" {
		t.Fatalf("call by name: %v %v", r, err)
	}
}

func TestCallContextEnds(t *testing.T) {
	rt := NewRuntime(t)
	release := make(chan struct{})
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(_ *Context, m any) (any, error) {
		<-release
		return m, nil
	}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := rt.Call(ctx, pid, "slow")
		done <- err
	}()
	cancel()
	if err := Recv(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("call after cancel: %v", err)
	}
	close(release)
	// An already-ended context is refused before anything is sent.
	if _, err := rt.Call(ctx, pid, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("call with ended context: %v", err)
	}
	if r, err := rt.Call(context.Background(), pid, "next"); err != nil || r != "next" {
		t.Fatalf("next call: %v, %v", r, err)
	}
}

// A late reply to an abandoned call must never be taken for the reply to a
// later call, even though waiters are reused.
func TestLateReplyIsNotMistakenForNextCall(t *testing.T) {
	rt := NewRuntime(t)
	var pending []ReplyTo
	var mu sync.Mutex
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(c *Context, m any) (any, error) {
		if m == "defer" {
			mu.Lock()
			pending = append(pending, c.DeferReply())
			mu.Unlock()
			return nil, nil
		}
		return m, nil
	}}, nil)
	caller := func(c *Context) {
		for i := range 50 {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, _ = c.Call(ctx, pid, "defer") // refused: context already ended
			ctx, cancel = context.WithTimeout(context.Background(), time.Millisecond)
			_, err := c.Call(ctx, pid, "defer")
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				panic(fmt.Sprintf("deferred call: %v", err))
			}
			// Answer the abandoned call now, then make a fresh call.
			mu.Lock()
			for _, r := range pending {
				if r.Reply("stale", nil) {
					panic("a reply to an abandoned call was accepted")
				}
			}
			pending = nil
			mu.Unlock()
			want := fmt.Sprint("fresh-", i)
			got, err := c.Call(context.Background(), pid, want)
			if err != nil || got != want {
				panic(fmt.Sprintf("fresh call %d got %v, %v", i, got, err))
			}
		}
	}
	done := make(chan error, 1)
	_, err := rt.SpawnProcess(&Func{OnInit: func(c *Context, _ any) error {
		_ = c.Send(c.Self(), "go")
		return nil
	}, OnInfo: func(c *Context, _ any) {
		caller(c)
		done <- nil
	}, OnTerminate: func(_ *Context, r error) { done <- r }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := Recv(t, done); err != nil {
		t.Fatal(err)
	}
	// Same from non-process callers, whose waiters come from a pool.
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := rt.Call(ctx, pid, "defer")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("deferred call: %v", err)
		}
		mu.Lock()
		for _, r := range pending {
			if r.Reply("stale", nil) {
				t.Fatal("a reply to an abandoned call was accepted")
			}
		}
		pending = nil
		mu.Unlock()
		want := fmt.Sprint("fresh-", i)
		if got, err := rt.Call(context.Background(), pid, want); err != nil || got != want {
			t.Fatalf("fresh call %d got %v, %v", i, got, err)
		}
	}
}

func TestDeferredReplyFromAnotherGoroutine(t *testing.T) {
	rt := NewRuntime(t)
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(c *Context, m any) (any, error) {
		r := c.DeferReply()
		if r.Caller() != c.Caller() {
			panic("ReplyTo.Caller differs from Context.Caller")
		}
		go func() { r.Reply(fmt.Sprint("later:", m), nil) }()
		return "ignored", nil
	}}, nil)
	got, err := rt.Call(context.Background(), pid, 7)
	if err != nil || got != "later:7" {
		t.Fatalf("Call = %v, %v", got, err)
	}
}

func TestCallerIdentity(t *testing.T) {
	rt := NewRuntime(t)
	callee, _ := rt.SpawnProcess(&Func{OnCall: func(c *Context, _ any) (any, error) { return c.Caller(), nil }}, nil)
	if got, _ := rt.Call(context.Background(), callee, nil); got != (PID{}) {
		t.Fatalf("caller outside a process = %v, want zero", got)
	}
	res := make(chan any, 1)
	callerPID, _ := rt.SpawnProcess(&Func{OnInfo: func(c *Context, _ any) {
		got, _ := c.Call(context.Background(), callee, nil)
		res <- got
	}}, nil)
	_ = rt.Send(callerPID, "go")
	if got := Recv(t, res); got != callerPID {
		t.Fatalf("Caller = %v, want %v", got, callerPID)
	}
}

func TestCallSelf(t *testing.T) {
	rt := NewRuntime(t)
	res := make(chan error, 1)
	pid, _ := rt.SpawnProcess(&Func{OnInfo: func(c *Context, _ any) {
		_, err := c.Call(context.Background(), c.Self(), "me")
		res <- err
	}}, nil)
	_ = rt.Send(pid, "go")
	if err := Recv(t, res); !errors.Is(err, ErrCallSelf) {
		t.Fatalf("call self: %v", err)
	}
}

func TestCallToProcessThatDiesMidCall(t *testing.T) {
	rt := NewRuntime(t)
	entered := make(chan struct{})
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(c *Context, m any) (any, error) {
		close(entered)
		panic("died mid-call")
	}}, nil)
	_, err := rt.Call(context.Background(), pid, "q")
	<-entered
	ee, ok := errors.AsType[*ExitError](err)
	if !ok || ee.PID != pid || !errors.Is(err, ErrNoProcess) {
		t.Fatalf("call to crashing process: %v", err)
	}
	if crash, ok := errors.AsType[*CrashError](err); !ok || crash.Value != "died mid-call" {
		t.Fatalf("exit reason not carried: %v", err)
	}
}

// Calls queued behind a handler that never returns end as soon as the
// process is killed, not when their contexts do.
func TestCallsToKilledStuckProcessEnd(t *testing.T) {
	rt := NewRuntime(t)
	stuck := make(chan struct{})
	defer close(stuck)
	entered := make(chan struct{}, 10)
	pid, _ := rt.SpawnProcess(&Func{OnCall: func(c *Context, m any) (any, error) {
		entered <- struct{}{}
		<-stuck
		return m, nil
	}}, nil)
	const callers = 5
	errs := make(chan error, callers)
	for range callers {
		go func() {
			_, err := rt.Call(context.Background(), pid, "q")
			errs <- err
		}()
	}
	Recv(t, entered)
	// One call is being handled; wait until the others are queued behind it.
	deadline := time.Now().Add(Wait)
	for in, _ := rt.Info(pid); in.Mailbox < callers; in, _ = rt.Info(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d calls queued", in.Mailbox)
		}
		runtime.Gosched()
	}
	if err := rt.Exit(PID{}, pid, Kill); err != nil {
		t.Fatal(err)
	}
	for range callers {
		err := Recv(t, errs)
		if !errors.Is(err, ErrNoProcess) || !errors.Is(err, Killed) {
			t.Fatalf("call to killed process: %v", err)
		}
	}
}

// Messages from one sender arrive in the order sent, with many senders at
// once.
func TestFIFOPerSender(t *testing.T) {
	rt := NewRuntime(t)
	const senders, per = 8, 5000
	type msg struct{ from, seq int }
	last := make([]int, senders)
	bad := make(chan string, 1)
	done := make(chan struct{})
	total := 0
	pid, _ := rt.SpawnProcess(&Func{OnInfo: func(_ *Context, m any) {
		x := m.(msg)
		if x.seq != last[x.from]+1 {
			select {
			case bad <- fmt.Sprintf("sender %d: %d after %d", x.from, x.seq, last[x.from]):
			default:
			}
		}
		last[x.from] = x.seq
		if total++; total == senders*per {
			close(done)
		}
	}}, nil)
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := 1; i <= per; i++ {
				if err := rt.Send(pid, msg{s, i}); err != nil {
					panic(err)
				}
			}
		})
	}
	wg.Wait()
	Recv(t, done)
	select {
	case e := <-bad:
		t.Fatal(e)
	default:
	}
}

func TestPanicIsolation(t *testing.T) {
	rt := NewRuntime(t)
	healthy, hp := spawnProbe(t, rt, false)
	crasher, _ := rt.SpawnProcess(&Func{OnInfo: func(*Context, any) { panic(errors.New("kaboom")) }}, nil)
	_, downs, _ := watch(t, rt, crasher)
	_ = rt.Send(crasher, "die")
	reason := RecvType[Down](t, downs).Reason
	crash, ok := errors.AsType[*CrashError](reason)
	if !ok || crash.Error() != "crash: panic: kaboom" || crash.Unwrap() == nil {
		t.Fatalf("crash reason: %v", reason)
	}
	_ = rt.Send(healthy, "still here")
	if v := Recv(t, hp.ch); v != "still here" {
		t.Fatal(v)
	}
}

// exitedOrGone waits until pid has exited, whether or not it already has. The
// reason it returns is ErrNoProcess if it had; to learn the reason, watch
// before causing the exit.
func exitedOrGone(t testing.TB, rt *Runtime, pid PID) error {
	t.Helper()
	res := make(chan error, 1)
	_, err := rt.SpawnProcess(&Func{
		OnInit: func(c *Context, _ any) error { c.Monitor(pid); return nil },
		OnInfo: func(_ *Context, m any) {
			if d, ok := m.(Down); ok {
				res <- d.Reason
			}
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return Recv(t, res)
}

func TestTerminatePanicIsContained(t *testing.T) {
	rt := NewRuntime(t)
	pid, _ := rt.SpawnProcess(&Func{
		OnInfo:      func(c *Context, _ any) { c.Stop(errors.New("done")) },
		OnTerminate: func(*Context, error) { panic("terminate exploded") },
	}, nil)
	_, downs, _ := watch(t, rt, pid)
	_ = rt.Send(pid, "stop")
	if d := RecvType[Down](t, downs); d.Reason.Error() != "done" {
		t.Fatalf("reason %v, want the Stop reason", d.Reason)
	}
}

func TestIdleProcessesHoldNoGoroutine(t *testing.T) {
	rt := NewRuntime(t)
	before := runtime.NumGoroutine()
	pids := make([]PID, 1000)
	for i := range pids {
		var p *probe
		pids[i], p = spawnProbe(t, rt, false)
		_ = rt.Send(pids[i], i)
		Recv(t, p.ch)
	}
	// Every process has handled its message; wait until each has gone idle.
	deadline := time.Now().Add(Wait)
	for runtime.NumGoroutine() > before+10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines for 1000 idle processes (%d before)", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
	}
}

func TestContextDoneClosesOnExit(t *testing.T) {
	rt := NewRuntime(t)
	ctxs := make(chan *Context, 1)
	pid, _ := rt.SpawnProcess(&Func{OnInit: func(c *Context, _ any) error { ctxs <- c; return nil }}, nil)
	c := Recv(t, ctxs)
	if c.Err() != nil {
		t.Fatal("Err before exit")
	}
	done := c.Done()
	_ = rt.Exit(PID{}, pid, Kill)
	Recv(t, done)
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err after exit = %v", c.Err())
	}
	// A dead process's context cannot act.
	if err := c.Send(pid, 1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("send from dead context: %v", err)
	}
	if _, err := c.SpawnProcess(&Func{}, nil); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("spawn from dead context: %v", err)
	}
}

func TestSendAfterAndCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := NewRuntime(t)
		pid, p := spawnProbe(t, rt, false)
		start := time.Now()
		rt.SendAfter(pid, "tick", 3*time.Second)
		cancelled := rt.SendAfter(pid, "never", time.Second)
		if !cancelled.Cancel() {
			t.Fatal("Cancel of a pending timer reported false")
		}
		v := <-p.ch // in a bubble: a deadlock is reported, no timeout needed
		if v != "tick" || time.Since(start) != 3*time.Second {
			t.Fatalf("got %v after %v", v, time.Since(start))
		}
		synctest.Wait()
		none(t, p.ch)
		fired := rt.SendAfter(pid, "late", time.Second)
		<-p.ch
		if fired.Cancel() {
			t.Fatal("Cancel of a fired timer reported true")
		}
	})
}

func TestContextSendAfterToSelf(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := NewRuntime(t)
		got := make(chan any, 1)
		_, err := rt.SpawnProcess(&Func{
			OnInit: func(c *Context, _ any) error { c.SendAfter(time.Minute, "wake"); return nil },
			OnInfo: func(_ *Context, m any) { got <- m },
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if v := <-got; v != "wake" || time.Since(start) != time.Minute {
			t.Fatalf("got %v after %v", v, time.Since(start))
		}
	})
}

func TestInfoAndProcesses(t *testing.T) {
	rt := NewRuntime(t)
	parentGot := make(chan PID, 1)
	parent, _ := rt.SpawnProcess(&Func{OnInfo: func(c *Context, _ any) {
		child, err := c.SpawnProcess(&Func{}, nil, Linked(), TrapExits())
		if err != nil {
			panic(err)
		}
		parentGot <- child
	}}, nil)
	_ = rt.Send(parent, "spawn")
	child := Recv(t, parentGot)
	in, ok := rt.Info(child)
	if !ok || in.Parent != parent || in.Links != 1 || !in.TrapExits || in.Kind != "*proctest.Func" {
		t.Fatalf("Info = %+v, %v", in, ok)
	}
	seen := map[PID]bool{}
	rt.Processes(func(i Info) bool { seen[i.PID] = true; return true })
	if !seen[parent] || !seen[child] || len(seen) != rt.Count() {
		t.Fatalf("Processes saw %v, Count %d", seen, rt.Count())
	}
	if _, ok := rt.Info(PID{Node: rt.Node(), ID: 12345}); ok {
		t.Fatal("Info of a missing pid")
	}
}

type captureHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r)
	h.mu.Unlock()
	return nil
}
func (h *captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *captureHandler) WithGroup(string) slog.Handler      { return h }
func (h *captureHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.records {
		if r.Message == msg {
			n++
		}
	}
	return n
}

func TestLongMailboxWarnsOncePerBusySpell(t *testing.T) {
	h := &captureHandler{}
	rt := NewRuntimeWith(t, Config{Logger: slog.New(h), MailboxWarn: 100})
	release := make(chan struct{})
	pid, _ := rt.SpawnProcess(&Func{
		OnInfo: func(_ *Context, m any) {
			if m == "block" {
				<-release
			}
		},
		OnCall: func(*Context, any) (any, error) { return nil, nil },
	}, nil)
	_ = rt.Send(pid, "block")
	for i := range 300 {
		_ = rt.Send(pid, i)
	}
	if n := h.count("mailbox is long"); n != 1 {
		t.Fatalf("%d warnings for one long mailbox, want 1", n)
	}
	close(release)
	idle := func() {
		t.Helper()
		deadline := time.Now().Add(Wait)
		for {
			if in, _ := rt.Info(pid); !in.Running && in.Mailbox == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("process never went idle")
			}
			runtime.Gosched()
		}
	}
	idle()
	if n := h.count("mailbox is long"); n != 1 {
		t.Fatalf("%d warnings after draining, want 1", n)
	}
	// A new busy spell warns again.
	release = make(chan struct{})
	_ = rt.Send(pid, "block")
	for i := range 300 {
		_ = rt.Send(pid, i)
	}
	close(release)
	idle()
	if n := h.count("mailbox is long"); n != 2 {
		t.Fatalf("%d warnings after a second busy spell, want 2", n)
	}
}

func TestBeforeInitHooksAndOwner(t *testing.T) {
	owner := &struct{ name string }{"the-node"}
	rt := NewRuntimeWith(t, Config{Owner: owner})
	var order []string
	pid, err := rt.SpawnProcess(&Func{OnInit: func(c *Context, _ any) error {
		order = append(order, "init")
		return nil
	}}, nil, BeforeInit(func(c *Context) error {
		if c.Runtime().Owner() != owner {
			return errors.New("wrong owner")
		}
		order = append(order, "hook:"+c.Self().String())
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(order) != fmt.Sprintf("[hook:%v init]", pid) {
		t.Fatalf("order %v", order)
	}
	refused := errors.New("name taken")
	initRan := false
	_, err = rt.SpawnProcess(&Func{OnInit: func(*Context, any) error { initRan = true; return nil }}, nil,
		BeforeInit(func(*Context) error { return refused }))
	if !errors.Is(err, refused) || initRan {
		t.Fatalf("failing hook: err %v, Init ran %v", err, initRan)
	}
	if rt.Count() != 1 {
		t.Fatalf("%d processes, want 1", rt.Count())
	}
}

// Goroutines a process starts may call through its Context at the same time
// as the process itself; each call gets its own reply.
func TestConcurrentCallsThroughOneContext(t *testing.T) {
	rt := NewRuntime(t)
	callee, _ := rt.SpawnProcess(&echo{}, nil)
	done := make(chan error, 1)
	caller, err := rt.SpawnProcess(&Func{OnInfo: func(c *Context, _ any) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Go(func() {
				for i := range 200 {
					want := fmt.Sprint(g, "-", i)
					got, err := c.Call(context.Background(), callee, want)
					if err != nil || got != want {
						errs <- fmt.Errorf("goroutine %d call %d: got %v, %v", g, i, got, err)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		done <- <-errs
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = rt.Send(caller, "go")
	if err := Recv(t, done); err != nil {
		t.Fatal(err)
	}
}
