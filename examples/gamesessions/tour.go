package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/herdkit/herd"
)

// tour runs three game nodes in this process and takes them through a
// kill, a rolling restart and a full restart, checking after each that
// every session runs exactly once and kept every acknowledged move.
type tour struct {
	out      io.Writer
	dir      string
	profile  string
	log      *slog.Logger
	sessions int

	nodes []*herd.Node // nil while down
	// want is every session's state as acknowledged to its players.
	want map[string]map[string]Player
}

var tourNodes = []string{"game-1", "game-2", "game-3"}

func (t *tour) run(ctx context.Context) error {
	t.nodes = make([]*herd.Node, len(tourNodes))
	t.want = map[string]map[string]Player{}
	defer func() {
		for _, n := range t.nodes {
			if n != nil {
				n.Halt()
			}
		}
	}()
	for i := range tourNodes {
		if err := t.start(ctx, i); err != nil {
			return err
		}
	}
	t.printf("three game nodes up: %s\n", strings.Join(tourNodes, ", "))

	for k := range t.sessions {
		id := fmt.Sprintf("%03d", k)
		n := t.nodes[k%len(t.nodes)]
		if err := OpenSession(ctx, n, id); err != nil {
			return fmt.Errorf("open session %s: %w", id, err)
		}
		t.want[id] = map[string]Player{}
		for _, p := range []string{"ariadne", "theseus"} {
			if _, err := Call(ctx, n, id, Join{Player: p}); err != nil {
				return fmt.Errorf("session %s: join %s: %w", id, p, err)
			}
			t.want[id][p] = Player{}
		}
	}
	if err := t.play(ctx, 3); err != nil {
		return err
	}
	if err := t.check(ctx, "opened"); err != nil {
		return err
	}

	// A node killed: no stash, no goodbye. Its sessions restart on the
	// survivors from their last checkpoint.
	t.nodes[1].Halt()
	t.nodes[1] = nil
	t.printf("killed game-2\n")
	if err := t.play(ctx, 2); err != nil {
		return err
	}
	if err := t.check(ctx, "after the kill"); err != nil {
		return err
	}
	if err := t.start(ctx, 1); err != nil {
		return err
	}

	// A rolling restart: each node stopped gracefully (its sessions are
	// stashed and handed over) and started again, one at a time, with
	// players making moves throughout.
	for i := range t.nodes {
		if err := t.stop(ctx, i); err != nil {
			return err
		}
		if err := t.play(ctx, 1); err != nil {
			return err
		}
		if err := t.start(ctx, i); err != nil {
			return err
		}
		if err := t.play(ctx, 1); err != nil {
			return err
		}
	}
	t.printf("rolling restart of all three nodes done\n")
	if err := t.check(ctx, "after the rolling restart"); err != nil {
		return err
	}

	// The whole cluster stopped and started again from its data
	// directories.
	for i := range t.nodes {
		if err := t.stop(ctx, i); err != nil {
			return err
		}
	}
	t.printf("stopped the whole cluster\n")
	for i := range t.nodes {
		if err := t.start(ctx, i); err != nil {
			return err
		}
	}
	if err := t.check(ctx, "after the full restart"); err != nil {
		return err
	}
	if err := t.play(ctx, 1); err != nil {
		return err
	}
	if err := t.check(ctx, "at the end"); err != nil {
		return err
	}
	t.printf("every session kept every move\n")
	return nil
}

func (t *tour) printf(format string, args ...any) { fmt.Fprintf(t.out, format, args...) }

func (t *tour) start(ctx context.Context, i int) error {
	var join []string
	for _, n := range t.nodes {
		if n != nil {
			join = append(join, n.GossipAddr())
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := startNode(ctx, nodeConfig{
		name: tourNodes[i], bind: "127.0.0.1:0", join: join,
		data: filepath.Join(t.dir, tourNodes[i]), profile: t.profile, log: t.log,
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", tourNodes[i], err)
	}
	t.nodes[i] = n
	return waitFor(ctx, "all nodes to see each other", func() bool {
		for _, a := range t.nodes {
			if a == nil {
				continue
			}
			for _, b := range t.nodes {
				if b == nil {
					continue
				}
				if m, ok := a.Member(b.ID()); !ok || m.Status != herd.MemberAlive {
					return false
				}
			}
		}
		return true
	})
}

func (t *tour) stop(ctx context.Context, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n := t.nodes[i]
	t.nodes[i] = nil
	if err := n.Stop(ctx); err != nil {
		return fmt.Errorf("stop %s: %w", tourNodes[i], err)
	}
	return nil
}

// any returns a running node.
func (t *tour) any() *herd.Node {
	for _, n := range t.nodes {
		if n != nil {
			return n
		}
	}
	return nil
}

// play makes rounds of moves: in each, every player of every session moves
// once, through a node chosen in turn. A move whose reply is lost is sent
// again with the same Seq, which the session applies once.
func (t *tour) play(ctx context.Context, rounds int) error {
	up := slices.DeleteFunc(slices.Clone(t.nodes), func(n *herd.Node) bool { return n == nil })
	k := 0
	for range rounds {
		for _, id := range slices.Sorted(maps.Keys(t.want)) {
			for _, p := range slices.Sorted(maps.Keys(t.want[id])) {
				k++
				n := up[k%len(up)]
				w := t.want[id][p]
				m := Move{Player: p, Seq: w.Seq + 1, Points: k%6 + 1}
				if err := retry(ctx, func(ctx context.Context) error {
					_, err := Call(ctx, n, id, m)
					return err
				}); err != nil {
					return fmt.Errorf("session %s: %s's move %d: %w", id, p, m.Seq, err)
				}
				t.want[id][p] = Player{Score: w.Score + m.Points, Seq: m.Seq}
			}
		}
	}
	return nil
}

// check waits until every session runs on exactly one node, the one the
// supervisor's replica names, then compares every session's state with the
// moves its players were told were made.
func (t *tour) check(ctx context.Context, when string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var where map[string]string
	err := waitFor(ctx, "every session to run once", func() bool {
		var ok bool
		where, ok = runningOnce(t.any(), t.nodes)
		return ok && len(where) == len(t.want)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", when, err)
	}
	resumed := map[string]int{}
	for id, players := range t.want {
		var st State
		if err := retry(ctx, func(ctx context.Context) (err error) {
			st, err = Call(ctx, t.any(), id, Get{})
			return err
		}); err != nil {
			return fmt.Errorf("%s: session %s: %w", when, id, err)
		}
		if !maps.Equal(st.Players, players) {
			return fmt.Errorf("%s: session %s has %v, its players were told %v", when, id, st.Players, players)
		}
		resumed[st.Resumed]++
	}
	perNode := map[string]int{}
	for _, node := range where {
		perNode[node]++
	}
	var spread []string
	for _, n := range slices.Sorted(maps.Keys(perNode)) {
		spread = append(spread, fmt.Sprintf("%s %d", n, perNode[n]))
	}
	t.printf("%s: %d sessions, each running once (%s); states match every acknowledged move; started new %d, from a stash %d, from a checkpoint %d\n",
		when, len(t.want), strings.Join(spread, ", "), resumed[""], resumed["stash"], resumed["checkpoint"])
	return nil
}

// runningOnce reports where each session runs, as node names, if each runs
// on exactly one of nodes and that is the node the supervisor's replica on
// from names.
func runningOnce(from *herd.Node, nodes []*herd.Node) (map[string]string, bool) {
	where := map[string]string{}
	count := map[string]int{}
	for _, n := range nodes {
		if n == nil {
			continue
		}
		for id, pid := range n.Supervisor().LocalChildren() {
			count[id]++
			where[id] = pid.Node.Name
			if c, ok := from.Supervisor().WhichChild(id); !ok || c.PID != pid {
				return nil, false
			}
		}
	}
	for _, c := range from.Supervisor().WhichChildren() {
		if count[c.ID] != 1 {
			return nil, false
		}
	}
	return where, true
}

// retry calls f with a short deadline until it succeeds, for at most 30
// seconds.
func retry(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := f(c)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
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
