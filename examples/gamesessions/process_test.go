package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

// nodeEnv makes the test binary run as a game node (see TestMain).
const nodeEnv = "HERD_GAMESESSIONS_NODE"

// osNode is a game node running as a separate OS process: this test binary
// started again with nodeEnv set.
type osNode struct {
	*herdtest.Process
	gossip string
}

// startOSNode starts a game node process that joins through join, and
// waits for it to print its gossip address.
func startOSNode(t *testing.T, name, dir string, join []string) *osNode {
	t.Helper()
	args := []string{"-node", name, "-data", dir, "-profile", "local", "-v"}
	if len(join) > 0 {
		args = append(args, "-join", strings.Join(join, ","))
	}
	p := herdtest.StartProcess(t, name, herdtest.ReexecCommand(nodeEnv+"=1", args...))
	return &osNode{Process: p, gossip: p.WaitLine(t, "gossip ", herdtest.DefaultTimeout)}
}

// testLogger logs the client node's warnings and errors into the test's
// log, until the test ends (memberlist's goroutines may still log a
// little after the node has stopped).
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// player makes moves in one session for one player until stopped, and
// keeps what it was told: a move numbered Seq scores Seq%5+1, so a
// session's score says whether every move up to its Seq was applied once.
type player struct {
	session, name string
	acked, tried  atomic.Int64
}

func points(seq int) int { return seq%5 + 1 }

func scoreOf(seq int) int {
	s := 0
	for i := 1; i <= seq; i++ {
		s += points(i)
	}
	return s
}

func (p *player) play(n *herd.Node, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		seq := int(p.acked.Load()) + 1
		p.tried.Store(int64(max(int(p.tried.Load()), seq)))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := Call(ctx, n, p.session, Move{Player: p.name, Seq: seq, Points: points(seq)})
		cancel()
		if err == nil {
			p.acked.Store(int64(seq))
		}
	}
}

// TestProcessesKillAndRollingRestart runs three game nodes as separate OS
// processes, with a client node in this process making moves in every
// session throughout: one node is killed with SIGKILL and started again,
// then each is stopped with SIGTERM and started again in turn (a rolling
// deploy). Every session must run once at the end, reachable by name,
// with every acknowledged move applied exactly once.
func TestProcessesKillAndRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three node processes; skipped in -short")
	}
	root := t.TempDir()
	nodes := make([]*osNode, 3)
	running := func() []string {
		var addrs []string
		for _, n := range nodes {
			if n != nil {
				addrs = append(addrs, n.gossip)
			}
		}
		return addrs
	}
	start := func(i int) {
		name := fmt.Sprintf("game-%d", i+1)
		nodes[i] = startOSNode(t, name, filepath.Join(root, name), running())
	}
	for i := range nodes {
		start(i)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	client, err := startNode(ctx, nodeConfig{name: "web-1", bind: "127.0.0.1:0", join: running(), profile: "local", log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Stop(context.Background())
	// seesGame reports whether the client sees node i's current process
	// as an alive member (a restarted node is a new life of the same
	// name, with a new gossip address).
	seesGame := func(i int) bool {
		for _, m := range client.Members() {
			if m.ID.Name == nodes[i].Name && m.Status == herd.MemberAlive && m.GossipAddr == nodes[i].gossip {
				return true
			}
		}
		return false
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		herdtest.Eventually(t, cond, time.Minute, what)
	}
	waitFor("the client to see three game nodes", func() bool { return seesGame(0) && seesGame(1) && seesGame(2) })

	const sessions = 30
	var players []*player
	for k := range sessions {
		id := fmt.Sprintf("s%02d", k)
		if err := OpenSession(ctx, client, id); err != nil {
			t.Fatalf("open %s: %v", id, err)
		}
		for _, name := range []string{"ariadne", "theseus"} {
			if _, err := Call(ctx, client, id, Join{Player: name}); err != nil {
				t.Fatalf("%s: join %s: %v", id, name, err)
			}
			players = append(players, &player{session: id, name: name})
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range players {
		wg.Go(func() { p.play(client, stop) })
	}
	moved := func(min int) func() bool {
		return func() bool {
			for _, p := range players {
				if p.acked.Load() < int64(min) {
					return false
				}
			}
			return true
		}
	}
	// progress waits until every player has had a move acknowledged
	// since now: the sessions are all reachable.
	progress := func(what string) {
		t.Helper()
		var floor []int64
		for _, p := range players {
			floor = append(floor, p.acked.Load())
		}
		waitFor(what, func() bool {
			for k, p := range players {
				if p.acked.Load() <= floor[k] {
					return false
				}
			}
			return true
		})
	}
	waitFor("a few moves in every session", moved(3))

	// kill -9: no stash, no leave; the survivors restart its sessions
	// from their checkpoints.
	if err := nodes[1].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	nodes[1].Wait(t, time.Minute)
	killed := nodes[1].Name
	nodes[1] = nil
	waitFor("the killed node's sessions to run elsewhere", func() bool {
		for _, c := range client.Supervisor().WhichChildren() {
			if c.PID.IsZero() || c.Node.Name == killed {
				return false
			}
		}
		return true
	})
	progress("moves in every session after the kill")
	start(1)
	waitFor("the client to see the restarted node", func() bool { return seesGame(1) })

	// A rolling deploy: SIGTERM each node in turn; it hands its sessions
	// over and exits cleanly; then it is started again.
	for i := range nodes {
		n := nodes[i]
		if err := n.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := n.Wait(t, time.Minute); err != nil {
			t.Fatalf("%s after SIGTERM: %v", n.Name, err)
		}
		nodes[i] = nil
		progress("moves in every session while " + n.Name + " is down")
		start(i)
		waitFor("the client to see "+n.Name+" again", func() bool { return seesGame(i) })
		progress("moves in every session after " + n.Name + " restarted")
	}
	close(stop)
	wg.Wait()

	// Every session runs once, where the supervisor says, and kept every
	// acknowledged move exactly once.
	waitFor("every session running on a game node", func() bool {
		cs := client.Supervisor().WhichChildren()
		if len(cs) != sessions {
			return false
		}
		for _, c := range cs {
			pid, ok := client.Registry().Whereis(herd.Key{Name: c.Name})
			if c.PID.IsZero() || !ok || pid != c.PID || !strings.HasPrefix(c.Node.Name, GameNodePrefix) {
				return false
			}
		}
		return true
	})
	for _, p := range players {
		st, err := Call(ctx, client, p.session, Get{})
		if err != nil {
			t.Fatalf("%s: %v", p.session, err)
		}
		got, acked, tried := st.Players[p.name], int(p.acked.Load()), int(p.tried.Load())
		if got.Seq < acked || got.Seq > tried {
			t.Errorf("%s: %s is at move %d; %d were acknowledged, %d tried", p.session, p.name, got.Seq, acked, tried)
		}
		if got.Score != scoreOf(got.Seq) {
			t.Errorf("%s: %s scored %d over %d moves, want %d (a move lost or applied twice)", p.session, p.name, got.Score, got.Seq, scoreOf(got.Seq))
		}
	}
	total := 0
	for _, p := range players {
		total += int(p.acked.Load())
	}
	t.Logf("%d sessions, %d acknowledged moves, none lost", sessions, total)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("ran out of time")
	}
}
