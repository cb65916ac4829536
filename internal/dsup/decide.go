package dsup

import (
	"github.com/herdkit/herd/internal/proc"
)

// View is how one node sees the cluster when it decides about a child.
type View struct {
	Self proc.NodeID
	// Leaving: this node is stopping gracefully and hands its children on.
	Leaving bool
	// Quorum: the placement allows this node to run children (always, for
	// placements that do not implement Quorum).
	Quorum bool
	// Up are the placement candidates: members alive or suspect and not
	// leaving, sorted by name; this node among them unless it is leaving.
	Up []proc.NodeID
	// Alive reports whether a member is alive (a target for an active
	// move, which a suspect member is not).
	Alive func(proc.NodeID) bool
	// Ended reports whether a node life is gone for good or for now:
	// dead, left (a grace period ago), superseded by a later life, or
	// never heard of for five grace periods.
	Ended func(proc.NodeID) bool
	// Settled: this node has been up long enough (a grace period) for its
	// replica to have caught up with the others; until then it claims
	// nothing, since a claim made from a record it has not yet seen
	// superseded would start a stale duplicate.
	Settled bool
	// Active: children move to where the placement now puts them.
	Active    bool
	Placement Placement
}

// Local is what runs of a child on the deciding node.
type Local struct {
	// Running: an instance runs here.
	Running bool
	// PID is the running instance.
	PID proc.PID
	// Busy: an instance is starting or stopping here, or a failed start
	// waits to be retried; decide again when that ends.
	Busy bool
}

// Op is what a node does about one child.
type Op uint8

// Ops.
const (
	// None: nothing.
	None Op = iota
	// Start the child here: this node owns it and it is not running.
	Start
	// Claim the child and start it: its owner has ended and the placement
	// names this node.
	Claim
	// Adopt the instance already running here: its owner has ended and
	// the placement names this node; or the record names this node but
	// not this instance (a node that did not know it ran here handed the
	// child to it), so the record is made to name it.
	Adopt
	// Stop the instance here and write nothing: the child was terminated
	// or given up, or this node lost its quorum.
	Stop
	// Drop the instance here, which duplicates the owner's: stash it for
	// the owner's instance and stop it.
	Drop
	// Handoff the child to Target: stash and stop the instance here, if
	// any, and make Target the owner, with the state.
	Handoff
	// Park the child: this node is leaving and no node can take it; stash
	// and stop it, and keep the state in its record for its next start.
	Park
)

var opNames = [...]string{"none", "start", "claim", "adopt", "stop", "drop", "handoff", "park"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "op?"
}

// Action is a decision.
type Action struct {
	Op     Op
	Target proc.NodeID // for Handoff
}

// Decide says what node v.Self does about the child id, whose record it
// reads as rec (nil if there is none), given what runs of it here. It is a
// pure function: the driver acts on it and decides again when anything it
// depends on changes. Every node that reads the same record and sees the
// same members decides consistently: exactly one of them runs the child.
func Decide(v *View, id string, rec *Record, l Local) Action {
	if l.Busy {
		return Action{}
	}
	if rec == nil || rec.Failed != "" || !v.Quorum {
		if l.Running {
			return Action{Op: Stop}
		}
		return Action{}
	}
	req := PlaceRequest{Child: id, Epoch: rec.Epoch, Nodes: v.Up}
	if rec.Owner == v.Self {
		if v.Leaving {
			if t, ok := v.Placement.Place(req); ok && t != v.Self {
				return Action{Op: Handoff, Target: t}
			}
			if l.Running {
				return Action{Op: Park}
			}
			return Action{}
		}
		if !l.Running {
			return Action{Op: Start}
		}
		if rec.PID != l.PID {
			return Action{Op: Adopt}
		}
		if v.Active {
			if t, ok := v.Placement.Place(req); ok && t != v.Self && v.Alive(t) {
				return Action{Op: Handoff, Target: t}
			}
		}
		return Action{}
	}
	if !v.Leaving && (rec.Owner.IsZero() || v.Ended(rec.Owner)) {
		if t, ok := v.Placement.Place(req); ok && t == v.Self {
			switch {
			case !v.Settled:
				return Action{} // decide again once settled
			case l.Running:
				return Action{Op: Adopt}
			}
			return Action{Op: Claim}
		}
	}
	if l.Running {
		return Action{Op: Drop}
	}
	return Action{}
}
