package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/herdkit/herd"
)

// sessionPrefix starts the registry name, and the distributed child ID, of
// every session.
const sessionPrefix = "session:"

func sessionName(id SessionID) string { return sessionPrefix + string(id) }

// reaskEvery is how often a collecting session asks again the participants
// whose votes it has not got: a vote sent while the session was moving is
// lost, and a restarted session does not know which requests went out.
const reaskEvery = 250 * time.Millisecond

// sessionState is everything a session knows. It is what it checkpoints
// after every change, and what it stashes when its node stops gracefully,
// so an instance started on another node takes over where it was.
type sessionState struct {
	ID           SessionID       `json:"id"`
	Proposal     Proposal        `json:"proposal"`
	Participants []string        `json:"participants"`
	Deadline     time.Time       `json:"deadline"`
	State        State           `json:"state"`
	Outcome      Outcome         `json:"outcome,omitempty"`
	Reason       string          `json:"reason,omitempty"`
	Votes        map[string]bool `json:"votes"`
}

// session is a consensus session: a distributed child that asks its
// participants for their votes, counts them, and decides. It decides once
// every participant has voted, or at its deadline if the votes in already
// settle the proposal; otherwise it fails at the deadline.
//
// It implements herd.Stasher: its state moves with it when its node stops
// gracefully, and comes back from its last checkpoint when its node is
// lost.
type session struct {
	herd.Base
	st sessionState
}

// Messages a session sends itself.
type (
	kickoff      struct{} // first message: the state is restored by now
	reaskTick    struct{}
	deadlineTick struct{}
)

var _ herd.Stasher = (*session)(nil)

func (s *session) Init(c *herd.Context, args any) error {
	a, ok := args.(SessionArgs)
	if !ok {
		return fmt.Errorf("session: arguments are %T, want SessionArgs", args)
	}
	s.st = sessionState{
		ID: a.ID, Proposal: a.Proposal, Participants: a.Participants, Deadline: a.Deadline,
		State: Collecting, Votes: map[string]bool{},
	}
	// Restore, if there is state to restore, runs after Init and before
	// the first message: the work starts with that message.
	return c.Send(c.Self(), kickoff{})
}

// Stash returns the session's state, for the node that takes it over.
func (s *session) Stash() ([]byte, error) {
	b, err := json.Marshal(s.st)
	if err != nil {
		return nil, fmt.Errorf("session %s: stash: %w", s.st.ID, err)
	}
	return b, nil
}

// Restore installs a stashed or checkpointed state.
func (s *session) Restore(b []byte) error {
	var st sessionState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("session %s: restore: %w", s.st.ID, err)
	}
	if st.ID != s.st.ID {
		return fmt.Errorf("session %s: restore: state of session %s", s.st.ID, st.ID)
	}
	if st.Votes == nil {
		st.Votes = map[string]bool{}
	}
	s.st = st
	return nil
}

func (s *session) HandleInfo(c *herd.Context, msg any) {
	switch m := msg.(type) {
	case kickoff:
		s.publish(c)
		if s.st.State != Collecting {
			return
		}
		if s.evaluate(false) {
			s.save(c)
			return
		}
		s.askPending(c)
		c.SendAfter(reaskEvery, reaskTick{})
		c.SendAfter(time.Until(s.st.Deadline), deadlineTick{})
	case reaskTick:
		if s.st.State == Collecting {
			s.askPending(c)
			c.SendAfter(reaskEvery, reaskTick{})
		}
	case deadlineTick:
		if s.st.State == Collecting && s.evaluate(true) {
			s.save(c)
		}
	case Vote:
		if m.Session != s.st.ID || s.st.State != Collecting || !slices.Contains(s.st.Participants, m.Agent) {
			return
		}
		if _, dup := s.st.Votes[m.Agent]; dup {
			return
		}
		s.st.Votes[m.Agent] = m.Approve
		s.evaluate(false)
		s.save(c)
	case herd.ChildStash:
		// A duplicate of this session, run on the other side of a
		// partition, was stopped: take the votes it had that this one
		// lacks.
		var other sessionState
		if json.Unmarshal(m.State, &other) != nil || other.ID != s.st.ID || s.st.State != Collecting {
			return
		}
		merged := false
		for agent, v := range other.Votes {
			if _, ok := s.st.Votes[agent]; !ok && slices.Contains(s.st.Participants, agent) {
				s.st.Votes[agent], merged = v, true
			}
		}
		if merged {
			s.evaluate(false)
			s.save(c)
		}
	default:
		s.Base.HandleInfo(c, msg)
	}
}

func (s *session) HandleCall(c *herd.Context, msg any) (any, error) {
	q, ok := msg.(StatusQuery)
	if !ok {
		return s.Base.HandleCall(c, msg)
	}
	if q.Session != s.st.ID {
		return nil, fmt.Errorf("session %s asked about %s: %w", s.st.ID, q.Session, ErrNoSession)
	}
	return Status{
		ID: s.st.ID, Proposal: s.st.Proposal, State: s.st.State, Outcome: s.st.Outcome, Reason: s.st.Reason,
		Participants: slices.Clone(s.st.Participants), Votes: maps.Clone(s.st.Votes), Deadline: s.st.Deadline,
		Node: herd.NodeOf(c).ID().Name,
	}, nil
}

// evaluate decides if it can: when every participant has voted, or at the
// deadline. It reports whether the state changed.
func (s *session) evaluate(atDeadline bool) bool {
	yes, no, pending := tally(s.st.Participants, s.st.Votes)
	if pending > 0 && !atDeadline {
		return false
	}
	if o, ok := settle(s.st.Proposal.Rule, len(s.st.Participants), yes, no); ok {
		s.st.State, s.st.Outcome = Decided, o
		return true
	}
	s.st.State = Failed
	s.st.Reason = fmt.Sprintf("deadline passed with %d of %d votes (%d for, %d against), not enough to decide by %s",
		yes+no, len(s.st.Participants), yes, no, s.st.Proposal.Rule)
	return true
}

// askPending sends a vote request to each participant that has not voted.
// A participant whose name is not registered (its node is gone) is asked
// again later: it may come back.
func (s *session) askPending(c *herd.Context) {
	req := VoteRequest{Session: s.st.ID, ReplyTo: sessionName(s.st.ID), Proposal: s.st.Proposal}
	for _, p := range s.st.Participants {
		if _, ok := s.st.Votes[p]; ok {
			continue
		}
		if err := c.Send(herd.Name(agentPrefix+p), req); err != nil && !errors.Is(err, herd.ErrNoName) {
			c.Logger().Debug("vote request not sent", "session", s.st.ID, "agent", p, "err", err)
		}
	}
}

// save checkpoints the state and publishes it in the registry.
func (s *session) save(c *herd.Context) {
	b, err := s.Stash()
	if err == nil {
		err = c.Checkpoint(b)
	}
	if err != nil {
		// ErrNotOwner: this instance is being moved or stopped; the
		// next one gets the stash, or asks again for what it lacks.
		c.Logger().Debug("session checkpoint not stored", "session", s.st.ID, "err", err)
	}
	s.publish(c)
}

// publish puts the session's state in its registry labels, so any node
// can list sessions and their progress from its own replica.
func (s *session) publish(c *herd.Context) {
	meta := herd.Meta{Labels: sessionLabels(&s.st)}
	if err := herd.NodeOf(c).Registry().UpdateMeta(c, herd.Key{Name: sessionName(s.st.ID)}, c.Self(), meta); err != nil {
		c.Logger().Debug("session labels not updated", "session", s.st.ID, "err", err)
	}
}

// sessionLabels are a session's registry labels; SessionInfo reads them
// back.
func sessionLabels(st *sessionState) map[string]string {
	yes, no, pending := tally(st.Participants, st.Votes)
	return map[string]string{
		LabelKind:    KindSession,
		"session":    string(st.ID),
		"topic":      st.Proposal.Topic,
		"capability": st.Proposal.Capability,
		"rule":       string(st.Proposal.Rule),
		"state":      string(st.State),
		"outcome":    string(st.Outcome),
		"yes":        strconv.Itoa(yes),
		"no":         strconv.Itoa(no),
		"pending":    strconv.Itoa(pending),
	}
}
