package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

// New returns the supervisor behaviour. Spawn it with a Spec as the Init
// argument, or use Start, StartLinked or Child.
func New() proc.Process { return &supervisor{} }

// Start spawns a supervisor owned by the node (not linked to any process).
// It returns once every child in spec has started.
func Start(rt *proc.Runtime, spec Spec, opts ...proc.SpawnOption) (proc.PID, error) {
	return rt.SpawnProcess(New(), spec, opts...)
}

// StartLinked spawns a supervisor linked to the calling process.
func StartLinked(c *proc.Context, spec Spec, opts ...proc.SpawnOption) (proc.PID, error) {
	return c.SpawnProcess(New(), spec, append([]proc.SpawnOption{proc.Linked()}, opts...)...)
}

// Child returns the spec of a child that is itself a supervisor.
func Child(id string, spec Spec) ChildSpec {
	return ChildSpec{ID: id, New: New, Args: spec, Supervisor: true}
}

// child is one supervised child. pid is zero while it is not running.
type child struct {
	spec    ChildSpec
	pid     proc.PID
	pending bool // waiting to be (re)started by a restart pass
	prev    proc.PID
}

type supervisor struct {
	proc.Base
	spec     Spec
	self     proc.PID
	children []*child // in start order
	byPID    map[proc.PID]*child
	byID     map[string]*child
	restarts []time.Time // restarts within the current period
	passGen  uint64      // a scheduled restart pass is valid only for this generation
	timer    *proc.Timer
}

// Messages the supervisor handles. Calls carry a request, the restart pass a
// generation.
type (
	startChildReq     struct{ spec ChildSpec }
	terminateChildReq struct {
		id  string
		pid proc.PID
	}
	restartChildReq  struct{ id string }
	deleteChildReq   struct{ id string }
	whichChildrenReq struct{}
	countChildrenReq struct{}
	restartPass      struct{ gen uint64 }
)

func (s *supervisor) Init(ctx *proc.Context, args any) error {
	spec, ok := args.(Spec)
	if !ok {
		return fmt.Errorf("supervisor: Init wants a Spec, got %T", args)
	}
	var err error
	if s.spec, err = spec.withDefaults(); err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	s.self = ctx.Self()
	s.byPID = make(map[proc.PID]*child)
	s.byID = make(map[string]*child)
	ctx.TrapExits(true)
	for _, cs := range s.spec.Children {
		ch := &child{spec: cs}
		if err := s.start(ctx, ch); err != nil {
			s.stopAll(ctx)
			return fmt.Errorf("supervisor: start child %q: %w", cs.ID, err)
		}
		s.add(ch)
	}
	return nil
}

func (s *supervisor) add(ch *child) {
	s.children = append(s.children, ch)
	if ch.spec.ID != "" {
		s.byID[ch.spec.ID] = ch
	}
}

func (s *supervisor) forget(ch *child) {
	if i := slices.Index(s.children, ch); i >= 0 {
		s.children = slices.Delete(s.children, i, i+1)
	}
	if ch.spec.ID != "" && s.byID[ch.spec.ID] == ch {
		delete(s.byID, ch.spec.ID)
	}
}

func (s *supervisor) observe(e Event) {
	if s.spec.Observer != nil {
		e.Supervisor = s.self
		s.spec.Observer(e)
	}
}

// start spawns ch, linked to the supervisor.
func (s *supervisor) start(ctx *proc.Context, ch *child) error {
	opts := make([]proc.SpawnOption, 0, len(ch.spec.Options)+1)
	opts = append(append(opts, proc.Linked()), ch.spec.Options...)
	var pid proc.PID
	var err error
	if ch.spec.Kind != "" {
		pid, err = ctx.Spawn(ch.spec.Kind, ch.spec.Args, opts...)
	} else {
		b := ch.spec.New()
		if b == nil {
			err = errors.New("New returned nil")
		} else {
			pid, err = ctx.SpawnProcess(b, ch.spec.Args, opts...)
		}
	}
	if err != nil {
		s.observe(Event{Kind: StartFailed, ID: ch.spec.ID, Reason: err})
		return err
	}
	ch.pid, ch.pending = pid, false
	s.byPID[pid] = ch
	if ch.prev.IsZero() {
		s.observe(Event{Kind: ChildStarted, ID: ch.spec.ID, PID: pid})
	} else {
		s.observe(Event{Kind: ChildRestarted, ID: ch.spec.ID, PID: pid, Previous: ch.prev})
		ch.prev = proc.PID{}
	}
	return nil
}

// stop stops a running child within its budget and waits for it.
func (s *supervisor) stop(ctx *proc.Context, ch *child) {
	if ch.pid.IsZero() {
		return
	}
	pid := ch.pid
	delete(s.byPID, pid)
	ch.pid = proc.PID{}
	ctx.Unlink(pid) // its exit must not reach us as a failure
	reason, err := ctx.Runtime().StopProcess(context.Background(), s.self, pid, proc.Shutdown, ch.spec.budget())
	switch {
	case errors.Is(err, proc.ErrTimeout):
		ctx.Logger().Warn("child did not stop within its shutdown budget; killed",
			"child", ch.spec.ID, "child_pid", pid.String(), "budget", ch.spec.budget())
	case errors.Is(err, proc.ErrNoProcess):
		reason = err // it exited on its own just before; its reason is gone with it
	}
	s.observe(Event{Kind: ChildExited, ID: ch.spec.ID, PID: pid, Reason: reason})
}

// stopAll stops every running child, newest first.
func (s *supervisor) stopAll(ctx *proc.Context) {
	for _, ch := range slices.Backward(s.children) {
		s.stop(ctx, ch)
	}
}

func (s *supervisor) Terminate(ctx *proc.Context, _ error) {
	if s.timer != nil {
		s.timer.Cancel()
	}
	s.stopAll(ctx)
}

func (s *supervisor) HandleInfo(ctx *proc.Context, msg any) {
	switch m := msg.(type) {
	case proc.Exit:
		ch := s.byPID[m.From]
		if ch == nil {
			return // not a child, or one already stopped on purpose
		}
		delete(s.byPID, m.From)
		ch.pid = proc.PID{}
		s.observe(Event{Kind: ChildExited, ID: ch.spec.ID, PID: m.From, Reason: m.Reason})
		if proc.IsAbnormal(m.Reason) {
			ctx.Logger().Warn("child exited", "child", ch.spec.ID, "child_pid", m.From.String(), "reason", m.Reason)
		}
		s.exited(ctx, ch, m.From, m.Reason)
	case restartPass:
		if m.gen == s.passGen {
			s.timer = nil
			s.runPass(ctx)
		}
	}
}

// exited decides what a child's exit means.
func (s *supervisor) exited(ctx *proc.Context, ch *child, pid proc.PID, reason error) {
	restart := ch.spec.Restart == Permanent ||
		(ch.spec.Restart == Transient && proc.IsAbnormal(reason))
	if !restart {
		if s.spec.Dynamic || ch.spec.Restart == Temporary {
			s.forget(ch)
		}
		return
	}
	if !s.allowRestart() {
		ctx.Logger().Error("restart intensity exceeded; shutting down",
			"child", ch.spec.ID, "restarts", s.spec.Intensity, "period", s.spec.Period)
		s.observe(Event{Kind: GaveUp, ID: ch.spec.ID, PID: pid, Reason: ErrMaxRestarts})
		ctx.Stop(ErrMaxRestarts) // Terminate stops the other children
		return
	}
	ch.prev = pid
	ch.pending = true
	// The others to restart with it, stopped newest first.
	var group []*child
	switch s.spec.Strategy {
	case OneForAll:
		group = s.children
	case RestForOne:
		group = s.children[slices.Index(s.children, ch):]
	}
	for _, other := range slices.Backward(group) {
		if other == ch || other.pid.IsZero() {
			continue
		}
		prev := other.pid
		s.stop(ctx, other)
		if other.spec.Restart == Temporary {
			s.forget(other)
			continue
		}
		other.prev, other.pending = prev, true
	}
	s.schedulePass(ctx)
}

// allowRestart records a restart and reports whether it is within the
// intensity.
func (s *supervisor) allowRestart() bool {
	now := time.Now()
	cut := now.Add(-s.spec.Period)
	i := 0
	for i < len(s.restarts) && !s.restarts[i].After(cut) {
		i++
	}
	s.restarts = append(s.restarts[:0], s.restarts[i:]...)
	if len(s.restarts) >= s.spec.Intensity {
		return false
	}
	s.restarts = append(s.restarts, now)
	return true
}

// schedulePass runs the restart pass now, or after the backoff delay.
func (s *supervisor) schedulePass(ctx *proc.Context) {
	s.passGen++
	if s.timer != nil {
		s.timer.Cancel()
		s.timer = nil
	}
	if d := s.spec.Backoff.delay(len(s.restarts)); d > 0 {
		s.timer = ctx.SendAfter(d, restartPass{gen: s.passGen})
		return
	}
	s.runPass(ctx)
}

// runPass starts pending children in order. A failed start is retried as a
// further restart, counted against the intensity, as OTP does; under
// one_for_all and rest_for_one the children this pass already started are
// stopped again first, so the group restarts together.
func (s *supervisor) runPass(ctx *proc.Context) {
	var started []*child
	for _, ch := range s.children {
		if !ch.pending {
			continue
		}
		if err := s.start(ctx, ch); err != nil {
			ctx.Logger().Warn("restart failed", "child", ch.spec.ID, "err", err)
			if s.spec.Strategy != OneForOne {
				for _, st := range slices.Backward(started) {
					prev := st.pid
					s.stop(ctx, st)
					st.prev, st.pending = prev, true
				}
			}
			if !s.allowRestart() {
				s.observe(Event{Kind: GaveUp, ID: ch.spec.ID, Reason: ErrMaxRestarts})
				ctx.Stop(ErrMaxRestarts)
				return
			}
			s.passGen++
			if d := s.spec.Backoff.delay(len(s.restarts)); d > 0 {
				s.timer = ctx.SendAfter(d, restartPass{gen: s.passGen})
			} else {
				_ = ctx.Send(s.self, restartPass{gen: s.passGen})
			}
			return
		}
		started = append(started, ch)
	}
}

func (s *supervisor) HandleCall(ctx *proc.Context, msg any) (any, error) {
	switch m := msg.(type) {
	case startChildReq:
		return s.startChild(ctx, m.spec)
	case terminateChildReq:
		return nil, s.terminateChild(ctx, m.id, m.pid)
	case restartChildReq:
		ch := s.byID[m.id]
		if ch == nil {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, m.id)
		}
		if !ch.pid.IsZero() {
			return nil, fmt.Errorf("%w: %q is %v", ErrRunning, m.id, ch.pid)
		}
		ch.pending = false
		if err := s.start(ctx, ch); err != nil {
			return nil, err
		}
		return ch.pid, nil
	case deleteChildReq:
		ch := s.byID[m.id]
		if ch == nil {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, m.id)
		}
		if !ch.pid.IsZero() || ch.pending {
			return nil, fmt.Errorf("%w: %q", ErrRunning, m.id)
		}
		s.forget(ch)
		return nil, nil
	case whichChildrenReq:
		out := make([]ChildInfo, len(s.children))
		for i, ch := range s.children {
			out[i] = ChildInfo{ID: ch.spec.ID, PID: ch.pid, Restart: ch.spec.Restart, Supervisor: ch.spec.Supervisor}
		}
		return out, nil
	case countChildrenReq:
		var c Counts
		for _, ch := range s.children {
			c.Specs++
			if !ch.pid.IsZero() {
				c.Active++
			}
			if ch.spec.Supervisor {
				c.Supervisors++
			} else {
				c.Workers++
			}
		}
		return c, nil
	}
	return s.Base.HandleCall(ctx, msg)
}

func (s *supervisor) startChild(ctx *proc.Context, spec ChildSpec) (proc.PID, error) {
	if err := spec.validate(s.spec.Dynamic); err != nil {
		return proc.PID{}, err
	}
	if s.spec.Dynamic && s.spec.MaxChildren > 0 && len(s.children) >= s.spec.MaxChildren {
		return proc.PID{}, fmt.Errorf("%w (%d)", ErrMaxChildren, s.spec.MaxChildren)
	}
	if ch := s.byID[spec.ID]; spec.ID != "" && ch != nil {
		if !ch.pid.IsZero() {
			return ch.pid, fmt.Errorf("%w: %q is %v", ErrAlreadyStarted, spec.ID, ch.pid)
		}
		return proc.PID{}, fmt.Errorf("%w: %q", ErrAlreadyPresent, spec.ID)
	}
	ch := &child{spec: spec}
	if err := s.start(ctx, ch); err != nil {
		return proc.PID{}, err
	}
	s.add(ch)
	return ch.pid, nil
}

func (s *supervisor) terminateChild(ctx *proc.Context, id string, pid proc.PID) error {
	var ch *child
	if !pid.IsZero() {
		ch = s.byPID[pid]
	} else {
		ch = s.byID[id]
	}
	if ch == nil {
		if !pid.IsZero() {
			return fmt.Errorf("%w: %v", ErrNotFound, pid)
		}
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	s.stop(ctx, ch)
	ch.pending = false
	if s.spec.Dynamic || ch.spec.Restart == Temporary {
		s.forget(ch)
	}
	return nil
}

// ChildInfo describes a child, for WhichChildren.
type ChildInfo struct {
	ID         string
	PID        proc.PID // zero while not running
	Restart    Restart
	Supervisor bool
}

// Counts summarises a supervisor's children.
type Counts struct {
	Specs       int // children known, running or not
	Active      int // running
	Supervisors int
	Workers     int
}

// StartChild adds a child to a running supervisor and starts it. For a
// static supervisor the ID must be new.
func StartChild(ctx context.Context, c Caller, sup proc.Target, spec ChildSpec) (proc.PID, error) {
	return call[proc.PID](ctx, c, sup, startChildReq{spec})
}

// TerminateChild stops the child with that ID. A static supervisor keeps its
// spec (RestartChild starts it again, DeleteChild forgets it), unless it is
// temporary; a dynamic one forgets it.
func TerminateChild(ctx context.Context, c Caller, sup proc.Target, id string) error {
	_, err := call[any](ctx, c, sup, terminateChildReq{id: id})
	return err
}

// TerminateChildPID stops the child with that PID.
func TerminateChildPID(ctx context.Context, c Caller, sup proc.Target, pid proc.PID) error {
	_, err := call[any](ctx, c, sup, terminateChildReq{pid: pid})
	return err
}

// RestartChild starts a terminated child of a static supervisor again.
func RestartChild(ctx context.Context, c Caller, sup proc.Target, id string) (proc.PID, error) {
	return call[proc.PID](ctx, c, sup, restartChildReq{id})
}

// DeleteChild forgets a terminated child of a static supervisor.
func DeleteChild(ctx context.Context, c Caller, sup proc.Target, id string) error {
	_, err := call[any](ctx, c, sup, deleteChildReq{id})
	return err
}

// WhichChildren lists the children, in start order.
func WhichChildren(ctx context.Context, c Caller, sup proc.Target) ([]ChildInfo, error) {
	return call[[]ChildInfo](ctx, c, sup, whichChildrenReq{})
}

// CountChildren counts the children.
func CountChildren(ctx context.Context, c Caller, sup proc.Target) (Counts, error) {
	return call[Counts](ctx, c, sup, countChildrenReq{})
}

func call[R any](ctx context.Context, c Caller, sup proc.Target, req any) (R, error) {
	var zero R
	v, err := c.Call(ctx, sup, req)
	if err != nil {
		if r, ok := v.(R); ok {
			return r, err
		}
		return zero, err
	}
	if v == nil {
		return zero, nil
	}
	r, ok := v.(R)
	if !ok {
		return zero, fmt.Errorf("supervisor: reply %T: %w", v, proc.ErrBadReply)
	}
	return r, nil
}
