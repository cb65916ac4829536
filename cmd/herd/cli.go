package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herdkit/herd/httpapi"
)

// The cluster commands talk to an agent's API.

const cliUsage = `Usage:
  herd nodes
  herd registry ls [-pattern GLOB] | get NAME | put NAME NODE_ID PROCESS_ID [-ttl D] [-overwrite] | rm NAME
  herd children
  herd map ls MAP [-prefix P] | get MAP KEY | put MAP KEY VALUE | rm MAP KEY

Common flags (before or after the arguments):
  -agent URL   the agent's API (default $HERD_AGENT, else http://127.0.0.1:7070)
  -token T     API token (default $HERD_TOKEN)
  -env E       registry environment
  -json        print JSON instead of a table
`

// cliOpts are the flags every cluster command takes.
type cliOpts struct {
	agent, token, env string
	json              bool
	pattern, prefix   string
	ttl               time.Duration
	overwrite         bool
}

// parseCLI parses flags placed anywhere among the arguments.
func parseCLI(name string, args []string, getenv func(string) string, stderr io.Writer) (cliOpts, []string, error) {
	o := cliOpts{agent: getenv("HERD_AGENT"), token: getenv("HERD_TOKEN")}
	if o.agent == "" {
		o.agent = "http://127.0.0.1:7070"
	}
	fs := flag.NewFlagSet("herd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, cliUsage) }
	fs.StringVar(&o.agent, "agent", o.agent, "")
	fs.StringVar(&o.token, "token", o.token, "")
	fs.StringVar(&o.env, "env", "", "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.StringVar(&o.pattern, "pattern", "", "")
	fs.StringVar(&o.prefix, "prefix", "", "")
	fs.DurationVar(&o.ttl, "ttl", 0, "")
	fs.BoolVar(&o.overwrite, "overwrite", false, "")
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return o, nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return o, rest, nil
}

// runCLI runs a cluster command; the exit code is 1 for an error answer,
// 2 for a usage error.
func runCLI(ctx context.Context, name string, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, rest, err := parseCLI(name, args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := httpapi.NewClient(o.agent, o.token, nil)
	out, err := cliCommand(ctx, c, o, name, rest)
	if errors.Is(err, errUsage) {
		fmt.Fprintf(stderr, "herd %s: %v\n\n%s", name, err, cliUsage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "herd %s: %v\n", name, err)
		return 1
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return 0
	}
	printTable(stdout, out)
	return 0
}

var errUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

func cliCommand(ctx context.Context, c *httpapi.Client, o cliOpts, name string, args []string) (any, error) {
	sub, rest := "", args
	if len(args) > 0 {
		sub, rest = args[0], args[1:]
	}
	want := func(n int, what string) error {
		if len(rest) != n {
			return usagef("herd %s %s takes %s", name, sub, what)
		}
		return nil
	}
	switch name {
	case "nodes":
		if len(args) != 0 {
			return nil, usagef("herd nodes takes no arguments")
		}
		return c.Nodes(ctx)
	case "children":
		if len(args) != 0 {
			return nil, usagef("herd children takes no arguments")
		}
		return c.Children(ctx)
	case "registry":
		switch sub {
		case "ls":
			if err := want(0, "no arguments"); err != nil {
				return nil, err
			}
			return c.Names(ctx, o.env, o.pattern)
		case "get":
			if err := want(1, "NAME"); err != nil {
				return nil, err
			}
			return c.Lookup(ctx, o.env, rest[0])
		case "put":
			if err := want(3, "NAME NODE_ID PROCESS_ID"); err != nil {
				return nil, err
			}
			pid, err := strconv.ParseUint(rest[2], 10, 64)
			if err != nil {
				return nil, usagef("PROCESS_ID %q is not a number", rest[2])
			}
			return c.Register(ctx, httpapi.Registration{
				Name: rest[0], Env: o.env, NodeID: rest[1], ProcessID: pid,
				TTLSeconds: int64(o.ttl / time.Second), Overwrite: o.overwrite,
			})
		case "rm":
			if err := want(1, "NAME"); err != nil {
				return nil, err
			}
			return c.Unregister(ctx, o.env, rest[0])
		}
		return nil, usagef("herd registry ls|get|put|rm")
	case "map":
		switch sub {
		case "ls":
			if err := want(1, "MAP"); err != nil {
				return nil, err
			}
			return c.MapList(ctx, rest[0], o.prefix)
		case "get":
			if err := want(2, "MAP KEY"); err != nil {
				return nil, err
			}
			return c.MapGet(ctx, rest[0], rest[1])
		case "put":
			if err := want(3, "MAP KEY VALUE"); err != nil {
				return nil, err
			}
			return c.MapPut(ctx, rest[0], rest[1], []byte(rest[2]))
		case "rm":
			if err := want(2, "MAP KEY"); err != nil {
				return nil, err
			}
			return c.MapDelete(ctx, rest[0], rest[1])
		}
		return nil, usagef("herd map ls|get|put|rm")
	}
	return nil, usagef("unknown command %q", name)
}

// printTable prints what a command returned as an aligned table.
func printTable(w io.Writer, v any) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	row := func(cols ...string) { fmt.Fprintln(tw, strings.Join(cols, "\t")) }
	entry := func(e httpapi.Entry) {
		kind, exp := "herd", ""
		if e.External {
			kind = "external"
		}
		if e.ExpiresAt != nil {
			exp = e.ExpiresAt.Format(time.RFC3339)
		}
		row(e.Name, envName(e.Env), e.NodeID, strconv.FormatUint(e.ProcessID, 10), kind, exp)
	}
	mapEntry := func(e httpapi.MapEntry) {
		val := fmt.Sprintf("(%d bytes)", len(e.Value))
		if e.Text != nil {
			val = *e.Text
		}
		row(e.Key, val)
	}
	switch v := v.(type) {
	case []httpapi.Node:
		row("NAME", "STATUS", "ID", "ADDR", "NAMES", "CHILDREN")
		for _, n := range v {
			name := n.Name
			if n.Self {
				name += " *"
			}
			row(name, n.Status, n.ID, n.Addr, strconv.Itoa(n.Names), strconv.Itoa(n.Children))
		}
	case []httpapi.Child:
		row("ID", "KIND", "NAME", "NODE", "PID", "EPOCH", "FAILED")
		for _, c := range v {
			row(c.ID, c.Kind, c.Name, c.Node, dash(c.PID), strconv.FormatUint(c.Epoch, 10), c.Failed)
		}
	case []httpapi.Entry:
		row("NAME", "ENV", "NODE", "PROCESS", "KIND", "EXPIRES")
		for _, e := range v {
			entry(e)
		}
	case httpapi.Entry:
		row("NAME", "ENV", "NODE", "PROCESS", "KIND", "EXPIRES")
		entry(v)
	case []httpapi.MapEntry:
		row("KEY", "VALUE")
		for _, e := range v {
			mapEntry(e)
		}
	case httpapi.MapEntry:
		row("KEY", "VALUE")
		mapEntry(v)
	}
}

func envName(e string) string {
	if e == "" {
		return "default"
	}
	return e
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
