package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

// peer is what the transport keeps for one node life. A session with it is
// a pair of connections: the outbound one this node dialed (frames go only
// that way, so one sender's frames stay in order) and the inbound one the
// peer dialed. Losing either loses the session: both are closed, the loss is
// reported once, after the inbound reader has stopped handing out frames,
// and only then is the peer redialled.
type peer struct {
	t  *Transport
	id proc.NodeID

	mu      sync.Mutex
	addr    string
	pending []byte        // encoded frames waiting for the writer
	space   chan struct{} // closed when pending is taken or dropped: senders may retry
	wake    chan struct{} // capacity 1: the writer has something to do
	gone    chan struct{} // closed by forget
	out     net.Conn      // the outbound connection, nil while there is none
	in      *inbound      // the inbound connection, nil while there is none
	forgot  bool
	started bool
	want    bool // keep a session open even with nothing to send (see Connect)
	busy    bool // the writer is writing a batch (for Flush)

	// cur is the inbound connection whose frames are dispatched; a reader
	// whose connection is no longer current stops at the next frame.
	cur atomic.Pointer[inbound]
}

// inbound is a connection the peer dialed, and the end of its reader.
type inbound struct {
	conn net.Conn
	done chan struct{} // closed when its reader hands out no more frames
}

func newPeer(t *Transport, id proc.NodeID) *peer {
	return &peer{
		t: t, id: id,
		space: make(chan struct{}),
		wake:  make(chan struct{}, 1),
		gone:  make(chan struct{}),
	}
}

func (p *peer) setAddr(addr string) {
	p.mu.Lock()
	p.addr = addr
	p.mu.Unlock()
}

// kick starts the writer if it is not running and wakes it. Called with
// p.mu held.
func (p *peer) kick() {
	if !p.started {
		p.started = true
		p.t.wg.Add(1)
		go p.run()
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// enqueue appends a frame to the pending buffer, waiting for room if the
// queue is full, and wakes the writer.
func (p *peer) enqueue(ctx context.Context, typ FrameType, id uint64, payload []byte) error {
	size := FrameSize(len(payload))
	for {
		p.mu.Lock()
		if p.forgot {
			p.mu.Unlock()
			return fmt.Errorf("%w: %v", ErrPeerGone, p.id)
		}
		if len(p.pending) == 0 || len(p.pending)+size <= p.t.cfg.QueueBytes {
			p.pending = AppendFrame(p.pending, typ, id, payload)
			p.kick()
			p.mu.Unlock()
			return nil
		}
		space := p.space
		p.mu.Unlock()
		p.t.blocked.Add(1)
		select {
		case <-space:
		case <-p.gone:
		case <-p.t.done:
			p.t.blocked.Add(-1)
			return ErrClosed
		case <-ctx.Done():
			p.t.blocked.Add(-1)
			return fmt.Errorf("send to %v: queue full: %w", p.id, ctx.Err())
		}
		p.t.blocked.Add(-1)
	}
}

// run is the peer's writer: it dials when there is something to send or a
// session is wanted, and writes whatever has queued since the last write
// in one go.
func (p *peer) run() {
	defer p.t.wg.Done()
	var buf []byte
	backoff := p.t.cfg.BackoffMin
	for {
		select {
		case <-p.wake:
		case <-p.gone:
			return
		case <-p.t.done:
			return
		}
		for {
			p.mu.Lock()
			if p.forgot || (len(p.pending) == 0 && (!p.want || p.out != nil)) {
				p.mu.Unlock()
				break
			}
			conn := p.out
			p.mu.Unlock()
			if conn == nil {
				var err error
				if conn, err = p.dial(); err != nil {
					if !p.pause(backoff) {
						return
					}
					backoff = min(2*backoff, p.t.cfg.BackoffMax)
					continue
				}
				backoff = p.t.cfg.BackoffMin
			}
			p.mu.Lock()
			if p.out != conn || len(p.pending) == 0 { // lost while we were away, or only connecting
				p.mu.Unlock()
				continue
			}
			buf, p.pending = p.pending, buf[:0]
			close(p.space)
			p.space = make(chan struct{})
			p.busy = true
			p.mu.Unlock()
			n, err := conn.Write(buf)
			p.mu.Lock()
			p.busy = false
			p.mu.Unlock()
			p.t.bytesSent.Add(uint64(n))
			if err != nil {
				p.lose(conn, fmt.Errorf("write: %w", err))
				continue
			}
			p.t.framesSent.Add(uint64(countFrames(buf)))
			if cap(buf) > 4*p.t.cfg.QueueBytes {
				buf = nil
			}
		}
	}
}

// pause waits d, with jitter, unless the peer is forgotten or the
// transport closed first.
func (p *peer) pause(d time.Duration) bool {
	d = d/2 + rand.N(d/2+1)
	select {
	case <-time.After(d):
		return true
	case <-p.gone:
		return false
	case <-p.t.done:
		return false
	}
}

func countFrames(b []byte) int {
	n := 0
	for len(b) >= 4 {
		l := int(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
		b = b[4+l:]
		n++
	}
	return n
}

// dial opens the outbound connection: TCP, TLS, hello, hello-ack.
func (p *peer) dial() (net.Conn, error) {
	t := p.t
	p.mu.Lock()
	addr := p.addr
	p.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("transport: no address for %v", p.id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.HandshakeTimeout)
	defer cancel()
	go func() {
		select {
		case <-p.gone:
			cancel()
		case <-t.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	raw, err := t.cfg.Dial(ctx, addr)
	if err != nil {
		t.log.Debug("transport: dial failed", "peer", p.id.String(), "addr", addr, "err", err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			t.cfg.Handler.Unreachable(p.id, err)
		}
		return nil, err
	}
	if !t.track(raw) {
		raw.Close()
		return nil, ErrClosed
	}
	fail := func(err error) (net.Conn, error) {
		t.untrack(raw)
		raw.Close()
		t.log.Warn("transport: could not open a session", "peer", p.id.String(), "addr", addr, "err", err)
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(d)
	}
	conn := raw
	if t.cfg.TLS != nil {
		tc := tls.Client(raw, t.cfg.TLS.client(p.id.Name))
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(err)
		}
		conn = tc
	}
	h := hello{Version: protocolVersion, Node: t.cfg.Self, Epoch: t.epochs.Add(1), Addr: t.addr}
	if _, err := conn.Write(AppendFrame(nil, FrameHello, 0, h.encode())); err != nil {
		return fail(err)
	}
	var scratch [headerSize]byte
	f, err := ReadFrame(conn, maxHelloString*3, &scratch)
	if err != nil {
		return fail(fmt.Errorf("no hello-ack: %w", err))
	}
	ack, err := decodeHello(f.Payload)
	if err != nil || f.Type != FrameHelloAck {
		return fail(fmt.Errorf("bad hello-ack: %v %v", f.Type, err))
	}
	if ack.Node != p.id {
		err := fmt.Errorf("%w: %s answered as %v, not %v", ErrWrongNode, addr, ack.Node, p.id)
		_, err = fail(err)
		if ack.Node.Name == p.id.Name {
			t.cfg.Handler.Unreachable(p.id, err) // the node restarted: this life is gone
		}
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	p.mu.Lock()
	if p.forgot {
		p.mu.Unlock()
		return fail(ErrPeerGone)
	}
	p.out = conn
	p.mu.Unlock()
	t.sessions.Add(1)
	// The peer never writes on this connection after its ack: a read ends
	// only when the connection does, which is how a lost session is seen
	// even while nothing is being sent.
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		var one [1]byte
		_, err := conn.Read(one[:])
		if err == nil {
			err = fmt.Errorf("%w: data on an outbound connection", errUnexpectedFrame)
		}
		p.lose(conn, err)
	}()
	return conn, nil
}

func rawOf(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

// lose ends the current session if conn belongs to it (a stale connection
// changes nothing): both connections close, waiting frames are dropped,
// requests fail, the handler is told once (after the inbound reader has
// stopped), and the peer is redialled if a session is wanted.
func (p *peer) lose(conn net.Conn, err error) {
	p.mu.Lock()
	if conn == nil || (conn != p.out && (p.in == nil || conn != p.in.conn)) {
		p.mu.Unlock()
		return
	}
	out, in := p.out, p.in
	p.out, p.in = nil, nil
	p.cur.Store(nil)
	p.pending = p.pending[:0]
	close(p.space)
	p.space = make(chan struct{})
	redial := p.want && !p.forgot
	p.mu.Unlock()
	if out != nil {
		out.Close()
		p.t.untrack(rawOf(out))
	}
	if in != nil {
		in.conn.Close()
		<-in.done // its frames are handed out before the loss is reported
	}
	if !p.t.closed.Load() {
		p.t.failRequests(p.id, fmt.Errorf("%w with %v: %v", ErrSessionLost, p.id, err))
		p.t.cfg.Handler.SessionDown(p.id, err)
	}
	if redial {
		p.mu.Lock()
		p.kick()
		p.mu.Unlock()
	}
}

// attachInbound makes conn the session's inbound connection. A peer that
// dials again while a session stands has reset its side: that session is
// lost first.
func (p *peer) attachInbound(in *inbound) {
	p.mu.Lock()
	old := p.in
	p.mu.Unlock()
	if old != nil {
		p.lose(old.conn, errors.New("the peer opened a new session"))
	}
	p.mu.Lock()
	if p.forgot {
		p.mu.Unlock()
		in.conn.Close()
		return
	}
	p.in = in
	p.cur.Store(in)
	p.mu.Unlock()
}

// forget stops the peer: its writer ends, its connections close, waiting
// senders fail. Nothing is reported: the layer above asked for it.
func (p *peer) forget() {
	p.mu.Lock()
	if p.forgot {
		p.mu.Unlock()
		return
	}
	p.forgot = true
	p.pending = nil
	close(p.gone)
	out, in := p.out, p.in
	p.out, p.in = nil, nil
	p.cur.Store(nil)
	p.mu.Unlock()
	if out != nil {
		out.Close()
		p.t.untrack(rawOf(out))
	}
	if in != nil {
		in.conn.Close()
	}
}

// idle reports whether nothing waits to be written.
func (p *peer) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forgot || (len(p.pending) == 0 && !p.busy) || p.out == nil
}
