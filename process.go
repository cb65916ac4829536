package herd

import (
	"github.com/herdkit/herd/internal/proc"
)

// Identities and addresses.
type (
	// NodeID identifies one life of a node: its name and boot incarnation.
	// A restarted node has a new incarnation, so nothing of its previous
	// life is confused with the new one.
	NodeID = proc.NodeID
	// PID identifies a process: its node's life and a local id, never
	// reused. Comparable, a valid map key, printable as
	// "name@incarnation.id", and encodable (CBOR, text, JSON).
	PID = proc.PID
	// Target is where a message goes: a PID, a Name, or an EnvName.
	Target = proc.Target
	// Name addresses the process registered under a unique name in the
	// default environment: herd.Name("game:42") works wherever a PID does.
	Name = proc.Name
	// EnvName addresses a process by unique name within an environment.
	EnvName = proc.EnvName
	// Ref identifies a monitor.
	Ref = proc.Ref
)

// InEnv returns the address of a name within an environment.
func InEnv(env, name string) EnvName { return proc.InEnv(env, name) }

// ParsePID parses the text form of a PID.
func ParsePID(s string) (PID, error) { return proc.ParsePID(s) }

// Behaviour.
type (
	// Process is the behaviour of a process, shaped like an Erlang
	// gen_server: Init, HandleCall, HandleCast, HandleInfo, Terminate. Its
	// methods run one at a time. Embed Base for defaults.
	Process = proc.Process
	// Base gives every Process method a default; embed it.
	Base = proc.Base
	// Context is a process's handle on its node, passed to every callback.
	// It is also a context.Context that ends when the process exits.
	Context = proc.Context
	// Stasher is implemented by distributed children whose state moves
	// with them: Stash when their node stops gracefully or they move,
	// Restore (after Init, before the first message) on the node that
	// takes them, also from their last checkpoint after a crash. A process
	// that only checkpoints needs Restore alone.
	Stasher = proc.Stasher
	// ReplyTo answers a call whose HandleCall deferred its reply.
	ReplyTo = proc.ReplyTo
	// Timer is a pending SendAfter; Cancel stops it.
	Timer = proc.Timer
	// SpawnOption adjusts one spawn.
	SpawnOption = proc.SpawnOption
	// ProcessInfo describes a live process.
	ProcessInfo = proc.Info
)

// Messages the runtime delivers to HandleInfo.
type (
	// Down reports, exactly once per monitor, that a monitored process
	// exited (or never existed: Reason ErrNoProcess).
	Down = proc.Down
	// Exit replaces an exit signal for a process that traps exits.
	Exit = proc.Exit
)

// Exit reasons. A process exits with one of these, a *CrashError, or any
// error it stopped itself with.
var (
	// Normal: the process finished its work.
	Normal = proc.Normal
	// Shutdown: stopped by its supervisor or node; not a failure.
	Shutdown = proc.Shutdown
	// Killed: ended by Kill; Terminate did not run.
	Killed = proc.Killed
	// Kill is the signal Exit(pid, Kill): untrappable, immediate.
	Kill = proc.Kill
)

// CrashError is the exit reason of a process that panicked: the panic value
// and the stack.
type CrashError = proc.CrashError

// ExitError is a Call's error when the callee exited before replying; it
// matches ErrNoProcess and unwraps to the exit reason.
type ExitError = proc.ExitError

// Errors. Test for them with errors.Is.
var (
	ErrNoProcess   = proc.ErrNoProcess
	ErrNodeDown    = proc.ErrNodeDown
	ErrNoName      = proc.ErrNoName
	ErrCallSelf    = proc.ErrCallSelf
	ErrUnknownKind = proc.ErrUnknownKind
	ErrStopped     = proc.ErrStopped
	ErrUnhandled   = proc.ErrUnhandled
	ErrBadReply    = proc.ErrBadReply
	ErrTimeout     = proc.ErrTimeout
)

// IsAbnormal reports whether an exit reason is a failure: anything but
// Normal and Shutdown.
func IsAbnormal(reason error) bool { return proc.IsAbnormal(reason) }

// Linked links a process spawned from a Context to the spawner.
func Linked() SpawnOption { return proc.Linked() }

// TrapExits starts the process trapping exits, before Init.
func TrapExits() SpawnOption { return proc.TrapExits() }
