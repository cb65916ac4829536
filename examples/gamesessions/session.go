package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/herdkit/herd"
)

// A game session is a distributed child of the cluster's supervisor: it runs
// on one game node, is found by name from every node, and keeps its state
// through whatever happens to that node.
//
//   - The node is killed: a survivor restarts the session from its last
//     checkpoint, written after every accepted move.
//   - The node is stopped (a rolling deploy): the session is stashed and
//     handed to another node, which restores it before its next message.
//   - The whole cluster is stopped: with a data directory, each session
//     resumes from its checkpoint when the nodes come back.

// Kind is the process kind of a game session.
const Kind = "game-session"

// Open is a session's start argument.
type Open struct {
	ID string
}

// Join adds a player to a session; joining twice changes nothing.
type Join struct {
	Player string
}

// Move is a player's turn: Seq numbers a player's moves from 1, so a move
// sent again (after its reply was lost with a node) is recognised and not
// applied twice.
type Move struct {
	Player string
	Seq    int
	Points int
}

// Get asks for a session's state.
type Get struct{}

// Player is one player's standing in a session.
type Player struct {
	Score int
	// Seq is the number of the player's last applied move.
	Seq int
}

// State is a session's state, as replies carry it and as it is stashed and
// checkpointed.
type State struct {
	ID      string
	Players map[string]Player
	// Moves counts the moves applied.
	Moves int
	// Resumed says where this instance's state came from: "" (a new
	// session), "stash" (handed over by a stopping node) or "checkpoint"
	// (restarted after its node was lost or the cluster restarted).
	Resumed string
}

// saved is a session's state as it is stashed or checkpointed.
type saved struct {
	Via   string // "stash" or "checkpoint"
	State State
}

// Errors a session's calls return.
var (
	// ErrNotJoined: a move from a player who has not joined.
	ErrNotJoined = errors.New("gamesessions: player has not joined")
	// ErrOutOfOrder: a move whose Seq skips one.
	ErrOutOfOrder = errors.New("gamesessions: move out of order")
)

// Register makes the session kind and its messages known to a node. Every
// node registers them alike, game node or not.
func Register(n *herd.Node) error {
	for _, err := range []error{
		herd.RegisterKind(n, Kind, func() herd.Process { return &session{} }),
		herd.RegisterMessage[Open](n, "gamesessions.Open"),
		herd.RegisterMessage[Join](n, "gamesessions.Join"),
		herd.RegisterMessage[Move](n, "gamesessions.Move"),
		herd.RegisterMessage[Get](n, "gamesessions.Get"),
		herd.RegisterMessage[State](n, "gamesessions.State"),
	} {
		if err != nil {
			return err
		}
	}
	herd.RegisterError(n, ErrNotJoined)
	herd.RegisterError(n, ErrOutOfOrder)
	return nil
}

// GameNodePrefix starts the names of the nodes that run sessions. Other
// nodes (a web front end, a test client) join the cluster, find sessions by
// name and call them, but run none.
const GameNodePrefix = "game-"

// Placement puts sessions on game nodes only, by rendezvous hashing over
// their names (herd.UniformPlacement), so every node that sees the same
// members picks the same one.
func Placement() herd.Placement {
	uniform := herd.UniformPlacement()
	return herd.PlacementFunc(func(req herd.PlaceRequest) (herd.NodeID, bool) {
		req.Nodes = slices.DeleteFunc(slices.Clone(req.Nodes), func(n herd.NodeID) bool {
			return !strings.HasPrefix(n.Name, GameNodePrefix)
		})
		return uniform.Place(req)
	})
}

// Name is the registered name of session id.
func Name(id string) string { return "session/" + id }

// OpenSession starts session id somewhere in the cluster; opening one that
// exists already is not an error.
func OpenSession(ctx context.Context, n *herd.Node, id string) error {
	_, err := n.Supervisor().StartChild(ctx, herd.ChildSpec{
		ID: Name(id), Kind: Kind, Name: Name(id), Args: Open{ID: id}, Restart: herd.Permanent,
	})
	if errors.Is(err, herd.ErrAlreadyStarted) {
		return nil
	}
	return err
}

// Call sends a session a request and waits for its state, riding through
// the session moving between nodes (herd.WaitForName): Join and Move are
// safe to send again.
func Call(ctx context.Context, n *herd.Node, id string, req any) (State, error) {
	return herd.Call[State](ctx, n, herd.Name(Name(id)), req, herd.WaitForName())
}

type session struct {
	herd.Base
	st State
}

func (s *session) Init(_ *herd.Context, args any) error {
	open, ok := args.(Open)
	if !ok || open.ID == "" {
		return fmt.Errorf("gamesessions: start argument %T, want Open with an ID", args)
	}
	s.st = State{ID: open.ID, Players: map[string]Player{}}
	return nil
}

func (s *session) HandleCall(ctx *herd.Context, msg any) (any, error) {
	switch m := msg.(type) {
	case Get:
		return s.state(), nil
	case Join:
		if _, ok := s.st.Players[m.Player]; ok {
			return s.state(), nil
		}
		s.st.Players[m.Player] = Player{}
		if err := s.checkpoint(ctx); err != nil {
			delete(s.st.Players, m.Player)
			return nil, err
		}
		return s.state(), nil
	case Move:
		p, ok := s.st.Players[m.Player]
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: %q", ErrNotJoined, m.Player)
		case m.Seq <= p.Seq:
			return s.state(), nil // applied already
		case m.Seq != p.Seq+1:
			return nil, fmt.Errorf("%w: %q sent move %d after %d", ErrOutOfOrder, m.Player, m.Seq, p.Seq)
		}
		s.st.Players[m.Player] = Player{Score: p.Score + m.Points, Seq: m.Seq}
		s.st.Moves++
		// A move counts once it is checkpointed: if the checkpoint fails
		// (the session is being moved away), it is undone and the caller
		// sends it again to the session's next instance.
		if err := s.checkpoint(ctx); err != nil {
			s.st.Players[m.Player] = p
			s.st.Moves--
			return nil, err
		}
		return s.state(), nil
	}
	return s.Base.HandleCall(ctx, msg)
}

func (s *session) state() State {
	st := s.st
	st.Players = maps.Clone(s.st.Players)
	return st
}

func (s *session) checkpoint(ctx *herd.Context) error {
	b, err := json.Marshal(saved{Via: "checkpoint", State: s.st})
	if err != nil {
		return err
	}
	return ctx.Checkpoint(b)
}

// Stash hands the session's state to the node that takes it over.
func (s *session) Stash() ([]byte, error) {
	return json.Marshal(saved{Via: "stash", State: s.st})
}

// Restore takes the state of a stash or checkpoint, after Init and before
// the first message.
func (s *session) Restore(b []byte) error {
	var sv saved
	if err := json.Unmarshal(b, &sv); err != nil {
		return fmt.Errorf("gamesessions: restore: %w", err)
	}
	st := sv.State
	st.Resumed = sv.Via
	if st.ID != s.st.ID {
		return fmt.Errorf("gamesessions: restore: state of session %q given to %q", st.ID, s.st.ID)
	}
	if st.Players == nil {
		st.Players = map[string]Player{}
	}
	s.st = st
	return nil
}
