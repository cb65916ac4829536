package main

import (
	"fmt"
	"time"

	"github.com/herdkit/herd"
)

// Kinds of process this example runs. Every node registers both (see
// Register), so the distributed supervisor can start a session on any
// node and an agent can be spawned on any node.
const (
	AgentKind   = "coordination.agent"
	SessionKind = "coordination.session"
)

// Labels the example puts on its registry entries. Agents and sessions are
// told apart by LabelKind, so both can be listed by label from any node.
const (
	LabelKind = "kind"

	KindAgent   = "agent"
	KindSession = "consensus-session"
)

// Register makes node able to run agents and sessions and to exchange
// their messages with other nodes. Call it on every node of the cluster,
// right after herd.Start.
func Register(node *herd.Node) error {
	kinds := map[string]func() herd.Process{
		AgentKind:   func() herd.Process { return &agent{} },
		SessionKind: func() herd.Process { return &session{} },
	}
	for kind, fn := range kinds {
		if err := herd.RegisterKind(node, kind, fn); err != nil {
			return fmt.Errorf("coordination: kind %s: %w", kind, err)
		}
	}
	for _, reg := range []func() error{
		func() error { return herd.RegisterMessage[AgentSpec](node, "coordination.AgentSpec") },
		func() error { return herd.RegisterMessage[SessionArgs](node, "coordination.SessionArgs") },
		func() error { return herd.RegisterMessage[VoteRequest](node, "coordination.VoteRequest") },
		func() error { return herd.RegisterMessage[Vote](node, "coordination.Vote") },
		func() error { return herd.RegisterMessage[StatusQuery](node, "coordination.StatusQuery") },
		func() error { return herd.RegisterMessage[Status](node, "coordination.Status") },
		func() error { return herd.RegisterMessage[AgentControl](node, "coordination.AgentControl") },
	} {
		if err := reg(); err != nil {
			return fmt.Errorf("coordination: %w", err)
		}
	}
	herd.RegisterError(node, ErrNoSession)
	return nil
}

// SessionID names a consensus session in the whole cluster.
type SessionID string

// Rule says how a session turns votes into an outcome.
type Rule string

// Decision rules.
const (
	// Majority approves when more than half of the participants approve.
	Majority Rule = "majority"
	// Unanimous approves when every participant approves; one rejection
	// rejects.
	Unanimous Rule = "unanimous"
)

// State is where a session stands.
type State string

// Session states.
const (
	// Collecting: the session is asking its participants and counting
	// their votes.
	Collecting State = "collecting"
	// Decided: the session reached an Outcome.
	Decided State = "decided"
	// Failed: the deadline passed before the votes settled the proposal;
	// Status.Reason says how far it got.
	Failed State = "failed"
)

// Outcome is what a decided session decided.
type Outcome string

// Outcomes.
const (
	Approved Outcome = "approved"
	Rejected Outcome = "rejected"
)

// Proposal is what a session puts to the agents.
type Proposal struct {
	// ID names the session; StartSession makes one up when it is empty.
	ID SessionID
	// Topic says what is proposed, for people.
	Topic string
	// Capability selects the participants: every agent that has it when
	// the session starts.
	Capability string
	// Rule decides; default Majority.
	Rule Rule
	// Risk is what the agents judge: an agent approves a proposal whose
	// risk is within its tolerance (AgentSpec.RiskTolerance).
	Risk int
	// Timeout bounds the session from its start; default
	// DefaultSessionTimeout. The deadline is fixed at the start and moves
	// with the session from node to node.
	Timeout time.Duration
}

// DefaultSessionTimeout is a session's timeout when its Proposal gives
// none.
const DefaultSessionTimeout = 20 * time.Second

// SessionArgs are a session process's arguments (its ChildSpec.Args), the
// same at every start: its first and every restart on another node. State
// it gathered comes back through Restore.
type SessionArgs struct {
	ID           SessionID
	Proposal     Proposal
	Participants []string // agent names
	Deadline     time.Time
}

// AgentSpec describes an agent: its arguments when it is spawned.
type AgentSpec struct {
	// Name is the agent's name, unique in the cluster.
	Name string
	// Capabilities are what the agent can do ("inference", "review"...);
	// sessions find their participants by capability.
	Capabilities []string
	// Labels are extra registry labels (team, zone...).
	Labels map[string]string
	// RiskTolerance is the highest Proposal.Risk the agent approves.
	RiskTolerance int
}

// VoteRequest asks an agent for its vote on a session's proposal. The
// agent answers with a Vote sent to the name ReplyTo, so the answer finds
// the session wherever it runs by then.
type VoteRequest struct {
	Session  SessionID
	ReplyTo  string
	Proposal Proposal
}

// Vote is an agent's answer to a VoteRequest.
type Vote struct {
	Session SessionID
	Agent   string
	Approve bool
}

// StatusQuery asks a session for its Status (a call).
type StatusQuery struct {
	Session SessionID
}

// Status is a session's own account of itself.
type Status struct {
	ID           SessionID
	Proposal     Proposal
	State        State
	Outcome      Outcome // when Decided
	Reason       string  // when Failed
	Participants []string
	// Votes are the votes in, by agent: true approves.
	Votes    map[string]bool
	Deadline time.Time
	// Node is the node the session answered from.
	Node string
}

// Tally counts the votes: approvals, rejections, and participants yet to
// vote.
func (s Status) Tally() (yes, no, pending int) {
	return tally(s.Participants, s.Votes)
}

func tally(participants []string, votes map[string]bool) (yes, no, pending int) {
	for _, p := range participants {
		v, ok := votes[p]
		switch {
		case !ok:
			pending++
		case v:
			yes++
		default:
			no++
		}
	}
	return yes, no, pending
}

// settle reports the outcome the votes in already determine under rule,
// whatever the votes still missing turn out to be.
func settle(rule Rule, n, yes, no int) (Outcome, bool) {
	switch rule {
	case Unanimous:
		if no > 0 {
			return Rejected, true
		}
		if yes == n {
			return Approved, true
		}
	default:
		if 2*yes > n {
			return Approved, true
		}
		if 2*no >= n {
			return Rejected, true
		}
	}
	return "", false
}

// AgentControl pauses or resumes an agent (a call). A paused agent keeps
// the vote requests it gets and answers them when resumed: a participant
// that takes its time, which lets the example stop a node mid-vote.
type AgentControl struct {
	Pause bool
}
