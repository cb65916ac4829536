package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

const wait = herdtest.DefaultTimeout

func withKinds(t testing.TB) herdtest.Option {
	return herdtest.WithSetup(func(_ int, n *herd.Node) {
		if err := Register(n); err != nil {
			t.Fatal(err)
		}
	})
}

func newCluster(t *testing.T) *herdtest.Cluster {
	t.Helper()
	return herdtest.NewCluster(t, 3, withKinds(t))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// startAgents starts the demo's agents, each spawned from another node
// than the one it runs on, and waits until every node finds all of them.
func startAgents(t *testing.T, c *herdtest.Cluster) {
	t.Helper()
	ctx := testCtx(t)
	agents := demoAgents()
	for k, a := range agents {
		from := c.Node((a.node + 1 + k) % 3)
		pid, err := StartAgent(ctx, from, c.Node(a.node).ID(), a.spec)
		if err != nil {
			t.Fatal(err)
		}
		if pid.Node != c.Node(a.node).ID() {
			t.Fatalf("%s runs on %v, want %v", a.spec.Name, pid.Node, c.Node(a.node).ID())
		}
	}
	for _, capability := range demoCapabilities() {
		var want []string
		for _, a := range agents {
			if slices.Contains(a.spec.Capabilities, capability) {
				want = append(want, fmt.Sprintf("%s@n%d", a.spec.Name, a.node+1))
			}
		}
		c.Eventually(t, func() bool {
			for _, n := range c.Nodes() {
				if got := agentNames(FindAgents(n, capability)); got != strings.Join(want, " ") {
					return false
				}
			}
			return true
		}, "every node finds the agents with "+capability)
	}
}

// wantVotes is how the demo's agents vote on p: for when its risk is
// within their tolerance.
func wantVotes(p Proposal, participants []string) map[string]bool {
	tolerance := map[string]int{}
	for _, a := range demoAgents() {
		tolerance[a.spec.Name] = a.spec.RiskTolerance
	}
	out := map[string]bool{}
	for _, name := range participants {
		out[name] = p.Risk <= tolerance[name]
	}
	return out
}

// wantOutcome is the outcome of a complete vote.
func wantOutcome(rule Rule, votes map[string]bool) Outcome {
	yes := 0
	for _, v := range votes {
		if v {
			yes++
		}
	}
	if rule == Unanimous && yes == len(votes) || rule != Unanimous && 2*yes > len(votes) {
		return Approved
	}
	return Rejected
}

func participantsOf(n *herd.Node, capability string) []string {
	var out []string
	for _, a := range FindAgents(n, capability) {
		out = append(out, a.Name)
	}
	return out
}

// status asks n for a session's status, failing t on error.
func status(t testing.TB, n *herd.Node, id SessionID) Status {
	t.Helper()
	st, err := SessionStatus(testCtx(t), n, id)
	if err != nil {
		t.Fatalf("status of %s from %v: %v", id, n.ID(), err)
	}
	return st
}

// checkDecided fails t unless st is the decision the agents' votes make.
func checkDecided(t testing.TB, st Status) {
	t.Helper()
	votes := wantVotes(st.Proposal, st.Participants)
	if st.State != Decided || !maps.Equal(st.Votes, votes) || st.Outcome != wantOutcome(st.Proposal.Rule, votes) {
		t.Fatalf("%s: %s %s with votes %v; want decided %s with votes %v",
			st.ID, st.State, st.Outcome, st.Votes, wantOutcome(st.Proposal.Rule, votes), votes)
	}
}

// onceEverywhere reports why the cluster is not (yet) running each session
// of ids exactly once, with every node up agreeing on where (its
// supervisor replica and its registry) and nothing else running; "" when
// it is.
func onceEverywhere(c *herdtest.Cluster, ids []SessionID) string {
	inst := map[string][]herd.PID{}
	for _, i := range c.Up() {
		if !c.Node(i).Supervisor().Settled() {
			return fmt.Sprintf("n%d busy", i+1)
		}
		for id, pid := range c.Node(i).Supervisor().LocalChildren() {
			inst[id] = append(inst[id], pid)
		}
	}
	if len(inst) != len(ids) {
		return fmt.Sprintf("%d sessions running, want %d", len(inst), len(ids))
	}
	for _, id := range ids {
		name := sessionName(id)
		pids := inst[name]
		if len(pids) != 1 {
			return fmt.Sprintf("%s runs %d times: %v", id, len(pids), pids)
		}
		for _, i := range c.Up() {
			n := c.Node(i)
			if ch, _ := n.Supervisor().WhichChild(name); ch.PID != pids[0] {
				return fmt.Sprintf("n%d's record of %s says %v, it runs as %v", i+1, id, ch.PID, pids[0])
			}
			if pid, ok := n.Registry().Whereis(herd.Key{Name: name}); !ok || pid != pids[0] {
				return fmt.Sprintf("n%d resolves %s to %v, it runs as %v", i+1, id, pid, pids[0])
			}
		}
	}
	return ""
}

func waitOnce(t testing.TB, c *herdtest.Cluster, ids []SessionID, what string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		why := onceEverywhere(c, ids)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, wait, why)
		}
		<-tick.C
	}
}

// sameEverywhere waits until list gives the same sessions on every node
// up, and returns them as the first of them lists them.
func sameEverywhere(t testing.TB, c *herdtest.Cluster, what string, list func(*herd.Node) []SessionInfo, ok func([]SessionInfo) bool) []SessionInfo {
	t.Helper()
	var got []SessionInfo
	c.Eventually(t, func() bool {
		up := c.Up()
		got = list(c.Node(up[0]))
		if !ok(got) {
			return false
		}
		for _, i := range up[1:] {
			if !slices.Equal(list(c.Node(i)), got) {
				return false
			}
		}
		return true
	}, what)
	return got
}

func TestSessionsAcrossTheCluster(t *testing.T) {
	c := newCluster(t)
	startAgents(t, c)
	ctx := testCtx(t)
	// erin and frank take their time: until they answer, every session
	// waits for at least one vote.
	for _, slow := range []string{"erin", "frank"} {
		if err := PauseAgent(ctx, c.Node(0), slow); err != nil {
			t.Fatal(err)
		}
	}
	proposals := []Proposal{
		{Topic: "deploy", Capability: "inference", Rule: Majority, Risk: 3},
		{Topic: "merge", Capability: "review", Rule: Unanimous, Risk: 2},
		{Topic: "plan", Capability: "plan", Rule: Majority, Risk: 2},
		{Topic: "hotfix", Capability: "review", Rule: Majority, Risk: 1},
		{Topic: "retrain", Capability: "inference", Rule: Unanimous, Risk: 2},
		{Topic: "reorg", Capability: "plan", Rule: Unanimous, Risk: 1},
	}
	slow := map[string]int{"inference": 2, "review": 1, "plan": 1} // participants paused
	byID := map[SessionID]Proposal{}
	var ids []SessionID
	for k, p := range proposals {
		from := c.Node(k % 3)
		id, err := StartSession(ctx, from, p)
		if err != nil {
			t.Fatal(err)
		}
		// The node that started it knows it at once.
		st := status(t, from, id)
		if st.State != Collecting || !slices.Equal(st.Participants, participantsOf(from, p.Capability)) || st.Proposal.Topic != p.Topic {
			t.Fatalf("%s just started: %+v", id, st)
		}
		byID[id], ids = p, append(ids, id)
	}
	slices.Sort(ids)
	if _, err := StartSession(ctx, c.Node(0), Proposal{ID: ids[0], Capability: "plan"}); !errors.Is(err, herd.ErrAlreadyStarted) {
		t.Fatalf("a session ID used twice: %v", err)
	}
	if _, err := StartSession(ctx, c.Node(0), Proposal{Capability: "juggling"}); !errors.Is(err, ErrNoAgents) {
		t.Fatalf("a capability no agent has: %v", err)
	}

	// Every node lists the same active sessions, each with every vote but
	// the slow agents'.
	active := sameEverywhere(t, c, "every node lists the sessions collecting, with the quick votes in", ListActiveSessions, func(ss []SessionInfo) bool {
		if len(ss) != len(ids) {
			return false
		}
		for i, s := range ss {
			p := byID[s.ID]
			if s.ID != ids[i] || s.State != Collecting || s.Pending != slow[p.Capability] ||
				s.Approvals+s.Rejections+s.Pending != len(participantsOf(c.Node(0), p.Capability)) {
				return false
			}
		}
		return true
	})
	nodes := map[string]bool{}
	for _, s := range active {
		if s.Epoch != 0 || s.Topic != byID[s.ID].Topic || s.Rule != byID[s.ID].Rule {
			t.Fatalf("listed: %+v", s)
		}
		nodes[s.Node] = true
	}
	t.Logf("sessions run on %d nodes", len(nodes))
	waitOnce(t, c, ids, "each session running once")

	for _, slow := range []string{"erin", "frank"} {
		if _, err := ResumeAgent(ctx, c.Node(1), slow); err != nil {
			t.Fatal(err)
		}
	}
	for k, id := range ids {
		asker := c.Node((k + 1) % 3)
		c.Eventually(t, func() bool { return status(t, asker, id).State != Collecting }, string(id)+" decides")
		st := status(t, asker, id)
		checkDecided(t, st)
		if p := byID[id]; st.Proposal.Topic != p.Topic || st.Proposal.Risk != p.Risk || st.Proposal.Rule != p.Rule {
			t.Fatalf("%s decided on %+v", id, st.Proposal)
		}
	}
	decided := sameEverywhere(t, c, "every node lists the sessions decided", ListSessions, func(ss []SessionInfo) bool {
		if len(ss) != len(ids) {
			return false
		}
		for _, s := range ss {
			if s.State != Decided || s.Pending != 0 {
				return false
			}
		}
		return true
	})
	for _, s := range decided {
		votes := wantVotes(byID[s.ID], participantsOf(c.Node(0), byID[s.ID].Capability))
		yes, no, _ := tally(slices.Collect(maps.Keys(votes)), votes)
		if s.Outcome != wantOutcome(byID[s.ID].Rule, votes) || s.Approvals != yes || s.Rejections != no {
			t.Fatalf("listed %+v; want %d for, %d against", s, yes, no)
		}
	}
	sameEverywhere(t, c, "no session active any more", ListActiveSessions, func(ss []SessionInfo) bool { return len(ss) == 0 })
	waitOnce(t, c, ids, "each session running once after deciding")

	for _, id := range ids {
		if err := CloseSession(ctx, c.Node(2), id); err != nil {
			t.Fatal(err)
		}
	}
	sameEverywhere(t, c, "no session left", ListSessions, func(ss []SessionInfo) bool { return len(ss) == 0 })
	if _, err := SessionStatus(ctx, c.Node(2), ids[0]); !errors.Is(err, ErrNoSession) {
		t.Fatalf("status of a closed session: %v", err)
	}
}

// midVote starts sessions on review proposals with every participant but
// one answering, and returns them, once each has every other vote, with
// the index of the node running the first (the one to lose) and the name
// of the participant held back (on another node).
func midVote(t *testing.T, c *herdtest.Cluster) (ids []SessionID, before map[SessionID]Status, victim int, held string) {
	t.Helper()
	ctx := testCtx(t)
	reviewers := FindAgents(c.Node(0), "review")
	for _, a := range reviewers {
		if err := PauseAgent(ctx, c.Node(0), a.Name); err != nil {
			t.Fatal(err)
		}
	}
	rules := []Rule{Majority, Unanimous}
	for k := range 6 {
		id, err := StartSession(ctx, c.Node(k%3), Proposal{Topic: fmt.Sprint("change ", k), Capability: "review", Rule: rules[k%2], Risk: k % 4})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	first, _ := c.Node(0).Registry().Whereis(herd.Key{Name: sessionName(ids[0])})
	victim = slices.IndexFunc(c.Nodes(), func(n *herd.Node) bool { return n.ID() == first.Node })
	i := slices.IndexFunc(reviewers, func(a AgentInfo) bool { return a.Node != first.Node.Name })
	if victim < 0 || i < 0 {
		t.Fatalf("%s on %v; reviewers %v", ids[0], first, reviewers)
	}
	held = reviewers[i].Name
	for _, a := range reviewers {
		if a.Name != held {
			if _, err := ResumeAgent(ctx, c.Node(0), a.Name); err != nil {
				t.Fatal(err)
			}
		}
	}
	before = map[SessionID]Status{}
	for _, id := range ids {
		c.Eventually(t, func() bool {
			st := status(t, c.Node(0), id)
			before[id] = st
			return len(st.Votes) == len(reviewers)-1
		}, string(id)+" has every vote but "+held+"'s")
		st := before[id]
		if _, ok := st.Votes[held]; ok || st.State != Collecting {
			t.Fatalf("%s before the node goes: %+v", id, st)
		}
		want := wantVotes(st.Proposal, st.Participants)
		delete(want, held)
		if !maps.Equal(st.Votes, want) {
			t.Fatalf("%s votes %v, want %v", id, st.Votes, want)
		}
	}
	// Every node's replica records a checkpoint of every session. (That
	// the checkpoint with the latest vote is there comes from Checkpoint
	// itself, which returns once the node that would take the session
	// over holds it: the session handled the votes before the status
	// calls above saw them.)
	c.Eventually(t, func() bool {
		for _, n := range c.Nodes() {
			for _, id := range ids {
				if ch, ok := n.Supervisor().WhichChild(sessionName(id)); !ok || !ch.HasState {
					return false
				}
			}
		}
		return true
	}, "every session's checkpoint replicated")
	waitOnce(t, c, ids, "each session running once")
	return ids, before, victim, held
}

// afterLoss checks that the sessions of the lost node run on a survivor
// with the votes they had, and that every session then decides once the
// held participant answers.
func afterLoss(t *testing.T, c *herdtest.Cluster, ids []SessionID, before map[SessionID]Status, lost herd.NodeID, held string) (moved int) {
	t.Helper()
	waitOnce(t, c, ids, "each session running once on the survivors")
	asker := c.Node(c.Up()[0])
	for _, id := range ids {
		st := status(t, asker, id)
		if st.Node == lost.Name || st.State != Collecting || !maps.Equal(st.Votes, before[id].Votes) {
			t.Fatalf("%s after %s went: on %s, %s, votes %v; before: %v", id, lost.Name, st.Node, st.State, st.Votes, before[id].Votes)
		}
		ch, _ := asker.Supervisor().WhichChild(sessionName(id))
		switch {
		case before[id].Node == lost.Name:
			moved++
			if ch.Epoch != 1 {
				t.Fatalf("%s moved from %s to %s at epoch %d, want 1", id, lost.Name, st.Node, ch.Epoch)
			}
		case st.Node != before[id].Node || ch.Epoch != 0:
			t.Fatalf("%s moved from %s, a survivor, to %s (epoch %d)", id, before[id].Node, st.Node, ch.Epoch)
		}
	}
	if moved == 0 {
		t.Fatalf("no session ran on %s", lost.Name)
	}
	if _, err := ResumeAgent(testCtx(t), asker, held); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		c.Eventually(t, func() bool { return status(t, asker, id).State != Collecting }, string(id)+" decides")
		st := status(t, asker, id)
		checkDecided(t, st)
	}
	waitOnce(t, c, ids, "each session running once after deciding")
	return moved
}

func TestSessionResumesFromCheckpointWhenItsNodeIsKilled(t *testing.T) {
	c := newCluster(t)
	startAgents(t, c)
	ids, before, victim, held := midVote(t, c)
	lost := c.Node(victim).ID()
	c.Kill(victim)
	moved := afterLoss(t, c, ids, before, lost, held)
	var claimed uint64
	for _, i := range c.Up() {
		claimed += c.Node(i).Supervisor().Stats().Claimed
	}
	if claimed != uint64(moved) {
		t.Fatalf("%d sessions claimed by survivors, want the %d of the killed node", claimed, moved)
	}
	// The killed node's agents are gone; their votes are not.
	for _, a := range FindAgents(c.Node(c.Up()[0]), "review") {
		if a.Node == lost.Name {
			t.Fatalf("agent %s of the killed node still listed", a.Name)
		}
	}
}

func TestSessionIsHandedOverWithItsStateWhenItsNodeStops(t *testing.T) {
	c := newCluster(t)
	startAgents(t, c)
	ids, before, victim, held := midVote(t, c)
	stopped := c.Node(victim)
	c.Stop(victim)
	moved := afterLoss(t, c, ids, before, stopped.ID(), held)
	if h := stopped.Supervisor().Stats().HandedOff; h != uint64(moved) {
		t.Fatalf("the stopped node handed %d sessions over, want %d", h, moved)
	}
	var claimed uint64
	for _, i := range c.Up() {
		claimed += c.Node(i).Supervisor().Stats().Claimed
	}
	if claimed != 0 {
		t.Fatalf("%d sessions claimed: a graceful stop hands them over", claimed)
	}
}

func TestSessionDecidesOrFailsAtItsDeadline(t *testing.T) {
	node, err := herd.Start(context.Background(), herd.Config{Name: "solo", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Stop(context.Background()) })
	if err := Register(node); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for _, a := range demoAgents() {
		if _, err := StartAgent(ctx, node, node.ID(), a.spec); err != nil {
			t.Fatal(err)
		}
	}
	// erin never answers: no session on review hears from every
	// participant. bob, carol and dave reject risk 3; erin would approve.
	if err := PauseAgent(ctx, node, "erin"); err != nil {
		t.Fatal(err)
	}
	const timeout = 300 * time.Millisecond
	settled, err := StartSession(ctx, node, Proposal{Capability: "review", Rule: Majority, Risk: 3, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	open, err := StartSession(ctx, node, Proposal{Capability: "review", Rule: Majority, Risk: 2, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	herdtest.Eventually(t, func() bool {
		return status(t, node, settled).State != Collecting && status(t, node, open).State != Collecting
	}, wait, "both sessions reach their deadline")
	// 1 for (carol) and 2 against of 4 cannot make a majority for, and
	// 2 against is half: rejected.
	if st := status(t, node, settled); st.State != Decided || st.Outcome != Rejected || len(st.Votes) != 3 {
		t.Fatalf("settled at the deadline: %+v", st)
	}
	// 2 for (bob, carol), 1 against (dave): erin's vote would decide.
	if st := status(t, node, open); st.State != Failed || st.Outcome != "" || len(st.Votes) != 3 || st.Reason == "" {
		t.Fatalf("unsettled at the deadline: %+v", st)
	}
}

func TestSettle(t *testing.T) {
	for _, tc := range []struct {
		rule        Rule
		n, yes, no  int
		want        Outcome
		wantDecided bool
	}{
		{Majority, 4, 3, 0, Approved, true},
		{Majority, 4, 2, 1, "", false},
		{Majority, 4, 2, 2, Rejected, true},
		{Majority, 3, 1, 1, "", false},
		{Majority, 3, 1, 2, Rejected, true},
		{Unanimous, 3, 2, 0, "", false},
		{Unanimous, 3, 3, 0, Approved, true},
		{Unanimous, 3, 0, 1, Rejected, true},
	} {
		got, ok := settle(tc.rule, tc.n, tc.yes, tc.no)
		if got != tc.want || ok != tc.wantDecided {
			t.Errorf("%s of %d, %d for, %d against: %q %v; want %q %v", tc.rule, tc.n, tc.yes, tc.no, got, ok, tc.want, tc.wantDecided)
		}
	}
}

// TestRun runs the program's whole story.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	rep, err := run(ctx, &out, slog.New(slog.DiscardHandler))
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Statuses) != 5 {
		t.Fatalf("%d sessions decided, want 5", len(rep.Statuses))
	}
	for _, st := range rep.Statuses {
		checkDecided(t, st)
	}
	for _, m := range []struct {
		gone          string
		before, after Status
	}{{rep.Killed, rep.BeforeKill, rep.AfterKill}, {rep.Stopped, rep.BeforeStop, rep.AfterStop}} {
		if m.before.Node != m.gone || m.after.Node == m.gone || !maps.Equal(m.before.Votes, m.after.Votes) ||
			len(m.after.Votes) != len(m.after.Participants)-1 {
			t.Fatalf("%s went: before %+v, after %+v", m.gone, m.before, m.after)
		}
	}
	if len(rep.Final) != 5 {
		t.Fatalf("final list: %+v", rep.Final)
	}
	for _, s := range rep.Final {
		if s.State != Decided || s.Node == rep.Killed || s.Node == rep.Stopped || s.Outcome != rep.Statuses[s.ID].Outcome {
			t.Fatalf("final list: %+v", s)
		}
	}
}
