package dsup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/supervisor"
)

// MaxID bounds a child ID's length.
const MaxID = 1024

func validID(id string) error {
	if id == "" || len(id) > MaxID || !utf8Valid(id) {
		return fmt.Errorf("dsup: child ID %q: must be 1 to %d bytes of UTF-8", id, MaxID)
	}
	return nil
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// StartChild starts a child where the placement puts it, and returns its
// PID. The ID must not be taken (ErrAlreadyStarted). A node that refuses
// (leaving, no quorum) or is lost before answering is left out and the
// child placed again, until ctx ends.
func (s *Supervisor) StartChild(ctx context.Context, id string, spec Spec) (proc.PID, error) {
	if err := validID(id); err != nil {
		return proc.PID{}, err
	}
	if spec.Kind == "" {
		return proc.PID{}, fmt.Errorf("dsup: child %q: no kind", id)
	}
	if spec.Restart > supervisor.Temporary {
		return proc.PID{}, fmt.Errorf("dsup: child %q: restart type %d", id, spec.Restart)
	}
	if r := s.record(id); r != nil {
		return r.PID, fmt.Errorf("dsup: child %q (%v): %w", id, r.PID, supervisor.ErrAlreadyStarted)
	}
	var skip []proc.NodeID
	var last error
	for {
		v := s.view()
		if !v.Quorum {
			return proc.PID{}, fmt.Errorf("dsup: start %q: %w", id, ErrNoQuorum)
		}
		nodes := slices.DeleteFunc(slices.Clone(v.Up), func(n proc.NodeID) bool { return slices.Contains(skip, n) })
		target, ok := v.Placement.Place(PlaceRequest{Child: id, From: s.self, Nodes: nodes})
		if !ok {
			if last != nil {
				return proc.PID{}, fmt.Errorf("dsup: start %q: %w (last: %w)", id, ErrNoNode, last)
			}
			return proc.PID{}, fmt.Errorf("dsup: start %q: %w", id, ErrNoNode)
		}
		var pid proc.PID
		var err error
		if target == s.self {
			pid, _, err = s.startHere(id, spec, s.self)
		} else {
			pid, err = s.ask(ctx, target, id, spec)
		}
		if err == nil || !(errors.Is(err, ErrLeaving) || errors.Is(err, ErrNoQuorum) || errors.Is(err, proc.ErrNodeDown)) {
			return pid, err
		}
		if ctx.Err() != nil {
			return proc.PID{}, fmt.Errorf("dsup: start %q: %w (last: %w)", id, ctx.Err(), err)
		}
		skip, last = append(skip, target), err
	}
}

// startReq is a start request to another node's supervisor.
type startReq struct {
	_    struct{} `cbor:",toarray"`
	ID   string
	Spec Spec
}

func (s *Supervisor) ask(ctx context.Context, node proc.NodeID, id string, spec Spec) (proc.PID, error) {
	if s.cfg.Ask == nil {
		return proc.PID{}, fmt.Errorf("dsup: start %q on %v: %w", id, node, proc.ErrNodeDown)
	}
	body, err := recEnc.Marshal(&startReq{ID: id, Spec: spec})
	if err != nil {
		return proc.PID{}, fmt.Errorf("dsup: start %q: %w", id, err)
	}
	body, err = s.cfg.Ask(ctx, node, body)
	if err != nil {
		return proc.PID{}, err
	}
	var resp startResp
	if err := recDec.Unmarshal(body, &resp); err != nil || resp.PID.Node != node {
		return proc.PID{}, fmt.Errorf("dsup: start %q: bad answer from %v", id, node)
	}
	// The child's record joins this replica before StartChild returns:
	// the caller reads its own start, and, when this node is the one that
	// would take the child over, the record survives the target's loss.
	if len(resp.Record) == 0 {
		return resp.PID, nil
	}
	if err := s.cfg.Children.JoinShared(resp.Record); err != nil {
		s.log.Warn("dsup: the record in a start's answer", "child", id, "node", node, "err", err)
	}
	return resp.PID, nil
}

// startResp answers a startReq: the child's PID and its record's write
// (from PutShared).
type startResp struct {
	_      struct{} `cbor:",toarray"`
	PID    proc.PID
	Record []byte
}

// ServeStart answers another node's StartChild.
func (s *Supervisor) ServeStart(_ context.Context, from proc.NodeID, body []byte) ([]byte, error) {
	var req startReq
	if err := recDec.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("dsup: start request: %w", err)
	}
	if err := validID(req.ID); err != nil {
		return nil, err
	}
	if req.Spec.Kind == "" || req.Spec.Restart > supervisor.Temporary {
		return nil, fmt.Errorf("dsup: start request for %q: bad spec", req.ID)
	}
	pid, shared, err := s.startHere(req.ID, req.Spec, from)
	if err != nil {
		return nil, err
	}
	return recEnc.Marshal(&startResp{PID: pid, Record: shared})
}

// startHere starts a new child on this node for node from, and returns
// its PID and its record's write (from PutShared), which has reached the
// would-be successor unless that is from, which joins it itself.
func (s *Supervisor) startHere(id string, spec Spec, from proc.NodeID) (proc.PID, []byte, error) {
	v := s.view()
	switch {
	case v.Leaving:
		return proc.PID{}, nil, fmt.Errorf("dsup: start %q on %v: %w", id, s.self, ErrLeaving)
	case !v.Quorum:
		return proc.PID{}, nil, fmt.Errorf("dsup: start %q on %v: %w", id, s.self, ErrNoQuorum)
	}
	s.mu.Lock()
	if in := s.inst[id]; in != nil && in.state != idle {
		s.mu.Unlock()
		return proc.PID{}, nil, fmt.Errorf("dsup: child %q: %w", id, supervisor.ErrAlreadyStarted)
	}
	s.inst[id] = &instance{state: starting}
	s.mu.Unlock()
	var shared []byte
	pid, err := s.cfg.Spawn(&spec, []proc.SpawnOption{proc.BeforeInit(func(c *proc.Context) error {
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
		if r := s.record(id); r != nil {
			return fmt.Errorf("dsup: child %q (%v): %w", id, r.PID, supervisor.ErrAlreadyStarted)
		}
		var err error
		if shared, err = s.putShared(id, &Record{Spec: spec, Owner: s.self, PID: c.Self()}); err != nil {
			return err
		}
		return s.track(id, c.Self())
	})})
	s.mu.Lock()
	in := s.inst[id]
	early, why := in.exited, in.reason
	if err != nil {
		delete(s.inst, id)
	} else {
		in.state, in.pid, in.exited, in.reason = running, pid, false, nil
	}
	s.signalLocked()
	s.mu.Unlock()
	if err != nil {
		if !errors.Is(err, supervisor.ErrAlreadyStarted) {
			// Init failed: the record written before it goes.
			s.writeMu.Lock()
			if r := s.record(id); r != nil && r.Owner == s.self && r.PID.Node == s.self && !s.cfg.Runtime.Alive(r.PID) {
				_, _ = s.cfg.Children.Delete(id)
			}
			s.writeMu.Unlock()
		}
		return proc.PID{}, nil, err
	}
	s.stats.started.Add(1)
	if early {
		s.exited(id, pid, why)
	}
	// The child runs; its record should not die with this node if it is
	// lost before the record has spread.
	if t, ok := s.successor(id, 0); ok && t != from {
		if err := s.shareWith(t, id, shared); err != nil {
			s.log.Warn("dsup: started child's record not confirmed", "child", id, "err", err)
		}
	}
	return pid, shared, nil
}

// TerminateChild stops the child and forgets it, on whichever node it
// runs, and waits, until ctx ends, for its instance to exit.
func (s *Supervisor) TerminateChild(ctx context.Context, id string) error {
	s.writeMu.Lock()
	r := s.record(id)
	if r == nil {
		s.writeMu.Unlock()
		return fmt.Errorf("dsup: child %q: %w", id, supervisor.ErrNotFound)
	}
	_, err := s.cfg.Children.Delete(id)
	s.writeMu.Unlock()
	if err != nil {
		return fmt.Errorf("dsup: terminate %q: %w", id, err)
	}
	if r.PID.IsZero() {
		return nil
	}
	down := make(chan struct{})
	cancel := s.cfg.Runtime.MonitorRemoteFunc(r.PID, func(proc.PID, error) { close(down) })
	defer cancel()
	select {
	case <-down:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dsup: terminate %q: waiting for %v: %w", id, r.PID, ctx.Err())
	}
}

// Child describes a child as this node's replica has it.
type Child struct {
	ID   string
	Spec Spec
	// Owner is the node that runs it or is to run it.
	Owner proc.NodeID
	// PID is its instance, zero while it is not running.
	PID proc.PID
	// Epoch counts its placements.
	Epoch uint64
	// Failed says why it was given up, if it was.
	Failed string
	// HasState: it has a stashed or checkpointed state to start from.
	HasState bool
}

// Children lists the children, sorted by ID, from this node's replica.
// A child whose owner has ended shows its owner and PID until another
// node takes it over.
func (s *Supervisor) Children() []Child {
	var out []Child
	s.cfg.Children.Range(func(key string, v crdt.Version) bool {
		if r, err := decodeRecord(v.Value); err == nil {
			out = append(out, Child{ID: key, Spec: r.Spec, Owner: r.Owner, PID: r.PID, Epoch: r.Epoch, Failed: r.Failed, HasState: r.HasState})
		}
		return true
	})
	slices.SortFunc(out, func(a, b Child) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Child returns one child's description.
func (s *Supervisor) Child(id string) (Child, bool) {
	r := s.record(id)
	if r == nil {
		return Child{}, false
	}
	return Child{ID: id, Spec: r.Spec, Owner: r.Owner, PID: r.PID, Epoch: r.Epoch, Failed: r.Failed, HasState: r.HasState}, true
}

// Counts counts the children.
type Counts struct {
	Specs   int // children known
	Running int // with an instance on a node that is not known to be gone
	Failed  int // given up
}

// Count counts the children from this node's replica.
func (s *Supervisor) Count() Counts {
	var c Counts
	v := s.view()
	s.cfg.Children.Range(func(_ string, ver crdt.Version) bool {
		r, err := decodeRecord(ver.Value)
		if err != nil {
			return true
		}
		c.Specs++
		switch {
		case r.Failed != "":
			c.Failed++
		case !r.PID.IsZero() && !v.Ended(r.Owner):
			c.Running++
		}
		return true
	})
	return c
}

// Running returns the children running on this node, by ID.
func (s *Supervisor) Running() map[string]proc.PID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]proc.PID, len(s.inst))
	for id, in := range s.inst {
		if in.state == running {
			out[id] = in.pid
		}
	}
	return out
}

// Settled reports whether this node has nothing in progress: no start or
// stop running, nothing waiting to be looked at.
func (s *Supervisor) Settled() bool {
	s.dirtyMu.Lock()
	pending := s.all || len(s.dirty) > 0
	s.dirtyMu.Unlock()
	if pending {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, in := range s.inst {
		if in.state == starting || in.state == stopping {
			return false
		}
	}
	return true
}
