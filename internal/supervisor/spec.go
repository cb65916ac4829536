// Package supervisor is local supervision: processes that start children,
// watch them, and restart them by a strategy, in the manner of Erlang/OTP's
// supervisor and Elixir's DynamicSupervisor. It is built only on proc's
// public API and depends on nothing else in herd.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

// Strategy says which children restart when one must.
type Strategy uint8

const (
	// OneForOne restarts only the child that exited.
	OneForOne Strategy = iota
	// OneForAll stops every other child (newest first) and restarts them
	// all (in start order).
	OneForAll
	// RestForOne stops the children started after the one that exited
	// (newest first) and restarts it and them (in start order).
	RestForOne
)

func (s Strategy) String() string {
	switch s {
	case OneForOne:
		return "one_for_one"
	case OneForAll:
		return "one_for_all"
	case RestForOne:
		return "rest_for_one"
	}
	return fmt.Sprintf("Strategy(%d)", uint8(s))
}

// Restart says when a child is restarted.
type Restart uint8

const (
	// Permanent children are always restarted.
	Permanent Restart = iota
	// Transient children are restarted only after an abnormal exit
	// (see proc.IsAbnormal).
	Transient
	// Temporary children are never restarted; they are forgotten when they
	// exit.
	Temporary
)

func (r Restart) String() string {
	switch r {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case Temporary:
		return "temporary"
	}
	return fmt.Sprintf("Restart(%d)", uint8(r))
}

// Shutdown budgets. A child is stopped by an exit signal with reason
// proc.Shutdown (which runs its Terminate); if it has not exited when its
// budget runs out it is killed and abandoned: whatever callback it is stuck
// in is left to finish on its own, and the process is gone for everyone at
// once (see proc.Kill).
const (
	// Brutal kills the child at once; its Terminate does not run.
	Brutal time.Duration = -1
	// Infinity waits as long as the child takes. It is the default for
	// children that are supervisors, so a tree stops from its leaves up.
	Infinity time.Duration = math.MaxInt64
	// DefaultShutdown is the budget of a worker whose spec gives none.
	DefaultShutdown = 5 * time.Second
)

// ChildSpec describes a child: how to start it, when to restart it, and how
// long to give it to stop.
type ChildSpec struct {
	// ID names the child within its supervisor. Required, and unique, in a
	// static supervisor; optional in a dynamic one, whose children are
	// identified by PID.
	ID string
	// Kind is the registered kind to spawn; or set New.
	Kind string
	// New returns the child's behaviour; used when Kind is empty. It is
	// called again for each restart.
	New func() proc.Process
	// Args is passed to the child's Init, at every start.
	Args any
	// Options are applied to every spawn of the child (for instance a hook
	// that registers a name). The supervisor adds proc.Linked.
	Options []proc.SpawnOption
	// Restart is when the child is restarted. Default Permanent.
	Restart Restart
	// Shutdown is the child's stop budget: a duration, Brutal, or Infinity.
	// Zero means DefaultShutdown for workers and Infinity for supervisors.
	Shutdown time.Duration
	// Supervisor marks a child that is itself a supervisor.
	Supervisor bool
}

func (c *ChildSpec) budget() time.Duration {
	switch {
	case c.Shutdown == Brutal:
		return 0
	case c.Shutdown > 0:
		return c.Shutdown
	case c.Supervisor:
		return Infinity
	default:
		return DefaultShutdown
	}
}

func (c *ChildSpec) validate(dynamic bool) error {
	if c.ID == "" && !dynamic {
		return errors.New("child spec without an ID")
	}
	if c.Kind == "" && c.New == nil {
		return fmt.Errorf("child %q: spec needs a Kind or New", c.ID)
	}
	if c.Restart > Temporary {
		return fmt.Errorf("child %q: unknown restart type %d", c.ID, c.Restart)
	}
	if c.Shutdown < 0 && c.Shutdown != Brutal {
		return fmt.Errorf("child %q: negative shutdown budget %v (use Brutal)", c.ID, c.Shutdown)
	}
	return nil
}

// Backoff delays restarts that come in quick succession: the n-th restart
// within the intensity period waits Initial·2^(n-1), at most Max. The zero
// Backoff restarts at once, as Erlang does.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

func (b Backoff) delay(n int) time.Duration {
	if b.Initial <= 0 || n <= 0 {
		return 0
	}
	d := b.Initial
	for i := 1; i < n && (b.Max <= 0 || d < b.Max); i++ {
		d *= 2
	}
	if b.Max > 0 && d > b.Max {
		d = b.Max
	}
	return d
}

// Intensity defaults, as Elixir's: three restarts in five seconds.
const (
	DefaultIntensity = 3
	DefaultPeriod    = 5 * time.Second
	// NoRestarts as Spec.Intensity makes the first restart escalate.
	NoRestarts = -1
)

// Spec describes a supervisor.
type Spec struct {
	Strategy Strategy
	// Intensity is the most restarts allowed within Period; one more and
	// the supervisor stops all its children and exits with ErrMaxRestarts,
	// escalating to its own supervisor. Zero means DefaultIntensity;
	// NoRestarts allows none.
	Intensity int
	// Period is the window Intensity counts over. Zero means DefaultPeriod.
	Period time.Duration
	// Backoff delays quick successive restarts. Zero: none.
	Backoff Backoff
	// Children are started in order by Init; Init fails (stopping those
	// already started, newest first) if any fails to start.
	Children []ChildSpec
	// Dynamic makes a dynamic supervisor: one_for_one, children started at
	// run time with StartChild, identified by PID, forgotten when they exit
	// for good. Children must be empty.
	Dynamic bool
	// MaxChildren caps the children of a dynamic supervisor. Zero: no cap.
	MaxChildren int
	// Observer, if set, is told of every child start, exit and restart,
	// and of the supervisor giving up. It runs on the supervisor's
	// goroutine and must not block.
	Observer func(Event)
}

func (s *Spec) withDefaults() (Spec, error) {
	out := *s
	if out.Intensity == 0 {
		out.Intensity = DefaultIntensity
	} else if out.Intensity < 0 {
		out.Intensity = 0
	}
	if out.Period <= 0 {
		out.Period = DefaultPeriod
	}
	if out.Strategy > RestForOne {
		return out, fmt.Errorf("unknown strategy %d", out.Strategy)
	}
	if out.Dynamic {
		if out.Strategy != OneForOne {
			return out, errors.New("a dynamic supervisor is one_for_one")
		}
		if len(out.Children) > 0 {
			return out, errors.New("a dynamic supervisor starts with no children")
		}
	}
	seen := make(map[string]bool, len(out.Children))
	for i := range out.Children {
		c := &out.Children[i]
		if err := c.validate(false); err != nil {
			return out, err
		}
		if seen[c.ID] {
			return out, fmt.Errorf("child ID %q appears twice", c.ID)
		}
		seen[c.ID] = true
	}
	return out, nil
}

// EventKind says what happened to a child.
type EventKind uint8

const (
	ChildStarted   EventKind = iota // a child was started (PID)
	ChildExited                     // a child exited (PID, Reason)
	ChildRestarted                  // a child was restarted (PID, the new one; Previous)
	StartFailed                     // starting or restarting a child failed (Reason)
	GaveUp                          // restart intensity was exceeded; the supervisor exits
)

func (k EventKind) String() string {
	return [...]string{"started", "exited", "restarted", "start_failed", "gave_up"}[k]
}

// Event is what an Observer is told.
type Event struct {
	Kind       EventKind
	Supervisor proc.PID
	ID         string
	PID        proc.PID
	Previous   proc.PID // for ChildRestarted: the PID that exited
	Reason     error    // for ChildExited, StartFailed and GaveUp
}

// Errors. Test for them with errors.Is.
var (
	// ErrMaxRestarts is the exit reason of a supervisor whose children
	// restarted more often than its intensity allows. It is abnormal, so
	// the supervisor's own supervisor restarts it (or gives up in turn).
	ErrMaxRestarts = errors.New("supervisor: restart intensity exceeded")
	// ErrAlreadyStarted: a child with that ID is running.
	ErrAlreadyStarted = errors.New("supervisor: child already started")
	// ErrAlreadyPresent: a child with that ID exists but is not running.
	ErrAlreadyPresent = errors.New("supervisor: child already present")
	// ErrNotFound: no child with that ID or PID.
	ErrNotFound = errors.New("supervisor: no such child")
	// ErrRunning: the child must be terminated first.
	ErrRunning = errors.New("supervisor: child is running")
	// ErrMaxChildren: a dynamic supervisor is full.
	ErrMaxChildren = errors.New("supervisor: max children reached")
)

// Caller makes calls: a *proc.Runtime, or a process's *proc.Context.
type Caller interface {
	Call(ctx context.Context, to proc.Target, msg any) (any, error)
}
