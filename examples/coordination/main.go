// Command coordination shows multi-agent coordination on a herd cluster,
// in the manner of MABEAM, the coordination layer of Elixir's Foundation:
//
//   - agents are processes that register themselves in the cluster
//     registry with a set of capabilities, on any node, and are found by
//     capability from any node;
//   - a consensus session is a distributed child, placed by the cluster's
//     placement strategy, that asks the agents with a capability for
//     their votes on a proposal, counts them and decides (majority or
//     unanimity). It checkpoints every vote, so it survives its node
//     being killed (a survivor restarts it from its checkpoint) or stopped
//     (it is handed over with its state);
//   - a stateless facade (StartSession, ListActiveSessions,
//     SessionStatus, FindAgents...) works from any node over the node's
//     replicas and calls by name.
//
// It starts three nodes in one process on loopback, runs sessions from
// each, kills the node running a session that waits for its last vote,
// then stops another one gracefully the same way, and prints what happens.
//
//	go run ./examples/coordination
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/herdkit/herd"
)

func main() {
	os.Exit(realMain())
}

func realMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	// herd's own logs only when something is wrong: the example tells
	// its story on standard output.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if _, err := run(ctx, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "coordination:", err)
		return 1
	}
	return 0
}

// placedAgent is an agent of the demo and the node (by index) it runs on.
type placedAgent struct {
	node int
	spec AgentSpec
}

// demoAgents are the demo's agents: two per node, and every capability
// on every node, so that whichever node goes, each capability keeps
// agents on the others.
func demoAgents() []placedAgent {
	agent := func(node int, name string, tolerance int, team string, caps ...string) placedAgent {
		return placedAgent{node: node, spec: AgentSpec{
			Name: name, Capabilities: caps, RiskTolerance: tolerance, Labels: map[string]string{"team": team},
		}}
	}
	return []placedAgent{
		agent(0, "alice", 4, "ml", "inference", "plan"),
		agent(0, "bob", 2, "platform", "review"),
		agent(1, "carol", 3, "ml", "inference", "review"),
		agent(1, "dave", 1, "platform", "plan", "review"),
		agent(2, "erin", 5, "security", "inference", "review"),
		agent(2, "frank", 2, "ml", "plan", "inference"),
	}
}

// demoCapabilities are the capabilities of the demo's agents, sorted.
func demoCapabilities() []string {
	var out []string
	for _, a := range demoAgents() {
		out = append(out, a.spec.Capabilities...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// report is what the demo did, for its test.
type report struct {
	// Statuses are the final statuses of every session, by ID.
	Statuses map[SessionID]Status
	// Killed and Stopped are the nodes killed and stopped; KillSession
	// and StopSession the sessions that were waiting for a vote then, and
	// Before* and After* their statuses just before the node went and
	// on the node that took them.
	Killed, Stopped          string
	KillSession, StopSession SessionID
	BeforeKill, AfterKill    Status
	BeforeStop, AfterStop    Status
	// Final lists the sessions, from the last node, before they are
	// closed.
	Final []SessionInfo
}

// demo is one run of the example: a cluster and where the story prints.
type demo struct {
	out   io.Writer
	nodes []*herd.Node
	up    []bool
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

// run starts a three-node cluster in this process and tells the story on
// out; it stops every node before it returns.
func run(ctx context.Context, out io.Writer, logger *slog.Logger) (*report, error) {
	d := &demo{out: out}
	defer d.stopAll()
	if err := d.startCluster(ctx, logger, 3); err != nil {
		return nil, err
	}
	rep := &report{Statuses: map[SessionID]Status{}}
	if err := d.startAgents(ctx); err != nil {
		return nil, err
	}
	if err := d.runSessions(ctx, rep); err != nil {
		return nil, err
	}
	if err := d.killMidVote(ctx, rep); err != nil {
		return nil, err
	}
	if err := d.stopMidVote(ctx, rep); err != nil {
		return nil, err
	}
	if err := d.finish(ctx, rep); err != nil {
		return nil, err
	}
	return rep, nil
}

func (d *demo) startCluster(ctx context.Context, logger *slog.Logger, n int) error {
	d.printf("== starting %d nodes on loopback", n)
	for i := range n {
		cfg := herd.Config{
			Name: fmt.Sprintf("n%d", i+1), Bind: "127.0.0.1:0", Profile: "local",
			Logger: logger, StopTimeout: 5 * time.Second,
		}
		if i > 0 {
			cfg.Join = []string{d.nodes[0].GossipAddr()}
		}
		node, err := herd.Start(ctx, cfg)
		if err != nil {
			return fmt.Errorf("start %s: %w", cfg.Name, err)
		}
		d.nodes, d.up = append(d.nodes, node), append(d.up, true)
		if err := Register(node); err != nil {
			return err
		}
		d.printf("   %s listens on %s, gossips on %s", cfg.Name, node.Addr(), node.GossipAddr())
	}
	err := waitFor(ctx, "every node to see every other", func() bool {
		for _, node := range d.nodes {
			alive := 0
			for _, m := range node.Members() {
				if m.Status == herd.MemberAlive {
					alive++
				}
			}
			if alive != n {
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	d.printf("   every node sees %d members alive", n)
	return nil
}

func (d *demo) startAgents(ctx context.Context) error {
	d.printf("\n== agents register themselves, with their capabilities (spawned from n1 on every node)")
	agents := demoAgents()
	for _, a := range agents {
		if _, err := StartAgent(ctx, d.nodes[0], d.nodes[a.node].ID(), a.spec); err != nil {
			return err
		}
		d.printf("   %-6s on n%d  %-20s risk tolerance %d", a.spec.Name, a.node+1, strings.Join(a.spec.Capabilities, ", "), a.spec.RiskTolerance)
	}
	want := map[string]int{}
	for _, a := range agents {
		for _, c := range a.spec.Capabilities {
			want[c]++
		}
	}
	if err := waitFor(ctx, "every node to see every agent", func() bool {
		for _, node := range d.nodes {
			for _, c := range demoCapabilities() {
				if len(FindAgents(node, c)) != want[c] {
					return false
				}
			}
		}
		return true
	}); err != nil {
		return err
	}
	d.printf("\n== FindAgents by capability gives the same answer on every node")
	for _, c := range demoCapabilities() {
		for _, node := range d.nodes {
			d.printf("   %-9s from %s: %s", c, node.ID().Name, agentNames(FindAgents(node, c)))
		}
	}
	return nil
}

func agentNames(agents []AgentInfo) string {
	var s []string
	for _, a := range agents {
		s = append(s, a.Name+"@"+a.Node)
	}
	return strings.Join(s, " ")
}

// runSessions runs a session from each node, and waits for their
// decisions.
func (d *demo) runSessions(ctx context.Context, rep *report) error {
	d.printf("\n== one session started from each node; the placement picks where each runs")
	proposals := []Proposal{
		{ID: "merge-pr-42", Topic: "merge pull request 42", Capability: "review", Rule: Unanimous, Risk: 2},
		{ID: "quarterly-plan", Topic: "adopt the quarterly plan", Capability: "plan", Rule: Majority, Risk: 2},
		{ID: "deploy-model-v3", Topic: "deploy model v3", Capability: "inference", Rule: Majority, Risk: 3},
	}
	for i, p := range proposals {
		from := d.nodes[i]
		id, err := StartSession(ctx, from, p)
		if err != nil {
			return err
		}
		d.printf("   %s starts %-15s (%s, %s, risk %d): runs on %s", from.ID().Name, id, p.Capability, p.Rule, p.Risk, d.where(from, id))
	}
	d.printf("\n== their decisions, asked by name from another node")
	for i, p := range proposals {
		st, err := d.waitSettled(ctx, d.nodes[(i+1)%len(d.nodes)], p.ID)
		if err != nil {
			return err
		}
		rep.Statuses[p.ID] = st
		d.printf("   %-15s %s", p.ID, describe(st))
	}
	return nil
}

// killMidVote kills the node running a session that has every vote but
// one, and shows the session resume on a survivor with the votes it had.
func (d *demo) killMidVote(ctx context.Context, rep *report) error {
	d.printf("\n== a node is killed while a session waits for its last vote")
	p := Proposal{ID: "release-1.0", Topic: "ship release 1.0", Capability: "review", Rule: Majority, Risk: 3}
	before, victim, held, err := d.oneVoteShort(ctx, d.nodes[0], p)
	if err != nil {
		return err
	}
	rep.KillSession, rep.BeforeKill, rep.Killed = p.ID, before, d.nodes[victim].ID().Name
	d.printf("   killing %s (no goodbye: the others find out by themselves)", rep.Killed)
	d.nodes[victim].Halt()
	d.up[victim] = false
	asker := d.anyUp()
	after, err := d.statusOn(ctx, asker, p.ID, func(st Status) bool { return st.Node != rep.Killed })
	if err != nil {
		return err
	}
	rep.AfterKill = after
	d.printf("   restarted from its checkpoint on %s (%s finds it by name): %s", after.Node, asker.ID().Name, votesLine(after))
	d.printf("   %s's agents went with it, their votes did not; review agents now: %s", rep.Killed, agentNames(FindAgents(asker, p.Capability)))
	return d.release(ctx, rep, asker, p.ID, held)
}

// stopMidVote stops the node running a session that has every vote but
// one, gracefully, and shows the session handed over with its state.
func (d *demo) stopMidVote(ctx context.Context, rep *report) error {
	d.printf("\n== a node stops gracefully while a session waits for its last vote")
	p := Proposal{ID: "roadmap-2026", Topic: "adopt the 2026 roadmap", Capability: "plan", Rule: Unanimous, Risk: 2}
	before, victim, held, err := d.oneVoteShort(ctx, d.anyUp(), p)
	if err != nil {
		return err
	}
	rep.StopSession, rep.BeforeStop, rep.Stopped = p.ID, before, d.nodes[victim].ID().Name
	d.printf("   stopping %s: it hands its sessions over, with their state, before it leaves", rep.Stopped)
	stop, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = d.nodes[victim].Stop(stop)
	cancel()
	d.up[victim] = false
	if err != nil {
		return fmt.Errorf("stop %s: %w", rep.Stopped, err)
	}
	asker := d.anyUp()
	after, err := d.statusOn(ctx, asker, p.ID, func(st Status) bool { return st.Node != rep.Stopped })
	if err != nil {
		return err
	}
	rep.AfterStop = after
	d.printf("   %s took it over with its stash: %s", after.Node, votesLine(after))
	return d.release(ctx, rep, asker, p.ID, held)
}

// oneVoteShort starts a session on p from node, with every participant
// but one answering, and waits until it has their votes. It returns the
// session's status then, the node (by index) it runs on, and the
// participant held back, which runs on another node.
func (d *demo) oneVoteShort(ctx context.Context, node *herd.Node, p Proposal) (Status, int, string, error) {
	agents := FindAgents(node, p.Capability)
	for _, a := range agents {
		if err := PauseAgent(ctx, node, a.Name); err != nil {
			return Status{}, 0, "", err
		}
	}
	id, err := StartSession(ctx, node, p)
	if err != nil {
		return Status{}, 0, "", err
	}
	runsOn := d.where(node, id)
	victim := slices.IndexFunc(d.nodes, func(n *herd.Node) bool { return n.ID().Name == runsOn })
	held := slices.IndexFunc(agents, func(a AgentInfo) bool { return a.Node != runsOn })
	if victim < 0 || held < 0 {
		return Status{}, 0, "", fmt.Errorf("session %s on %q: no participant on another node", id, runsOn)
	}
	d.printf("   %s starts %s (%s, %s, risk %d): runs on %s; %s@%s is slow to answer",
		node.ID().Name, id, p.Capability, p.Rule, p.Risk, runsOn, agents[held].Name, agents[held].Node)
	for i, a := range agents {
		if i != held {
			if _, err := ResumeAgent(ctx, node, a.Name); err != nil {
				return Status{}, 0, "", err
			}
		}
	}
	st, err := d.statusOn(ctx, node, id, func(st Status) bool { return len(st.Votes) == len(agents)-1 })
	if err != nil {
		return Status{}, 0, "", err
	}
	d.printf("   on %s: %s", st.Node, votesLine(st))
	return st, victim, agents[held].Name, nil
}

// release lets the held participant answer, and waits for the decision.
func (d *demo) release(ctx context.Context, rep *report, node *herd.Node, id SessionID, held string) error {
	if _, err := ResumeAgent(ctx, node, held); err != nil {
		return err
	}
	st, err := d.waitSettled(ctx, node, id)
	if err != nil {
		return err
	}
	rep.Statuses[id] = st
	d.printf("   %s answers: %s %s", held, id, describe(st))
	return nil
}

// finish lists the sessions from the last node, then closes them.
func (d *demo) finish(ctx context.Context, rep *report) error {
	last := d.anyUp()
	want := len(rep.Statuses)
	if err := waitFor(ctx, "every session listed on "+last.ID().Name, func() bool {
		return len(ListSessions(last)) == want && len(ListActiveSessions(last)) == 0
	}); err != nil {
		return err
	}
	rep.Final = ListSessions(last)
	d.printf("\n== sessions, as %s lists them from its replicas (epoch: placements so far)", last.ID().Name)
	for _, s := range rep.Final {
		d.printf("   %-15s %-8s %-8s %d for, %d against   on %s, epoch %d", s.ID, s.State, s.Outcome, s.Approvals, s.Rejections, s.Node, s.Epoch)
	}
	for _, s := range rep.Final {
		if err := CloseSession(ctx, last, s.ID); err != nil {
			return err
		}
	}
	d.printf("\n== sessions closed; stopping %s", last.ID().Name)
	return nil
}

// stopAll stops the nodes still up, together.
func (d *demo) stopAll() {
	var wg sync.WaitGroup
	for i, node := range d.nodes {
		if d.up[i] {
			d.up[i] = false
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = node.Stop(ctx)
			})
		}
	}
	wg.Wait()
}

func (d *demo) anyUp() *herd.Node {
	for i, node := range d.nodes {
		if d.up[i] {
			return node
		}
	}
	return nil
}

// where returns the name of the node running session id, as node's
// registry has it.
func (d *demo) where(node *herd.Node, id SessionID) string {
	pid, ok := node.Registry().Whereis(herd.Key{Name: sessionName(id)})
	if !ok {
		return "?"
	}
	return pid.Node.Name
}

// statusOn asks node for the session's status until cond holds.
func (d *demo) statusOn(ctx context.Context, node *herd.Node, id SessionID, cond func(Status) bool) (Status, error) {
	var st Status
	err := waitFor(ctx, fmt.Sprintf("session %s as %s asks", id, node.ID().Name), func() bool {
		call, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var err error
		st, err = SessionStatus(call, node, id)
		return err == nil && cond(st)
	})
	return st, err
}

// waitSettled waits until the session has decided or failed.
func (d *demo) waitSettled(ctx context.Context, node *herd.Node, id SessionID) (Status, error) {
	return d.statusOn(ctx, node, id, func(st Status) bool { return st.State != Collecting })
}

// describe sums a status up in a line.
func describe(st Status) string {
	yes, no, _ := st.Tally()
	switch st.State {
	case Decided:
		return fmt.Sprintf("%s (%d for, %d against, by %s) on %s", st.Outcome, yes, no, st.Proposal.Rule, st.Node)
	case Failed:
		return "failed: " + st.Reason
	}
	return votesLine(st)
}

// votesLine lists a status's votes.
func votesLine(st Status) string {
	var s []string
	for _, a := range slices.Sorted(maps.Keys(st.Votes)) {
		v := "against"
		if st.Votes[a] {
			v = "for"
		}
		s = append(s, a+" "+v)
	}
	return fmt.Sprintf("%d of %d votes in (%s)", len(st.Votes), len(st.Participants), strings.Join(s, ", "))
}

// waitFor checks cond every few milliseconds until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}
