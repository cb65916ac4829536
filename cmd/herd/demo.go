package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/herdkit/herd"
)

// demoConfig is what the demo subcommand's flags set.
type demoConfig struct {
	sessions   int
	crashEvery time.Duration // 0: crash once, then stop
	duration   time.Duration // with crashEvery: how long to run (0: until interrupted)
	verbose    bool
}

func parseDemo(args []string, stderr io.Writer) (demoConfig, error) {
	fs := flag.NewFlagSet("herd demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c demoConfig
	fs.IntVar(&c.sessions, "sessions", 5, "game sessions to start")
	fs.DurationVar(&c.crashEvery, "crash-every", 0, "keep running, crashing a random session this often (0: crash one, then stop)")
	fs.DurationVar(&c.duration, "duration", 0, "with -crash-every: stop after this long (0: until Ctrl-C)")
	fs.BoolVar(&c.verbose, "v", false, "show herd's own logs")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: herd demo [flags]\n\n"+
			"Starts a node with a supervised game-session workload, crashes a session\n"+
			"on purpose and shows the supervisor restart it under the same name.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.sessions < 1 || c.sessions > 10000 {
		return c, fmt.Errorf("-sessions must be between 1 and 10000, got %d", c.sessions)
	}
	if c.crashEvery < 0 || c.duration < 0 {
		return c, errors.New("-crash-every and -duration must not be negative")
	}
	return c, nil
}

// The demo's workload: game sessions that count moves, and players who make
// moves, addressing sessions by name only.

// Move is a player's move, cast to a session.
type Move struct{ Player string }

// State asks a session for its state.
type State struct{}

// Crash makes a session panic, on purpose.
type Crash struct{}

// SessionState is a session's reply to State.
type SessionState struct {
	Game  int
	Moves int
	Since time.Time
}

type session struct {
	herd.Base
	game  int
	moves int
	since time.Time
}

func (s *session) Init(_ *herd.Context, args any) error {
	s.game = args.(int)
	s.since = time.Now()
	return nil
}

func (s *session) HandleCast(_ *herd.Context, msg any) {
	if _, ok := msg.(Move); ok {
		s.moves++
	}
}

func (s *session) HandleCall(ctx *herd.Context, msg any) (any, error) {
	switch msg.(type) {
	case State:
		return SessionState{Game: s.game, Moves: s.moves, Since: s.since}, nil
	case Crash:
		panic(fmt.Sprintf("game %d: corrupted board (crashed on purpose)", s.game))
	}
	return s.Base.HandleCall(ctx, msg)
}

// players makes a move in a random game every tick, by name.
type players struct {
	herd.Base
	games int
	tick  time.Duration
}

type tick struct{}

func (p *players) Init(ctx *herd.Context, _ any) error {
	ctx.SendAfter(p.tick, tick{})
	return nil
}

func (p *players) HandleInfo(ctx *herd.Context, msg any) {
	if _, ok := msg.(tick); ok {
		game := rand.IntN(p.games) + 1
		// A session being restarted is briefly unnamed: the move is lost,
		// as a message to a dead process is.
		_ = ctx.Cast(herd.Name(gameName(game)), Move{Player: fmt.Sprintf("player-%d", rand.IntN(100))})
		ctx.SendAfter(p.tick, tick{})
	}
}

func gameName(game int) string { return fmt.Sprintf("game:%d", game) }

// runDemo runs the demo until it is done or ctx ends. It writes its story to
// out.
func runDemo(ctx context.Context, c demoConfig, out io.Writer) error {
	logger := slog.New(slog.DiscardHandler)
	if c.verbose {
		logger = slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	start := time.Now()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "[%6.3fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	node, err := herd.Start(ctx, herd.Config{Name: "demo", Logger: logger})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping the node: supervisors stop their children, newest first")
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.Stop(stopCtx); err != nil {
			say("stop: %v", err)
		}
		say("node stopped; %d processes left", node.CountProcesses())
	}()
	say("node %s started", node.ID())

	if err := herd.RegisterKind(node, "session", func() herd.Process { return &session{} }); err != nil {
		return err
	}
	restarted := make(chan herd.SupervisorEvent, 16)
	observer := func(e herd.SupervisorEvent) {
		switch e.Kind {
		case herd.ChildExited:
			if herd.IsAbnormal(e.Reason) {
				say("supervisor: %s (%v) exited: %v", e.ID, e.PID, e.Reason)
			}
		case herd.ChildRestarted:
			say("supervisor: restarted %s: %v -> %v", e.ID, e.Previous, e.PID)
			select {
			case restarted <- e:
			default:
			}
		case herd.GaveUp:
			say("supervisor: gave up: %v", e.Reason)
		}
	}
	// The tree: the players, and a dynamic supervisor of sessions.
	top, err := herd.StartSupervisor(ctx, node, herd.SupervisorSpec{
		Strategy: herd.OneForOne,
		Children: []herd.ChildSpec{
			{ID: "sessions", Supervisor: &herd.SupervisorSpec{Dynamic: true, Intensity: 10, Period: 10 * time.Second, Observer: observer}},
			{ID: "players", New: func() herd.Process { return &players{games: c.sessions, tick: 5 * time.Millisecond} }},
		},
	})
	if err != nil {
		return err
	}
	kids, err := top.WhichChildren(ctx)
	if err != nil {
		return err
	}
	var sessions *herd.LocalSupervisor
	for _, k := range kids {
		if k.ID == "sessions" {
			sessions = herd.SupervisorOf(node, k.PID)
		}
	}
	if sessions == nil {
		return errors.New("the sessions supervisor is missing")
	}
	for game := 1; game <= c.sessions; game++ {
		spec := herd.ChildSpec{ID: gameName(game), Kind: "session", Args: game, Name: gameName(game)}
		if _, err := sessions.StartChild(ctx, spec); err != nil {
			return fmt.Errorf("start %s: %w", gameName(game), err)
		}
	}
	say("started %d game sessions under a dynamic supervisor; players make moves by name", c.sessions)

	if err := pause(ctx, 300*time.Millisecond); err != nil {
		return nil
	}
	if err := table(ctx, node, c.sessions, out, &mu); err != nil {
		return err
	}

	crashOne := func(game int) error {
		name := gameName(game)
		before, _ := node.Registry().Whereis(herd.Key{Name: name})
		say("crashing %s (%v) on purpose", name, before)
		_, err := herd.Call[SessionState](ctx, node, herd.Name(name), Crash{})
		var exit *herd.ExitError
		if !errors.As(err, &exit) {
			return fmt.Errorf("the crash call returned %v, want the session's exit", err)
		}
		select {
		case e := <-restarted:
			st, err := herd.Call[SessionState](ctx, node, herd.Name(name), State{})
			if err != nil {
				return fmt.Errorf("call %s after restart: %w", name, err)
			}
			say("%s answers again as %v (was %v); its moves restarted from %d", name, e.PID, before, st.Moves)
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s was not restarted within 5s", name)
		case <-ctx.Done():
		}
		return nil
	}

	if c.crashEvery == 0 {
		if err := crashOne(rand.IntN(c.sessions) + 1); err != nil {
			return err
		}
		if err := pause(ctx, 200*time.Millisecond); err != nil {
			return nil
		}
		return table(ctx, node, c.sessions, out, &mu)
	}

	var deadline <-chan time.Time
	if c.duration > 0 {
		deadline = time.After(c.duration)
	}
	ticker := time.NewTicker(c.crashEvery)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-deadline:
			return table(ctx, node, c.sessions, out, &mu)
		case <-ticker.C:
			if err := crashOne(rand.IntN(c.sessions) + 1); err != nil {
				return err
			}
			if err := table(ctx, node, c.sessions, out, &mu); err != nil {
				return err
			}
		}
	}
}

func pause(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// table prints every session: its name, PID, and moves so far.
func table(ctx context.Context, node *herd.Node, games int, out io.Writer, mu *sync.Mutex) error {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  NAME\tPID\tMOVES\tUP")
	for game := 1; game <= games; game++ {
		name := gameName(game)
		pid, _ := node.Registry().Whereis(herd.Key{Name: name})
		st, err := herd.Call[SessionState](ctx, node, herd.Name(name), State{})
		if err != nil {
			fmt.Fprintf(w, "  %s\t%v\t-\t%v\n", name, pid, err)
			continue
		}
		fmt.Fprintf(w, "  %s\t%v\t%d\t%v\n", name, pid, st.Moves, time.Since(st.Since).Round(time.Millisecond))
	}
	w.Flush()
	mu.Lock()
	defer mu.Unlock()
	_, err := io.WriteString(out, b.String())
	return err
}
