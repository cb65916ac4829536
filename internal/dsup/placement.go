// Package dsup is the distributed dynamic supervisor: children whose specs
// live in a replicated map, placed on a node by a strategy, restarted by one
// survivor when their node is lost, handed over with their state when it
// stops gracefully, and resumed from their last checkpoint after the whole
// cluster restarts.
//
// The placement strategies and the decision of what a node does about one
// child (decide) are pure; the Supervisor drives them over the replica, the
// membership and the process runtime.
package dsup

import (
	"slices"

	"github.com/herdkit/herd/internal/proc"
)

// PlaceRequest is what a Placement decides on.
type PlaceRequest struct {
	// Child is the child's ID.
	Child string
	// Epoch counts the child's placements so far (0 for a new child).
	Epoch uint64
	// From is the node that called StartChild; zero when the child is
	// being placed again (failover, handoff, redistribution).
	From proc.NodeID
	// Nodes are the candidates, sorted by name: the members that are up
	// and not leaving, as the deciding node sees them.
	Nodes []proc.NodeID
}

// Placement picks the node a child runs on. Place must be a pure function
// of the request: every node that sees the same members must pick the same
// node, or a failover could be started twice (and then resolved) or not at
// all (until the members' views agree).
type Placement interface {
	// Place returns one of req.Nodes, or false to place the child nowhere
	// now.
	Place(req PlaceRequest) (proc.NodeID, bool)
}

// Quorum is implemented by placements that need a majority: a node that
// sees too few members stops its children and refuses to start any.
type Quorum interface {
	// HasQuorum reports whether a node that sees the members seen (every
	// member life that has not ended, itself included) may run children.
	HasQuorum(seen int) bool
}

// PlacementFunc adapts a function to Placement.
type PlacementFunc func(PlaceRequest) (proc.NodeID, bool)

// Place calls f.
func (f PlacementFunc) Place(req PlaceRequest) (proc.NodeID, bool) { return f(req) }

// Uniform places by rendezvous hashing of (child, node name) over the
// candidates: children spread evenly, and a change of members moves only
// the children of nodes that went (and, with active redistribution, the
// ones the new nodes now win). Node names, not lives, are hashed, so a
// restarted node wins back the same children.
func Uniform() Placement { return uniform{} }

type uniform struct{}

func (uniform) Place(req PlaceRequest) (proc.NodeID, bool) {
	return rendezvous(req.Child, req.Nodes)
}

func rendezvous(child string, nodes []proc.NodeID) (proc.NodeID, bool) {
	var best proc.NodeID
	var bestHash uint64
	found := false
	for _, n := range nodes {
		h := Hash(child, n.Name, 0)
		if !found || h > bestHash || (h == bestHash && n.Name < best.Name) {
			best, bestHash, found = n, h, true
		}
	}
	return best, found
}

// QuorumUniform is Uniform on a node that sees a majority of expected
// members (more than expected/2, itself included); a node that sees fewer
// stops its children and refuses to start any, so that in a partition
// only the majority side runs them.
func QuorumUniform(expected int) Placement { return quorumUniform{expected: max(expected, 1)} }

type quorumUniform struct {
	uniform
	expected int
}

func (q quorumUniform) HasQuorum(seen int) bool { return seen > q.expected/2 }

// Random spreads children without regard to their IDs: each placement
// picks a candidate from a hash of the child and its epoch, so every node
// picks alike, and each new placement is a fresh draw.
func Random() Placement { return random{} }

type random struct{}

func (random) Place(req PlaceRequest) (proc.NodeID, bool) {
	if len(req.Nodes) == 0 {
		return proc.NodeID{}, false
	}
	return req.Nodes[Hash(req.Child, "", req.Epoch)%uint64(len(req.Nodes))], true
}

// OnCaller starts a child on the node that called StartChild; placed again
// (its node lost or stopping), it goes where Uniform says.
func OnCaller() Placement { return local{} }

type local struct{}

func (local) Place(req PlaceRequest) (proc.NodeID, bool) {
	if !req.From.IsZero() && slices.Contains(req.Nodes, req.From) {
		return req.From, true
	}
	return rendezvous(req.Child, req.Nodes)
}

// Hash is FNV-1a over two strings and a number, then a finalising mix:
// the same on every node and every platform. Placement hashes a child, a
// node name and an epoch with it; GetOrStart's arbiter, a name and a node
// life.
func Hash(child, node string, n uint64) uint64 {
	h := uint64(14695981039346656037)
	add := func(s string) {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= 1099511628211
		}
		h ^= 0xff
		h *= 1099511628211
	}
	add(child)
	add(node)
	for i := range 8 {
		h ^= (n >> (8 * i)) & 0xff
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h
}
