package proc

import (
	"context"
	"fmt"
)

// Remote carries operations on processes of other nodes. The cluster layer
// implements it and installs it with SetRemote; without one, every other node
// is unreachable (ErrNodeDown). Its methods must not block for long except
// where a context bounds them.
type Remote interface {
	// Send delivers msg to a process of another node, to HandleCast if
	// cast, else HandleInfo. ctx bounds waiting for room to send.
	Send(ctx context.Context, from, to PID, msg any, cast bool) error
	// Call calls a process of another node.
	Call(ctx context.Context, from, to PID, msg any) (any, error)
	// Exit sends an exit signal to a process of another node.
	Exit(from, to PID, reason error) error
	// Monitor starts monitor ref of watcher (a local process) on target.
	// The Remote must then deliver exactly one Down for it with
	// Runtime.DeliverDown (ErrNodeDown if target's node is lost), unless
	// Demonitor is called first.
	Monitor(watcher PID, ref Ref, target PID)
	// Demonitor stops it.
	Demonitor(watcher PID, ref Ref, target PID)
	// MonitorFunc calls fn once when target exits or its node is lost. It
	// returns a function that cancels the monitor.
	MonitorFunc(target PID, fn func(PID, error)) (cancel func())
	// Link tells target's node that local and target are linked (local has
	// recorded it already). An error means target's node is unreachable.
	Link(local, target PID) error
	// Unlink tells target's node the link is gone.
	Unlink(local, target PID)
	// LinkExit tells target's node that local, linked to it, exited.
	LinkExit(local, target PID, reason error)
}

// SetRemote installs the carrier for other nodes' processes. Call it before
// the runtime is used.
func (rt *Runtime) SetRemote(r Remote) { rt.remote = r }

// DeliverDown delivers the Down of monitor ref to watcher, a local process,
// if it still holds that monitor. The Remote calls it.
func (rt *Runtime) DeliverDown(watcher PID, ref Ref, target PID, reason error) {
	rt.deliverDown(watcher, ref, target, reason)
}

// LinkFromRemote records that local is linked to remote, a process of
// another node that asked for it. It fails with ErrNoProcess if local is
// not alive.
func (rt *Runtime) LinkFromRemote(local, remote PID) error {
	p := rt.local(local)
	if p == nil {
		return fmt.Errorf("%v: %w", local, ErrNoProcess)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st == stDead {
		return fmt.Errorf("%v: %w", local, ErrNoProcess)
	}
	if p.links == nil {
		p.links = make(map[PID]struct{})
	}
	p.links[remote] = struct{}{}
	return nil
}

// UnlinkFromRemote removes a link that remote, on another node, dropped.
func (rt *Runtime) UnlinkFromRemote(local, remote PID) {
	if p := rt.local(local); p != nil {
		p.mu.Lock()
		delete(p.links, remote)
		p.mu.Unlock()
	}
}

// ExitFromRemote delivers an exit signal from a process of another node to
// local: through their link if viaLink (ignored if the link is gone), or as
// Exit would.
func (rt *Runtime) ExitFromRemote(from, local PID, reason error, viaLink bool) {
	p := rt.local(local)
	if p == nil {
		return
	}
	mode := sigExit
	if viaLink {
		mode = sigLink
	}
	p.signal(from, normalize(reason), mode)
}

// StartCall enqueues a call to the local process to, made by from (a
// process of another node), and returns a function that waits for its
// reply. The call is in the mailbox when StartCall returns, so it keeps its
// place among the caller's messages.
func (rt *Runtime) StartCall(from, to PID, msg any) (wait func(context.Context) (any, error), err error) {
	p, remote, err := rt.route(to)
	if err != nil {
		return nil, err
	}
	if remote != nil {
		return nil, fmt.Errorf("StartCall %v: %w", to, ErrNoProcess)
	}
	w := newWaiter(from)
	seq := w.begin()
	dead, err := p.enqueue(envelope{msg: msg, w: w, seq: seq, kind: kindCall})
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) (any, error) {
		return w.wait(ctx, seq, dead, p)
	}, nil
}
