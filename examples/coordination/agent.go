package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/herdkit/herd"
)

// agentPrefix starts the registry name of every agent.
const agentPrefix = "agent:"

func agentKey(name string) herd.Key { return herd.Key{Name: agentPrefix + name} }

// agent is a process that registers itself in the cluster registry under
// its name, with its capabilities and labels, and votes on the proposals
// sessions send it: it approves a proposal whose risk is within its
// tolerance. Its votes are a pure function of the proposal, so asking it
// twice (a session that moved asks again) gets the same answer.
type agent struct {
	herd.Base
	spec   AgentSpec
	paused bool
	held   map[SessionID]VoteRequest // while paused, the latest request per session
}

func (a *agent) Init(c *herd.Context, args any) error {
	spec, ok := args.(AgentSpec)
	switch {
	case !ok:
		return fmt.Errorf("agent: arguments are %T, want AgentSpec", args)
	case spec.Name == "":
		return errors.New("agent: no name")
	case len(spec.Capabilities) == 0:
		return fmt.Errorf("agent %s: no capabilities", spec.Name)
	}
	a.spec, a.held = spec, map[SessionID]VoteRequest{}
	labels := maps.Clone(spec.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelKind] = KindAgent
	labels["agent"] = spec.Name
	meta := herd.Meta{Labels: labels, Capabilities: slices.Clone(spec.Capabilities)}
	// The agent registers itself, on its own node: it may have been
	// spawned there from another node, where spawn options do not travel.
	if err := herd.NodeOf(c).Registry().Register(c, agentKey(spec.Name), c.Self(), meta); err != nil {
		return fmt.Errorf("agent %s: %w", spec.Name, err)
	}
	return nil
}

func (a *agent) HandleInfo(c *herd.Context, msg any) {
	req, ok := msg.(VoteRequest)
	if !ok {
		a.Base.HandleInfo(c, msg)
		return
	}
	if a.paused {
		a.held[req.Session] = req
		return
	}
	a.answer(c, req)
}

func (a *agent) HandleCall(c *herd.Context, msg any) (any, error) {
	ctl, ok := msg.(AgentControl)
	if !ok {
		return a.Base.HandleCall(c, msg)
	}
	a.paused = ctl.Pause
	if a.paused {
		return 0, nil
	}
	answered := len(a.held)
	for _, id := range slices.Sorted(maps.Keys(a.held)) {
		a.answer(c, a.held[id])
	}
	clear(a.held)
	return answered, nil
}

// answer sends the agent's vote to the session's name. A vote that finds
// no session (it is moving to another node) is lost; the session asks
// again.
func (a *agent) answer(c *herd.Context, req VoteRequest) {
	vote := Vote{Session: req.Session, Agent: a.spec.Name, Approve: req.Proposal.Risk <= a.spec.RiskTolerance}
	if err := c.Send(herd.Name(req.ReplyTo), vote); err != nil {
		c.Logger().Debug("vote not delivered; the session will ask again", "session", req.Session, "err", err)
	}
}
