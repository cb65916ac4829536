package proc

import "fmt"

// Process is the behaviour of a process, in the shape of an Erlang
// gen_server. The runtime calls its methods one at a time, never
// concurrently, so a Process needs no locks for its own state. Embed Base to
// get default implementations and write only the methods you need.
//
// A panic in any method is caught: the process exits with a *CrashError and
// nothing else on the node is affected.
type Process interface {
	// Init runs once, before the process takes any message, with the
	// arguments given to Spawn. Spawn returns only after Init: if Init
	// returns an error or panics, Spawn returns that error and the process
	// never runs. Init runs on the spawner's goroutine; ctx is already the
	// new process's, so Init may register names, monitor, link, or set a
	// timer. Messages sent to the process during Init wait in its mailbox.
	Init(ctx *Context, args any) error

	// HandleCall answers a Call. The reply and error go back to the caller.
	// An error does not stop the process. To answer later, call
	// ctx.DeferReply and return anything; the returned values are ignored.
	HandleCall(ctx *Context, msg any) (reply any, err error)

	// HandleCast handles a message sent with Cast.
	HandleCast(ctx *Context, msg any)

	// HandleInfo handles every other message: those sent with Send or
	// SendAfter, Down (from Monitor), and Exit (from a link, when trapping
	// exits).
	HandleInfo(ctx *Context, msg any)

	// Terminate runs when the process stops for any reason except Kill and
	// a failed Init: it returned after ctx.Stop, it panicked, or it received
	// an exit signal. Terminate should release what the process holds and
	// return promptly: a supervisor waits at most the child's shutdown
	// budget before killing it.
	Terminate(ctx *Context, reason error)
}

// Stasher is implemented by processes whose state can be handed to a new
// incarnation of themselves, on this node or another, by the distributed
// supervisor: when their node stops gracefully, when they move, and when a
// duplicate is stopped after a partition. A process that only checkpoints
// (Context.Checkpoint) needs Restore alone: the methods are looked for
// one by one.
type Stasher interface {
	// Stash returns the process's state. It is called on the process's
	// goroutine after the last message it handles and before Terminate.
	Stash() ([]byte, error)
	// Restore installs state from Stash or from the last checkpoint,
	// after Init and before the first message.
	Restore(state []byte) error
}

// Base gives every Process method a default. Embed it in a process type.
//
//	type Counter struct {
//		proc.Base
//		n int
//	}
type Base struct{}

// Init does nothing.
func (Base) Init(*Context, any) error { return nil }

// HandleCall answers every call with an error matching ErrUnhandled.
func (Base) HandleCall(_ *Context, msg any) (any, error) {
	return nil, fmt.Errorf("call with %T: %w", msg, ErrUnhandled)
}

// HandleCast logs the message at debug level and drops it.
func (Base) HandleCast(ctx *Context, msg any) {
	ctx.Logger().Debug("unhandled cast", "type", fmt.Sprintf("%T", msg))
}

// HandleInfo logs the message at debug level and drops it.
func (Base) HandleInfo(ctx *Context, msg any) {
	ctx.Logger().Debug("unhandled message", "type", fmt.Sprintf("%T", msg))
}

// Terminate does nothing.
func (Base) Terminate(*Context, error) {}

// Down is delivered to HandleInfo of a process that monitored PID, exactly
// once per monitor, when PID exits or could not be monitored (Reason
// ErrNoProcess for a process that did not exist, ErrNodeDown when its node
// is lost). After Demonitor, no Down arrives for that Ref.
type Down struct {
	_      struct{} `cbor:",toarray"`
	Ref    Ref
	PID    PID
	Reason error
}

// Exit is delivered to HandleInfo of a process that traps exits, in place of
// an exit signal: from a linked process that exited, or from Exit(pid,
// reason). A process that does not trap exits is stopped by an abnormal
// signal instead (its Terminate runs with that reason), and ignores a Normal
// one.
//
// A signal from the process's parent (the process that spawned it, or the
// node for a process the node spawned) is never turned into a message: it
// stops the process, which runs Terminate, as a gen_server does. So an owner
// can always stop what it started, trapping or not.
type Exit struct {
	_      struct{} `cbor:",toarray"`
	From   PID
	Reason error
}
