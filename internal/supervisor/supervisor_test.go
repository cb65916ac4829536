package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
)

// journal records what workers do, in order, across processes.
type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	j.lines = append(j.lines, fmt.Sprintf(format, args...))
	j.mu.Unlock()
}

func (j *journal) take() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := j.lines
	j.lines = nil
	return out
}

// worker is a test child: it journals its start and stop, crashes on
// "crash", stops normally on "stop", blocks on "block" until released.
type worker struct {
	proc.Base
	name    string
	j       *journal
	release chan struct{}
	blocked chan struct{} // if set, told when the worker blocks
}

func (w *worker) Init(*proc.Context, any) error {
	w.j.add("start %s", w.name)
	return nil
}

func (w *worker) HandleInfo(c *proc.Context, m any) {
	switch m {
	case "crash":
		panic("crash " + w.name)
	case "stop":
		c.Stop(nil)
	case "block":
		if w.blocked != nil {
			w.blocked <- struct{}{}
		}
		<-w.release
	}
}

func (w *worker) Terminate(_ *proc.Context, r error) {
	w.j.add("stop %s %v", w.name, r)
}

func workerSpec(j *journal, id string, r Restart) ChildSpec {
	return ChildSpec{ID: id, Restart: r, New: func() proc.Process { return &worker{name: id, j: j} }}
}

func which(t *testing.T, rt *proc.Runtime, sup proc.PID) map[string]proc.PID {
	t.Helper()
	kids, err := WhichChildren(context.Background(), rt, sup)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]proc.PID, len(kids))
	for _, k := range kids {
		out[k.ID] = k.PID
	}
	return out
}

// eventLog keeps every Event of the supervisors a test starts, so a test can
// wait for the supervisor to have handled something instead of guessing.
type eventLog struct {
	mu      sync.Mutex
	events  []Event
	changed chan struct{}
}

// logs holds each test's eventLog, so runs and tests never see each other's
// events (PIDs repeat across tests: every runtime is node test@1).
var logs sync.Map // *testing.T -> *eventLog

func logOf(t *testing.T) *eventLog {
	if l, ok := logs.Load(t); ok {
		return l.(*eventLog)
	}
	l := &eventLog{changed: make(chan struct{})}
	logs.Store(t, l)
	t.Cleanup(func() { logs.Delete(t) })
	return l
}

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// await waits for an event matching match and returns it.
func (l *eventLog) await(t *testing.T, what string, match func(Event) bool) Event {
	t.Helper()
	timeout := time.After(Wait)
	for {
		l.mu.Lock()
		for _, e := range l.events {
			if match(e) {
				l.mu.Unlock()
				return e
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no event within %v: %s", Wait, what)
		}
	}
}

// crash makes child id crash and waits until the supervisor has handled the
// exit (and so done whatever restart needs no delay).
func crash(t *testing.T, rt *proc.Runtime, sup proc.PID, id string) {
	t.Helper()
	pid := which(t, rt, sup)[id]
	if err := rt.Send(pid, "crash"); err != nil {
		t.Fatal(err)
	}
	awaitExitHandled(t, rt, sup, pid)
}

func awaitExitHandled(t *testing.T, rt *proc.Runtime, sup, pid proc.PID) {
	t.Helper()
	logOf(t).await(t, fmt.Sprintf("exit of %v handled", pid), func(e Event) bool {
		return e.Kind == ChildExited && e.PID == pid
	})
	which(t, rt, sup) // a call queued after the handling: it has finished
}

func startSup(t *testing.T, rt *proc.Runtime, spec Spec) proc.PID {
	t.Helper()
	user, log := spec.Observer, logOf(t)
	spec.Observer = func(e Event) {
		if user != nil {
			user(e)
		}
		log.add(e)
	}
	pid, err := Start(rt, spec)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestStartsChildrenInOrderAndStopsThemNewestFirst(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	sup := startSup(t, rt, Spec{Children: []ChildSpec{
		workerSpec(j, "a", Permanent), workerSpec(j, "b", Permanent), workerSpec(j, "c", Permanent),
	}})
	if got := j.take(); !slices.Equal(got, []string{"start a", "start b", "start c"}) {
		t.Fatalf("start order %v", got)
	}
	exits := Exits(t, rt, sup)
	if _, err := rt.StopProcess(context.Background(), proc.PID{}, sup, proc.Shutdown, time.Minute); err != nil {
		t.Fatal(err)
	}
	Recv(t, exits)
	if got := j.take(); !slices.Equal(got, []string{"stop c shutdown", "stop b shutdown", "stop a shutdown"}) {
		t.Fatalf("stop order %v", got)
	}
}

func TestOneForOne(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	sup := startSup(t, rt, Spec{Strategy: OneForOne, Children: []ChildSpec{
		workerSpec(j, "a", Permanent), workerSpec(j, "b", Permanent), workerSpec(j, "c", Permanent),
	}})
	before := which(t, rt, sup)
	j.take()
	crash(t, rt, sup, "b")
	after := which(t, rt, sup)
	if after["a"] != before["a"] || after["c"] != before["c"] {
		t.Fatal("one_for_one restarted a child that did not fail")
	}
	if after["b"] == before["b"] || !rt.Alive(after["b"]) {
		t.Fatalf("b not restarted: %v -> %v", before["b"], after["b"])
	}
	got := j.take()
	if len(got) != 2 || !strings.HasPrefix(got[0], "stop b crash: panic: crash b") || got[1] != "start b" {
		t.Fatalf("journal %v", got)
	}
}

func TestOneForAll(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	sup := startSup(t, rt, Spec{Strategy: OneForAll, Children: []ChildSpec{
		workerSpec(j, "a", Permanent), workerSpec(j, "b", Permanent), workerSpec(j, "c", Permanent),
	}})
	before := which(t, rt, sup)
	j.take()
	crash(t, rt, sup, "b")
	after := which(t, rt, sup)
	for id := range before {
		if after[id] == before[id] || !rt.Alive(after[id]) {
			t.Fatalf("one_for_all did not restart %s", id)
		}
	}
	got := j.take()
	want := []string{"stop c shutdown", "stop a shutdown", "start a", "start b", "start c"}
	if len(got) != 6 || !strings.HasPrefix(got[0], "stop b crash") || !slices.Equal(got[1:], want) {
		t.Fatalf("journal %v", got)
	}
}

func TestRestForOne(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	sup := startSup(t, rt, Spec{Strategy: RestForOne, Children: []ChildSpec{
		workerSpec(j, "a", Permanent), workerSpec(j, "b", Permanent), workerSpec(j, "c", Permanent), workerSpec(j, "d", Permanent),
	}})
	before := which(t, rt, sup)
	j.take()
	crash(t, rt, sup, "b")
	after := which(t, rt, sup)
	if after["a"] != before["a"] {
		t.Fatal("rest_for_one restarted a child started before the failed one")
	}
	for _, id := range []string{"b", "c", "d"} {
		if after[id] == before[id] {
			t.Fatalf("rest_for_one did not restart %s", id)
		}
	}
	got := j.take()
	want := []string{"stop d shutdown", "stop c shutdown", "start b", "start c", "start d"}
	if len(got) != 6 || !strings.HasPrefix(got[0], "stop b crash") || !slices.Equal(got[1:], want) {
		t.Fatalf("journal %v", got)
	}
}

func TestRestartTypes(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	sup := startSup(t, rt, Spec{Intensity: 10, Children: []ChildSpec{
		workerSpec(j, "perm", Permanent), workerSpec(j, "trans", Transient), workerSpec(j, "temp", Temporary),
	}})
	stopAndWait := func(id, how string) {
		pid := which(t, rt, sup)[id]
		_ = rt.Send(pid, how)
		awaitExitHandled(t, rt, sup, pid)
	}
	before := which(t, rt, sup)
	stopAndWait("perm", "stop")
	if now := which(t, rt, sup)["perm"]; now == before["perm"] || now.IsZero() {
		t.Fatal("a permanent child that exited normally was not restarted")
	}
	stopAndWait("trans", "crash")
	if now := which(t, rt, sup)["trans"]; now == before["trans"] || now.IsZero() {
		t.Fatal("a transient child that crashed was not restarted")
	}
	stopAndWait("trans", "stop")
	kids := which(t, rt, sup)
	if pid, ok := kids["trans"]; !ok || !pid.IsZero() {
		t.Fatalf("a transient child that exited normally: %v, %v (want kept, not running)", pid, ok)
	}
	stopAndWait("temp", "crash")
	if _, ok := which(t, rt, sup)["temp"]; ok {
		t.Fatal("a temporary child was kept after it exited")
	}
	c, err := CountChildren(context.Background(), rt, sup)
	if err != nil || c != (Counts{Specs: 2, Active: 1, Workers: 2}) {
		t.Fatalf("CountChildren = %+v, %v", c, err)
	}
}

func TestIntensityExceededStopsChildrenAndExits(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	var events []Event
	var mu sync.Mutex
	sup := startSup(t, rt, Spec{Intensity: 2, Period: time.Hour,
		Observer: func(e Event) { mu.Lock(); events = append(events, e); mu.Unlock() },
		Children: []ChildSpec{workerSpec(j, "steady", Permanent), workerSpec(j, "flaky", Permanent)}})
	supExit := Exits(t, rt, sup)
	crash(t, rt, sup, "flaky")
	crash(t, rt, sup, "flaky")
	steady := which(t, rt, sup)["steady"]
	pid := which(t, rt, sup)["flaky"]
	_ = rt.Send(pid, "crash") // the third restart in the period is one too many
	if r := Recv(t, supExit); !errors.Is(r, ErrMaxRestarts) || !proc.IsAbnormal(r) {
		t.Fatalf("supervisor exited with %v", r)
	}
	if rt.Alive(steady) {
		t.Fatal("the other child outlived its supervisor")
	}
	mu.Lock()
	defer mu.Unlock()
	i := slices.IndexFunc(events, func(e Event) bool { return e.Kind == GaveUp })
	if i < 0 || events[i].ID != "flaky" || !errors.Is(events[i].Reason, ErrMaxRestarts) {
		t.Fatalf("no GaveUp event for flaky in %+v", events)
	}
	// After giving up, the remaining child is stopped.
	if rest := events[i+1:]; len(rest) != 1 || rest[0].Kind != ChildExited || rest[0].ID != "steady" {
		t.Fatalf("events after GaveUp: %+v", rest)
	}
}

func TestIntensityWindowSlides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := NewRuntime(t)
		j := &journal{}
		sup := startSup(t, rt, Spec{Intensity: 1, Period: 10 * time.Second,
			Children: []ChildSpec{workerSpec(j, "w", Permanent)}})
		supExit := Exits(t, rt, sup)
		for range 5 {
			crash(t, rt, sup, "w") // one restart per window is allowed
			time.Sleep(11 * time.Second)
		}
		select {
		case r := <-supExit:
			t.Fatalf("supervisor exited with %v though restarts were spread out", r)
		default:
		}
		crash(t, rt, sup, "w")
		pid := which(t, rt, sup)["w"]
		_ = rt.Send(pid, "crash")
		if r := <-supExit; !errors.Is(r, ErrMaxRestarts) {
			t.Fatalf("supervisor exited with %v", r)
		}
	})
}

// A nested supervisor that gives up is restarted by its parent; siblings of
// the nested tree are untouched.
func TestEscalationToParent(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	inner := Spec{Intensity: NoRestarts, Children: []ChildSpec{workerSpec(j, "fragile", Permanent)}}
	top := startSup(t, rt, Spec{Strategy: OneForOne, Children: []ChildSpec{
		workerSpec(j, "sibling", Permanent), Child("inner", inner),
	}})
	before := which(t, rt, top)
	innerKids := which(t, rt, before["inner"])
	exits := Exits(t, rt, before["inner"])
	_ = rt.Send(innerKids["fragile"], "crash")
	if r := Recv(t, exits); !errors.Is(r, ErrMaxRestarts) {
		t.Fatalf("inner supervisor exited with %v", r)
	}
	Eventually(t, "inner supervisor restarted", func() bool {
		now := which(t, rt, top)
		return !now["inner"].IsZero() && now["inner"] != before["inner"]
	})
	after := which(t, rt, top)
	if after["sibling"] != before["sibling"] {
		t.Fatal("escalation restarted an unrelated sibling")
	}
	if fragile := which(t, rt, after["inner"])["fragile"]; !rt.Alive(fragile) || fragile == innerKids["fragile"] {
		t.Fatal("restarted inner supervisor did not start a new child")
	}
}

func TestShutdownBudgets(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	release, blocked := make(chan struct{}), make(chan struct{}, 1)
	defer close(release)
	sup := startSup(t, rt, Spec{Children: []ChildSpec{
		{ID: "stuck", Shutdown: 50 * time.Millisecond, New: func() proc.Process {
			return &worker{name: "stuck", j: j, release: release, blocked: blocked}
		}},
		{ID: "brutal", Shutdown: Brutal, New: func() proc.Process { return &worker{name: "brutal", j: j} }},
		workerSpec(j, "graceful", Permanent),
	}})
	kids := which(t, rt, sup)
	_ = rt.Send(kids["stuck"], "block")
	_ = rt.Send(kids["stuck"], "never handled")
	Recv(t, blocked)
	j.take()
	start := time.Now()
	if err := TerminateChild(context.Background(), rt, sup, "stuck"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("a stuck child was stopped in %v, before its budget ran out", took)
	}
	if rt.Alive(kids["stuck"]) {
		t.Fatal("stuck child survived its budget")
	}
	if err := TerminateChild(context.Background(), rt, sup, "brutal"); err != nil {
		t.Fatal(err)
	}
	if err := TerminateChild(context.Background(), rt, sup, "graceful"); err != nil {
		t.Fatal(err)
	}
	// Only the graceful child ran Terminate.
	if got := j.take(); !slices.Equal(got, []string{"stop graceful shutdown"}) {
		t.Fatalf("journal %v", got)
	}
}

func TestStaticChildManagement(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	ctx := context.Background()
	sup := startSup(t, rt, Spec{Children: []ChildSpec{workerSpec(j, "a", Permanent)}})
	pid, err := StartChild(ctx, rt, sup, workerSpec(j, "b", Permanent))
	if err != nil || !rt.Alive(pid) {
		t.Fatalf("StartChild: %v, %v", pid, err)
	}
	if got, err := StartChild(ctx, rt, sup, workerSpec(j, "b", Permanent)); !errors.Is(err, ErrAlreadyStarted) || got != pid {
		t.Fatalf("StartChild of a running ID: %v, %v", got, err)
	}
	if err := DeleteChild(ctx, rt, sup, "b"); !errors.Is(err, ErrRunning) {
		t.Fatalf("DeleteChild of a running child: %v", err)
	}
	if err := TerminateChild(ctx, rt, sup, "b"); err != nil || rt.Alive(pid) {
		t.Fatalf("TerminateChild: %v", err)
	}
	if _, err := StartChild(ctx, rt, sup, workerSpec(j, "b", Permanent)); !errors.Is(err, ErrAlreadyPresent) {
		t.Fatalf("StartChild of a terminated ID: %v", err)
	}
	again, err := RestartChild(ctx, rt, sup, "b")
	if err != nil || !rt.Alive(again) || again == pid {
		t.Fatalf("RestartChild: %v, %v", again, err)
	}
	if _, err := RestartChild(ctx, rt, sup, "b"); !errors.Is(err, ErrRunning) {
		t.Fatalf("RestartChild of a running child: %v", err)
	}
	_ = TerminateChild(ctx, rt, sup, "b")
	if err := DeleteChild(ctx, rt, sup, "b"); err != nil {
		t.Fatal(err)
	}
	if _, ok := which(t, rt, sup)["b"]; ok {
		t.Fatal("deleted child still listed")
	}
	for _, err := range []error{
		TerminateChild(ctx, rt, sup, "zz"), DeleteChild(ctx, rt, sup, "zz"),
		func() error { _, err := RestartChild(ctx, rt, sup, "zz"); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown child: %v", err)
		}
	}
	if _, err := StartChild(ctx, rt, sup, ChildSpec{ID: "x"}); err == nil {
		t.Fatal("StartChild of a spec without Kind or New succeeded")
	}
}

func TestInitFailureStopsStartedChildren(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	_, err := Start(rt, Spec{Children: []ChildSpec{
		workerSpec(j, "a", Permanent),
		{ID: "bad", New: func() proc.Process {
			return &Func{OnInit: func(*proc.Context, any) error { return errors.New("cannot start") }}
		}},
		workerSpec(j, "c", Permanent),
	}})
	if err == nil || !strings.Contains(err.Error(), `"bad"`) || !strings.Contains(err.Error(), "cannot start") {
		t.Fatalf("Start: %v", err)
	}
	if got := j.take(); !slices.Equal(got, []string{"start a", "stop a shutdown"}) {
		t.Fatalf("journal %v", got)
	}
	// A stopped child is counted out as the last step of its exit.
	Eventually(t, "no process left", func() bool { return rt.Count() == 0 })
	for _, bad := range []Spec{
		{Children: []ChildSpec{workerSpec(j, "a", Permanent), workerSpec(j, "a", Permanent)}},
		{Children: []ChildSpec{{New: func() proc.Process { return &worker{} }}}},
		{Dynamic: true, Strategy: OneForAll},
		{Dynamic: true, Children: []ChildSpec{workerSpec(j, "a", Permanent)}},
		{Strategy: Strategy(9)},
	} {
		if _, err := Start(rt, bad); err == nil {
			t.Fatalf("Start(%+v) succeeded", bad)
		}
	}
}

// A child whose restart fails is retried, each try counted against the
// intensity, until it starts or the supervisor gives up.
func TestFailedRestartIsRetried(t *testing.T) {
	rt := NewRuntime(t)
	var mu sync.Mutex
	failures := 0
	j := &journal{}
	spec := ChildSpec{ID: "w", New: func() proc.Process {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return &Func{OnInit: func(*proc.Context, any) error { return errors.New("not yet") }}
		}
		return &worker{name: "w", j: j}
	}}
	sup := startSup(t, rt, Spec{Intensity: 5, Period: time.Hour, Children: []ChildSpec{spec}})
	mu.Lock()
	failures = 2
	mu.Unlock()
	crash(t, rt, sup, "w")
	Eventually(t, "child restarted after failed tries", func() bool {
		return !which(t, rt, sup)["w"].IsZero()
	})

	mu.Lock()
	failures = 100
	mu.Unlock()
	exits := Exits(t, rt, sup)
	_ = rt.Send(which(t, rt, sup)["w"], "crash") // the supervisor will give up: no sync call after
	if r := Recv(t, exits); !errors.Is(r, ErrMaxRestarts) {
		t.Fatalf("supervisor exited with %v", r)
	}
}

// When a group restart fails partway, the children it already restarted are
// stopped again and the whole group is retried together, as in OTP.
func TestGroupRestartRetriesTheWholeGroup(t *testing.T) {
	for _, strategy := range []Strategy{OneForAll, RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			rt := NewRuntime(t)
			j := &journal{}
			var mu sync.Mutex
			failC := 0
			c := ChildSpec{ID: "c", New: func() proc.Process {
				mu.Lock()
				defer mu.Unlock()
				if failC > 0 {
					failC--
					return &Func{OnInit: func(*proc.Context, any) error { return errors.New("c not yet") }}
				}
				return &worker{name: "c", j: j}
			}}
			sup := startSup(t, rt, Spec{Strategy: strategy, Intensity: 10, Period: time.Hour,
				Children: []ChildSpec{workerSpec(j, "a", Permanent), workerSpec(j, "b", Permanent), c}})
			mu.Lock()
			failC = 1
			mu.Unlock()
			j.take()
			crash(t, rt, sup, "b")
			Eventually(t, "group restarted", func() bool {
				kids := which(t, rt, sup)
				return !kids["b"].IsZero() && !kids["c"].IsZero()
			})
			got := j.take()
			// b restarts, c fails, so b is stopped again; then b and c start.
			want := []string{"stop c shutdown", "start b", "stop b shutdown", "start b", "start c"}
			if strategy == OneForAll {
				want = []string{"stop c shutdown", "stop a shutdown", "start a", "start b",
					"stop b shutdown", "stop a shutdown", "start a", "start b", "start c"}
			}
			if len(got) < 1 || !strings.HasPrefix(got[0], "stop b crash") || !slices.Equal(got[1:], want) {
				t.Fatalf("journal %v, want [stop b crash...] + %v", got, want)
			}
		})
	}
}

func TestBackoffDelaysRestarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := NewRuntime(t)
		j := &journal{}
		sup := startSup(t, rt, Spec{Intensity: 10, Period: time.Hour,
			Backoff:  Backoff{Initial: time.Second, Max: 3 * time.Second},
			Children: []ChildSpec{workerSpec(j, "w", Permanent)}})
		for _, want := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second} {
			crash(t, rt, sup, "w")
			start := time.Now()
			synctest.Wait()
			if !which(t, rt, sup)["w"].IsZero() {
				t.Fatal("restarted before the backoff")
			}
			time.Sleep(want)
			synctest.Wait()
			if which(t, rt, sup)["w"].IsZero() {
				t.Fatalf("not restarted %v after the crash", time.Since(start))
			}
		}
	})
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	for n, want := range map[int]time.Duration{0: 0, 1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 60: time.Second} {
		if got := b.delay(n); got != want {
			t.Errorf("delay(%d) = %v, want %v", n, got, want)
		}
	}
	if (Backoff{}).delay(3) != 0 {
		t.Error("zero Backoff delays")
	}
}

func TestDynamicSupervisor(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	ctx := context.Background()
	sup := startSup(t, rt, Spec{Dynamic: true, MaxChildren: 3, Intensity: 10})
	var pids []proc.PID
	for i, r := range []Restart{Permanent, Temporary, Transient} {
		pid, err := StartChild(ctx, rt, sup, workerSpec(j, "", r))
		if err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
		pids = append(pids, pid)
	}
	if _, err := StartChild(ctx, rt, sup, workerSpec(j, "", Permanent)); !errors.Is(err, ErrMaxChildren) {
		t.Fatalf("fourth child: %v", err)
	}
	// The permanent child is restarted with a new PID.
	_ = rt.Send(pids[0], "crash")
	awaitExitHandled(t, rt, sup, pids[0])
	kids, _ := WhichChildren(ctx, rt, sup)
	if len(kids) != 3 || kids[0].PID == pids[0] || !rt.Alive(kids[0].PID) {
		t.Fatalf("after crash: %+v", kids)
	}
	// The temporary one is forgotten when it exits, freeing a place.
	_ = rt.Send(pids[1], "crash")
	awaitExitHandled(t, rt, sup, pids[1])
	if c, _ := CountChildren(ctx, rt, sup); c.Specs != 2 {
		t.Fatalf("after temporary exit: %+v", c)
	}
	// So is a transient one that exits normally.
	_ = rt.Send(pids[2], "stop")
	awaitExitHandled(t, rt, sup, pids[2])
	if c, _ := CountChildren(ctx, rt, sup); c.Specs != 1 {
		t.Fatalf("after transient normal exit: %+v", c)
	}
	if err := TerminateChildPID(ctx, rt, sup, kids[0].PID); err != nil {
		t.Fatal(err)
	}
	if c, _ := CountChildren(ctx, rt, sup); c != (Counts{}) {
		t.Fatalf("after TerminateChildPID: %+v", c)
	}
	if err := TerminateChildPID(ctx, rt, sup, kids[0].PID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second TerminateChildPID: %v", err)
	}
}

func TestKillingSupervisorTakesItsTree(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	top := startSup(t, rt, Spec{Children: []ChildSpec{
		workerSpec(j, "a", Permanent),
		Child("inner", Spec{Children: []ChildSpec{workerSpec(j, "b", Permanent)}}),
	}})
	kids := which(t, rt, top)
	leaf := which(t, rt, kids["inner"])["b"]
	exitA, exitLeaf := Exits(t, rt, kids["a"]), Exits(t, rt, leaf)
	_ = rt.Exit(proc.PID{}, top, proc.Kill)
	if r := Recv(t, exitA); r != proc.Killed {
		t.Fatalf("child of killed supervisor exited with %v", r)
	}
	// The inner supervisor traps exits: told of its parent's death, it
	// stops its own children gracefully, as OTP does.
	if r := Recv(t, exitLeaf); r != proc.Shutdown {
		t.Fatalf("grandchild exited with %v", r)
	}
}

func TestKindChildren(t *testing.T) {
	rt := NewRuntime(t)
	j := &journal{}
	if err := rt.RegisterKind("w", func() proc.Process { return &worker{name: "kind", j: j} }); err != nil {
		t.Fatal(err)
	}
	sup := startSup(t, rt, Spec{Children: []ChildSpec{{ID: "k", Kind: "w"}}})
	crash(t, rt, sup, "k")
	if pid := which(t, rt, sup)["k"]; !rt.Alive(pid) {
		t.Fatal("kind child not restarted")
	}
	if _, err := StartChild(context.Background(), rt, sup, ChildSpec{ID: "u", Kind: "unknown"}); !errors.Is(err, proc.ErrUnknownKind) {
		t.Fatalf("unknown kind: %v", err)
	}
}
