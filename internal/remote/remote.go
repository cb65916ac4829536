// Package remote makes processes of other nodes reachable: send, cast,
// call, spawn, exit signals, monitors and links across the network, over
// transport, with messages encoded by codec and peers found through
// membership. It implements proc.Remote and transport.Handler. It keeps, per
// peer, the monitors and links that cross to it, so that when the session
// with a peer breaks or the peer is declared dead, each of them ends exactly
// once, with ErrNodeDown, as Erlang's noconnection.
package remote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd/internal/codec"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/transport"
)

// Config configures a Cluster.
type Config struct {
	Runtime *proc.Runtime
	// Codec encodes user messages; both nodes must register the same types
	// under the same names.
	Codec *codec.Registry
	// Errors is the table of errors that keep their identity; default
	// NewErrors().
	Errors  *Errors
	Members *membership.Membership
	Logger  *slog.Logger
}

// Cluster carries one node's traffic with other nodes' processes.
type Cluster struct {
	rt   *proc.Runtime
	cdc  *codec.Registry
	errs *Errors
	mem  *membership.Membership
	log  *slog.Logger
	tr   *transport.Transport
	sub  *membership.Subscription
	done chan struct{}
	wg   sync.WaitGroup
	refs atomic.Uint64 // for monitors by function, which have no watcher

	mu       sync.Mutex
	peers    map[proc.NodeID]*peerIndex
	services map[string]Service
}

// Service answers what other nodes Ask of this one by name. It runs on a
// goroutine of its own; ctx ends at the asker's deadline. Its error reaches
// the asker as an exit reason would (registered errors keep their
// identity).
type Service func(ctx context.Context, from proc.NodeID, body []byte) ([]byte, error)

// peerIndex is what crosses to one peer: monitors held here on its
// processes, monitors it holds on processes here, and links between them.
type peerIndex struct {
	monitors map[monKey]monitor
	watchers map[monKey]watched
	links    map[linkKey]struct{}
}

type monKey struct {
	watcher proc.PID // zero for a monitor by function
	ref     uint64
}

type monitor struct {
	target proc.PID
	fn     func(proc.PID, error)
}

type watched struct {
	target   proc.PID // here
	localRef proc.Ref
}

type linkKey struct {
	local, remote proc.PID
}

// New returns a cluster layer; it starts working once Attach gives it its
// transport.
func New(cfg Config) *Cluster {
	if cfg.Errors == nil {
		cfg.Errors = NewErrors()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Cluster{
		rt: cfg.Runtime, cdc: cfg.Codec, errs: cfg.Errors, mem: cfg.Members, log: cfg.Logger,
		done: make(chan struct{}), peers: make(map[proc.NodeID]*peerIndex), services: make(map[string]Service),
	}
}

// Handle makes fn answer requests for the service called name. Call it
// before Attach.
func (c *Cluster) Handle(name string, fn Service) {
	c.mu.Lock()
	c.services[name] = fn
	c.mu.Unlock()
}

// Ask sends body to the service called name on node and returns its
// answer. A lost node is ErrNodeDown.
func (c *Cluster) Ask(ctx context.Context, node proc.NodeID, name string, body []byte) ([]byte, error) {
	req := &ctl{Kind: name, Body: body}
	if d, ok := ctx.Deadline(); ok {
		req.Deadline = d.UnixNano()
	}
	r, err := c.request(ctx, node, opService, req)
	return r.Body, err
}

// request sends a request frame to node and returns its reply; a reply
// carrying an error returns that error.
func (c *Cluster) request(ctx context.Context, node proc.NodeID, o op, req *ctl) (reply, error) {
	p, err := c.peer(node)
	if err != nil {
		return reply{}, err
	}
	frame, err := encodeCtl(o, req)
	if err != nil {
		return reply{}, err
	}
	resp, err := c.tr.Request(ctx, p, frame)
	if err != nil {
		return reply{}, netErr(node, err)
	}
	var r reply
	if err := wireDec.Unmarshal(resp, &r); err != nil {
		return reply{}, fmt.Errorf("%q on %v: %w: %v", req.Kind, node, errMalformed, err)
	}
	if r.Err != nil {
		return reply{}, c.errs.decode(r.Err)
	}
	return r, nil
}

// serve answers a service request.
func (c *Cluster) serve(from proc.NodeID, m *ctl, answer func(reply)) {
	c.mu.Lock()
	fn := c.services[m.Kind]
	c.mu.Unlock()
	if fn == nil {
		answer(reply{Err: c.errs.encode(fmt.Errorf("remote: no service %q on %v", m.Kind, c.rt.Node()), 0)})
		return
	}
	go func() {
		ctx := context.Background()
		if m.Deadline != 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, time.Unix(0, m.Deadline))
			defer cancel()
		}
		body, err := fn(ctx, from, m.Body)
		answer(reply{Body: body, Err: c.errs.encode(err, 0)})
	}()
}

// Attach gives the cluster its transport (built with the cluster as its
// Handler) and starts following membership: a peer that ends loses its
// monitors and links, and is forgotten by the transport.
func (c *Cluster) Attach(tr *transport.Transport) {
	c.tr = tr
	c.sub = c.mem.Subscribe()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for batch := range c.sub.C() {
			for _, ch := range batch {
				id := ch.Member.ID
				switch {
				case id == c.rt.Node():
				case ch.Member.Status.Ended():
					c.peerDown(id, proc.ErrNodeDown)
					c.tr.Forget(id)
				case ch.Member.Status == membership.Alive && (ch.From == membership.None || ch.From == membership.Dead):
					// A session with every live member, as Erlang's mesh:
					// a killed peer is seen the moment its connection
					// breaks, not when the failure detector gets to it.
					_ = c.tr.Connect(transport.Peer{ID: id, Addr: ch.Member.Addr})
				}
			}
		}
	}()
}

// Close stops following membership.
func (c *Cluster) Close() {
	if c.sub != nil {
		c.sub.Close()
	}
	c.wg.Wait()
}

// Errors returns the table of errors that keep their identity.
func (c *Cluster) Errors() *Errors { return c.errs }

// peer finds how to reach node, or says why it cannot be reached.
func (c *Cluster) peer(node proc.NodeID) (transport.Peer, error) {
	m, ok := c.mem.Member(node)
	if ok && !m.Status.Ended() {
		return transport.Peer{ID: node, Addr: m.Addr}, nil
	}
	if latest, ok := c.mem.Latest(node.Name); ok && latest.ID.Incarnation > node.Incarnation {
		return transport.Peer{}, fmt.Errorf("node %v restarted as %v: %w", node, latest.ID, proc.ErrNoProcess)
	}
	return transport.Peer{}, fmt.Errorf("node %v: %w", node, proc.ErrNodeDown)
}

func (c *Cluster) index(node proc.NodeID) *peerIndex {
	ix := c.peers[node]
	if ix == nil {
		ix = &peerIndex{monitors: map[monKey]monitor{}, watchers: map[monKey]watched{}, links: map[linkKey]struct{}{}}
		c.peers[node] = ix
	}
	return ix
}

// netErr turns a transport failure into the error callers test for.
func netErr(node proc.NodeID, err error) error {
	if errors.Is(err, transport.ErrSessionLost) || errors.Is(err, transport.ErrPeerGone) || errors.Is(err, transport.ErrClosed) {
		return fmt.Errorf("node %v: %w: %v", node, proc.ErrNodeDown, err)
	}
	return err
}

// ---- proc.Remote: what this node asks of others ----

// Send implements proc.Remote.
func (c *Cluster) Send(ctx context.Context, _ proc.PID, to proc.PID, msg any, cast bool) error {
	p, err := c.peer(to.Node)
	if err != nil {
		return err
	}
	o := opSend
	if cast {
		o = opCast
	}
	buf, err := c.cdc.AppendEncode(sendHeader(make([]byte, 0, 64), o, to.ID), msg)
	if err != nil {
		return fmt.Errorf("send to %v: %w", to, err)
	}
	return netErr(to.Node, c.tr.Send(ctx, p, buf))
}

// Call implements proc.Remote.
func (c *Cluster) Call(ctx context.Context, from, to proc.PID, msg any) (any, error) {
	p, err := c.peer(to.Node)
	if err != nil {
		return nil, err
	}
	body, err := c.cdc.Encode(msg)
	if err != nil {
		return nil, fmt.Errorf("call %v: %w", to, err)
	}
	req := &ctl{From: from, To: to, Body: body}
	if d, ok := ctx.Deadline(); ok {
		req.Deadline = d.UnixNano()
	}
	frame, err := encodeCtl(opCall, req)
	if err != nil {
		return nil, err
	}
	resp, err := c.tr.Request(ctx, p, frame)
	if err != nil {
		return nil, netErr(to.Node, err)
	}
	return c.decodeReply(to, resp)
}

func (c *Cluster) decodeReply(to proc.PID, resp []byte) (any, error) {
	var r reply
	if err := wireDec.Unmarshal(resp, &r); err != nil {
		return nil, fmt.Errorf("reply from %v: %w: %v", to, errMalformed, err)
	}
	var val any
	if len(r.Body) > 0 {
		v, err := c.cdc.Decode(r.Body)
		if err != nil {
			return nil, fmt.Errorf("reply from %v: %w", to, err)
		}
		val = v
	}
	return val, c.errs.decode(r.Err)
}

// Spawn starts a process of kind on node and returns its PID once its Init
// has returned there.
func (c *Cluster) Spawn(ctx context.Context, node proc.NodeID, kind string, args any) (proc.PID, error) {
	req := &ctl{Kind: kind}
	if args != nil {
		var err error
		if req.Body, err = c.cdc.Encode(args); err != nil {
			return proc.PID{}, fmt.Errorf("spawn %q on %v: arguments: %w", kind, node, err)
		}
	}
	r, err := c.request(ctx, node, opSpawn, req)
	return r.PID, err
}

// sendCtl sends a control frame; a failure to send is a lost session.
func (c *Cluster) sendCtl(to proc.NodeID, o op, m *ctl) error {
	p, err := c.peer(to)
	if err != nil {
		return err
	}
	frame, err := encodeCtl(o, m)
	if err != nil {
		return err
	}
	return netErr(to, c.tr.Send(context.Background(), p, frame))
}

// Exit implements proc.Remote.
func (c *Cluster) Exit(from, to proc.PID, reason error) error {
	return c.sendCtl(to.Node, opExit, &ctl{From: from, To: to, Reason: c.errs.encode(reason, 0)})
}

// Monitor implements proc.Remote.
func (c *Cluster) Monitor(watcher proc.PID, ref proc.Ref, target proc.PID) {
	c.monitor(monKey{watcher: watcher, ref: uint64(ref)}, monitor{target: target})
}

// MonitorFunc implements proc.Remote.
func (c *Cluster) MonitorFunc(target proc.PID, fn func(proc.PID, error)) func() {
	key := monKey{ref: c.refs.Add(1)}
	c.monitor(key, monitor{target: target, fn: fn})
	return func() { c.demonitor(key, target) }
}

func (c *Cluster) monitor(key monKey, m monitor) {
	if _, err := c.peer(m.target.Node); err != nil {
		c.fire(key, m, reasonOf(err))
		return
	}
	c.mu.Lock()
	c.index(m.target.Node).monitors[key] = m
	c.mu.Unlock()
	if err := c.sendCtl(m.target.Node, opMonitor, &ctl{From: key.watcher, To: m.target, Ref: key.ref}); err != nil {
		if c.takeMonitor(m.target.Node, key) {
			c.fire(key, m, reasonOf(err))
		}
	}
}

// reasonOf is the Down reason for a monitor that could not be set up.
func reasonOf(err error) error {
	if errors.Is(err, proc.ErrNodeDown) {
		return proc.ErrNodeDown
	}
	return proc.ErrNoProcess
}

// takeMonitor removes a monitor; it reports whether it was still there,
// which makes whoever removed it the one to fire it.
func (c *Cluster) takeMonitor(node proc.NodeID, key monKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ix := c.peers[node]
	if ix == nil {
		return false
	}
	if _, ok := ix.monitors[key]; !ok {
		return false
	}
	delete(ix.monitors, key)
	return true
}

func (c *Cluster) fire(key monKey, m monitor, reason error) {
	if m.fn != nil {
		m.fn(m.target, reason)
		return
	}
	c.rt.DeliverDown(key.watcher, proc.Ref(key.ref), m.target, reason)
}

// Demonitor implements proc.Remote.
func (c *Cluster) Demonitor(watcher proc.PID, ref proc.Ref, target proc.PID) {
	c.demonitor(monKey{watcher: watcher, ref: uint64(ref)}, target)
}

func (c *Cluster) demonitor(key monKey, target proc.PID) {
	if c.takeMonitor(target.Node, key) {
		_ = c.sendCtl(target.Node, opDemonitor, &ctl{From: key.watcher, To: target, Ref: key.ref})
	}
}

// Link implements proc.Remote.
func (c *Cluster) Link(local, target proc.PID) error {
	if _, err := c.peer(target.Node); err != nil {
		return err
	}
	c.mu.Lock()
	c.index(target.Node).links[linkKey{local, target}] = struct{}{}
	c.mu.Unlock()
	if err := c.sendCtl(target.Node, opLink, &ctl{From: local, To: target}); err != nil {
		c.dropLink(target.Node, linkKey{local, target})
		return err
	}
	return nil
}

func (c *Cluster) dropLink(node proc.NodeID, k linkKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ix := c.peers[node]
	if ix == nil {
		return false
	}
	if _, ok := ix.links[k]; !ok {
		return false
	}
	delete(ix.links, k)
	return true
}

// Unlink implements proc.Remote.
func (c *Cluster) Unlink(local, target proc.PID) {
	if c.dropLink(target.Node, linkKey{local, target}) {
		_ = c.sendCtl(target.Node, opUnlink, &ctl{From: local, To: target})
	}
}

// LinkExit implements proc.Remote.
func (c *Cluster) LinkExit(local, target proc.PID, reason error) {
	if c.dropLink(target.Node, linkKey{local, target}) {
		c.sendMustArrive(target.Node, opLinkExit, &ctl{From: local, To: target, Reason: c.errs.encode(reason, 0)})
	}
}

// sendMustArrive sends a frame the peer holds state for (a Down, a link's
// exit) over the session with it, whatever this node's view of the peer:
// if it cannot be queued in bounded time the session is reset, so the peer
// fires its side with ErrNodeDown instead of waiting forever. A peer this
// node has forgotten already lost its session here, and with it that state.
func (c *Cluster) sendMustArrive(to proc.NodeID, o op, m *ctl) {
	frame, err := encodeCtl(o, m)
	if err != nil {
		c.log.Error("remote: encode", "op", o, "err", err)
		return
	}
	c.tr.SendOrReset(to, frame)
}

// peerDown ends everything that crossed to node: each monitor held here on
// its processes fires once with reason, each link delivers its exit signal,
// and the monitors it held on processes here are dropped (it has forgotten
// them, or will).
func (c *Cluster) peerDown(node proc.NodeID, reason error) {
	c.mu.Lock()
	ix := c.peers[node]
	delete(c.peers, node)
	c.mu.Unlock()
	if ix == nil {
		return
	}
	for _, w := range ix.watchers {
		c.rt.DemonitorFunc(w.target, w.localRef)
	}
	for k, m := range ix.monitors {
		c.fire(k, m, reason)
	}
	for k := range ix.links {
		c.rt.ExitFromRemote(k.remote, k.local, reason, true)
	}
}

// ---- transport.Handler: what other nodes ask of this one ----

// Message implements transport.Handler.
func (c *Cluster) Message(from proc.NodeID, payload []byte) {
	o, rest, err := parse(payload)
	if err != nil {
		c.log.Warn("remote: dropping a frame", "from", from.String(), "err", err)
		return
	}
	if o == opSend || o == opCast {
		c.deliver(from, o, rest)
		return
	}
	m, err := decodeCtl(rest)
	if err != nil {
		c.log.Warn("remote: dropping a frame", "from", from.String(), "op", o, "err", err)
		return
	}
	if !m.From.IsZero() && m.From.Node != from || (!m.To.IsZero() && m.To.Node != c.rt.Node() && o != opDown) {
		c.log.Warn("remote: dropping a frame with foreign identities", "from", from.String(), "op", o)
		return
	}
	switch o {
	case opExit:
		c.rt.ExitFromRemote(m.From, m.To, c.errs.decode(m.Reason), false)
	case opMonitor:
		c.watch(from, m)
	case opDemonitor:
		c.mu.Lock()
		ix := c.index(from)
		w, ok := ix.watchers[monKey{m.From, m.Ref}]
		delete(ix.watchers, monKey{m.From, m.Ref})
		c.mu.Unlock()
		if ok {
			c.rt.DemonitorFunc(w.target, w.localRef)
		}
	case opDown:
		key := monKey{watcher: m.To, ref: m.Ref}
		c.mu.Lock()
		var mon monitor
		ok := false
		if ix := c.peers[from]; ix != nil {
			if mon, ok = ix.monitors[key]; ok {
				delete(ix.monitors, key)
			}
		}
		c.mu.Unlock()
		if ok {
			c.fire(key, mon, c.errs.decode(m.Reason))
		}
	case opLink:
		if err := c.rt.LinkFromRemote(m.To, m.From); err != nil {
			c.sendMustArrive(from, opLinkExit, &ctl{From: m.To, To: m.From, Reason: c.errs.encode(proc.ErrNoProcess, 0)})
			return
		}
		c.mu.Lock()
		c.index(from).links[linkKey{local: m.To, remote: m.From}] = struct{}{}
		c.mu.Unlock()
	case opUnlink:
		c.dropLink(from, linkKey{local: m.To, remote: m.From})
		c.rt.UnlinkFromRemote(m.To, m.From)
	case opLinkExit:
		c.dropLink(from, linkKey{local: m.To, remote: m.From})
		c.rt.ExitFromRemote(m.From, m.To, c.errs.decode(m.Reason), true)
	default:
		c.log.Warn("remote: unexpected one-way frame", "from", from.String(), "op", o)
	}
}

// deliver hands a send or cast to its local process, in the order the
// frames came.
func (c *Cluster) deliver(from proc.NodeID, o op, rest []byte) {
	id, body, err := parseSend(rest)
	if err != nil {
		c.log.Warn("remote: dropping a frame", "from", from.String(), "err", err)
		return
	}
	msg, err := c.cdc.Decode(body)
	if err != nil {
		c.log.Warn("remote: dropping a message that does not decode", "from", from.String(), "err", err)
		return
	}
	to := proc.PID{Node: c.rt.Node(), ID: id}
	if o == opCast {
		_ = c.rt.Cast(to, msg)
	} else {
		_ = c.rt.Send(to, msg)
	}
}

// watch sets up a monitor held by a process of node from on a process
// here: its Down goes back over the same session, after anything that
// process sent before it exited.
func (c *Cluster) watch(from proc.NodeID, m *ctl) {
	key := monKey{watcher: m.From, ref: m.Ref}
	target := m.To
	down := func(reason error) {
		c.sendMustArrive(from, opDown, &ctl{From: target, To: key.watcher, Ref: key.ref, Reason: c.errs.encode(reason, 0)})
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	localRef, ok := c.rt.MonitorFunc(target, func(_ proc.PID, reason error) {
		c.mu.Lock()
		ix := c.peers[from]
		still := ix != nil
		if still {
			_, still = ix.watchers[key]
			delete(ix.watchers, key)
		}
		c.mu.Unlock()
		if still {
			down(reason)
		}
	})
	if !ok {
		go down(proc.ErrNoProcess)
		return
	}
	c.index(from).watchers[key] = watched{target: target, localRef: localRef}
}

// Request implements transport.Handler.
func (c *Cluster) Request(from proc.NodeID, payload []byte, respond func([]byte)) {
	answer := func(r reply) {
		b, err := wireEnc.Marshal(&r)
		if err != nil {
			b, _ = wireEnc.Marshal(&reply{Err: c.errs.encode(err, 0)})
		}
		respond(b)
	}
	o, rest, err := parse(payload)
	var m *ctl
	if err == nil {
		m, err = decodeCtl(rest)
	}
	if err != nil {
		answer(reply{Err: c.errs.encode(err, 0)})
		return
	}
	switch o {
	case opCall:
		c.call(from, m, answer)
	case opService:
		c.serve(from, m, answer)
	case opSpawn:
		go func() {
			var args any
			if len(m.Body) > 0 {
				v, err := c.cdc.Decode(m.Body)
				if err != nil {
					answer(reply{Err: c.errs.encode(fmt.Errorf("spawn %q: arguments: %w", m.Kind, err), 0)})
					return
				}
				args = v
			}
			pid, err := c.rt.Spawn(m.Kind, args)
			answer(reply{PID: pid, Err: c.errs.encode(err, 0)})
		}()
	default:
		answer(reply{Err: c.errs.encode(fmt.Errorf("%w: op %d is not a request", errMalformed, o), 0)})
	}
}

// call puts a remote call in the local process's mailbox now, in order,
// and answers when it is handled.
func (c *Cluster) call(from proc.NodeID, m *ctl, answer func(reply)) {
	if (!m.From.IsZero() && m.From.Node != from) || m.To.Node != c.rt.Node() {
		answer(reply{Err: c.errs.encode(fmt.Errorf("%w: call with foreign identities", errMalformed), 0)})
		return
	}
	msg, err := c.cdc.Decode(m.Body)
	if err != nil {
		answer(reply{Err: c.errs.encode(fmt.Errorf("call %v: %w", m.To, err), 0)})
		return
	}
	wait, err := c.rt.StartCall(m.From, m.To, msg)
	if err != nil {
		answer(reply{Err: c.errs.encode(err, 0)})
		return
	}
	go func() {
		ctx := context.Background()
		if m.Deadline != 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, time.Unix(0, m.Deadline))
			defer cancel()
		}
		val, err := wait(ctx)
		r := reply{Err: c.errs.encode(err, 0)}
		if val != nil {
			if r.Body, err = c.cdc.Encode(val); err != nil {
				r = reply{Err: c.errs.encode(fmt.Errorf("reply of %v: %w", m.To, err), 0)}
			}
		}
		answer(r)
	}()
}

// SessionDown implements transport.Handler.
func (c *Cluster) SessionDown(peer proc.NodeID, err error) {
	c.log.Debug("remote: session lost", "peer", peer.String(), "err", err)
	c.peerDown(peer, proc.ErrNodeDown)
}

// Unreachable implements transport.Handler: the fast path to declaring a
// killed peer dead.
func (c *Cluster) Unreachable(peer proc.NodeID, err error) {
	c.mem.Confirm(peer, fmt.Sprintf("connection refused (%v)", err))
}

var (
	_ proc.Remote       = (*Cluster)(nil)
	_ transport.Handler = (*Cluster)(nil)
)
