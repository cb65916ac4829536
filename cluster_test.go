package herd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
	"github.com/herdkit/herd/internal/pki"
)

// setup registers what the cluster tests send and spawn, on every node.
func setup(_ int, n *herd.Node) {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	must(herd.RegisterKind(n, "counter", func() herd.Process { return &Counter{} }))
	must(herd.RegisterKind(n, "probe", func() herd.Process { return newProbe() }))
	must(herd.RegisterMessage[Add](n, "test.Add"))
	must(herd.RegisterMessage[Get](n, "test.Get"))
	must(herd.RegisterMessage[seq](n, "test.seq"))
}

type seq struct{ N int }

// probe is a process that records what it receives, for the cluster tests.
type probe struct {
	herd.Base
	mu   sync.Mutex
	got  []any
	note chan any
	trap bool
}

func newProbe() *probe { return &probe{note: make(chan any, 100000)} }

func (p *probe) Init(c *herd.Context, args any) error {
	if b, ok := args.(bool); ok && b {
		c.TrapExits(true)
	}
	return nil
}

func (p *probe) HandleInfo(_ *herd.Context, m any) { p.note <- m }
func (p *probe) HandleCast(_ *herd.Context, m any) { p.note <- m }

func newCluster(t testing.TB, n int, opts ...herdtest.Option) *herdtest.Cluster {
	t.Helper()
	return herdtest.NewCluster(t, n, append([]herdtest.Option{herdtest.WithSetup(setup)}, opts...)...)
}

func TestClusterJoinLeaveAndAdd(t *testing.T) {
	c := newCluster(t, 3)
	for _, n := range c.Nodes() {
		if got := len(n.Members()); got != 3 {
			t.Fatalf("%v sees %d members", n.ID(), got)
		}
	}
	left := c.Node(2).ID()
	c.Stop(2)
	for _, i := range []int{0, 1} {
		c.Eventually(t, func() bool {
			m, ok := c.Node(i).Member(left)
			return ok && m.Status == herd.MemberLeft || !ok && len(c.Node(i).Members()) == 2
		}, "n3 seen as left")
	}
	i := c.Add()
	c.WaitConverged()
	if m, ok := c.Node(0).Member(c.Node(i).ID()); !ok || m.Status != herd.MemberAlive {
		t.Fatalf("the added node: %+v", m)
	}
}

func TestClusterKillIsDetected(t *testing.T) {
	c := newCluster(t, 3)
	dead := c.Node(2).ID()
	c.Kill(2)
	for _, i := range []int{0, 1} {
		c.Eventually(t, func() bool {
			m, ok := c.Node(i).Member(dead)
			return !ok || m.Status == herd.MemberDead
		}, "the killed node declared dead")
	}
}

func TestRemoteCallCastSendSpawn(t *testing.T) {
	c := newCluster(t, 2)
	ctx := context.Background()
	a, b := c.Node(0), c.Node(1)
	pid, err := a.SpawnOn(ctx, b.ID(), "counter", 10)
	if err != nil {
		t.Fatal(err)
	}
	if pid.Node != b.ID() {
		t.Fatalf("spawned on %v, want %v", pid.Node, b.ID())
	}
	got, err := herd.Call[int](ctx, a, pid, Add{N: 5})
	if err != nil || got != 15 {
		t.Fatalf("remote call: %d, %v", got, err)
	}
	if err := a.Cast(pid, Add{N: 1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := herd.Call[int](ctx, a, pid, Get{}); got != 16 {
		t.Fatalf("after a remote cast: %d", got)
	}
	// An error returned by the remote handler keeps its identity.
	if _, err := herd.Call[int](ctx, a, pid, 3.5); !errors.Is(err, herd.ErrUnhandled) {
		t.Fatalf("remote unhandled call: %v", err)
	}
	// A message type the nodes do not know fails at the sender.
	type unregistered struct{ X int }
	if err := a.Send(pid, unregistered{1}); err == nil || !strings.Contains(err.Error(), "unregistered") {
		t.Fatalf("send of an unregistered type: %v", err)
	}
	// A remote spawn of an unknown kind fails with the remote error.
	if _, err := a.SpawnOn(ctx, b.ID(), "nope", nil); !errors.Is(err, herd.ErrUnknownKind) {
		t.Fatalf("remote spawn of an unknown kind: %v", err)
	}
	// A callee that crashes mid-call: the caller gets its exit, with the
	// crash, across the network.
	_, err = herd.Call[int](ctx, a, pid, "crash")
	var exit *herd.ExitError
	if !errors.As(err, &exit) || !errors.Is(err, herd.ErrNoProcess) || exit.PID != pid {
		t.Fatalf("remote call that crashed the callee: %v", err)
	}
	if crash, ok := errors.AsType[*herd.CrashError](err); !ok || !strings.Contains(fmt.Sprint(crash.Value), "crashed on purpose") {
		t.Fatalf("crash reason lost across nodes: %v", err)
	}
	if err := a.Send(pid, Add{N: 1}); err != nil {
		t.Fatalf("send to a dead remote process is accepted (at most once): %v", err)
	}
	if _, err := herd.Call[int](ctx, a, pid, Get{}); !errors.Is(err, herd.ErrNoProcess) {
		t.Fatalf("call to a dead remote process: %v", err)
	}
}

// Messages from one process to a process on another node arrive in the
// order sent.
func TestRemoteOrderPerSender(t *testing.T) {
	c := newCluster(t, 2)
	ctx := context.Background()
	a, b := c.Node(0), c.Node(1)
	p := newProbe()
	target, err := b.SpawnProcess(ctx, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	done := make(chan error, 1)
	_, err = a.SpawnProcess(ctx, &initFunc{fn: func(c *herd.Context) {
		go func() {
			for i := range n {
				if err := c.Send(target, seq{N: i}); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := recv(t, done); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if m := recv(t, p.note); m != (seq{N: i}) {
			t.Fatalf("message %d arrived as %v", i, m)
		}
	}
}

// watcherOn spawns, on node n, a process that monitors target and reports
// its Downs.
func watcherOn(t *testing.T, n *herd.Node, target herd.PID) chan herd.Down {
	t.Helper()
	downs := make(chan herd.Down, 10)
	_, err := n.SpawnProcess(context.Background(), &monitorer{target: target, downs: downs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return downs
}

type monitorer struct {
	herd.Base
	target herd.PID
	downs  chan herd.Down
}

func (m *monitorer) Init(c *herd.Context, _ any) error { c.Monitor(m.target); return nil }
func (m *monitorer) HandleInfo(_ *herd.Context, msg any) {
	if d, ok := msg.(herd.Down); ok {
		m.downs <- d
	}
}

func noMore[T any](t *testing.T, ch chan T) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected second %T: %+v", v, v)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestRemoteMonitors(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	a := c.Node(0)
	// A remote process that crashes: the Down carries the crash.
	pid, _ := a.SpawnOn(ctx, c.Node(1).ID(), "counter", nil)
	downs := watcherOn(t, a, pid)
	_, _ = herd.Call[int](ctx, a, pid, "crash")
	if d := recv(t, downs); d.PID != pid || !herd.IsAbnormal(d.Reason) || !strings.Contains(d.Reason.Error(), "crashed on purpose") {
		t.Fatalf("Down for a crashed remote process: %+v", d)
	}
	// Monitoring a remote process that does not exist: Down at once.
	ghost := pid
	ghost.ID += 1000
	if d := recv(t, watcherOn(t, a, ghost)); !errors.Is(d.Reason, herd.ErrNoProcess) {
		t.Fatalf("Down for a missing remote process: %+v", d)
	}
	// Node killed: exactly one Down, NodeDown.
	victim, _ := a.SpawnOn(ctx, c.Node(2).ID(), "counter", nil)
	downs = watcherOn(t, a, victim)
	outside, _ := a.Monitor(victim) // and from outside any process
	c.Kill(2)
	if d := recv(t, downs); d.PID != victim || !errors.Is(d.Reason, herd.ErrNodeDown) {
		t.Fatalf("Down for a killed node: %+v", d)
	}
	if d := recv(t, outside); !errors.Is(d.Reason, herd.ErrNodeDown) {
		t.Fatalf("Node.Monitor Down for a killed node: %+v", d)
	}
	noMore(t, downs)
}

func TestPartitionFiresMonitorsAndHealRejoins(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	a := c.Node(0)
	far, err := a.SpawnOn(ctx, c.Node(2).ID(), "counter", nil)
	if err != nil {
		t.Fatal(err)
	}
	downs := watcherOn(t, a, far)
	c.Partition([]int{0, 1}, []int{2})
	if d := recv(t, downs); d.PID != far || !errors.Is(d.Reason, herd.ErrNodeDown) {
		t.Fatalf("Down across a partition: %+v", d)
	}
	for _, pair := range [][2]int{{0, 2}, {1, 2}, {2, 0}, {2, 1}} {
		c.Eventually(t, func() bool {
			m, _ := c.Node(pair[0]).Member(c.Node(pair[1]).ID())
			return m.Status == herd.MemberDead
		}, fmt.Sprintf("n%d sees n%d dead", pair[0]+1, pair[1]+1))
	}
	noMore(t, downs)
	c.Heal()
	c.WaitConverged()
	// The far process lived through the partition: reachable again.
	c.Eventually(t, func() bool {
		n, err := herd.Call[int](ctx, a, far, Get{})
		return err == nil && n == 0
	}, "the far process answers after the heal")
	// Monitors work across the healed link: crash the far process.
	downs = watcherOn(t, a, far)
	_, _ = herd.Call[int](ctx, a, far, "crash")
	if d := recv(t, downs); d.PID != far || !strings.Contains(d.Reason.Error(), "crashed on purpose") {
		t.Fatalf("Down after the heal: %+v", d)
	}
}

func TestRemoteLinks(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	a := c.Node(0)
	// A trapping probe here linked to a counter there.
	linkTo := func(target herd.PID) *probe {
		t.Helper()
		p := newProbe()
		errs := make(chan error, 1)
		_, err := a.SpawnProcess(ctx, &linker{probe: p, target: target, errs: errs}, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := recv(t, errs); err != nil {
			t.Fatal(err)
		}
		return p
	}
	r, _ := a.SpawnOn(ctx, c.Node(1).ID(), "counter", nil)
	p := linkTo(r)
	_, _ = herd.Call[int](ctx, a, r, "crash")
	ex, ok := recv(t, p.note).(herd.Exit)
	if !ok || ex.From != r || !herd.IsAbnormal(ex.Reason) {
		t.Fatalf("exit signal from a crashed remote process: %+v", ex)
	}
	// The other way: a process here exits abnormally; its linked peer on
	// the other node, trapping exits, is told, with the reason.
	rp := newProbe()
	rpid, err := c.Node(1).SpawnProcess(ctx, rp, true)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	doomed, _ := a.SpawnProcess(ctx, &linker{probe: newProbe(), target: rpid, errs: errs}, false)
	if err := recv(t, errs); err != nil {
		t.Fatal(err)
	}
	_ = a.Exit(doomed, errors.New("local failure"))
	ex, ok = recv(t, rp.note).(herd.Exit)
	if !ok || ex.From != doomed || ex.Reason.Error() != "local failure" {
		t.Fatalf("exit signal to a remote linked process: %+v", ex)
	}
	// Node killed: the linked process gets NodeDown.
	r3, _ := a.SpawnOn(ctx, c.Node(2).ID(), "counter", nil)
	p3 := linkTo(r3)
	c.Kill(2)
	ex, ok = recv(t, p3.note).(herd.Exit)
	if !ok || ex.From != r3 || !errors.Is(ex.Reason, herd.ErrNodeDown) {
		t.Fatalf("exit signal for a killed node: %+v", ex)
	}
}

type linker struct {
	*probe
	target herd.PID
	errs   chan error
}

func (l *linker) Init(c *herd.Context, args any) error {
	if trap, _ := args.(bool); trap {
		c.TrapExits(true)
	}
	l.errs <- c.Link(l.target)
	return nil
}

func TestRestartedNodeIsANewLife(t *testing.T) {
	c := newCluster(t, 2)
	ctx := context.Background()
	a := c.Node(0)
	old, _ := a.SpawnOn(ctx, c.Node(1).ID(), "counter", nil)
	oldID := c.Node(1).ID()
	b := c.Restart(1)
	if b.ID().Name != oldID.Name || b.ID().Incarnation <= oldID.Incarnation {
		t.Fatalf("restart gave %v after %v", b.ID(), oldID)
	}
	c.WaitConverged()
	if _, err := herd.Call[int](ctx, a, old, Get{}); !errors.Is(err, herd.ErrNoProcess) {
		t.Fatalf("call to a PID of the previous life: %v", err)
	}
	if d := recv(t, watcherOn(t, a, old)); !errors.Is(d.Reason, herd.ErrNoProcess) && !errors.Is(d.Reason, herd.ErrNodeDown) {
		t.Fatalf("monitor of a PID of the previous life: %+v", d)
	}
	if m, _ := a.Member(oldID); m.Status != herd.MemberDead {
		t.Fatalf("the previous life is %v", m.Status)
	}
	if id, ok := a.Lookup(oldID.Name); !ok || id != b.ID() {
		t.Fatalf("Lookup(%q) = %v", oldID.Name, id)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// A node whose certificate comes from another CA gets nowhere, even with
// the gossip key; the refusal is logged.
func TestPeerFromAnotherCAIsRejected(t *testing.T) {
	logs := &syncBuf{}
	c := newCluster(t, 2, herdtest.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	other, err := pki.NewCA("intruders", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := other.Issue("intruder", []string{"127.0.0.1"}, time.Hour)
	intruder, err := herd.Start(context.Background(), herd.Config{
		Name: "intruder", Bind: "127.0.0.1:0", Profile: "local", Logger: slog.New(slog.DiscardHandler),
		TLS: &herd.TLS{CA: other.Pool(), Cert: &cert}, GossipKeys: [][]byte{c.GossipKey()},
		Join: []string{c.Node(0).GossipAddr()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Stop(context.Background())
	setup(0, intruder)
	c.Eventually(t, func() bool {
		_, ok := intruder.Lookup("n1")
		return ok
	}, "the intruder gossips its way in")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := intruder.SpawnOn(ctx, c.Node(0).ID(), "counter", nil); err == nil {
		t.Fatal("a node from another CA spawned a process in the cluster")
	}
	if !strings.Contains(logs.String(), "refused a connection") {
		t.Fatalf("refusal not logged:\n%s", logs.String())
	}
}

func TestMalformedFramesAreSurvived(t *testing.T) {
	c := newCluster(t, 2)
	ctx := context.Background()
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n"), bytes.Repeat([]byte{0xff}, 4096), {0, 0, 0, 5, 3}} {
		conn, err := net.Dial("tcp", c.Node(1).Addr())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(junk)
		conn.Close()
	}
	pid, err := c.Node(0).SpawnOn(ctx, c.Node(1).ID(), "counter", 1)
	if err != nil {
		t.Fatalf("after junk: %v", err)
	}
	if n, err := herd.Call[int](ctx, c.Node(0), pid, Get{}); err != nil || n != 1 {
		t.Fatalf("after junk: %d, %v", n, err)
	}
	if c.Node(1).TransportStats().Rejected < 3 {
		t.Fatalf("junk connections not counted as rejected: %+v", c.Node(1).TransportStats())
	}
}

func TestInsecureBindIsRefused(t *testing.T) {
	// 192.0.2.0/24 is reserved for documentation: never reachable.
	_, err := herd.Start(context.Background(), herd.Config{Name: "n", Bind: "192.0.2.1:0"})
	if err == nil || !strings.Contains(err.Error(), "without TLS") {
		t.Fatalf("non-loopback bind without TLS: %v", err)
	}
	_, err = herd.Start(context.Background(), herd.Config{Name: "n", Bind: "192.0.2.1:0", Insecure: true})
	if err == nil || strings.Contains(err.Error(), "without TLS") {
		t.Fatalf("with Insecure the refusal is lifted (and the bind fails on its own): %v", err)
	}
	if _, err := herd.Start(context.Background(), herd.Config{Name: "n", Join: []string{"127.0.0.1:1"}}); err == nil {
		t.Fatal("Join without Bind accepted")
	}
}
