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

// A GetOrStart request that does not parse, or asks for nothing valid, is
// refused with an error and starts nothing.
func TestServeGetOrStartRefusesBadRequests(t *testing.T) {
	n, err := Start(context.Background(), Config{Name: "arbiter", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop(context.Background())
	if err := RegisterKind(n, "idle", func() Process { return &idle{} }); err != nil {
		t.Fatal(err)
	}
	valid := func(r getOrStartReq) []byte {
		b, err := n.codec.Encode(&r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	nilReq, _ := n.codec.Encode((*getOrStartReq)(nil))
	for i, body := range [][]byte{
		nil,
		{0xff, 0x00},
		nilReq,
		valid(getOrStartReq{Key: Key{Name: ""}, Kind: "idle"}),
		valid(getOrStartReq{Key: Key{Env: "a/b", Name: "x"}, Kind: "idle"}),
		valid(getOrStartReq{Key: Key{Name: "x"}, Kind: "no-such-kind"}),
		valid(getOrStartReq{Key: Key{Name: "x"}, Kind: "idle", Args: []byte{0xff}}),
		valid(getOrStartReq{Key: Key{Name: "x"}, Kind: "idle", Meta: Meta{Capabilities: []string{""}}}),
	} {
		if _, err := n.serveGetOrStart(context.Background(), NodeID{Name: "peer", Incarnation: 1}, body); err == nil {
			t.Errorf("request %d was accepted", i)
		}
	}
	if got := n.CountProcesses(); got != 0 {
		t.Fatalf("bad requests started %d processes", got)
	}
	if _, ok := n.Registry().Whereis(Key{Name: "x"}); ok {
		t.Fatal("a bad request registered a name")
	}
	// A good one starts the process, once.
	b := valid(getOrStartReq{Key: Key{Name: "x"}, Kind: "idle"})
	first, err := n.serveGetOrStart(context.Background(), NodeID{Name: "peer", Incarnation: 1}, b)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := n.serveGetOrStart(context.Background(), NodeID{Name: "peer", Incarnation: 1}, b)
	if string(first) != string(again) || n.CountProcesses() != 1 {
		t.Fatalf("a repeated request started another process (%d running)", n.CountProcesses())
	}
}
