package proc

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

// Context is a process's handle on the runtime, passed to every callback.
// It is valid for the life of the process and may be kept; methods that act
// as the process (Send, Call, Spawn, Link, Monitor...) do nothing, or return
// ErrNoProcess, once the process has exited, so a callback abandoned by Kill
// cannot act in its name.
//
// Send, Cast, Call, Spawn, Exit, Logger and the context.Context methods may
// be used from goroutines the process starts. Stop, DeferReply and Caller
// belong to the callback being run.
//
// Context is also a context.Context whose Done channel closes when the
// process exits, so work a process starts can be tied to its life.
type Context struct {
	p *process
}

var _ context.Context = (*Context)(nil)

// Self returns the process's PID.
func (c *Context) Self() PID { return c.p.pid }

// Parent returns the PID of the process that spawned this one, or the zero
// PID if it was spawned by the node.
func (c *Context) Parent() PID { return c.p.parent }

// Runtime returns the runtime the process runs on.
func (c *Context) Runtime() *Runtime { return c.p.rt }

// Logger returns the runtime's logger with the process's pid attached.
func (c *Context) Logger() *slog.Logger {
	if l := c.p.log.Load(); l != nil {
		return l
	}
	l := c.p.rt.log.With("pid", c.p.pid.String())
	if c.p.log.CompareAndSwap(nil, l) {
		return l
	}
	return c.p.log.Load()
}

func (c *Context) dead() bool { return c.p.flags.Load()&flagDead != 0 }

func (c *Context) errDead() error {
	return &ExitError{PID: c.p.pid, Reason: c.p.exitReason()}
}

// Send delivers msg to HandleInfo of the target; see Runtime.Send.
func (c *Context) Send(to Target, msg any) error {
	if c.dead() {
		return c.errDead()
	}
	return c.p.rt.send(c, c.p.pid, to, msg, kindInfo)
}

// Cast delivers msg to HandleCast of the target; see Runtime.Cast.
func (c *Context) Cast(to Target, msg any) error {
	if c.dead() {
		return c.errDead()
	}
	return c.p.rt.send(c, c.p.pid, to, msg, kindCast)
}

// Call calls the target and waits for its reply; see Runtime.Call. A process
// calling itself gets ErrCallSelf. While it waits, the process handles
// nothing else.
func (c *Context) Call(ctx context.Context, to Target, msg any) (any, error) {
	if c.dead() {
		return nil, c.errDead()
	}
	return c.p.rt.call(ctx, c.p, to, msg)
}

// Spawn starts a process of a registered kind; see Runtime.Spawn. With the
// Linked option the new process is linked to this one.
func (c *Context) Spawn(kind string, args any, opts ...SpawnOption) (PID, error) {
	if c.dead() {
		return PID{}, c.errDead()
	}
	return c.p.rt.spawnKind(c.p, kind, args, opts)
}

// SpawnProcess starts a process whose behaviour is b; see Spawn.
func (c *Context) SpawnProcess(b Process, args any, opts ...SpawnOption) (PID, error) {
	if c.dead() {
		return PID{}, c.errDead()
	}
	return c.p.rt.spawn(c.p, b, "", args, opts)
}

// Link links this process and pid: when either exits abnormally, the other
// receives an exit signal. Linking is idempotent. It fails with an error
// matching ErrNoProcess if pid does not exist, and sends no signal then.
func (c *Context) Link(pid PID) error {
	return c.p.rt.link(c.p, pid)
}

// Unlink removes a link. After it returns, no exit signal from that link
// reaches this process (an Exit message already in the mailbox stays).
func (c *Context) Unlink(pid PID) {
	c.p.rt.unlink(c.p, pid)
}

// Monitor starts watching pid: exactly one Down for the returned Ref will
// arrive in HandleInfo, when pid exits, or at once if it does not exist.
func (c *Context) Monitor(pid PID) Ref {
	return c.p.rt.monitor(c.p, pid)
}

// Demonitor stops a monitor; no Down for ref will be handled after it
// returns, even one already in the mailbox. It reports whether the monitor
// was still active.
func (c *Context) Demonitor(ref Ref) bool {
	return c.p.rt.demonitor(c.p, ref)
}

// TrapExits sets whether exit signals reach this process as Exit messages
// instead of stopping it. Kill cannot be trapped.
func (c *Context) TrapExits(on bool) { c.p.trap.Store(on) }

// TrappingExits reports whether the process traps exits.
func (c *Context) TrappingExits() bool { return c.p.trap.Load() }

// Exit sends an exit signal to pid from this process; see Runtime.Exit.
func (c *Context) Exit(pid PID, reason error) error {
	if c.dead() {
		return c.errDead()
	}
	return c.p.rt.Exit(c.p.pid, pid, reason)
}

// Stop asks the process to stop with reason once the current callback
// returns; nil means Normal. A reply returned by the current HandleCall is
// still sent. Terminate runs with reason. Call it from the process's own
// callbacks; from elsewhere, use Exit.
func (c *Context) Stop(reason error) { c.p.stopReq = normalize(reason) }

// Checkpoint stores state as the process's last known state: a process of
// the distributed supervisor restarted after a crash, on this node or
// another, or after the whole cluster was restarted, gets it back through
// Restore (see Stasher) after Init. The state must not be modified after
// the call. It fails with ErrNoCheckpoint for a process that has no
// checkpoint store. The distributed supervisor returns once the node that
// would take the process over, were this one lost, has the state too.
func (c *Context) Checkpoint(state []byte) error {
	if c.dead() {
		return c.errDead()
	}
	cp := c.p.rt.checkpoint.Load()
	if cp == nil {
		return ErrNoCheckpoint
	}
	return (*cp).Checkpoint(c.p.pid, state)
}

// SendAfter delivers msg to this process's HandleInfo after d.
func (c *Context) SendAfter(d time.Duration, msg any) *Timer {
	return c.p.rt.SendAfter(c.p.pid, msg, d)
}

// DeferReply lets HandleCall return without answering; the caller keeps
// waiting until the returned ReplyTo is used. It panics outside HandleCall.
func (c *Context) DeferReply() ReplyTo {
	if c.p.cur == nil {
		panic("proc: DeferReply called outside HandleCall")
	}
	c.p.deferred = true
	return ReplyTo{w: c.p.cur.w, seq: c.p.cur.seq}
}

// Caller returns the PID of the process whose call is being handled, or the
// zero PID outside HandleCall or for calls made by non-process code.
func (c *Context) Caller() PID {
	if c.p.cur == nil {
		return PID{}
	}
	return c.p.cur.w.from
}

// Deadline reports no deadline: a process lives until it exits.
func (c *Context) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done returns a channel closed when the process exits.
func (c *Context) Done() <-chan struct{} { return c.p.doneChan() }

// Err returns context.Canceled once the process has exited, nil before.
func (c *Context) Err() error {
	if c.dead() {
		return context.Canceled
	}
	return nil
}

// Value returns nil: a process context carries no values.
func (c *Context) Value(any) any { return nil }

// String describes the context for logs.
func (c *Context) String() string { return fmt.Sprintf("proc.Context(%v)", c.p.pid) }

// ReplyTo answers a deferred call; see Context.DeferReply. It may be used
// from any goroutine, once; later uses, and uses after the caller gave up,
// report false.
type ReplyTo struct {
	w   *waiter
	seq uint32
}

// Reply sends the reply. It reports whether the caller was still waiting.
func (r ReplyTo) Reply(val any, err error) bool {
	if r.w == nil {
		return false
	}
	return r.w.complete(r.seq, val, err)
}

// Caller returns the PID of the calling process, or zero for non-process
// callers.
func (r ReplyTo) Caller() PID {
	if r.w == nil {
		return PID{}
	}
	return r.w.from
}

// Timer is a pending SendAfter.
type Timer struct {
	t *time.Timer
}

// SendAfter delivers msg to HandleInfo of the target after d. The target is
// resolved when the timer fires.
func (rt *Runtime) SendAfter(to Target, msg any, d time.Duration) *Timer {
	return &Timer{t: time.AfterFunc(d, func() { _ = rt.send(context.Background(), PID{}, to, msg, kindInfo) })}
}

// Cancel stops the timer. It reports true if the message will not be sent;
// false means it was already sent (it may still be waiting in the mailbox).
func (t *Timer) Cancel() bool { return t.t.Stop() }

func stack() []byte { return debug.Stack() }
