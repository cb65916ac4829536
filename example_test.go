package herd_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/herdkit/herd"
)

// A greeter answers calls; embed herd.Base and write only what you need.
type Greeter struct {
	herd.Base
	greeting string
}

func (g *Greeter) Init(_ *herd.Context, args any) error {
	g.greeting = args.(string)
	return nil
}

func (g *Greeter) HandleCall(ctx *herd.Context, msg any) (any, error) {
	if name, ok := msg.(string); ok {
		return g.greeting + ", " + name, nil
	}
	return g.Base.HandleCall(ctx, msg)
}

func quietNode(name string) *herd.Node {
	n, err := herd.Start(context.Background(), herd.Config{Name: name, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		panic(err)
	}
	return n
}

func Example() {
	ctx := context.Background()
	node := quietNode("n1")
	defer node.Stop(ctx)

	herd.RegisterKind(node, "greeter", func() herd.Process { return &Greeter{} })
	if _, err := node.Spawn(ctx, "greeter", "Hello", herd.WithName("greeter")); err != nil {
		panic(err)
	}
	reply, err := herd.Call[string](ctx, node, herd.Name("greeter"), "herd")
	fmt.Println(reply, err)
	// Output: Hello, herd <nil>
}

// A supervisor restarts a crashed child; its name leads to the new one.
func ExampleStartSupervisor() {
	ctx := context.Background()
	node := quietNode("n1")
	defer node.Stop(ctx)

	restarted := make(chan herd.SupervisorEvent, 1)
	_, err := herd.StartSupervisor(ctx, node, herd.SupervisorSpec{
		Strategy: herd.OneForOne,
		Observer: func(e herd.SupervisorEvent) {
			if e.Kind == herd.ChildRestarted {
				restarted <- e
			}
		},
		Children: []herd.ChildSpec{{
			ID: "counter", Name: "counter", Args: 41,
			New: func() herd.Process { return &Counter{} },
		}},
	})
	if err != nil {
		panic(err)
	}
	_, err = herd.Call[int](ctx, node, herd.Name("counter"), "crash")
	fmt.Println("crashed:", herd.IsAbnormal(err.(*herd.ExitError).Reason))
	e := <-restarted
	fmt.Println("restarted:", e.ID, e.PID != e.Previous)
	n, _ := herd.Call[int](ctx, node, herd.Name("counter"), Add{N: 1})
	fmt.Println("counter:", n)
	// Output:
	// crashed: true
	// restarted: counter true
	// counter: 42
}

// Agents found by capability, the way a coordinator picks workers.
func ExampleRegistry_capabilities() {
	ctx := context.Background()
	node := quietNode("n1")
	defer node.Stop(ctx)

	for name, caps := range map[string][]string{
		"agent:planner": {"plan", "reason"},
		"agent:coder":   {"code", "reason"},
		"agent:critic":  {"reason"},
	} {
		_, err := node.SpawnProcess(ctx, &Greeter{}, "hi", herd.WithKey(herd.Key{Name: name}, herd.Meta{Capabilities: caps}))
		if err != nil {
			panic(err)
		}
	}
	for _, e := range node.Registry().Select(herd.Query{Pattern: "agent:*", Capabilities: []string{"reason", "code"}}) {
		fmt.Println(e.Key.Name)
	}
	fmt.Println(node.Registry().Count(herd.Query{Capabilities: []string{"reason"}}))
	// Output:
	// agent:coder
	// 3
}

// A replicated map: a write is visible on this node when Put returns and
// reaches every other node of the cluster within milliseconds.
func ExampleMap() {
	ctx := context.Background()
	node, err := herd.Start(ctx, herd.Config{Name: "example"})
	if err != nil {
		panic(err)
	}
	defer node.Stop(ctx)

	scores, err := node.Map("scores")
	if err != nil {
		panic(err)
	}
	scores.Put("alice", []byte("10"))
	scores.Put("bob", []byte("7"))
	scores.Delete("bob")
	v, ok := scores.Get("alice")
	fmt.Println(string(v), ok, scores.Len())
	// Output: 10 true 1
}

// GetOrStart finds the holder of a name or starts one: callers racing on
// any nodes of a connected cluster get the same process.
func ExampleNode_GetOrStart() {
	ctx := context.Background()
	node := quietNode("n1")
	defer node.Stop(ctx)

	herd.RegisterKind(node, "greeter", func() herd.Process { return &Greeter{} })
	spec := herd.StartSpec{Kind: "greeter", Args: "Welcome", Meta: herd.Meta{Labels: map[string]string{"room": "7"}}}
	first, _ := node.GetOrStart(ctx, herd.Key{Env: "lobby", Name: "host"}, spec)
	again, _ := node.GetOrStart(ctx, herd.Key{Env: "lobby", Name: "host"}, spec)
	fmt.Println(first == again)

	// WaitForName rides through a moment without a holder (a failover).
	reply, err := herd.Call[string](ctx, node, herd.InEnv("lobby", "host"), "player", herd.WaitForName())
	fmt.Println(reply, err)
	// Output:
	// true
	// Welcome, player <nil>
}
