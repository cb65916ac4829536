package herd

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/faultnet"
	"github.com/herdkit/herd/internal/hooks"
	"github.com/herdkit/herd/internal/proctest"
)

type idle struct{ Base }

func startFaulty(t *testing.T, fn *faultnet.Net, name, join string) *Node {
	t.Helper()
	gossip, _, err := fn.NewMemberlistTransport(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fn.Register(name, ln.Addr().String())
	cfg := Config{Name: name, Incarnation: uint64(time.Now().UnixNano()), Bind: "127.0.0.1:0", Profile: "local",
		Logger: slog.New(slog.DiscardHandler)}
	if join != "" {
		cfg.Join = []string{join}
	}
	n, err := Start(context.Background(), cfg, func(o *hooks.Options) {
		o.Gossip, o.Listener, o.Dial = gossip, ln, fn.Dialer(name, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Halt)
	return n
}

// One node wrongly confirms a live peer dead (its probes were lost) while
// the peer still sees it alive. The wrong death is undone, and a monitor
// the peer holds on one of its processes still gets its Down.
func TestOneSidedDeathIsRepairedAndDownsStillArrive(t *testing.T) {
	fn := faultnet.New()
	n1 := startFaulty(t, fn, "n1", "")
	n2 := startFaulty(t, fn, "n2", n1.GossipAddr())
	proctest.Eventually(t, "joined", func() bool { return len(n1.Members()) == 2 && len(n2.Members()) == 2 })
	fn.Partition([]string{"n1"}, []string{"n2"})
	n1.cl.mem.Confirm(n2.ID(), "connection refused (test)")
	proctest.Eventually(t, "n1 declares n2 dead", func() bool {
		m, _ := n1.Member(n2.ID())
		return m.Status == MemberDead
	})
	fn.Heal()
	proctest.Eventually(t, "n1 finds n2 alive again", func() bool {
		m, _ := n1.Member(n2.ID())
		return m.Status == MemberAlive
	})
	pid, err := n1.SpawnProcess(context.Background(), &idle{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	downs, _ := n2.Monitor(pid)
	_ = n1.Exit(pid, Kill)
	select {
	case d := <-downs:
		if d.PID != pid {
			t.Fatalf("Down for %v", d.PID)
		}
	case <-time.After(proctest.Wait):
		t.Fatal("no Down for a monitor of a process that exited")
	}
}
