package transport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

// Handler receives what peers send. Its methods are called from the
// transport's goroutines and must not block for long. A payload passed to
// Message or Request is valid only until the method returns: copy what must
// be kept.
type Handler interface {
	// Message handles a one-way message. Messages from one peer are handled
	// one at a time, in the order that peer sent them.
	Message(from proc.NodeID, payload []byte)
	// Request handles a request in the same order as messages; reply must
	// be called exactly once, from any goroutine, and may be called later.
	Request(from proc.NodeID, payload []byte, reply func(payload []byte))
	// SessionDown says the session with peer broke (a connection in either
	// direction was lost or replaced): frames in flight either way may be
	// lost, the peer may have forgotten what this node asked of it, and
	// requests to it have failed. It may be reported more than once for
	// one break. The next Send opens a new session.
	SessionDown(peer proc.NodeID, err error)
	// Unreachable says a connection to peer was refused (nothing listens
	// at its address) or reached a later incarnation of it: a strong sign
	// that this life of the peer is gone.
	Unreachable(peer proc.NodeID, err error)
}

// Peer is a node to send to: its identity, and where it listens (empty if
// the transport already knows, from a hello).
type Peer struct {
	ID   proc.NodeID
	Addr string
}

// Config configures a Transport.
type Config struct {
	// Self is this node's identity.
	Self proc.NodeID
	// Listener accepts peers' connections; the transport owns and closes it.
	Listener net.Listener
	// Advertise is the address peers dial; default Listener.Addr().
	Advertise string
	// TLS, if set, makes every connection mutual TLS with the cluster CA.
	// Nil means plain TCP, which the layers above allow only when told.
	TLS *TLS
	// Dial opens a connection; default a net.Dialer. Tests inject faults
	// here.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// MaxFrameSize is the largest payload sent or accepted. Default 8 MiB.
	MaxFrameSize int
	// QueueBytes bounds the frames waiting for one peer. A Send that would
	// exceed it waits for room until its context ends. Default 16 MiB.
	QueueBytes int
	// HandshakeTimeout bounds dialing, TLS and hello. Default 5s.
	HandshakeTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between failed dials of a
	// peer that has frames waiting. Defaults 20ms and 2s.
	BackoffMin, BackoffMax time.Duration
	// Handler receives messages, requests and session news. Required.
	Handler Handler
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Errors. Test for them with errors.Is.
var (
	// ErrClosed: the transport is closed.
	ErrClosed = errors.New("transport: closed")
	// ErrSessionLost: the session with the peer broke while a request
	// waited for its response.
	ErrSessionLost = errors.New("transport: session lost")
	// ErrPeerGone: the peer was forgotten (the layer above declared it
	// dead) while a send waited.
	ErrPeerGone = errors.New("transport: peer gone")
	// ErrWrongNode: the address answered with another node, or another
	// life of the node.
	ErrWrongNode = errors.New("transport: address answered as another node")
)

// Stats counts what went through the transport.
type Stats struct {
	BytesSent, BytesReceived   uint64
	FramesSent, FramesReceived uint64
	Sessions                   uint64 // outbound connections established
	Rejected                   uint64 // connections refused at handshake or closed for bad frames
	BlockedSenders             int64  // sends waiting now for room in a full queue
}

// Transport is one node's endpoint. All methods are safe for concurrent use.
type Transport struct {
	cfg  Config
	log  *slog.Logger
	addr string
	done chan struct{}
	wg   sync.WaitGroup

	epochs atomic.Uint64 // numbers outbound sessions
	nextID atomic.Uint64 // numbers requests
	closed atomic.Bool

	mu        sync.Mutex
	peers     map[proc.NodeID]*peer
	forgotten map[proc.NodeID]struct{} // peers the layer above declared gone, until it connects again
	calls     map[uint64]*call
	conns     map[net.Conn]struct{} // every open connection, to close on Close
	started   bool

	bytesSent, bytesRecv, framesSent, framesRecv, sessions, rejected atomic.Uint64
	blocked                                                          atomic.Int64
}

type call struct {
	peer proc.NodeID
	ch   chan result
}

type result struct {
	payload []byte
	err     error
}

// New returns a transport; it accepts connections once Start is called, so
// the layer above can finish wiring itself to the transport first.
func New(cfg Config) (*Transport, error) {
	if cfg.Listener == nil || cfg.Handler == nil || cfg.Self.Name == "" {
		return nil, errors.New("transport: Config needs Self, Listener and Handler")
	}
	if cfg.MaxFrameSize <= 0 {
		cfg.MaxFrameSize = 8 << 20
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 16 << 20
	}
	if cfg.QueueBytes < FrameSize(cfg.MaxFrameSize) {
		cfg.QueueBytes = FrameSize(cfg.MaxFrameSize)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 5 * time.Second
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 20 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = 2 * time.Second
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Transport{
		cfg:       cfg,
		log:       cfg.Logger,
		addr:      cfg.Advertise,
		done:      make(chan struct{}),
		peers:     make(map[proc.NodeID]*peer),
		forgotten: make(map[proc.NodeID]struct{}),
		calls:     make(map[uint64]*call),
		conns:     make(map[net.Conn]struct{}),
	}
	if t.addr == "" {
		t.addr = cfg.Listener.Addr().String()
	}
	return t, nil
}

// Start begins accepting peers' connections.
func (t *Transport) Start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started || t.closed.Load() {
		return
	}
	t.started = true
	t.wg.Add(1)
	go t.accept()
}

// Addr returns the address peers dial.
func (t *Transport) Addr() string { return t.addr }

// Stats returns the counters so far.
func (t *Transport) Stats() Stats {
	return Stats{
		BytesSent: t.bytesSent.Load(), BytesReceived: t.bytesRecv.Load(),
		FramesSent: t.framesSent.Load(), FramesReceived: t.framesRecv.Load(),
		Sessions: t.sessions.Load(), Rejected: t.rejected.Load(),
		BlockedSenders: t.blocked.Load(),
	}
}

// Close stops accepting, closes every connection, fails what waits, and
// returns once the transport's goroutines have ended.
func (t *Transport) Close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(t.done)
	err := t.cfg.Listener.Close()
	t.mu.Lock()
	for c := range t.conns {
		c.Close()
	}
	for id, c := range t.calls {
		c.ch <- result{err: ErrClosed}
		delete(t.calls, id)
	}
	t.mu.Unlock()
	t.wg.Wait()
	return err
}

func (t *Transport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *Transport) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// peer returns the state for id, creating it. A forgotten peer is not
// brought back, unless revive (Connect) says the layer above wants it.
func (t *Transport) peer(id proc.NodeID, addr string, revive bool) (*peer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return nil, ErrClosed
	}
	if _, gone := t.forgotten[id]; gone {
		if !revive {
			return nil, fmt.Errorf("%w: %v", ErrPeerGone, id)
		}
		delete(t.forgotten, id)
	}
	p := t.peers[id]
	if p == nil {
		p = newPeer(t, id)
		t.peers[id] = p
	}
	if addr != "" {
		p.setAddr(addr)
	}
	return p, nil
}

// Send queues a one-way message to peer. It returns once the message is
// queued, not delivered; delivery is at most once. If the peer's queue is
// full it waits for room until ctx ends.
func (t *Transport) Send(ctx context.Context, to Peer, payload []byte) error {
	return t.send(ctx, to, FrameMessage, 0, payload)
}

func (t *Transport) send(ctx context.Context, to Peer, typ FrameType, id uint64, payload []byte) error {
	if len(payload) > t.cfg.MaxFrameSize {
		return fmt.Errorf("%w: %d bytes to %v, the limit is %d", ErrFrameTooLarge, len(payload), to.ID, t.cfg.MaxFrameSize)
	}
	p, err := t.peer(to.ID, to.Addr, false)
	if err != nil {
		return err
	}
	return p.enqueue(ctx, typ, id, payload)
}

// Connect keeps a session open with peer even while nothing is sent, and
// reopens it at once when it is lost, so that the loss of a peer is seen
// when its connection breaks, and a refused reconnection is reported as
// Unreachable. The layer above connects to every live member; Forget stops.
// Connect also lifts a Forget: the layer above found the peer alive again.
func (t *Transport) Connect(to Peer) error {
	p, err := t.peer(to.ID, to.Addr, true)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.forgot {
		return fmt.Errorf("%w: %v", ErrPeerGone, to.ID)
	}
	p.want = true
	p.kick()
	return nil
}

// Reset ends the current session with peer, as if its connection had
// broken: the peer will see the loss too. The layer above uses it when it
// could not send something the peer must not miss (a Down), so that the
// peer learns its state here was lost rather than waiting forever.
func (t *Transport) Reset(id proc.NodeID, reason error) {
	t.mu.Lock()
	p := t.peers[id]
	t.mu.Unlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	conn := p.out
	if conn == nil && p.in != nil {
		conn = p.in.conn
	}
	p.mu.Unlock()
	p.lose(conn, reason)
}

// Flush waits until every peer's queued frames are written, the session
// with it is down, or ctx ends.
func (t *Transport) Flush(ctx context.Context) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		t.mu.Lock()
		all := true
		for _, p := range t.peers {
			if !p.idle() {
				all = false
				break
			}
		}
		t.mu.Unlock()
		if all {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// replyWait bounds how long a response, or a frame SendOrReset carries,
// waits for room in the peer's queue.
const replyWait = 5 * time.Second

// SendOrReset sends a frame the peer must not miss (a Down, a link's exit):
// if it cannot be queued within a bounded wait, the session is reset, so
// the peer learns that what it asked of this node is lost instead of
// waiting for it forever. A forgotten peer is left alone.
func (t *Transport) SendOrReset(to proc.NodeID, payload []byte) {
	t.sendOrReset(to, FrameMessage, 0, payload)
}

func (t *Transport) sendOrReset(to proc.NodeID, typ FrameType, id uint64, payload []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	err := t.send(ctx, Peer{ID: to}, typ, id, payload)
	if err == nil || errors.Is(err, ErrPeerGone) || errors.Is(err, ErrClosed) {
		return
	}
	t.log.Warn("transport: resetting a session: could not send", "peer", to.String(), "frame", typ, "err", err)
	t.Reset(to, err)
}

// Request sends payload to peer and waits for its response, ctx's end, or
// the session's loss (ErrSessionLost).
func (t *Transport) Request(ctx context.Context, to Peer, payload []byte) ([]byte, error) {
	id := t.nextID.Add(1)
	c := &call{peer: to.ID, ch: make(chan result, 1)}
	t.mu.Lock()
	if t.closed.Load() {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	t.calls[id] = c
	t.mu.Unlock()
	drop := func() {
		t.mu.Lock()
		delete(t.calls, id)
		t.mu.Unlock()
	}
	if err := t.send(ctx, to, FrameRequest, id, payload); err != nil {
		drop()
		return nil, err
	}
	select {
	case r := <-c.ch:
		return r.payload, r.err
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	}
}

// complete delivers a response to the request id, if peer is who it was
// sent to and it still waits.
func (t *Transport) complete(peer proc.NodeID, id uint64, payload []byte) {
	t.mu.Lock()
	c := t.calls[id]
	if c != nil && c.peer == peer {
		delete(t.calls, id)
	} else {
		c = nil
	}
	t.mu.Unlock()
	if c != nil {
		c.ch <- result{payload: payload}
	}
}

// failRequests ends every request waiting on peer.
func (t *Transport) failRequests(peer proc.NodeID, err error) {
	t.mu.Lock()
	for id, c := range t.calls {
		if c.peer == peer {
			c.ch <- result{err: err}
			delete(t.calls, id)
		}
	}
	t.mu.Unlock()
}

// Forget drops everything about peer: queued frames, connections, waiting
// requests (which fail with ErrPeerGone). The layer above calls it when it
// has declared the peer dead. Until Connect brings it back, sends to it
// fail with ErrPeerGone and its connections are refused, so a peer that
// still thinks this node knows it finds out.
func (t *Transport) Forget(id proc.NodeID) {
	t.mu.Lock()
	p := t.peers[id]
	delete(t.peers, id)
	t.forgotten[id] = struct{}{}
	t.mu.Unlock()
	if p != nil {
		p.forget()
	}
	t.failRequests(id, ErrPeerGone)
}

// accept serves inbound connections until Close.
func (t *Transport) accept() {
	defer t.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		conn, err := t.cfg.Listener.Accept()
		if err != nil {
			if t.closed.Load() {
				return
			}
			t.log.Warn("transport: accept failed", "err", err)
			select {
			case <-time.After(backoff):
			case <-t.done:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !t.track(conn) {
			conn.Close()
			return
		}
		t.wg.Add(1)
		go t.serve(conn)
	}
}

// serve runs one inbound connection: handshake, then frames until it ends.
func (t *Transport) serve(raw net.Conn) {
	defer t.wg.Done()
	defer t.untrack(raw)
	defer raw.Close()
	conn := raw
	_ = raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	var tlsConn *tls.Conn
	if t.cfg.TLS != nil {
		tlsConn = tls.Server(raw, t.cfg.TLS.server())
		if err := tlsConn.Handshake(); err != nil {
			t.rejected.Add(1)
			t.log.Warn("transport: refused a connection", "remote", raw.RemoteAddr().String(), "err", err)
			return
		}
		conn = tlsConn
	}
	var scratch [headerSize]byte
	f, err := ReadFrame(conn, maxHelloString*3, &scratch)
	if err != nil || f.Type != FrameHello {
		t.rejected.Add(1)
		t.log.Warn("transport: refused a connection: no hello", "remote", raw.RemoteAddr().String(), "err", err, "frame", f.Type)
		return
	}
	h, err := decodeHello(f.Payload)
	if err == nil && h.Version != protocolVersion {
		err = fmt.Errorf("protocol version %d, this node speaks %d", h.Version, protocolVersion)
	}
	if err == nil && tlsConn != nil && !certNames(tlsConn.ConnectionState().PeerCertificates[0], h.Node.Name) {
		err = fmt.Errorf("%w: certificate does not name node %q", ErrIdentity, h.Node.Name)
	}
	if err == nil && h.Node.Name == t.cfg.Self.Name {
		err = fmt.Errorf("a node named %q, like this one, dialed in", h.Node.Name)
	}
	if err != nil {
		t.rejected.Add(1)
		t.log.Warn("transport: refused a connection", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	t.mu.Lock()
	_, forgotten := t.forgotten[h.Node]
	t.mu.Unlock()
	if forgotten {
		// The layer above declared this peer gone: refusing it tells the
		// peer its session here is lost, until it is found alive again.
		t.rejected.Add(1)
		t.log.Debug("transport: refused a forgotten peer", "peer", h.Node.String())
		return
	}
	ack := hello{Version: protocolVersion, Node: t.cfg.Self, Addr: t.addr}
	if _, err := conn.Write(AppendFrame(nil, FrameHelloAck, 0, ack.encode())); err != nil {
		return
	}
	_ = raw.SetDeadline(time.Time{})
	p, err := t.peer(h.Node, h.Addr, false)
	if err != nil {
		t.log.Debug("transport: refused a forgotten peer", "peer", h.Node.String())
		return
	}
	in := &inbound{conn: raw, done: make(chan struct{})}
	p.attachInbound(in)
	err = t.readFrames(conn, p, in)
	close(in.done)
	if errors.Is(err, ErrBadFrame) || errors.Is(err, ErrFrameTooLarge) || errors.Is(err, errUnexpectedFrame) {
		t.rejected.Add(1)
		t.log.Warn("transport: closing a connection: bad frame", "peer", h.Node.String(), "err", err)
	}
	p.lose(raw, fmt.Errorf("inbound connection ended: %v", err))
}

var errUnexpectedFrame = errors.New("transport: unexpected frame")

// readFrames dispatches frames from peer until the connection ends. Reads
// are buffered, and a payload buffer is reused from frame to frame (see
// Handler).
func (t *Transport) readFrames(conn io.Reader, p *peer, in *inbound) error {
	var scratch [headerSize]byte
	r := bufio.NewReaderSize(conn, 64<<10)
	buf := make([]byte, 0, 4096)
	for {
		f, err := readFrame(r, t.cfg.MaxFrameSize, &scratch, buf)
		if err != nil {
			return err
		}
		if p.cur.Load() != in {
			// The session this connection carried is over: what is still
			// buffered from it is not handed out after the loss.
			return net.ErrClosed
		}
		if cap(f.Payload) > cap(buf) && cap(f.Payload) <= 1<<20 {
			buf = f.Payload[:0] // keep the larger buffer for the next frames
		}
		t.framesRecv.Add(1)
		t.bytesRecv.Add(uint64(FrameSize(len(f.Payload))))
		switch f.Type {
		case FrameMessage:
			t.cfg.Handler.Message(p.id, f.Payload)
		case FrameRequest:
			id, from := f.ID, p.id
			t.cfg.Handler.Request(from, f.Payload, func(resp []byte) {
				t.sendOrReset(from, FrameResponse, id, resp)
			})
		case FrameResponse:
			t.complete(p.id, f.ID, bytes.Clone(f.Payload))
		default:
			return fmt.Errorf("%w: %v after the handshake", errUnexpectedFrame, f.Type)
		}
	}
}
