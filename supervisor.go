package herd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/herdkit/herd/internal/supervisor"
)

// Strategy says which children of a supervisor restart when one must.
type Strategy = supervisor.Strategy

// Supervision strategies.
const (
	OneForOne  = supervisor.OneForOne  // restart the child that exited
	OneForAll  = supervisor.OneForAll  // restart every child
	RestForOne = supervisor.RestForOne // restart it and those started after it
)

// Restart says when a child is restarted.
type Restart = supervisor.Restart

// Restart types.
const (
	Permanent = supervisor.Permanent // always
	Transient = supervisor.Transient // after an abnormal exit only
	Temporary = supervisor.Temporary // never
)

// Shutdown budgets for ChildSpec.Shutdown. A child is asked to stop (its
// Terminate runs); when its budget runs out it is killed and abandoned.
const (
	Brutal   = supervisor.Brutal   // kill at once; Terminate does not run
	Infinity = supervisor.Infinity // wait as long as it takes
)

// Backoff delays quick successive restarts of a supervisor's children.
type Backoff = supervisor.Backoff

// Supervisor events and child descriptions.
type (
	SupervisorEvent     = supervisor.Event
	SupervisorEventKind = supervisor.EventKind
	ChildInfo           = supervisor.ChildInfo
	ChildCounts         = supervisor.Counts
)

// Supervisor event kinds.
const (
	ChildStarted   = supervisor.ChildStarted
	ChildExited    = supervisor.ChildExited
	ChildRestarted = supervisor.ChildRestarted
	StartFailed    = supervisor.StartFailed
	GaveUp         = supervisor.GaveUp
)

// Supervisor errors.
var (
	ErrMaxRestarts    = supervisor.ErrMaxRestarts
	ErrAlreadyStarted = supervisor.ErrAlreadyStarted
	ErrAlreadyPresent = supervisor.ErrAlreadyPresent
	ErrNoChild        = supervisor.ErrNotFound
	ErrChildRunning   = supervisor.ErrRunning
	ErrMaxChildren    = supervisor.ErrMaxChildren
)

// ChildSpec describes a supervised child. It is declarative (a kind name,
// arguments, a name), so the same spec can later be kept by the
// distributed supervisor and started on any node.
type ChildSpec struct {
	// ID names the child in its supervisor (required for static children).
	ID string
	// Kind is a registered kind (see RegisterKind). Or set New.
	Kind string
	// New returns the behaviour, when Kind is empty. Local only: a
	// function cannot travel to another node.
	New func() Process
	// Args is passed to Init at every start.
	Args any
	// Name, if set, is registered for the child (in environment Env)
	// before each start's Init, and released when it exits, so callers
	// reach the current incarnation with herd.Name(Name).
	Name string
	Env  string
	// Meta goes with the registered Name.
	Meta Meta
	// Restart is when the child restarts. Default Permanent.
	Restart Restart
	// Shutdown is the stop budget: a duration, Brutal or Infinity. Zero:
	// 5s for workers, Infinity for supervisors.
	Shutdown time.Duration
	// Supervisor makes the child a supervisor with this spec; Kind and New
	// are then ignored.
	Supervisor *SupervisorSpec
}

// SupervisorSpec describes a local supervisor.
type SupervisorSpec struct {
	Strategy Strategy
	// Intensity is the most restarts allowed in Period; one more and the
	// supervisor stops its children and exits with ErrMaxRestarts, so its
	// own supervisor decides. Zero: 3. NoRestarts: none.
	Intensity int
	// Period is Intensity's window. Zero: 5s.
	Period time.Duration
	// Backoff delays quick successive restarts. Zero: none.
	Backoff Backoff
	// Children start in order, and stop in reverse order.
	Children []ChildSpec
	// Dynamic makes a dynamic supervisor: no static children, children
	// added with StartChild and identified by PID.
	Dynamic bool
	// MaxChildren caps a dynamic supervisor's children. Zero: no cap.
	MaxChildren int
	// Observer is told of every child start, exit and restart. It runs on
	// the supervisor's goroutine and must not block.
	Observer func(SupervisorEvent)
}

// NoRestarts as SupervisorSpec.Intensity makes the first restart escalate.
const NoRestarts = supervisor.NoRestarts

func (s ChildSpec) internal() (supervisor.ChildSpec, error) {
	out := supervisor.ChildSpec{
		ID: s.ID, Kind: s.Kind, New: s.New, Args: s.Args,
		Restart: s.Restart, Shutdown: s.Shutdown,
	}
	if s.Supervisor != nil {
		spec, err := s.Supervisor.internal()
		if err != nil {
			return out, err
		}
		out.Kind, out.New, out.Args, out.Supervisor = "", supervisor.New, spec, true
	}
	if s.Name != "" {
		out.Options = []SpawnOption{WithKey(Key{Env: s.Env, Name: s.Name}, s.Meta)}
	} else if s.Env != "" {
		return out, errors.New("herd: ChildSpec.Env without a Name")
	}
	return out, nil
}

func (s SupervisorSpec) internal() (supervisor.Spec, error) {
	out := supervisor.Spec{
		Strategy: s.Strategy, Intensity: s.Intensity, Period: s.Period, Backoff: s.Backoff,
		Dynamic: s.Dynamic, MaxChildren: s.MaxChildren, Observer: s.Observer,
	}
	for _, c := range s.Children {
		ic, err := c.internal()
		if err != nil {
			return out, err
		}
		out.Children = append(out.Children, ic)
	}
	return out, nil
}

// LocalSupervisor is a handle on a supervisor process of this node. It is a
// small value; copies refer to the same supervisor.
type LocalSupervisor struct {
	n   *Node
	pid PID
}

// StartSupervisor starts a supervisor owned by node n, and returns once all
// its children have started. If one fails, those already started are
// stopped and the error says which.
func StartSupervisor(ctx context.Context, n *Node, spec SupervisorSpec, opts ...SpawnOption) (*LocalSupervisor, error) {
	is, err := spec.internal()
	if err != nil {
		return nil, err
	}
	pid, err := n.SpawnProcess(ctx, supervisor.New(), is, opts...)
	if err != nil {
		return nil, err
	}
	return &LocalSupervisor{n: n, pid: pid}, nil
}

// SupervisorOf returns a handle on the supervisor pid of node n, such as a
// nested supervisor found with WhichChildren. Calls through it fail with
// ErrNoProcess if pid is not a live supervisor. (A nested supervisor is
// stopped through its parent, not with Stop.)
func SupervisorOf(n *Node, pid PID) *LocalSupervisor { return &LocalSupervisor{n: n, pid: pid} }

// PID returns the supervisor's PID.
func (s *LocalSupervisor) PID() PID { return s.pid }

// StartChild adds a child and starts it.
func (s *LocalSupervisor) StartChild(ctx context.Context, spec ChildSpec) (PID, error) {
	is, err := spec.internal()
	if err != nil {
		return PID{}, err
	}
	return supervisor.StartChild(ctx, s.n, s.pid, is)
}

// TerminateChild stops the child with that ID. A static supervisor keeps its
// spec (RestartChild, DeleteChild); a dynamic one forgets it.
func (s *LocalSupervisor) TerminateChild(ctx context.Context, id string) error {
	return supervisor.TerminateChild(ctx, s.n, s.pid, id)
}

// TerminateChildPID stops the child with that PID.
func (s *LocalSupervisor) TerminateChildPID(ctx context.Context, pid PID) error {
	return supervisor.TerminateChildPID(ctx, s.n, s.pid, pid)
}

// RestartChild starts a terminated child again.
func (s *LocalSupervisor) RestartChild(ctx context.Context, id string) (PID, error) {
	return supervisor.RestartChild(ctx, s.n, s.pid, id)
}

// DeleteChild forgets a terminated child.
func (s *LocalSupervisor) DeleteChild(ctx context.Context, id string) error {
	return supervisor.DeleteChild(ctx, s.n, s.pid, id)
}

// WhichChildren lists the children in start order.
func (s *LocalSupervisor) WhichChildren(ctx context.Context) ([]ChildInfo, error) {
	return supervisor.WhichChildren(ctx, s.n, s.pid)
}

// CountChildren counts the children.
func (s *LocalSupervisor) CountChildren(ctx context.Context) (ChildCounts, error) {
	return supervisor.CountChildren(ctx, s.n, s.pid)
}

// Stop stops the supervisor and its children, newest first, and waits. It
// is for supervisors started with StartSupervisor; a nested supervisor
// belongs to its parent, which would restart it: stop it with the parent's
// TerminateChild.
func (s *LocalSupervisor) Stop(ctx context.Context) error {
	if in, ok := s.n.rt.Info(s.pid); ok && !in.Parent.IsZero() {
		return fmt.Errorf("herd: supervisor %v is a child of %v: stop it with its parent's TerminateChild", s.pid, in.Parent)
	}
	_, err := s.n.rt.StopProcess(ctx, PID{}, s.pid, Shutdown, Infinity)
	return err
}
