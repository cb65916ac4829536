// Command herd is herd's command line: the agent (a node serving the HTTP
// control API) and the local demo.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `herd: a distributed process runtime for Go.

Usage:
  herd agent [flags]   run a node with the HTTP control API
  herd demo [flags]    run a supervised workload, crash a process, watch it restart
  herd nodes           the cluster's nodes, as an agent sees them
  herd registry ...    names: ls, get, put (an external process), rm
  herd children        the distributed supervisor's children
  herd map ...         replicated maps: ls, get, put, rm
  herd tls init|cert   create a cluster CA and gossip key, issue node certificates
  herd help            show this help

Run "herd agent -h" or "herd demo -h" for their flags; "herd nodes -h"
shows the flags of the cluster commands (agent address, token, -json).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole command, with its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "demo":
		c, err := parseDemo(args[1:], stderr)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(stderr, "herd demo: %v\n", err)
			return 2
		}
		if err := runDemo(ctx, c, stdout); err != nil && ctx.Err() == nil {
			fmt.Fprintf(stderr, "herd demo: %v\n", err)
			return 1
		}
		return 0 // finished, or interrupted: either way everything was stopped
	case "agent":
		c, err := parseAgent(args[1:], os.Getenv, stderr)
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(stderr, "herd agent: %v\n", err)
			return 2
		}
		if err := runAgent(ctx, c, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "herd agent: %v\n", err)
			return 1
		}
		return 0
	case "tls":
		return runTLS(args[1:], stdout, stderr)
	case "nodes", "registry", "children", "map":
		return runCLI(ctx, args[0], args[1:], os.Getenv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "herd: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
