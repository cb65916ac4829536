package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/pki"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/proctest"
)

const wait = 10 * time.Second

// recorder is a Handler that records what arrives; requests are echoed with
// a prefix unless hold is set, in which case they wait for release.
type recorder struct {
	mu      sync.Mutex
	msgs    []string
	msgCh   chan string
	downs   chan proc.NodeID
	unreach chan proc.NodeID
	hold    chan struct{}
}

func newRecorder() *recorder {
	return &recorder{msgCh: make(chan string, 100000), downs: make(chan proc.NodeID, 100), unreach: make(chan proc.NodeID, 100)}
}

func (r *recorder) Message(from proc.NodeID, p []byte) { r.msgCh <- from.Name + ":" + string(p) }
func (r *recorder) Request(from proc.NodeID, p []byte, reply func([]byte)) {
	if r.hold != nil {
		p = bytes.Clone(p) // kept past the call
		go func() { <-r.hold; reply(append([]byte("re:"), p...)) }()
		return
	}
	reply(append([]byte("re:"), p...))
}
func (r *recorder) SessionDown(peer proc.NodeID, _ error) { r.downs <- peer }
func (r *recorder) Unreachable(peer proc.NodeID, _ error) { r.unreach <- peer }

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type node struct {
	*Transport
	id  proc.NodeID
	rec *recorder
	log *logBuf
}

func (n *node) peer() Peer { return Peer{ID: n.id, Addr: n.Addr()} }

type opts struct {
	tls        *TLS
	queue      int
	maxFrame   int
	dial       func(ctx context.Context, addr string) (net.Conn, error)
	handler    Handler
	noCleanup  bool
	listenAddr string
}

func start(t *testing.T, name string, o opts) *node {
	t.Helper()
	addr := o.listenAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: proc.NodeID{Name: name, Incarnation: 1}, rec: newRecorder(), log: &logBuf{}}
	var h Handler = n.rec
	if o.handler != nil {
		h = o.handler
	}
	tr, err := New(Config{
		Self: n.id, Listener: ln, TLS: o.tls, Handler: h, QueueBytes: o.queue, MaxFrameSize: o.maxFrame, Dial: o.dial,
		Logger: slog.New(slog.NewTextHandler(n.log, nil)), HandshakeTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.Start()
	n.Transport = tr
	if !o.noCleanup {
		t.Cleanup(func() { tr.Close() })
	}
	return n
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("nothing within %v", wait)
		panic("unreachable")
	}
}

func TestMessagesArriveInOrder(t *testing.T) {
	a, b := start(t, "a", opts{}), start(t, "b", opts{})
	ctx := context.Background()
	const n = 20000
	for i := range n {
		if err := a.Send(ctx, b.peer(), fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if got, want := recv(t, b.rec.msgCh), fmt.Sprintf("a:%d", i); got != want {
			t.Fatalf("message %d: got %q, want %q", i, got, want)
		}
	}
	if s := a.Stats(); s.FramesSent != n || s.Sessions != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRequestResponse(t *testing.T) {
	a, b := start(t, "a", opts{}), start(t, "b", opts{})
	ctx := context.Background()
	// b answers over its own connection to a, dialled back to the address
	// a's hello gave.
	for i := range 100 {
		resp, err := a.Request(ctx, b.peer(), fmt.Appendf(nil, "q%d", i))
		if err != nil || string(resp) != fmt.Sprintf("re:q%d", i) {
			t.Fatalf("request %d: %q, %v", i, resp, err)
		}
	}
	// Concurrent requests each get their own answer.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				q := fmt.Sprintf("g%d-%d", g, i)
				resp, err := a.Request(ctx, b.peer(), []byte(q))
				if err != nil || string(resp) != "re:"+q {
					t.Errorf("%s: %q, %v", q, resp, err)
					return
				}
			}
		})
	}
	wg.Wait()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	b.rec.hold = make(chan struct{})
	defer close(b.rec.hold)
	if _, err := a.Request(tctx, b.peer(), []byte("slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request past its deadline: %v", err)
	}
}

func TestOversizedSendRefused(t *testing.T) {
	a, b := start(t, "a", opts{maxFrame: 1024}), start(t, "b", opts{})
	if err := a.Send(context.Background(), b.peer(), make([]byte, 1025)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized send: %v", err)
	}
}

func certs(t *testing.T, names ...string) (*pki.CA, map[string]*TLS) {
	t.Helper()
	ca, err := pki.NewCA("test-cluster", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*TLS{}
	for _, n := range names {
		c, err := ca.Issue(n, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = &TLS{CA: ca.Pool(), Cert: c}
	}
	return ca, out
}

func TestMutualTLS(t *testing.T) {
	_, good := certs(t, "a", "b")
	a, b := start(t, "a", opts{tls: good["a"]}), start(t, "b", opts{tls: good["b"]})
	resp, err := a.Request(context.Background(), b.peer(), []byte("over tls"))
	if err != nil || string(resp) != "re:over tls" {
		t.Fatalf("request over TLS: %q, %v", resp, err)
	}
}

func TestPeerFromAnotherCAIsRejected(t *testing.T) {
	_, good := certs(t, "a", "b")
	_, foreign := certs(t, "intruder")
	b := start(t, "b", opts{tls: good["b"]})
	intruder := start(t, "intruder", opts{tls: foreign["intruder"]})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := intruder.Request(ctx, b.peer(), []byte("let me in")); err == nil {
		t.Fatal("a peer with a certificate from another CA was served")
	}
	if !strings.Contains(b.log.String(), "refused a connection") || b.Stats().Rejected == 0 {
		t.Fatalf("refusal not logged or counted:\n%s", b.log.String())
	}
	// And the other way: a node will not talk to a server from another CA.
	a := start(t, "a", opts{tls: good["a"]})
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	if _, err := a.Request(ctx2, Peer{ID: intruder.id, Addr: intruder.Addr()}, []byte("hi")); err == nil {
		t.Fatal("a node accepted a server certificate from another CA")
	}
	if !strings.Contains(a.log.String(), "identity refused") {
		t.Fatalf("a's refusal not logged:\n%s", a.log.String())
	}
}

// A certificate from the right CA that names another node does not let a
// node claim to be that node.
func TestCertificateMustNameTheNode(t *testing.T) {
	_, good := certs(t, "b", "mallory")
	b := start(t, "b", opts{tls: good["b"]})
	// "a" presents mallory's certificate.
	impostor := start(t, "a", opts{tls: good["mallory"]})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := impostor.Request(ctx, b.peer(), []byte("hi")); err == nil {
		t.Fatal("a node was served under a name its certificate does not carry")
	}
	if !strings.Contains(b.log.String(), `certificate does not name node \"a\"`) {
		t.Fatalf("log:\n%s", b.log.String())
	}
}

// rawDial opens a plain TCP connection and says hello as name.
func rawDial(t *testing.T, addr, name string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := hello{Version: protocolVersion, Node: proc.NodeID{Name: name, Incarnation: 1}, Epoch: 1}
	if _, err := c.Write(AppendFrame(nil, FrameHello, 0, h.encode())); err != nil {
		t.Fatal(err)
	}
	var scratch [headerSize]byte
	if f, err := ReadFrame(c, 4096, &scratch); err != nil || f.Type != FrameHelloAck {
		t.Fatalf("no hello-ack: %v %v", f.Type, err)
	}
	return c
}

func closedByPeer(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("connection not closed by the peer: %v", err)
	}
}

func TestMalformedFramesCloseOnlyThatConnection(t *testing.T) {
	b := start(t, "b", opts{maxFrame: 1024})
	a := start(t, "a", opts{})
	cases := map[string][]byte{
		"garbage":         []byte("GET / HTTP/1.1\r\n\r\n garbage garbage"),
		"oversized":       AppendFrame(nil, FrameMessage, 0, make([]byte, 2000)),
		"unknown type":    AppendFrame(nil, FrameType(99), 0, nil),
		"hello again":     AppendFrame(nil, FrameHello, 0, nil),
		"huge length":     append(binary.BigEndian.AppendUint32(nil, 0xfffffff0), byte(FrameMessage), 0, 0, 0, 0, 0, 0, 0, 0),
		"short length":    {0, 0, 0, 1, byte(FrameMessage), 0, 0, 0, 0, 0, 0, 0, 0},
		"truncated frame": AppendFrame(nil, FrameMessage, 0, []byte("cut"))[:10],
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			c := rawDial(t, b.Addr(), "evil-"+strings.ReplaceAll(name, " ", "-"))
			defer c.Close()
			if _, err := c.Write(data); err != nil {
				t.Fatal(err)
			}
			if name == "truncated frame" {
				c.(*net.TCPConn).CloseWrite()
			}
			closedByPeer(t, c)
		})
	}
	// A hello that is not a hello, and no hello at all, are refused too.
	c, _ := net.Dial("tcp", b.Addr())
	c.Write(AppendFrame(nil, FrameHello, 0, []byte{1, 2, 3}))
	closedByPeer(t, c)
	c.Close()
	// The node is unharmed.
	if resp, err := a.Request(context.Background(), b.peer(), []byte("still up?")); err != nil || string(resp) != "re:still up?" {
		t.Fatalf("after bad frames: %q, %v", resp, err)
	}
	if !strings.Contains(b.log.String(), "bad frame") {
		t.Fatalf("bad frames not logged:\n%s", b.log.String())
	}
}

func TestSessionLossFailsRequestsAndIsReported(t *testing.T) {
	a := start(t, "a", opts{})
	b := start(t, "b", opts{noCleanup: true})
	b.rec.hold = make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		_, err := a.Request(context.Background(), b.peer(), []byte("never answered"))
		errs <- err
	}()
	// Wait until the session is up, then kill b.
	proctest.Eventually(t, "session up", func() bool { return a.Stats().Sessions > 0 })
	b.Close()
	if err := recv(t, errs); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("request across a lost session: %v", err)
	}
	if p := recv(t, a.rec.downs); p != b.id {
		t.Fatalf("SessionDown for %v", p)
	}
	// Dialing the dead address is refused: reported as unreachable.
	_ = a.Send(context.Background(), b.peer(), []byte("anyone?"))
	if p := recv(t, a.rec.unreach); p != b.id {
		t.Fatalf("Unreachable for %v", p)
	}
}

// killable wraps dialed connections so a test can cut them.
type killable struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (k *killable) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		k.mu.Lock()
		k.conns = append(k.conns, c)
		k.mu.Unlock()
	}
	return c, err
}

func (k *killable) cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

func TestReconnectsAfterALostConnection(t *testing.T) {
	k := &killable{}
	a := start(t, "a", opts{dial: k.dial})
	b := start(t, "b", opts{})
	ctx := context.Background()
	if _, err := a.Request(ctx, b.peer(), []byte("1")); err != nil {
		t.Fatal(err)
	}
	k.cut()
	recv(t, a.rec.downs)
	recv(t, b.rec.downs) // b's side of the session ended too
	if resp, err := a.Request(ctx, b.peer(), []byte("2")); err != nil || string(resp) != "re:2" {
		t.Fatalf("after reconnect: %q, %v", resp, err)
	}
	if s := a.Stats(); s.Sessions != 2 {
		t.Fatalf("sessions %d, want 2", s.Sessions)
	}
}

// A peer that accepts but never reads fills the queue; Send then waits for
// room and gives up with its context. Nothing grows without bound.
func TestFullQueueBlocksWithTheCallersContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stuck := make(chan struct{})
	defer close(stuck)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var scratch [headerSize]byte
		ReadFrame(c, 4096, &scratch)
		ack := hello{Version: protocolVersion, Node: proc.NodeID{Name: "sink", Incarnation: 1}}
		c.Write(AppendFrame(nil, FrameHelloAck, 0, ack.encode()))
		<-stuck // never reads again
	}()
	a := start(t, "a", opts{queue: 64 << 10, maxFrame: 1024})
	sink := Peer{ID: proc.NodeID{Name: "sink", Incarnation: 1}, Addr: ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var err2 error
	sent := 0
	for err2 == nil && sent < 1_000_000 {
		err2 = a.Send(ctx, sink, make([]byte, 1000))
		sent++
	}
	if !errors.Is(err2, context.DeadlineExceeded) {
		t.Fatalf("after %d sends: %v, want the context's deadline", sent, err2)
	}
	// Forgetting the peer releases a waiting sender at once.
	done := make(chan error, 1)
	go func() { done <- a.Send(context.Background(), sink, make([]byte, 1000)) }()
	proctest.Eventually(t, "a sender blocked on the full queue", func() bool { return a.Stats().BlockedSenders > 0 })
	a.Forget(sink.ID)
	if err := recv(t, done); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("send waiting on a forgotten peer: %v", err)
	}
}

func TestWrongIncarnationAtAddressIsUnreachable(t *testing.T) {
	a, b := start(t, "a", opts{}), start(t, "b", opts{})
	old := Peer{ID: proc.NodeID{Name: "b", Incarnation: 0}, Addr: b.Addr()}
	_ = a.Send(context.Background(), old, []byte("to a past life"))
	if p := recv(t, a.rec.unreach); p != old.ID {
		t.Fatalf("Unreachable for %v", p)
	}
	if !strings.Contains(a.log.String(), "answered as") {
		t.Fatalf("log:\n%s", a.log.String())
	}
}

func TestCloseEndsEverything(t *testing.T) {
	a := start(t, "a", opts{noCleanup: true})
	b := start(t, "b", opts{})
	b.rec.hold = make(chan struct{})
	defer close(b.rec.hold)
	errs := make(chan error, 1)
	go func() {
		_, err := a.Request(context.Background(), b.peer(), []byte("pending"))
		errs <- err
	}()
	proctest.Eventually(t, "session up", func() bool { return a.Stats().Sessions > 0 })
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, errs); !errors.Is(err, ErrClosed) && !errors.Is(err, ErrSessionLost) {
		t.Fatalf("request pending at Close: %v", err)
	}
	if err := a.Send(context.Background(), b.peer(), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("send after Close: %v", err)
	}
}

// BenchmarkSendThroughput is one-way 32-byte messages between two nodes
// over loopback, with TLS, counted when received.
func BenchmarkSendThroughput(b *testing.B) {
	for _, secure := range []bool{false, true} {
		name := "plain"
		if secure {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			ca, _ := pki.NewCA("bench", time.Hour)
			mk := func(n string) *TLS {
				if !secure {
					return nil
				}
				c, _ := ca.Issue(n, nil, time.Hour)
				return &TLS{CA: ca.Pool(), Cert: c}
			}
			counter := &countingHandler{want: b.N, done: make(chan struct{})}
			lnA, _ := net.Listen("tcp", "127.0.0.1:0")
			lnB, _ := net.Listen("tcp", "127.0.0.1:0")
			discard := slog.New(slog.DiscardHandler)
			ta, _ := New(Config{Self: proc.NodeID{Name: "a", Incarnation: 1}, Listener: lnA, TLS: mk("a"), Handler: newRecorder(), Logger: discard})
			tb, _ := New(Config{Self: proc.NodeID{Name: "b", Incarnation: 1}, Listener: lnB, TLS: mk("b"), Handler: counter, Logger: discard})
			ta.Start()
			tb.Start()
			defer ta.Close()
			defer tb.Close()
			to := Peer{ID: proc.NodeID{Name: "b", Incarnation: 1}, Addr: tb.Addr()}
			msg := make([]byte, 32)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := ta.Send(ctx, to, msg); err != nil {
					b.Fatal(err)
				}
			}
			<-counter.done
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

type countingHandler struct {
	n, want int
	done    chan struct{}
}

func (c *countingHandler) Message(proc.NodeID, []byte) {
	c.n++
	if c.n == c.want {
		close(c.done)
	}
}
func (c *countingHandler) Request(_ proc.NodeID, p []byte, reply func([]byte)) { reply(p) }
func (c *countingHandler) SessionDown(proc.NodeID, error)                      {}
func (c *countingHandler) Unreachable(proc.NodeID, error)                      {}

// blocker is a Handler whose Message blocks on a message named "block"
// until released, recording the order in which things happen.
type blocker struct {
	*recorder
	mu      sync.Mutex
	order   []string
	release chan struct{}
	entered chan struct{}
}

func (b *blocker) Message(from proc.NodeID, p []byte) {
	if string(p) == "block" {
		b.entered <- struct{}{}
		<-b.release
	}
	b.mu.Lock()
	b.order = append(b.order, string(p))
	b.mu.Unlock()
	b.recorder.Message(from, p)
}

func (b *blocker) SessionDown(peer proc.NodeID, err error) {
	b.mu.Lock()
	b.order = append(b.order, "down")
	b.mu.Unlock()
	b.recorder.SessionDown(peer, err)
}

func (b *blocker) seen() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.order, " ")
}

// Frames still buffered from a connection whose session was lost are not
// handed out after the loss, nor after the next session's frames.
func TestFramesOfALostSessionAreNotHandedOutLater(t *testing.T) {
	k := &killable{}
	bh := &blocker{recorder: newRecorder(), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	a := start(t, "a", opts{dial: k.dial})
	b := start(t, "b", opts{handler: bh})
	ctx := context.Background()
	for _, m := range []string{"block", "m1", "m2", "m3"} {
		if err := a.Send(ctx, b.peer(), []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	recv(t, bh.entered) // b is inside the handler for "block"; m1..m3 are buffered
	k.cut()
	recv(t, a.rec.downs)
	if err := a.Send(ctx, b.peer(), []byte("m4")); err != nil {
		t.Fatal(err)
	}
	close(bh.release)
	proctest.Eventually(t, "m4 handled", func() bool { return strings.HasSuffix(bh.seen(), "m4") })
	// What was buffered from the broken connection may be handed out
	// before the loss is reported (it arrived first), never after it, and
	// never after the next session's frames.
	got := bh.seen()
	before, after, ok := strings.Cut(got, " down ")
	if !ok || after != "m4" || !strings.HasPrefix("block m1 m2 m3", before) {
		t.Fatalf("b handled %q: want a prefix of [block m1 m2 m3], then down, then m4", got)
	}
}

// A reply to a peer forgotten meanwhile is dropped: it neither brings the
// peer back nor leaves a writer dialing it.
func TestReplyToAForgottenPeerIsDropped(t *testing.T) {
	a := start(t, "a", opts{})
	b := start(t, "b", opts{})
	b.rec.hold = make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = a.Request(ctx, b.peer(), []byte("q"))
	}()
	proctest.Eventually(t, "b got the request", func() bool { return b.Stats().FramesReceived > 0 })
	b.Forget(a.id)
	recv(t, a.rec.downs) // a has seen its session with b end
	close(b.rec.hold)    // the reply goes to a forgotten peer
	proctest.Eventually(t, "no writer left for a", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, back := b.peers[a.id]
		return !back
	})
	if err := b.Send(context.Background(), a.peer(), []byte("x")); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("send to a forgotten peer: %v", err)
	}
	// Its connections are refused until it is connected to again.
	rejected := b.Stats().Rejected
	_ = a.Send(context.Background(), b.peer(), []byte("let me back"))
	proctest.Eventually(t, "a's session refused", func() bool { return b.Stats().Rejected > rejected })
	if err := b.Connect(a.peer()); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(context.Background(), a.peer(), []byte("welcome back")); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, a.rec.msgCh); got != "b:welcome back" {
		t.Fatalf("got %q", got)
	}
}

func TestForgetReleasesConnections(t *testing.T) {
	a := start(t, "a", opts{})
	b := start(t, "b", opts{})
	for range 20 {
		if err := a.Connect(b.peer()); err != nil {
			t.Fatal(err)
		}
		proctest.Eventually(t, "connected", func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			p := a.peers[b.id]
			if p == nil {
				return false
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.out != nil
		})
		a.Forget(b.id)
	}
	a.mu.Lock()
	tracked := len(a.conns)
	a.mu.Unlock()
	if tracked > 2 { // at most b's inbound connections still closing
		t.Fatalf("%d connections still tracked after 20 Connect/Forget cycles", tracked)
	}
}

// One break of a session is reported once on each side.
// TestOneLossEndsInOneStableSession: a cut connection is reported on both
// sides, both reconnect, and the new session stays up. While both sides
// redial at once the loss may be reported twice (the Handler contract
// allows it; every consumer is idempotent), but once a request has crossed
// the new session no further loss follows.
func TestOneLossEndsInOneStableSession(t *testing.T) {
	k := &killable{}
	a := start(t, "a", opts{dial: k.dial})
	b := start(t, "b", opts{})
	if err := a.Connect(b.peer()); err != nil {
		t.Fatal(err)
	}
	if err := b.Connect(a.peer()); err != nil {
		t.Fatal(err)
	}
	proctest.Eventually(t, "both directions up", func() bool { return a.Stats().Sessions == 1 && b.Stats().Sessions == 1 })
	k.cut()
	recv(t, a.rec.downs)
	recv(t, b.rec.downs)
	proctest.Eventually(t, "reconnected", func() bool { return a.Stats().Sessions >= 2 && b.Stats().Sessions >= 2 })
	proctest.Eventually(t, "a request across the new session", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := a.Request(ctx, b.peer(), []byte("after"))
		return err == nil
	})
	for len(a.rec.downs) > 0 || len(b.rec.downs) > 0 {
		select {
		case <-a.rec.downs:
		case <-b.rec.downs:
		}
	}
	select {
	case p := <-a.rec.downs:
		t.Fatalf("the new session broke at a (peer %v)", p)
	case p := <-b.rec.downs:
		t.Fatalf("the new session broke at b (peer %v)", p)
	case <-time.After(300 * time.Millisecond):
	}
}
