// Command gamesessions runs game sessions on a herd cluster: each session is
// a distributed child, found by name from every node, that keeps every
// accepted move through a node being killed, a rolling restart of every
// node, and a restart of the whole cluster.
//
// With no flags it plays a tour on loopback: three game nodes in this
// process, a dozen sessions with players making moves, then each of those
// faults in turn, checking after each that every session runs once and has
// lost no move:
//
//	go run ./examples/gamesessions
//
// With -node it runs one node until SIGTERM or Ctrl-C, then stops it
// gracefully, handing its sessions to the other game nodes:
//
//	go run ./examples/gamesessions -node game-1 -data /tmp/g1
//	go run ./examples/gamesessions -node game-2 -data /tmp/g2 -join 127.0.0.1:PORT
//
// It prints "gossip HOST:PORT" once the node has started; that is the
// address the next node joins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/herdkit/herd"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "gamesessions:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gamesessions", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("node", "", "run one node with this name (game nodes start with \""+GameNodePrefix+"\") until SIGTERM")
	bind := fs.String("bind", "127.0.0.1:0", "node-to-node address (-node)")
	join := fs.String("join", "", "comma-separated gossip addresses to join (-node)")
	data := fs.String("data", "", "data directory, for a restart of the whole cluster (-node; the tour uses temporary ones)")
	profile := fs.String("profile", "local", "failure-detection profile: local or lan")
	sessions := fs.Int("sessions", 12, "sessions in the tour")
	verbose := fs.Bool("v", false, "log herd's own messages to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if *name != "" {
		var seeds []string
		if *join != "" {
			seeds = strings.Split(*join, ",")
		}
		return serve(nodeConfig{name: *name, bind: *bind, join: seeds, data: *data, profile: *profile, log: log}, stdout)
	}
	dir, err := os.MkdirTemp("", "gamesessions-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	t := &tour{out: stdout, dir: dir, profile: *profile, log: log, sessions: *sessions}
	return t.run(ctx)
}

// nodeConfig is what a node of the example is started with.
type nodeConfig struct {
	name, bind, data, profile string
	join                      []string
	log                       *slog.Logger
}

// startNode starts a node with the session kind registered and sessions
// placed on game nodes. On loopback herd runs without TLS; on any other
// address it would refuse to without certificates (herd.Config.TLS).
func startNode(ctx context.Context, c nodeConfig) (*herd.Node, error) {
	n, err := herd.Start(ctx, herd.Config{
		Name: c.name, Bind: c.bind, Join: c.join, DataDir: c.data, Profile: c.profile,
		Logger: c.log, Placement: Placement(), StopTimeout: 10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	if err := Register(n); err != nil {
		n.Halt()
		return nil, err
	}
	return n, nil
}

// serve runs one node until SIGTERM or SIGINT, then stops it gracefully.
func serve(c nodeConfig, stdout io.Writer) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	start, cancelStart := context.WithTimeout(ctx, 30*time.Second)
	n, err := startNode(start, c)
	cancelStart()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "gossip %s\n", n.GossipAddr())
	<-ctx.Done()
	stop, cancelStop := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelStop()
	if err := n.Stop(stop); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	fmt.Fprintln(stdout, "stopped")
	return nil
}
