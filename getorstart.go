package herd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/herdkit/herd/internal/dsup"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/registry"
)

// StartSpec says how GetOrStart starts a process: its kind (registered on
// every node with RegisterKind), its arguments (a registered message type,
// see RegisterMessage, as they may travel), and the metadata of its name.
type StartSpec struct {
	Kind string
	Args any
	Meta Meta
}

// GetOrStart returns the process holding the unique name key, starting one
// from spec if there is none. Every node asks the same node, the name's
// arbiter (picked by rendezvous hashing over the members that are up), to
// decide, and the arbiter starts the process on itself, so callers racing
// on any nodes get one process while the cluster is connected. If the
// arbiter is lost while deciding, GetOrStart asks the next one, until ctx
// ends; it never returns a holder on a node this node has seen go.
//
// While members disagree about who is up (for the moment a node joins or
// fails), two arbiters may each start one; when their registrations meet,
// one keeps the name and the other gets a NameConflict exit, as after a
// partition.
func (n *Node) GetOrStart(ctx context.Context, key Key, spec StartSpec) (PID, error) {
	if err := key.Validate(); err != nil {
		return PID{}, err
	}
	if err := spec.Meta.Validate(); err != nil {
		return PID{}, err
	}
	wait := 5 * time.Millisecond
	for {
		// A holder on a node that membership has declared gone may still
		// be read for a moment, until the replica hides it: not an answer.
		if pid, ok := n.reg.Whereis(key); ok && n.nodeUp(pid.Node) {
			return pid, nil
		}
		arb := n.arbiter(key)
		var pid PID
		var err error
		if arb == n.id {
			pid, err = n.arbitrate(ctx, key, spec, 0)
		} else {
			pid, err = n.askArbiter(ctx, arb, key, spec, 0)
		}
		if err == nil && !n.nodeUp(pid.Node) {
			// The arbiter still reads a holder whose node this node has
			// seen go: its view lags; ask again until it catches up.
			err = fmt.Errorf("herd: get or start %q: %v answered %v, on a node that is down: %w", key.String(), arb, pid, ErrNodeDown)
		}
		if err == nil || !errors.Is(err, ErrNodeDown) {
			return pid, err
		}
		// The arbiter is lost, or behind: wait for membership to settle,
		// and ask again.
		select {
		case <-ctx.Done():
			return PID{}, fmt.Errorf("herd: get or start %q: %w (last: %v)", key.String(), ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// arbiter is the node that decides GetOrStart for key: the member that is
// up with the highest rendezvous hash of (key, member).
func (n *Node) arbiter(key Key) NodeID {
	mem := n.mem.Load()
	if mem == nil {
		return n.id
	}
	best, bestHash := n.id, rendezvous(key, n.id)
	for _, m := range mem.Members() {
		if m.Status != membership.Alive && m.Status != membership.Suspect {
			continue
		}
		if h := rendezvous(key, m.ID); h > bestHash || (h == bestHash && registry.ComparePIDs(PID{Node: m.ID}, PID{Node: best}) < 0) {
			best, bestHash = m.ID, h
		}
	}
	return best
}

// rendezvous hashes a key with a node life: the same on every node.
func rendezvous(key Key, node NodeID) uint64 {
	return dsup.Hash(key.Env+"\x00"+key.Name, node.Name, node.Incarnation)
}

// getOrStartReq is what a node asks a name's arbiter.
type getOrStartReq struct {
	_    struct{} `cbor:",toarray"`
	Key  Key
	Kind string
	Args []byte // encoded by the codec; empty for nil
	Meta Meta
	Hops uint8
}

const getOrStartService = "herd.getOrStart"

func (n *Node) askArbiter(ctx context.Context, arb NodeID, key Key, spec StartSpec, hops uint8) (PID, error) {
	if n.cl == nil {
		return PID{}, fmt.Errorf("herd: get or start %q on %v: %w", key.String(), arb, ErrNodeDown)
	}
	req := getOrStartReq{Key: key, Kind: spec.Kind, Meta: spec.Meta, Hops: hops}
	if spec.Args != nil {
		var err error
		if req.Args, err = n.codec.Encode(spec.Args); err != nil {
			return PID{}, fmt.Errorf("herd: get or start %q: arguments: %w", key.String(), err)
		}
	}
	body, err := n.codec.Encode(&req)
	if err != nil {
		return PID{}, fmt.Errorf("herd: get or start %q: %w", key.String(), err)
	}
	resp, err := n.cl.remote.Ask(ctx, arb, getOrStartService, body)
	if err != nil {
		return PID{}, err
	}
	v, err := n.codec.Decode(resp)
	if err != nil {
		return PID{}, fmt.Errorf("herd: get or start %q: answer: %w", key.String(), err)
	}
	pid, ok := v.(PID)
	if !ok {
		return PID{}, fmt.Errorf("herd: get or start %q: answer is %T", key.String(), v)
	}
	return pid, nil
}

// serveGetOrStart answers another node's GetOrStart.
func (n *Node) serveGetOrStart(ctx context.Context, _ NodeID, body []byte) ([]byte, error) {
	v, err := n.codec.Decode(body)
	if err != nil {
		return nil, err
	}
	req, ok := v.(*getOrStartReq)
	if !ok || req == nil {
		return nil, fmt.Errorf("herd: get or start: request is %T", v)
	}
	if err := req.Key.Validate(); err != nil {
		return nil, err
	}
	spec := StartSpec{Kind: req.Kind, Meta: req.Meta}
	if len(req.Args) > 0 {
		if spec.Args, err = n.codec.Decode(req.Args); err != nil {
			return nil, fmt.Errorf("herd: get or start %q: arguments: %w", req.Key.String(), err)
		}
	}
	pid, err := n.arbitrate(ctx, req.Key, spec, req.Hops)
	if err != nil {
		return nil, err
	}
	return n.codec.Encode(pid)
}

// arbitrate decides GetOrStart for key here: the holder if there is one,
// else a process started here. If this node sees another arbiter for key
// (membership moved), it passes the request on, once.
func (n *Node) arbitrate(ctx context.Context, key Key, spec StartSpec, hops uint8) (PID, error) {
	if pid, ok := n.reg.Whereis(key); ok {
		return pid, nil
	}
	if arb := n.arbiter(key); arb != n.id && hops == 0 {
		return n.askArbiter(ctx, arb, key, spec, 1)
	}
	return n.flights.do(key, func() (PID, error) {
		if pid, ok := n.reg.Whereis(key); ok {
			return pid, nil
		}
		pid, err := n.Spawn(ctx, spec.Kind, spec.Args, WithKey(key, spec.Meta))
		if errors.Is(err, ErrTaken) {
			// Registered meanwhile, by a process of this node or, racing
			// from another arbiter, of another.
			if pid, ok := n.reg.Whereis(key); ok {
				return pid, nil
			}
		}
		return pid, err
	})
}

// flights makes concurrent GetOrStarts of one name on the arbiter wait for
// the first, instead of each trying to start a process.
type flights struct {
	mu sync.Mutex
	m  map[Key]*flight
}

type flight struct {
	done chan struct{}
	pid  PID
	err  error
}

func (f *flights) do(key Key, fn func() (PID, error)) (PID, error) {
	f.mu.Lock()
	if f.m == nil {
		f.m = make(map[Key]*flight)
	}
	if c := f.m[key]; c != nil {
		f.mu.Unlock()
		<-c.done
		return c.pid, c.err
	}
	c := &flight{done: make(chan struct{})}
	f.m[key] = c
	f.mu.Unlock()
	c.pid, c.err = fn()
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
	close(c.done)
	return c.pid, c.err
}

// ---- waiting for names ----

// CallOption adjusts one Call or Send.
type CallOption func(*callOptions)

type callOptions struct {
	waitName bool
}

// WaitForName makes a call or send to a name (Name, EnvName) ride through
// the name's absence: while no process holds the name, it waits for one to
// register, until ctx ends; and a call that fails because the holder is
// gone (ErrNoProcess before it took the message, ErrNodeDown) is made again
// to the next holder. A call whose holder's node was lost may have been
// handled there before the loss: use it for calls that are safe to repeat,
// or whose effects died with the old holder.
func WaitForName() CallOption { return func(o *callOptions) { o.waitName = true } }

// nodeOfCaller returns the node a Caller is on.
func nodeOfCaller(c any) *Node {
	switch c := c.(type) {
	case *Node:
		return c
	case *Context:
		return NodeOf(c)
	}
	return nil
}

// nameKey returns the registry key a target names, if it names one.
func nameKey(to Target) (Key, bool) {
	switch t := to.(type) {
	case Name:
		return Key{Name: string(t)}, true
	case EnvName:
		return Key{Env: t.Env, Name: t.Name}, true
	}
	return Key{}, false
}

// retryable reports whether a call's error shows that its message was not
// handled by a holder that is gone.
func retryable(err error) bool {
	var exit *ExitError
	switch {
	case errors.As(err, &exit):
		return false // it exited while handling the call
	case errors.Is(err, ErrNoProcess), errors.Is(err, ErrNoName), errors.Is(err, ErrNodeDown):
		return true
	}
	return false
}

// awaitName returns the holder of key once there is one other than avoid,
// or once retry passes with avoid still holding it (its node may be back).
func (n *Node) awaitName(ctx context.Context, key Key, avoid PID, retry time.Duration) (PID, error) {
	if pid, ok := n.reg.Whereis(key); ok && pid != avoid {
		return pid, nil
	}
	w := n.reg.Watch(Query{Env: key.Env, Kind: Unique, Pattern: registry.QuoteName(key.Name)}, WatchOptions{})
	defer w.Close()
	var again <-chan time.Time
	if !avoid.IsZero() {
		t := time.NewTimer(retry)
		defer t.Stop()
		again = t.C
	}
	for {
		if pid, ok := n.reg.Whereis(key); ok && (pid != avoid || again == nil) {
			return pid, nil
		}
		select {
		case <-ctx.Done():
			return PID{}, fmt.Errorf("herd: waiting for %q: %w: %w", key.String(), ErrNoName, ctx.Err())
		case <-w.Events():
		case <-again:
			again, avoid = nil, PID{}
		}
	}
}

// withName runs fn against the holder of to, waiting and retrying as
// WaitForName says.
func withName[R any](ctx context.Context, n *Node, to Target, fn func(PID) (R, error)) (R, error) {
	var zero R
	key, ok := nameKey(to)
	if !ok || n == nil {
		pid, isPID := to.(PID)
		if !isPID {
			return zero, fmt.Errorf("herd: WaitForName needs a node or a process context, and a name")
		}
		return fn(pid)
	}
	var failed PID
	retry := 10 * time.Millisecond
	for {
		pid, err := n.awaitName(ctx, key, failed, retry)
		if err != nil {
			return zero, err
		}
		r, err := fn(pid)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return r, err
		}
		failed = pid
		retry = min(2*retry, 500*time.Millisecond)
	}
}

// Sender sends: a *Node, or a process's *Context.
type Sender interface {
	Send(to Target, msg any) error
}

var (
	_ Sender = (*Node)(nil)
	_ Sender = (*Context)(nil)
)

// Send sends msg to the target through s, as s.Send does. With
// WaitForName, a send to a name that no process holds waits, until ctx
// ends, for one to register.
func Send(ctx context.Context, s Sender, to Target, msg any, opts ...CallOption) error {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	if !o.waitName {
		return s.Send(to, msg)
	}
	_, err := withName(ctx, nodeOfCaller(s), to, func(pid PID) (struct{}, error) {
		return struct{}{}, s.Send(pid, msg)
	})
	return err
}
