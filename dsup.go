package herd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/herdkit/herd/internal/dsup"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/remote"
)

// Placement picks the node a distributed child runs on; see
// UniformPlacement and the others, or write one (PlacementFunc). Every node
// of a cluster must use the same.
type Placement = dsup.Placement

// PlaceRequest is what a Placement decides on: the child's ID, its epoch
// (placements so far), the node that called StartChild (zero when the
// child is placed again after its node went), and the candidate nodes.
type PlaceRequest = dsup.PlaceRequest

// PlacementFunc adapts a function to Placement. It must be a pure function
// of its request, the same on every node.
type PlacementFunc = dsup.PlacementFunc

// UniformPlacement places by rendezvous hashing of (child ID, node name)
// over the nodes that are up: even spread, and minimal movement when
// members change. The default.
func UniformPlacement() Placement { return dsup.Uniform() }

// QuorumPlacement is UniformPlacement for a cluster of expected nodes in
// which a node that sees no majority of them (expected/2 or fewer,
// itself included) stops its children and refuses to start any: in a
// partition only the majority side runs them.
func QuorumPlacement(expected int) Placement { return dsup.QuorumUniform(expected) }

// RandomPlacement spreads children without regard to their IDs: each
// placement is a fresh draw (from a hash of the child's ID and epoch, so
// every node draws alike).
func RandomPlacement() Placement { return dsup.Random() }

// LocalPlacement starts a child on the node that calls StartChild; when it
// must move, it goes where UniformPlacement says.
func LocalPlacement() Placement { return dsup.OnCaller() }

// ChildStash is sent to a distributed child's instance when a duplicate of
// it, found running on another node after a partition healed, is stopped
// with state to give (it is a Stasher): the instance may merge State into
// its own.
type ChildStash = dsup.Stashed

// Distributed-supervisor errors. Test for them with errors.Is.
var (
	// ErrLeaving: the node is stopping and takes no new children.
	ErrLeaving = dsup.ErrLeaving
	// ErrNoQuorum: the node sees too few members to run children
	// (QuorumPlacement).
	ErrNoQuorum = dsup.ErrNoQuorum
	// ErrNoNode: no node can take the child.
	ErrNoNode = dsup.ErrNoNode
	// ErrNotOwner: the child is not, or no longer, run by this node (a
	// Checkpoint from an instance being moved or stopped).
	ErrNotOwner = dsup.ErrNotOwner
	// ErrNotReplicated: a Checkpoint is stored on this node, but the node
	// that would take the child over if this one were lost did not confirm
	// it within two seconds. The state still spreads; until it has, a
	// failover may restart the child from an older one.
	ErrNotReplicated = dsup.ErrNotReplicated
	// ErrNoCheckpoint: Checkpoint from a process that is not a
	// distributed child.
	ErrNoCheckpoint = proc.ErrNoCheckpoint
)

// Supervisor is the node's part of the cluster's distributed supervisor:
// children started from any node, placed by Config.Placement, restarted by
// one survivor when their node is lost, handed over with their state when
// their node stops gracefully, and resumed from their last checkpoint after
// the whole cluster restarts. Children's specs live in a replicated map,
// so every node answers WhichChildren and CountChildren from its own
// replica.
type Supervisor struct {
	n *Node
	s *dsup.Supervisor
}

// Supervisor returns the node's distributed supervisor.
func (n *Node) Supervisor() *Supervisor { return &Supervisor{n: n, s: n.sup} }

const (
	dsupStartService = "herd.dsup.start"
	dsupShareService = "herd.dsup.share"
)

// startSupervisor starts the node's part of the distributed supervisor.
// mem and rc are nil for a node alone.
func (n *Node) startSupervisor(cfg *Config, mem *membership.Membership, rc *remote.Cluster) error {
	children, err := n.reps.Open("herd.children", dsup.Resolve, cfg.DataDir != "")
	if err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	dc := dsup.Config{
		Self: n.id, Runtime: n.rt, Children: children, Placement: cfg.Placement,
		Active: cfg.Redistribute == RedistributeActive, Intensity: cfg.ChildIntensity, Period: cfg.ChildPeriod,
		Spawn: n.spawnChild, Logger: n.log,
	}
	if cfg.Profile == string(membership.Local) {
		dc.Grace, dc.Tick = time.Second, 200*time.Millisecond
	}
	if mem != nil {
		dc.Members = mem
		dc.Ask = func(ctx context.Context, node NodeID, body []byte) ([]byte, error) {
			return rc.Ask(ctx, node, dsupStartService, body)
		}
		dc.Share = func(ctx context.Context, node NodeID, body []byte) error {
			_, err := rc.Ask(ctx, node, dsupShareService, body)
			return err
		}
	}
	n.sup = dsup.New(dc)
	if rc != nil {
		rc.Handle(dsupStartService, n.sup.ServeStart)
		rc.Handle(dsupShareService, n.sup.ServeShare)
	}
	n.rt.SetCheckpointer(n.sup)
	return nil
}

// spawnChild starts a process for a distributed child's spec.
func (n *Node) spawnChild(spec *dsup.Spec, opts []SpawnOption) (PID, error) {
	var args any
	if len(spec.Args) > 0 {
		var err error
		if args, err = n.codec.Decode(spec.Args); err != nil {
			return PID{}, fmt.Errorf("herd: child arguments: %w", err)
		}
	}
	if spec.Name != "" {
		meta := Meta{Labels: spec.Labels, Capabilities: spec.Capabilities}
		opts = append([]SpawnOption{WithKey(Key{Env: spec.Env, Name: spec.Name}, meta)}, opts...)
	}
	return n.rt.Spawn(spec.Kind, args, opts...)
}

// Redistribution says what happens to running children when members join.
type Redistribution uint8

const (
	// RedistributePassive leaves children where they run; new nodes get
	// new children and those of nodes that go. The default.
	RedistributePassive Redistribution = iota
	// RedistributeActive moves, with their state, the children the
	// placement now puts on another node (with UniformPlacement, the ones
	// a new node wins).
	RedistributeActive
)

// StartChild starts a child where the placement puts it, from any node,
// and returns its PID. spec.ID names it in the whole cluster and must not
// be taken (ErrAlreadyStarted). spec.Kind must be registered on every node
// that may run it, and spec.Args must be a registered message type (see
// RegisterMessage): both travel. New and Supervisor cannot travel and are
// refused. If spec.Name is set, each instance registers it before Init.
//
// A node that refuses the child (it is leaving, or has no quorum) or is
// lost before it answers is left out and the child placed again, until ctx
// ends.
func (s *Supervisor) StartChild(ctx context.Context, spec ChildSpec) (PID, error) {
	ds, err := s.n.distSpec(spec)
	if err != nil {
		return PID{}, err
	}
	return s.s.StartChild(ctx, spec.ID, ds)
}

func (n *Node) distSpec(spec ChildSpec) (dsup.Spec, error) {
	switch {
	case spec.ID == "":
		return dsup.Spec{}, errors.New("herd: distributed child without an ID")
	case spec.New != nil || spec.Supervisor != nil:
		return dsup.Spec{}, fmt.Errorf("herd: child %q: New and Supervisor cannot travel to another node; use a Kind", spec.ID)
	case spec.Kind == "":
		return dsup.Spec{}, fmt.Errorf("herd: child %q: no Kind", spec.ID)
	case spec.Name == "" && spec.Env != "":
		return dsup.Spec{}, fmt.Errorf("herd: child %q: Env without a Name", spec.ID)
	case spec.Shutdown < 0 && spec.Shutdown != Brutal:
		return dsup.Spec{}, fmt.Errorf("herd: child %q: negative shutdown budget %v (use Brutal)", spec.ID, spec.Shutdown)
	}
	if spec.Name != "" {
		if err := (Key{Env: spec.Env, Name: spec.Name}).Validate(); err != nil {
			return dsup.Spec{}, err
		}
		if err := spec.Meta.Validate(); err != nil {
			return dsup.Spec{}, err
		}
	}
	ds := dsup.Spec{
		Kind: spec.Kind, Name: spec.Name, Env: spec.Env, Labels: spec.Meta.Labels, Capabilities: spec.Meta.Capabilities,
		Restart: spec.Restart, Shutdown: spec.Shutdown,
	}
	if spec.Args != nil {
		var err error
		if ds.Args, err = n.codec.Encode(spec.Args); err != nil {
			return dsup.Spec{}, fmt.Errorf("herd: child %q: arguments: %w", spec.ID, err)
		}
	}
	return ds, nil
}

// TerminateChild stops the child wherever it runs and forgets it, and
// waits, until ctx ends, for its instance to exit. A child unknown to this
// node's replica is ErrNoChild.
func (s *Supervisor) TerminateChild(ctx context.Context, id string) error {
	return s.s.TerminateChild(ctx, id)
}

// Child describes a distributed child, as a node's replica has it.
type Child struct {
	ID      string
	Kind    string
	Name    string
	Env     string
	Restart Restart
	// Node is the node life that runs it, or is to run it.
	Node NodeID
	// PID is its instance; zero while none runs.
	PID PID
	// Epoch counts its placements: each takeover, handoff or move adds
	// one.
	Epoch uint64
	// Failed, if not empty, says why it was given up: it restarted more
	// often than the restart intensity allows. TerminateChild forgets it.
	Failed string
	// HasState: it has a stashed or checkpointed state to restart from.
	HasState bool
}

func childOf(c dsup.Child) Child {
	return Child{
		ID: c.ID, Kind: c.Spec.Kind, Name: c.Spec.Name, Env: c.Spec.Env, Restart: c.Spec.Restart,
		Node: c.Owner, PID: c.PID, Epoch: c.Epoch, Failed: c.Failed, HasState: c.HasState,
	}
}

// WhichChildren lists every child of the cluster, sorted by ID, from this
// node's replica (no other node is asked). A child whose node was just
// lost shows that node until a survivor takes it over.
func (s *Supervisor) WhichChildren() []Child {
	cs := s.s.Children()
	out := make([]Child, len(cs))
	for i, c := range cs {
		out[i] = childOf(c)
	}
	return out
}

// WhichChild describes one child, from this node's replica.
func (s *Supervisor) WhichChild(id string) (Child, bool) {
	c, ok := s.s.Child(id)
	if !ok {
		return Child{}, false
	}
	return childOf(c), true
}

// ChildTotals counts a distributed supervisor's children.
type ChildTotals = dsup.Counts

// CountChildren counts the cluster's children from this node's replica.
func (s *Supervisor) CountChildren() ChildTotals { return s.s.Count() }

// LocalChildren returns the children running on this node, by ID.
func (s *Supervisor) LocalChildren() map[string]PID { return s.s.Running() }

// SupervisorStats counts what a node's distributed supervisor did.
type SupervisorStats = dsup.Stats

// Stats returns the node's distributed-supervisor counters.
func (s *Supervisor) Stats() SupervisorStats { return s.s.Stats() }

// Settled reports whether the node's supervisor has nothing in progress
// (for tests that wait for quiescence).
func (s *Supervisor) Settled() bool { return s.s.Settled() }
