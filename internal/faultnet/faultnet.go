// Package faultnet injects network faults between herd nodes running in one
// process: partitions, and their healing. It wraps both transports a node
// uses, memberlist's (packets and streams) and herd's (the dialer), around
// one shared model of who can reach whom. A partition is silent, as a real
// one is: packets vanish, new connections time out, established ones freeze
// until the partition heals or they are closed. It is for tests and depends
// on memberlist only.
package faultnet

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Net is the model: nodes, their addresses, and which groups they are in.
// Safe for concurrent use.
type Net struct {
	mu      sync.Mutex
	group   map[string]int    // node → group; nodes not listed are in group 0
	owner   map[string]string // address (host:port) → node
	changed chan struct{}     // closed and replaced whenever groups change
}

// New returns a network where everyone reaches everyone.
func New() *Net {
	return &Net{group: map[string]int{}, owner: map[string]string{}, changed: make(chan struct{})}
}

// Register says that addr (host:port) belongs to node, so faults can be
// applied to traffic sent to it.
func (n *Net) Register(node string, addrs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range addrs {
		n.owner[a] = node
	}
}

// Partition splits the nodes into groups that cannot reach each other.
// Nodes in no group form one more group together.
func (n *Net) Partition(groups ...[]string) {
	n.mu.Lock()
	n.group = map[string]int{}
	for i, g := range groups {
		for _, node := range g {
			n.group[node] = i + 1
		}
	}
	n.broadcastLocked()
	n.mu.Unlock()
}

// Heal lets every node reach every other again. Frozen connections resume.
func (n *Net) Heal() {
	n.mu.Lock()
	n.group = map[string]int{}
	n.broadcastLocked()
	n.mu.Unlock()
}

func (n *Net) broadcastLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// Blocked reports whether node a cannot reach node b now.
func (n *Net) Blocked(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blockedLocked(a, b)
}

func (n *Net) blockedLocked(a, b string) bool {
	if a == "" || b == "" || a == b {
		return false
	}
	return n.group[a] != n.group[b]
}

// blockedTo reports whether from cannot reach whoever owns addr, and a
// channel that closes when that may change.
func (n *Net) blockedTo(from, addr string) (bool, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blockedLocked(from, n.owner[addr]), n.changed
}

func (n *Net) blockedPair(a, b string) (bool, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blockedLocked(a, b), n.changed
}

// errTimeout is what a dial across a partition fails with: a timeout, as a
// silently dropping network gives, never "refused".
type errTimeout struct{ addr string }

func (e errTimeout) Error() string   { return fmt.Sprintf("dial %s: i/o timeout (partitioned)", e.addr) }
func (e errTimeout) Timeout() bool   { return true }
func (e errTimeout) Temporary() bool { return true }
func (e errTimeout) Unwrap() error   { return os.ErrDeadlineExceeded }

var _ net.Error = errTimeout{}

// Dialer wraps a dial function for node self: dials across a partition wait
// out their context and time out; connections are frozen while a partition
// separates their ends.
func (n *Net) Dialer(self string, dial func(ctx context.Context, addr string) (net.Conn, error)) func(ctx context.Context, addr string) (net.Conn, error) {
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		if blocked, _ := n.blockedTo(self, addr); blocked {
			<-ctx.Done()
			return nil, errTimeout{addr}
		}
		c, err := dial(ctx, addr)
		if err != nil {
			return nil, err
		}
		n.mu.Lock()
		peer := n.owner[addr]
		n.mu.Unlock()
		return newConn(n, c, self, peer), nil
	}
}

// conn freezes reads and writes while its ends are partitioned.
type conn struct {
	net.Conn
	n          *Net
	self, peer string
	closed     chan struct{}
	once       sync.Once
}

func newConn(n *Net, c net.Conn, self, peer string) *conn {
	return &conn{Conn: c, n: n, self: self, peer: peer, closed: make(chan struct{})}
}

// pass waits until the ends can reach each other; false if closed first.
func (c *conn) pass() bool {
	for {
		blocked, changed := c.n.blockedPair(c.self, c.peer)
		if !blocked {
			return true
		}
		select {
		case <-changed:
		case <-c.closed:
			return false
		}
	}
}

func (c *conn) Write(b []byte) (int, error) {
	if !c.pass() {
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

func (c *conn) Read(b []byte) (int, error) {
	k, err := c.Conn.Read(b)
	// Data that arrives across a partition is held until it heals.
	if !c.pass() {
		return 0, net.ErrClosed
	}
	return k, err
}

func (c *conn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// Memberlist wraps node self's memberlist transport: packets to or from a
// node across a partition are dropped, stream dials across it time out, and
// streams freeze. inner must be bound; its addresses are registered.
func (n *Net) Memberlist(self string, inner *memberlist.NetTransport) memberlist.NodeAwareTransport {
	t := &mlTransport{n: n, self: self, inner: inner, packets: make(chan *memberlist.Packet),
		stopping: make(chan struct{}), done: make(chan struct{})}
	go t.forward()
	return t
}

type mlTransport struct {
	n        *Net
	self     string
	inner    *memberlist.NetTransport
	packets  chan *memberlist.Packet
	stopping chan struct{} // Shutdown began: drop packets, keep draining
	done     chan struct{} // the inner transport has stopped
	once     sync.Once
}

// forward passes packets from the inner transport to memberlist, dropping
// those across a partition. It keeps draining the inner transport while it
// shuts down: its reader would otherwise block handing over a packet, and
// its Shutdown would wait for that reader forever.
func (t *mlTransport) forward() {
	for {
		select {
		case p := <-t.inner.PacketCh():
			t.n.mu.Lock()
			from := t.n.owner[p.From.String()]
			blocked := t.n.blockedLocked(from, t.self)
			t.n.mu.Unlock()
			if blocked {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.stopping:
			}
		case <-t.done:
			return
		}
	}
}

func (t *mlTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *mlTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if blocked, _ := t.n.blockedTo(t.self, addr); blocked {
		return time.Now(), nil // sent, and lost
	}
	return t.inner.WriteTo(b, addr)
}

func (t *mlTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

func (t *mlTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *mlTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if blocked, changed := t.n.blockedTo(t.self, addr); blocked {
		select {
		case <-time.After(timeout):
		case <-changed:
		case <-t.stopping:
		}
		return nil, errTimeout{addr}
	}
	c, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	t.n.mu.Lock()
	peer := t.n.owner[addr]
	t.n.mu.Unlock()
	return newConn(t.n, c, t.self, peer), nil
}

func (t *mlTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

func (t *mlTransport) StreamCh() <-chan net.Conn { return t.inner.StreamCh() }

func (t *mlTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		close(t.stopping)
		err = t.inner.Shutdown()
		close(t.done)
	})
	return err
}

// NewMemberlistTransport binds a memberlist NetTransport on 127.0.0.1 (a
// free port) for node self, registers its address, and wraps it. logger
// receives the transport's own log lines (nil: discarded).
func (n *Net) NewMemberlistTransport(self string, logger *log.Logger) (memberlist.NodeAwareTransport, string, error) {
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, BindPort: 0, Logger: logger})
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(inner.GetAutoBindPort()))
	n.Register(self, addr)
	return n.Memberlist(self, inner), addr, nil
}
