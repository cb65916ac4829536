// Package registrytest is the Registry contract as a test suite. Every
// backend runs it: the local one against one node, the cluster one against
// several, so the contract means the same thing everywhere.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
)

// Harness is what a backend gives the suite for one test.
type Harness struct {
	// Registry is the registry under test, empty.
	Registry registry.Registry
	// Spawn starts a live process the registry accepts.
	Spawn func(t *testing.T) proc.PID
	// Exit makes pid exit with reason and returns once it has exited.
	Exit func(t *testing.T, pid proc.PID, reason error)
	// Settle, if set, waits until every change made so far is visible
	// through every read the suite makes (for backends whose watches or
	// reads from another node lag). Nil for backends that are immediate.
	Settle func(t *testing.T)
}

// wait bounds how long the suite waits for an event.
const wait = 10 * time.Second

// Run runs the contract suite. newHarness is called once per test.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"RegisterLookup", testRegisterLookup},
		{"TakenAndIdempotent", testTakenAndIdempotent},
		{"Unregister", testUnregister},
		{"Environments", testEnvironments},
		{"ReleasedOnExit", testReleasedOnExit},
		{"DeadProcess", testDeadProcess},
		{"UpdateMeta", testUpdateMeta},
		{"MetaIsCopied", testMetaIsCopied},
		{"Groups", testGroups},
		{"Select", testSelect},
		{"Count", testCount},
		{"Watch", testWatch},
		{"WatchReplayAndFilter", testWatchReplayAndFilter},
		{"Invalid", testInvalid},
		{"ConcurrentRegister", testConcurrentRegister},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newHarness(t)) })
	}
}

var ctx = context.Background()

func settle(t *testing.T, h Harness) {
	t.Helper()
	if h.Settle != nil {
		h.Settle(t)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testRegisterLookup(t *testing.T, h Harness) {
	r := h.Registry
	pid := h.Spawn(t)
	key := registry.K("", "svc")
	if _, ok := r.Lookup(key); ok {
		t.Fatal("Lookup of an unregistered name succeeded")
	}
	meta := registry.Meta{Labels: map[string]string{"role": "db"}, Capabilities: []string{"b", "a", "b"}}
	must(t, r.Register(ctx, key, pid, meta))
	// Read-your-writes: visible the moment Register returns.
	e, ok := r.Lookup(key)
	if !ok || e.PID != pid || e.Kind != registry.Unique || e.Key != key {
		t.Fatalf("Lookup = %+v, %v", e, ok)
	}
	if e.Meta.Labels["role"] != "db" || !slices.Equal(e.Meta.Capabilities, []string{"a", "b"}) {
		t.Fatalf("Meta = %+v (capabilities are a sorted set)", e.Meta)
	}
	if got, ok := r.Whereis(key); !ok || got != pid {
		t.Fatalf("Whereis = %v, %v", got, ok)
	}
	// A process may hold several names.
	must(t, r.Register(ctx, registry.K("", "svc-alias"), pid, registry.Meta{}))
	if got, _ := r.Whereis(registry.K("", "svc-alias")); got != pid {
		t.Fatal("second name of the same process not found")
	}
}

func testTakenAndIdempotent(t *testing.T, h Harness) {
	r := h.Registry
	a, b := h.Spawn(t), h.Spawn(t)
	key := registry.K("", "leader")
	must(t, r.Register(ctx, key, a, registry.Meta{}))
	err := r.Register(ctx, key, b, registry.Meta{})
	var taken *registry.TakenError
	if !errors.Is(err, registry.ErrTaken) || !errors.As(err, &taken) || taken.Holder != a || taken.Key != key {
		t.Fatalf("Register of a taken name: %v", err)
	}
	// The holder registering again is not an error, and replaces the meta.
	must(t, r.Register(ctx, key, a, registry.Meta{Labels: map[string]string{"v": "2"}}))
	if e, _ := r.Lookup(key); e.PID != a || e.Meta.Labels["v"] != "2" {
		t.Fatalf("after re-register: %+v", e)
	}
}

func testUnregister(t *testing.T, h Harness) {
	r := h.Registry
	a, b := h.Spawn(t), h.Spawn(t)
	key := registry.K("", "x")
	must(t, r.Register(ctx, key, a, registry.Meta{}))
	// Only the holder can release the name.
	must(t, r.Unregister(ctx, key, b))
	if got, ok := r.Whereis(key); !ok || got != a {
		t.Fatal("Unregister by a non-holder released the name")
	}
	must(t, r.Unregister(ctx, key, a))
	if _, ok := r.Whereis(key); ok {
		t.Fatal("name still registered after Unregister")
	}
	must(t, r.Unregister(ctx, key, a)) // idempotent
	must(t, r.Register(ctx, key, b, registry.Meta{}))
	if got, _ := r.Whereis(key); got != b {
		t.Fatal("a released name could not be taken by another process")
	}
}

func testEnvironments(t *testing.T, h Harness) {
	r := h.Registry
	a, b := h.Spawn(t), h.Spawn(t)
	must(t, r.Register(ctx, registry.K("tenant-a", "svc"), a, registry.Meta{}))
	must(t, r.Register(ctx, registry.K("tenant-b", "svc"), b, registry.Meta{}))
	if got, _ := r.Whereis(registry.K("tenant-a", "svc")); got != a {
		t.Fatal("tenant-a resolves to the wrong process")
	}
	if got, _ := r.Whereis(registry.K("tenant-b", "svc")); got != b {
		t.Fatal("tenant-b resolves to the wrong process")
	}
	if _, ok := r.Whereis(registry.K("", "svc")); ok {
		t.Fatal("a name leaked into the default environment")
	}
	settle(t, h)
	if got := r.Select(registry.Query{Env: "tenant-a"}); len(got) != 1 || got[0].PID != a {
		t.Fatalf("Select in tenant-a = %+v", got)
	}
	if got := r.Select(registry.Query{AllEnvs: true}); len(got) != 2 || got[0].Key.Env != "tenant-a" {
		t.Fatalf("Select over all environments = %+v", got)
	}
	if n := r.Count(registry.Query{Env: "tenant-c"}); n != 0 {
		t.Fatalf("empty environment counts %d", n)
	}
}

func testReleasedOnExit(t *testing.T, h Harness) {
	r := h.Registry
	pid := h.Spawn(t)
	keys := []registry.Key{registry.K("", "one"), registry.K("e", "two")}
	for _, k := range keys {
		must(t, r.Register(ctx, k, pid, registry.Meta{}))
	}
	must(t, r.Join(ctx, registry.K("", "group"), pid, registry.Meta{}))
	w := r.Watch(registry.Query{PID: pid, AllEnvs: true}, registry.WatchOptions{})
	defer w.Close()
	boom := errors.New("boom")
	h.Exit(t, pid, boom)
	settle(t, h)
	for _, k := range keys {
		if _, ok := r.Whereis(k); ok {
			t.Fatalf("%v still registered after its process exited", k)
		}
	}
	if m := r.Members(registry.K("", "group")); len(m) != 0 {
		t.Fatalf("exited process still a group member: %+v", m)
	}
	for range 3 {
		ev := recv(t, w)
		if ev.Type != registry.Unregistered || ev.Entry.PID != pid || !errors.Is(ev.Reason, boom) {
			t.Fatalf("event %+v, want Unregistered with the exit reason", ev)
		}
	}
	// A successor can take the names at once.
	next := h.Spawn(t)
	must(t, r.Register(ctx, keys[0], next, registry.Meta{}))
}

func testDeadProcess(t *testing.T, h Harness) {
	r := h.Registry
	pid := h.Spawn(t)
	h.Exit(t, pid, proc.Normal)
	if err := r.Register(ctx, registry.K("", "ghost"), pid, registry.Meta{}); !errors.Is(err, proc.ErrNoProcess) {
		t.Fatalf("Register of a dead process: %v", err)
	}
	if err := r.Join(ctx, registry.K("", "ghosts"), pid, registry.Meta{}); !errors.Is(err, proc.ErrNoProcess) {
		t.Fatalf("Join of a dead process: %v", err)
	}
	if _, ok := r.Whereis(registry.K("", "ghost")); ok {
		t.Fatal("a dead process's failed registration is visible")
	}
}

func testUpdateMeta(t *testing.T, h Harness) {
	r := h.Registry
	a, b := h.Spawn(t), h.Spawn(t)
	key := registry.K("", "agent")
	must(t, r.Register(ctx, key, a, registry.Meta{Labels: map[string]string{"v": "1"}}))
	must(t, r.UpdateMeta(ctx, key, a, registry.Meta{Labels: map[string]string{"v": "2"}, Capabilities: []string{"plan"}}))
	if e, _ := r.Lookup(key); e.Meta.Labels["v"] != "2" || !slices.Equal(e.Meta.Capabilities, []string{"plan"}) {
		t.Fatalf("after UpdateMeta: %+v", e.Meta)
	}
	if err := r.UpdateMeta(ctx, key, b, registry.Meta{}); !errors.Is(err, registry.ErrNotRegistered) {
		t.Fatalf("UpdateMeta by a non-holder: %v", err)
	}
	if err := r.UpdateMeta(ctx, registry.K("", "nope"), a, registry.Meta{}); !errors.Is(err, registry.ErrNotRegistered) {
		t.Fatalf("UpdateMeta of an unknown name: %v", err)
	}
	g := registry.K("", "workers")
	must(t, r.Join(ctx, g, a, registry.Meta{}))
	must(t, r.UpdateMemberMeta(ctx, g, a, registry.Meta{Labels: map[string]string{"load": "high"}}))
	if m := r.Members(g); len(m) != 1 || m[0].Meta.Labels["load"] != "high" {
		t.Fatalf("after UpdateMemberMeta: %+v", m)
	}
	if err := r.UpdateMemberMeta(ctx, g, b, registry.Meta{}); !errors.Is(err, registry.ErrNotRegistered) {
		t.Fatalf("UpdateMemberMeta of a non-member: %v", err)
	}
}

func testMetaIsCopied(t *testing.T, h Harness) {
	r := h.Registry
	pid := h.Spawn(t)
	labels := map[string]string{"k": "before"}
	caps := []string{"x"}
	key := registry.K("", "copied")
	must(t, r.Register(ctx, key, pid, registry.Meta{Labels: labels, Capabilities: caps}))
	labels["k"] = "after"
	caps[0] = "y"
	if e, _ := r.Lookup(key); e.Meta.Labels["k"] != "before" || e.Meta.Capabilities[0] != "x" {
		t.Fatalf("the registry kept the caller's maps: %+v", e.Meta)
	}
}

func testGroups(t *testing.T, h Harness) {
	r := h.Registry
	pids := []proc.PID{h.Spawn(t), h.Spawn(t), h.Spawn(t)}
	g := registry.K("", "room:1")
	for _, p := range pids {
		must(t, r.Join(ctx, g, p, registry.Meta{}))
	}
	must(t, r.Join(ctx, g, pids[0], registry.Meta{Labels: map[string]string{"again": "yes"}})) // rejoin: meta replaced
	m := r.Members(g)
	if len(m) != 3 {
		t.Fatalf("Members = %+v", m)
	}
	if !slices.IsSortedFunc(m, func(a, b registry.Entry) int { return registry.ComparePIDs(a.PID, b.PID) }) {
		t.Fatal("Members not ordered by PID")
	}
	for _, e := range m {
		if e.Kind != registry.Group || e.Key != g {
			t.Fatalf("member entry %+v", e)
		}
		if e.PID == pids[0] && e.Meta.Labels["again"] != "yes" {
			t.Fatal("rejoin did not replace the member's meta")
		}
	}
	// A group name and a unique name do not collide.
	must(t, r.Register(ctx, g, pids[1], registry.Meta{}))
	must(t, r.Leave(ctx, g, pids[1]))
	must(t, r.Leave(ctx, g, pids[1])) // idempotent
	if len(r.Members(g)) != 2 {
		t.Fatal("Leave did not remove the member")
	}
	if got, _ := r.Whereis(g); got != pids[1] {
		t.Fatal("Leave touched the unique name of the same key")
	}
	if m := r.Members(registry.K("", "empty")); len(m) != 0 {
		t.Fatalf("Members of an unknown group = %+v", m)
	}
	if m := r.Members(registry.K("other-env", "room:1")); len(m) != 0 {
		t.Fatal("group members leaked across environments")
	}
}

// fixture registers a small population for the query tests.
func fixture(t *testing.T, h Harness) (a, b, c proc.PID) {
	r := h.Registry
	a, b, c = h.Spawn(t), h.Spawn(t), h.Spawn(t)
	must(t, r.Register(ctx, registry.K("", "agent:planner"), a, registry.Meta{
		Labels: map[string]string{"zone": "eu"}, Capabilities: []string{"plan", "reason"}}))
	must(t, r.Register(ctx, registry.K("", "agent:coder"), b, registry.Meta{
		Labels: map[string]string{"zone": "us"}, Capabilities: []string{"code", "reason"}}))
	must(t, r.Register(ctx, registry.K("", "session:1"), c, registry.Meta{Labels: map[string]string{"zone": "eu"}}))
	must(t, r.Join(ctx, registry.K("", "agents"), a, registry.Meta{Capabilities: []string{"plan"}}))
	must(t, r.Join(ctx, registry.K("", "agents"), b, registry.Meta{}))
	must(t, r.Register(ctx, registry.K("other", "agent:spy"), c, registry.Meta{Capabilities: []string{"plan", "reason"}}))
	settle(t, h)
	return a, b, c
}

func names(es []registry.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = fmt.Sprintf("%s:%s", e.Kind, e.Key)
	}
	return out
}

func testSelect(t *testing.T, h Harness) {
	r := h.Registry
	a, _, c := fixture(t, h)
	for _, tc := range []struct {
		q    registry.Query
		want []string
	}{
		{registry.Query{}, []string{"unique:agent:coder", "unique:agent:planner", "group:agents", "group:agents", "unique:session:1"}},
		{registry.Query{Kind: registry.Unique, Pattern: "agent:*"}, []string{"unique:agent:coder", "unique:agent:planner"}},
		{registry.Query{Pattern: "*:1"}, []string{"unique:session:1"}},
		{registry.Query{Pattern: "agent:?oder"}, []string{"unique:agent:coder"}},
		{registry.Query{Pattern: "agent:*", Labels: map[string]string{"zone": "eu"}}, []string{"unique:agent:planner"}},
		{registry.Query{Capabilities: []string{"reason", "plan"}}, []string{"unique:agent:planner"}},
		{registry.Query{Capabilities: []string{"plan"}}, []string{"unique:agent:planner", "group:agents"}},
		{registry.Query{Capabilities: []string{"fly"}}, []string{}},
		{registry.Query{PID: c}, []string{"unique:session:1"}},
		{registry.Query{PID: c, AllEnvs: true}, []string{"unique:session:1", "unique:other/agent:spy"}},
		{registry.Query{Kind: registry.Group}, []string{"group:agents", "group:agents"}},
		{registry.Query{Limit: 2}, []string{"unique:agent:coder", "unique:agent:planner"}},
		{registry.Query{Env: "other", Capabilities: []string{"plan"}}, []string{"unique:other/agent:spy"}},
		{registry.Query{Pattern: `agent\*`}, []string{}},
	} {
		got := names(r.Select(tc.q))
		if !slices.Equal(got, tc.want) {
			t.Errorf("Select(%+v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := r.Select(registry.Query{PID: a, Kind: registry.Group}); len(got) != 1 || got[0].Meta.Capabilities[0] != "plan" {
		t.Fatalf("member entry meta: %+v", got)
	}
}

func testCount(t *testing.T, h Harness) {
	r := h.Registry
	fixture(t, h)
	for _, q := range []registry.Query{
		{}, {Pattern: "agent:*"}, {Capabilities: []string{"reason"}}, {AllEnvs: true}, {Kind: registry.Group}, {Env: "nowhere"},
	} {
		if n, want := r.Count(q), len(r.Select(q)); n != want {
			t.Errorf("Count(%+v) = %d, Select has %d", q, n, want)
		}
	}
	if n := r.Count(registry.Query{Limit: 1}); n != 5 {
		t.Errorf("Count ignores Limit: got %d, want 5", n)
	}
}

func recv(t *testing.T, w *registry.Watch) registry.Event {
	t.Helper()
	select {
	case e := <-w.Events():
		return e
	case <-time.After(wait):
		t.Fatalf("no event within %v", wait)
		panic("unreachable")
	}
}

func testWatch(t *testing.T, h Harness) {
	r := h.Registry
	w := r.Watch(registry.Query{}, registry.WatchOptions{})
	pid := h.Spawn(t)
	key := registry.K("", "watched")
	must(t, r.Register(ctx, key, pid, registry.Meta{}))
	must(t, r.UpdateMeta(ctx, key, pid, registry.Meta{Labels: map[string]string{"v": "2"}}))
	must(t, r.UpdateMeta(ctx, key, pid, registry.Meta{Labels: map[string]string{"v": "2"}})) // no change, no event
	must(t, r.Join(ctx, registry.K("", "g"), pid, registry.Meta{}))
	must(t, r.Unregister(ctx, key, pid))
	must(t, r.Leave(ctx, registry.K("", "g"), pid))
	want := []struct {
		typ  registry.EventType
		kind registry.Kind
	}{
		{registry.Registered, registry.Unique}, {registry.Updated, registry.Unique},
		{registry.Registered, registry.Group}, {registry.Unregistered, registry.Unique}, {registry.Unregistered, registry.Group},
	}
	for i, wnt := range want {
		ev := recv(t, w)
		if ev.Type != wnt.typ || ev.Entry.Kind != wnt.kind || ev.Entry.PID != pid || ev.Reason != nil {
			t.Fatalf("event %d = %+v, want %v %v", i, ev, wnt.typ, wnt.kind)
		}
		if ev.Type == registry.Updated && ev.Entry.Meta.Labels["v"] != "2" {
			t.Fatalf("Updated event carries %+v", ev.Entry.Meta)
		}
	}
	w.Close()
	w.Close()
	must(t, r.Register(ctx, key, pid, registry.Meta{}))
	for ev := range w.Events() {
		t.Fatalf("event after Close: %+v", ev)
	}
}

func testWatchReplayAndFilter(t *testing.T, h Harness) {
	r := h.Registry
	a, b, _ := fixture(t, h)
	w := r.Watch(registry.Query{Pattern: "agent:*", Kind: registry.Unique}, registry.WatchOptions{Replay: true})
	defer w.Close()
	for _, want := range []proc.PID{b, a} { // replayed in Select order: coder, planner
		if ev := recv(t, w); ev.Type != registry.Registered || ev.Entry.PID != want {
			t.Fatalf("replayed %+v, want %v", ev, want)
		}
	}
	must(t, r.Register(ctx, registry.K("", "unrelated"), a, registry.Meta{}))
	must(t, r.Register(ctx, registry.K("other", "agent:x"), a, registry.Meta{}))
	must(t, r.Register(ctx, registry.K("", "agent:new"), a, registry.Meta{}))
	if ev := recv(t, w); ev.Entry.Key.Name != "agent:new" || ev.Entry.Key.Env != "" {
		t.Fatalf("filtered watch reported %+v", ev)
	}
	// Watches never block the registry, however slow the reader.
	slow := r.Watch(registry.Query{}, registry.WatchOptions{})
	defer slow.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			_ = r.Join(ctx, registry.K("", "burst"), a, registry.Meta{Labels: map[string]string{"i": fmt.Sprint(i)}})
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("writes blocked on a watch nobody reads")
	}
	if ev := recv(t, slow); ev.Type != registry.Registered {
		t.Fatalf("first burst event %+v", ev)
	}
	for i := 1; i < 1000; i++ {
		ev := recv(t, slow)
		if ev.Type != registry.Updated || ev.Entry.Meta.Labels["i"] != fmt.Sprint(i) {
			t.Fatalf("burst event %d out of order: %+v", i, ev)
		}
	}
}

func testInvalid(t *testing.T, h Harness) {
	r := h.Registry
	pid := h.Spawn(t)
	long := string(make([]byte, registry.MaxNameLen+1))
	tooMany := registry.Meta{Labels: map[string]string{}}
	for i := range registry.MaxLabels + 1 {
		tooMany.Labels[fmt.Sprint(i)] = "v"
	}
	cases := []struct {
		key  registry.Key
		pid  proc.PID
		meta registry.Meta
	}{
		{registry.K("", ""), pid, registry.Meta{}},
		{registry.K("", long), pid, registry.Meta{}},
		{registry.K("", "\xff\xfe"), pid, registry.Meta{}},
		{registry.K("a/b", "x"), pid, registry.Meta{}},
		{registry.K("", "x"), proc.PID{}, registry.Meta{}},
		{registry.K("", "x"), pid, tooMany},
		{registry.K("", "x"), pid, registry.Meta{Labels: map[string]string{"": "v"}}},
		{registry.K("", "x"), pid, registry.Meta{Capabilities: []string{""}}},
	}
	for i, c := range cases {
		if err := r.Register(ctx, c.key, c.pid, c.meta); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("case %d: Register: %v, want ErrInvalid", i, err)
		}
		if err := r.Join(ctx, c.key, c.pid, c.meta); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("case %d: Join: %v, want ErrInvalid", i, err)
		}
	}
	settle(t, h)
	if n := r.Count(registry.Query{AllEnvs: true}); n != 0 {
		t.Fatalf("invalid registrations left %d entries", n)
	}
	if got := r.Select(registry.Query{Pattern: `bad\`}); got != nil {
		t.Fatalf("Select with a malformed pattern = %v", got)
	}
}

func testConcurrentRegister(t *testing.T, h Harness) {
	r := h.Registry
	const n = 16
	pids := make([]proc.PID, n)
	for i := range pids {
		pids[i] = h.Spawn(t)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners []proc.PID
	for _, p := range pids {
		wg.Go(func() {
			err := r.Register(ctx, registry.K("", "contended"), p, registry.Meta{})
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, p)
				mu.Unlock()
			case !errors.Is(err, registry.ErrTaken):
				t.Errorf("Register: %v", err)
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d processes won one name", len(winners))
	}
	if got, _ := r.Whereis(registry.K("", "contended")); got != winners[0] {
		t.Fatalf("holder %v, winner %v", got, winners[0])
	}
}
