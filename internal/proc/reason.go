package proc

import (
	"errors"
	"fmt"
)

// sentinel is the type of every exit reason and error value this package
// defines. Its values compare by content, so a reason decoded from the wire
// can be rebuilt as the very same sentinel.
type sentinel string

func (s sentinel) Error() string { return string(s) }

// Exit reasons. A process's exit reason is an error value: one of these, a
// *CrashError, or any error the process stopped itself with. A nil reason is
// never reported; Stop(nil) means Normal.
var (
	// Normal is the reason of a process that stopped because its work was done.
	Normal error = sentinel("normal")
	// Shutdown is the reason of a process stopped by its supervisor or its
	// node. It is not a failure: transient children are not restarted.
	Shutdown error = sentinel("shutdown")
	// Killed is the reason of a process ended by Kill. Its Terminate did not
	// run.
	Killed error = sentinel("killed")
	// Kill is not a reason a process exits with but a signal: Exit(pid, Kill)
	// ends the process at once, whatever it is doing and even if it traps
	// exits; it exits with reason Killed. A handler still running is
	// abandoned: its goroutine finishes the handler but the process is gone,
	// and its Context refuses to act. A Call the abandoned handler is
	// blocked in ends when its context does: pass the process's Context
	// (which ends at exit), or one derived from it, to calls.
	Kill error = sentinel("kill")
)

// Errors returned by the runtime. Test for them with errors.Is.
var (
	// ErrNoProcess: the target process does not exist, or exited before it
	// could answer. A Call to a process that exits mid-call returns an
	// *ExitError that matches ErrNoProcess and carries the exit reason.
	ErrNoProcess error = sentinel("no such process")
	// ErrNodeDown: the target's node is not reachable.
	ErrNodeDown error = sentinel("node down")
	// ErrNoName: no process is registered under the name.
	ErrNoName error = sentinel("name not registered")
	// ErrCallSelf: a process called itself, which could never be answered.
	ErrCallSelf error = sentinel("process called itself")
	// ErrUnknownKind: no kind is registered under that name on this node.
	ErrUnknownKind error = sentinel("unknown process kind")
	// ErrStopped: the runtime is stopping or stopped and takes no new work.
	ErrStopped error = sentinel("runtime stopped")
	// ErrUnhandled is what Base.HandleCall returns for any message: the
	// process does not answer calls of that type.
	ErrUnhandled error = sentinel("message not handled")
	// ErrNoStash: a process gave no state to hand over (it is not a
	// Stasher, or it ended before it could stash).
	ErrNoStash error = sentinel("no stashed state")
	// ErrNoCheckpoint: Checkpoint was called by a process whose state has
	// nowhere to go (it is not a child of the distributed supervisor).
	ErrNoCheckpoint error = sentinel("process has no checkpoint store")
	// ErrBadReply: a typed call got a reply of another type.
	ErrBadReply error = sentinel("reply has unexpected type")
	// ErrTimeout: a process did not stop within its shutdown budget and was
	// killed.
	ErrTimeout error = sentinel("shutdown budget exceeded")
)

// CrashError is the exit reason of a process whose callback panicked.
type CrashError struct {
	Value any    // the value passed to panic
	Stack []byte // the panicking goroutine's stack
}

func (e *CrashError) Error() string { return fmt.Sprintf("crash: panic: %v", e.Value) }

// Unwrap returns the panic value when it is an error.
func (e *CrashError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}

// ExitError is returned by a Call whose target exited before replying, and by
// operations on a process known to have exited. It matches ErrNoProcess and
// unwraps to the exit reason.
type ExitError struct {
	PID    PID
	Reason error
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("process %v exited: %v", e.PID, e.Reason)
}

// Is reports true for ErrNoProcess.
func (e *ExitError) Is(target error) bool { return target == ErrNoProcess }

// Unwrap returns the exit reason.
func (e *ExitError) Unwrap() error { return e.Reason }

// IsAbnormal reports whether reason is a failure: anything but Normal and
// Shutdown (or an error wrapping Shutdown). Links propagate abnormal exits;
// transient children are restarted only after one.
func IsAbnormal(reason error) bool {
	if reason == nil {
		return false
	}
	if _, crashed := errors.AsType[*CrashError](reason); crashed {
		return true // a panic is a failure, whatever value it carried
	}
	return !errors.Is(reason, Normal) && !errors.Is(reason, Shutdown)
}

func normalize(reason error) error {
	if reason == nil {
		return Normal
	}
	return reason
}
