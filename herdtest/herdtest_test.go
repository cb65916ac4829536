package herdtest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

type Counter struct {
	herd.Base
	n int
}

func (c *Counter) HandleCall(ctx *herd.Context, msg any) (any, error) {
	if msg == "get" {
		return c.n, nil
	}
	return c.Base.HandleCall(ctx, msg)
}

// The README's example, as a test.
func TestFailover(t *testing.T) {
	ctx := context.Background()
	c := herdtest.NewCluster(t, 3, herdtest.WithSetup(func(_ int, n *herd.Node) {
		herd.RegisterKind(n, "counter", func() herd.Process { return &Counter{} })
	}))
	pid, err := c.Node(0).SpawnOn(ctx, c.Node(2).ID(), "counter", nil)
	if err != nil {
		t.Fatal(err)
	}
	downs, _ := c.Node(0).Monitor(pid)
	c.Partition([]int{0, 1}, []int{2})
	if d := <-downs; !errors.Is(d.Reason, herd.ErrNodeDown) {
		t.Fatalf("Down %+v", d)
	}
	c.Heal()
	c.WaitConverged()
	// The process lived through the partition. Sessions broken by the
	// partition are re-established as the nodes find each other again, and
	// a call that meets a session being replaced fails with ErrNodeDown
	// (delivery is at most once), so wait for the first call that gets
	// through rather than assume the first one will.
	c.Eventually(t, func() bool {
		n, err := herd.Call[int](ctx, c.Node(0), pid, "get")
		if err != nil && !errors.Is(err, herd.ErrNodeDown) {
			t.Fatalf("after the heal: %v", err)
		}
		return err == nil && n == 0
	}, "the process answers after the heal")
}

func TestStopKillRestartAdd(t *testing.T) {
	c := herdtest.NewCluster(t, 3)
	if got := c.Up(); len(got) != 3 {
		t.Fatalf("Up = %v", got)
	}
	first := c.Node(1).ID()
	again := c.Restart(1)
	if again.ID().Name != first.Name || again.ID().Incarnation <= first.Incarnation {
		t.Fatalf("restart: %v after %v", again.ID(), first)
	}
	c.WaitConverged()
	c.Kill(2)
	c.Stop(1)
	if got := c.Up(); len(got) != 1 || got[0] != 0 {
		t.Fatalf("Up after Kill and Stop = %v", got)
	}
	c.Eventually(t, func() bool { return len(c.Node(0).Members()) == 1 }, "n1 alone")
	i := c.Add()
	c.WaitConverged()
	if !c.Sees(0, i) || !c.Sees(i, 0) {
		t.Fatal("the added node and n1 do not see each other")
	}
	if c.CA() == nil || len(c.GossipKey()) != 32 {
		t.Fatal("the cluster runs without TLS or gossip keys")
	}
}

func TestWithoutTLSAndConfig(t *testing.T) {
	tagged := 0
	c := herdtest.NewCluster(t, 2, herdtest.WithoutTLS(), herdtest.WithConfig(func(i int, cfg *herd.Config) {
		cfg.Tags = map[string]string{"index": string(rune('a' + i))}
		tagged++
	}))
	if c.CA() != nil || tagged != 2 {
		t.Fatalf("CA %v, configured %d", c.CA(), tagged)
	}
	m, _ := c.Node(0).Member(c.Node(1).ID())
	if m.Tags["index"] != "b" {
		t.Fatalf("tags %v", m.Tags)
	}
}
