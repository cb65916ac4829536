// Package herdtest runs herd clusters inside a test, the way
// net/http/httptest runs servers: real nodes, real memberlist and TLS on
// 127.0.0.1 with random ports, torn down when the test ends.
//
//	c := herdtest.NewCluster(t, 3)
//	pid, _ := c.Node(0).SpawnOn(ctx, c.Node(1).ID(), "counter", nil)
//	c.Kill(1)
//	c.Eventually(t, func() bool { ... }, "the counter moved")
//
// Faults are injected beneath both transports a node uses (memberlist's
// gossip and herd's node-to-node streams): Partition splits the nodes into
// groups whose packets vanish and whose connections freeze, as on a real
// silent network; Heal joins them again. Kill stops a node as a crash
// would; Stop stops it gracefully; Restart starts a new life of it.
package herdtest

import (
	"context"
	"crypto/rand"
	"fmt"

	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/internal/faultnet"
	"github.com/herdkit/herd/internal/hooks"
	"github.com/herdkit/herd/internal/pki"
)

// DefaultTimeout is how long the cluster's own waits (joining, converging)
// and Eventually without a timeout wait.
const DefaultTimeout = 20 * time.Second

// Option adjusts a cluster.
type Option func(*options)

type options struct {
	config  func(i int, cfg *herd.Config)
	setup   func(i int, n *herd.Node)
	logger  *slog.Logger
	noTLS   bool
	profile string
}

// WithConfig adjusts each node's Config before it starts (i is the node's
// index; Restart calls it again for the new life).
func WithConfig(fn func(i int, cfg *herd.Config)) Option {
	return func(o *options) { o.config = fn }
}

// WithSetup runs fn on each node right after it starts (and after each
// restart), before the cluster is handed to the test: register kinds and
// messages here.
func WithSetup(fn func(i int, n *herd.Node)) Option {
	return func(o *options) { o.setup = fn }
}

// WithLogger sends every node's logs to l (default: discarded).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithProfile sets the membership timing profile (default "local").
func WithProfile(p string) Option { return func(o *options) { o.profile = p } }

// WithoutTLS runs the nodes with plain TCP and unencrypted gossip.
func WithoutTLS() Option { return func(o *options) { o.noTLS = true } }

// Cluster is a set of nodes in one test. Nodes are addressed by index; a
// restarted node keeps its index. Methods must be called from the test's
// goroutine or with the test still running.
type Cluster struct {
	t    testing.TB
	o    options
	ca   *pki.CA
	key  []byte
	net  *faultnet.Net
	mu   sync.Mutex
	slot []*slot
}

type slot struct {
	name string
	node *herd.Node
	up   bool
}

// incarnations are handed out in increasing order across the process, so
// a restarted node is always a later life.
var lastInc atomic.Uint64

func nextIncarnation() uint64 {
	for {
		prev := lastInc.Load()
		next := max(prev+1, uint64(time.Now().UnixNano()))
		if lastInc.CompareAndSwap(prev, next) {
			return next
		}
	}
}

// NewCluster starts n nodes named n1...nN, each joining the first, and
// returns once every node sees every other alive. Everything is stopped
// when the test ends.
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	c := &Cluster{t: t, net: faultnet.New()}
	for _, opt := range opts {
		opt(&c.o)
	}
	if c.o.profile == "" {
		c.o.profile = "local"
	}
	if c.o.logger == nil {
		c.o.logger = slog.New(slog.DiscardHandler)
	}
	if !c.o.noTLS {
		ca, err := pki.NewCA("herdtest", time.Hour)
		if err != nil {
			t.Fatalf("herdtest: CA: %v", err)
		}
		c.ca = ca
		c.key = make([]byte, 32)
		if _, err := rand.Read(c.key); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.closeAll)
	for i := range n {
		c.slot = append(c.slot, &slot{name: fmt.Sprintf("n%d", i+1)})
		c.start(i)
	}
	c.WaitConverged()
	return c
}

// CA returns the cluster's certificate authority (nil WithoutTLS).
func (c *Cluster) CA() *pki.CA { return c.ca }

// GossipKey returns the cluster's gossip key (nil WithoutTLS).
func (c *Cluster) GossipKey() []byte { return c.key }

// start starts a new life of node i, joining a live node.
func (c *Cluster) start(i int) {
	c.t.Helper()
	s := c.slot[i]
	cfg := herd.Config{
		Name: s.name, Incarnation: nextIncarnation(), Logger: c.o.logger.With("node", s.name),
		Bind: "127.0.0.1:0", Profile: c.o.profile, StopTimeout: 5 * time.Second,
	}
	if c.ca != nil {
		cert, err := c.ca.Issue(s.name, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			c.t.Fatalf("herdtest: certificate for %s: %v", s.name, err)
		}
		cfg.TLS = &herd.TLS{CA: c.ca.Pool(), Cert: &cert}
		cfg.GossipKeys = [][]byte{c.key}
	}
	for j, other := range c.slot {
		if j != i && other.up {
			cfg.Join = []string{other.node.GossipAddr()}
			break
		}
	}
	if c.o.config != nil {
		c.o.config(i, &cfg)
	}
	gossip, _, err := c.net.NewMemberlistTransport(s.name, nil)
	if err != nil {
		c.t.Fatalf("herdtest: gossip transport for %s: %v", s.name, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatalf("herdtest: listen for %s: %v", s.name, err)
	}
	c.net.Register(s.name, ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	node, err := herd.Start(ctx, cfg, func(o *hooks.Options) {
		o.Gossip = gossip
		o.Listener = ln
		o.Dial = c.net.Dialer(s.name, nil)
	})
	if err != nil {
		c.t.Fatalf("herdtest: start %s: %v", s.name, err)
	}
	c.mu.Lock()
	s.node, s.up = node, true
	c.mu.Unlock()
	if c.o.setup != nil {
		c.o.setup(i, node)
	}
}

// Node returns node i's current life.
func (c *Cluster) Node(i int) *herd.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slot[i].node
}

// Nodes returns every node's current life, up or not, by index.
func (c *Cluster) Nodes() []*herd.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*herd.Node, len(c.slot))
	for i, s := range c.slot {
		out[i] = s.node
	}
	return out
}

// Up returns the indexes of the nodes that are running.
func (c *Cluster) Up() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i, s := range c.slot {
		if s.up {
			out = append(out, i)
		}
	}
	return out
}

// Add starts one more node, joining the cluster, and returns its index.
// It does not wait for the cluster to converge.
func (c *Cluster) Add() int {
	c.t.Helper()
	c.mu.Lock()
	c.slot = append(c.slot, &slot{name: fmt.Sprintf("n%d", len(c.slot)+1)})
	i := len(c.slot) - 1
	c.mu.Unlock()
	c.start(i)
	return i
}

// Stop stops node i gracefully: its processes stop, it leaves.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	node := c.down(i)
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	if err := node.Stop(ctx); err != nil {
		c.t.Logf("herdtest: stop %v: %v", node.ID(), err)
	}
}

// Kill stops node i as a crash would: connections cut, no leave message,
// no Terminate. The others find out by themselves.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.down(i).Halt()
}

func (c *Cluster) down(i int) *herd.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.slot[i]
	if !s.up {
		c.t.Fatalf("herdtest: node %s is not running", s.name)
	}
	s.up = false
	return s.node
}

// Restart starts a new life of node i (a new incarnation, the same name),
// stopping the current one first if it runs (as Kill). It returns the new
// life once it has joined.
func (c *Cluster) Restart(i int) *herd.Node {
	c.t.Helper()
	c.mu.Lock()
	up := c.slot[i].up
	c.mu.Unlock()
	if up {
		c.Kill(i)
	}
	c.start(i)
	return c.Node(i)
}

// Partition splits the nodes, given by index, into groups that cannot
// reach each other. Nodes in no group form one more group.
func (c *Cluster) Partition(groups ...[]int) {
	named := make([][]string, len(groups))
	for g, idx := range groups {
		for _, i := range idx {
			named[g] = append(named[g], c.slot[i].name)
		}
	}
	c.net.Partition(named...)
}

// Heal ends any partition.
func (c *Cluster) Heal() { c.net.Heal() }

// Sees reports whether node i sees node j's current life alive.
func (c *Cluster) Sees(i, j int) bool {
	m, ok := c.Node(i).Member(c.Node(j).ID())
	return ok && m.Status == herd.MemberAlive
}

// WaitConverged waits until every running node sees every other running
// node alive.
func (c *Cluster) WaitConverged() {
	c.t.Helper()
	c.Eventually(c.t, func() bool {
		up := c.Up()
		for _, i := range up {
			for _, j := range up {
				if !c.Sees(i, j) {
					return false
				}
			}
		}
		return true
	}, "every running node sees every other alive")
}

// Eventually waits until cond holds, checking often, and fails t if it
// does not within DefaultTimeout.
func (c *Cluster) Eventually(t testing.TB, cond func() bool, what string) {
	t.Helper()
	Eventually(t, cond, DefaultTimeout, what)
}

// Eventually waits until cond holds, checking every few milliseconds, and
// fails t if it does not within timeout.
func Eventually(t testing.TB, cond func() bool, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("herdtest: not within %v: %s", timeout, what)
		}
	}
}

// Close stops every running node now (gracefully, each within 5 s). The
// cluster is closed at the end of the test anyway; Close is for tests and
// benchmarks that build many clusters.
func (c *Cluster) Close() { c.closeAll() }

func (c *Cluster) closeAll() {
	var wg sync.WaitGroup
	for i := range c.slot {
		c.mu.Lock()
		s := c.slot[i]
		up := s.up
		s.up = false
		c.mu.Unlock()
		if up {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = s.node.Stop(ctx)
			})
		}
	}
	wg.Wait()
}
