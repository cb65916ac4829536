package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/herdkit/herd"
)

// TestMain lets the OS-process test run this test binary as a game node:
// with nodeEnv set, the binary is the example's command.
func TestMain(m *testing.M) {
	if os.Getenv(nodeEnv) == "1" {
		if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
			os.Stderr.WriteString("gamesessions: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestTour runs the command's tour: it fails if any session is lost, runs
// twice, or lost an acknowledged move after the kill, the rolling restart
// or the full restart.
func TestTour(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-sessions", "24"}, &out, io.Discard); err != nil {
		t.Fatalf("tour: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	for _, want := range []string{
		"after the kill: 24 sessions, each running once",
		"after the rolling restart: 24 sessions, each running once",
		"after the full restart: 24 sessions, each running once",
		"every session kept every move",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("tour output lacks %q", want)
		}
	}
	// The killed node's sessions come back from checkpoints; after the
	// full restart every session comes back from a stash or checkpoint.
	if kill := between(out.String(), "after the kill:", "\n"); strings.Contains(kill, "from a checkpoint 0") {
		t.Errorf("no session came back from a checkpoint after the kill: %s", kill)
	}
	if full := between(out.String(), "after the full restart:", "\n"); !strings.Contains(full, "started new 0,") {
		t.Errorf("after the full restart some session started afresh: %s", full)
	}
}

func between(s, from, to string) string {
	_, rest, _ := strings.Cut(s, from)
	line, _, _ := strings.Cut(rest, to)
	return line
}

// TestSessionRules checks a session's own rules on one node: moves in
// order, a repeated move applied once, errors that callers can test.
func TestSessionRules(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := startNode(ctx, nodeConfig{name: "game-solo", profile: "local"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop(ctx)
	if err := OpenSession(ctx, n, "s"); err != nil {
		t.Fatal(err)
	}
	if err := OpenSession(ctx, n, "s"); err != nil {
		t.Fatalf("opening an open session: %v", err)
	}
	if _, err := Call(ctx, n, "s", Move{Player: "p", Seq: 1, Points: 3}); !errors.Is(err, ErrNotJoined) {
		t.Fatalf("move before joining: %v, want ErrNotJoined", err)
	}
	if _, err := Call(ctx, n, "s", Join{Player: "p"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Call(ctx, n, "s", Move{Player: "p", Seq: 2, Points: 3}); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("move 2 first: %v, want ErrOutOfOrder", err)
	}
	for range 2 {
		st, err := Call(ctx, n, "s", Move{Player: "p", Seq: 1, Points: 3})
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Players["p"]; got != (Player{Score: 3, Seq: 1}) || st.Moves != 1 {
			t.Fatalf("after move 1 (sent twice): %+v, %d moves", got, st.Moves)
		}
	}
	if _, err := Call(ctx, n, "s", Join{Player: "p"}); err != nil {
		t.Fatal(err)
	}
	st, err := Call(ctx, n, "s", Get{})
	if err != nil || st.Players["p"] != (Player{Score: 3, Seq: 1}) {
		t.Fatalf("joining twice changed the player: %+v, %v", st.Players["p"], err)
	}
	if err := (&session{}).Init(nil, "not an Open"); err == nil {
		t.Fatal("a session started with a bad argument")
	}
	s := &session{}
	if err := s.Init(nil, Open{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"{", `{"Via":"stash","State":{"ID":"b"}}`} {
		if err := s.Restore([]byte(bad)); err == nil {
			t.Errorf("Restore(%s) accepted", bad)
		}
	}
}

// TestPlacementOnlyGameNodes: sessions go to game nodes only, and to none
// when there is none.
func TestPlacementOnlyGameNodes(t *testing.T) {
	p := Placement()
	web := herd.NodeID{Name: "web-1", Incarnation: 1}
	g1, g2 := herd.NodeID{Name: "game-1", Incarnation: 1}, herd.NodeID{Name: "game-2", Incarnation: 1}
	seen := map[herd.NodeID]int{}
	for k := range 200 {
		got, ok := p.Place(herd.PlaceRequest{Child: Name(string(rune('a'+k%26))) + string(rune('0'+k/26)), Nodes: []herd.NodeID{g1, g2, web}})
		if !ok || got == web {
			t.Fatalf("placed on %v (%v)", got, ok)
		}
		seen[got]++
	}
	if seen[g1] == 0 || seen[g2] == 0 {
		t.Errorf("placement used one game node only: %v", seen)
	}
	if got, ok := p.Place(herd.PlaceRequest{Child: "x", Nodes: []herd.NodeID{web}}); ok {
		t.Errorf("placed on %v with no game node", got)
	}
}
