package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/herdkit/herd"
)

// The facade: functions over any *herd.Node of the cluster. They keep no
// state of their own: agents and sessions are found in the node's replica
// of the registry and of the distributed supervisor, and sessions are
// reached by name.

// Errors. Test for them with errors.Is.
var (
	// ErrNoSession: no session has that ID (as the asking node knows).
	ErrNoSession = errors.New("coordination: no such session")
	// ErrNoAgents: no agent has the capability a proposal asks for.
	ErrNoAgents = errors.New("coordination: no agent has the capability")
)

// AgentInfo describes an agent, as the registry has it.
type AgentInfo struct {
	Name         string
	Node         string
	PID          herd.PID
	Capabilities []string
	Labels       map[string]string
}

// SessionInfo describes a session, as the registry and the distributed
// supervisor's replica have it on the asking node: no session is asked.
type SessionInfo struct {
	ID         SessionID
	Topic      string
	Capability string
	Rule       Rule
	State      State
	Outcome    Outcome
	// Approvals, Rejections and Pending count the votes.
	Approvals, Rejections, Pending int
	// Node runs the session; PID is its instance.
	Node string
	PID  herd.PID
	// Epoch counts the session's placements: 0 on the node it started
	// on, one more for each takeover or handover.
	Epoch uint64
}

// StartAgent spawns an agent on node on (this node or another), from node.
func StartAgent(ctx context.Context, node *herd.Node, on herd.NodeID, spec AgentSpec) (herd.PID, error) {
	pid, err := node.SpawnOn(ctx, on, AgentKind, spec)
	if err != nil {
		return herd.PID{}, fmt.Errorf("coordination: start agent %s on %s: %w", spec.Name, on.Name, err)
	}
	return pid, nil
}

// PauseAgent makes an agent hold the vote requests it gets until
// ResumeAgent.
func PauseAgent(ctx context.Context, node *herd.Node, name string) error {
	if _, err := herd.Call[int](ctx, node, herd.Name(agentKey(name).Name), AgentControl{Pause: true}); err != nil {
		return fmt.Errorf("coordination: pause agent %s: %w", name, err)
	}
	return nil
}

// ResumeAgent makes a paused agent answer the requests it held, and those
// to come, and returns how many it answered.
func ResumeAgent(ctx context.Context, node *herd.Node, name string) (int, error) {
	n, err := herd.Call[int](ctx, node, herd.Name(agentKey(name).Name), AgentControl{Pause: false})
	if err != nil {
		return 0, fmt.Errorf("coordination: resume agent %s: %w", name, err)
	}
	return n, nil
}

// FindAgents returns the agents that have capability, sorted by name,
// from node's replica of the registry. Agents of a node that is down are
// not listed.
func FindAgents(node *herd.Node, capability string) []AgentInfo {
	entries := node.Registry().Select(herd.Query{
		Kind:         herd.Unique,
		Labels:       map[string]string{LabelKind: KindAgent},
		Capabilities: []string{capability},
	})
	out := make([]AgentInfo, 0, len(entries))
	for _, e := range entries {
		out = append(out, AgentInfo{
			Name: e.Meta.Labels["agent"], Node: e.PID.Node.Name, PID: e.PID,
			Capabilities: slices.Clone(e.Meta.Capabilities), Labels: e.Meta.Labels,
		})
	}
	return out
}

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// StartSession starts a consensus session on p, placed by the cluster's
// placement strategy, and returns its ID once node knows it (so node's
// SessionStatus and ListSessions see it). The participants are the agents
// node finds with p.Capability.
func StartSession(ctx context.Context, node *herd.Node, p Proposal) (SessionID, error) {
	if p.ID == "" {
		p.ID = SessionID(fmt.Sprintf("s-%08x", rand.Uint32()))
	}
	if p.Rule == "" {
		p.Rule = Majority
	}
	if p.Timeout <= 0 {
		p.Timeout = DefaultSessionTimeout
	}
	switch {
	case !validID.MatchString(string(p.ID)):
		return "", fmt.Errorf("coordination: session ID %q: 1 to 128 letters, digits, '.', '_' or '-'", p.ID)
	case p.Rule != Majority && p.Rule != Unanimous:
		return "", fmt.Errorf("coordination: session %s: unknown rule %q", p.ID, p.Rule)
	case p.Capability == "":
		return "", fmt.Errorf("coordination: session %s: no capability", p.ID)
	case len(p.Topic) > 512:
		return "", fmt.Errorf("coordination: session %s: topic longer than 512 bytes", p.ID)
	}
	var participants []string
	for _, a := range FindAgents(node, p.Capability) {
		participants = append(participants, a.Name)
	}
	if len(participants) == 0 {
		return "", fmt.Errorf("coordination: session %s: %q: %w", p.ID, p.Capability, ErrNoAgents)
	}
	args := SessionArgs{ID: p.ID, Proposal: p, Participants: participants, Deadline: time.Now().Add(p.Timeout)}
	first := sessionState{ID: p.ID, Proposal: p, Participants: participants, State: Collecting}
	name := sessionName(p.ID)
	// Watch for the name before starting, so its registration, made on
	// whichever node runs the session, is seen reaching this one.
	w := node.Registry().Watch(herd.Query{Kind: herd.Unique, Pattern: name}, herd.WatchOptions{Replay: true})
	defer w.Close()
	if _, err := node.Supervisor().StartChild(ctx, herd.ChildSpec{
		ID: name, Kind: SessionKind, Args: args,
		Name: name, Meta: herd.Meta{Labels: sessionLabels(&first)},
	}); err != nil {
		return "", fmt.Errorf("coordination: start session %s: %w", p.ID, err)
	}
	for {
		if _, ok := node.Registry().Whereis(herd.Key{Name: name}); ok {
			return p.ID, nil
		}
		select {
		case <-w.Events():
		case <-ctx.Done():
			return p.ID, fmt.Errorf("coordination: session %s started; not yet seen here: %w", p.ID, ctx.Err())
		}
	}
}

// SessionStatus asks the session for its status, by name, wherever it
// runs. If the session is moving (its node was lost, or is stopping), the
// call waits for the next instance, until ctx ends. A session this node
// has not heard of is ErrNoSession.
func SessionStatus(ctx context.Context, node *herd.Node, id SessionID) (Status, error) {
	name := sessionName(id)
	if _, ok := node.Supervisor().WhichChild(name); !ok {
		if _, ok := node.Registry().Whereis(herd.Key{Name: name}); !ok {
			return Status{}, fmt.Errorf("coordination: session %s: %w", id, ErrNoSession)
		}
	}
	st, err := herd.Call[Status](ctx, node, herd.Name(name), StatusQuery{Session: id}, herd.WaitForName())
	if err != nil {
		return Status{}, fmt.Errorf("coordination: status of session %s: %w", id, err)
	}
	return st, nil
}

// ListSessions lists every session running in the cluster, sorted by ID,
// from node's replicas: the registry (each session keeps its progress in
// its labels) and the distributed supervisor (for its epoch). A session
// whose node was just lost is missing until a survivor restarts it.
func ListSessions(node *herd.Node) []SessionInfo {
	return listSessions(node, map[string]string{LabelKind: KindSession})
}

// ListActiveSessions lists, as ListSessions, the sessions still collecting
// votes.
func ListActiveSessions(node *herd.Node) []SessionInfo {
	return listSessions(node, map[string]string{LabelKind: KindSession, "state": string(Collecting)})
}

func listSessions(node *herd.Node, labels map[string]string) []SessionInfo {
	entries := node.Registry().Select(herd.Query{Kind: herd.Unique, Pattern: sessionPrefix + "*", Labels: labels})
	out := make([]SessionInfo, 0, len(entries))
	for _, e := range entries {
		l := e.Meta.Labels
		num := func(k string) int { n, _ := strconv.Atoi(l[k]); return n }
		info := SessionInfo{
			ID: SessionID(l["session"]), Topic: l["topic"], Capability: l["capability"], Rule: Rule(l["rule"]),
			State: State(l["state"]), Outcome: Outcome(l["outcome"]),
			Approvals: num("yes"), Rejections: num("no"), Pending: num("pending"),
			Node: e.PID.Node.Name, PID: e.PID,
		}
		if ch, ok := node.Supervisor().WhichChild(e.Key.Name); ok {
			info.Epoch = ch.Epoch
		}
		out = append(out, info)
	}
	return out
}

// CloseSession stops a session wherever it runs and forgets it.
func CloseSession(ctx context.Context, node *herd.Node, id SessionID) error {
	if err := node.Supervisor().TerminateChild(ctx, sessionName(id)); err != nil {
		return fmt.Errorf("coordination: close session %s: %w", id, err)
	}
	return nil
}
