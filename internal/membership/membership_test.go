package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/faultnet"
	"github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type tnode struct {
	*Membership
	log *logBuf
}

// startNode starts a member named name (incarnation inc) on a free port,
// with the local profile unless cfg says otherwise, stopped when the test
// ends.
func startNode(t *testing.T, name string, inc uint64, cfg Config) *tnode {
	t.Helper()
	lb := &logBuf{}
	cfg.Self = proc.NodeID{Name: name, Incarnation: inc}
	if cfg.Profile == "" {
		cfg.Profile = Local
	}
	if cfg.TransportAddr == "" {
		cfg.TransportAddr = name + ":9000"
	}
	cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown() })
	return &tnode{Membership: m, log: lb}
}

func seeing(n *tnode, want map[string]Status) func() bool {
	return func() bool {
		got := map[string]Status{}
		for _, m := range n.Members() {
			got[m.ID.Name] = m.Status
		}
		for name, st := range want {
			if st.Ended() {
				if s, ok := got[name]; ok && !s.Ended() {
					return false
				}
				continue
			}
			if got[name] != st {
				return false
			}
		}
		return true
	}
}

func aliveAll(names ...string) map[string]Status {
	m := map[string]Status{}
	for _, n := range names {
		m[n] = Alive
	}
	return m
}

func TestJoinAndSeeEachOther(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{Tags: map[string]string{"role": "db"}, Version: "v-test"})
	sub := n1.Subscribe()
	defer sub.Close()
	first := Recv(t, sub.C())
	if len(first) != 1 || first[0].Member.ID != n1.Self() || first[0].From != None {
		t.Fatalf("first batch %+v", first)
	}
	n2 := startNode(t, "n2", 1, Config{Seeds: []string{n1.GossipAddr()}})
	n3 := startNode(t, "n3", 1, Config{Seeds: []string{n2.GossipAddr()}})
	for _, n := range []*tnode{n1, n2, n3} {
		Eventually(t, n.Self().Name+" sees all three", seeing(n, aliveAll("n1", "n2", "n3")))
	}
	m, ok := n3.Member(n1.Self())
	if !ok || m.Tags["role"] != "db" || m.Version != "v-test" || m.Addr != "n1:9000" || m.GossipAddr != n1.GossipAddr() {
		t.Fatalf("n3's view of n1: %+v", m)
	}
	var joined []string
	for len(joined) < 2 {
		for _, c := range Recv(t, sub.C()) {
			if c.From == None && c.Member.Status == Alive {
				joined = append(joined, c.Member.ID.Name)
			}
		}
	}
	slices.Sort(joined)
	if fmt.Sprint(joined) != "[n2 n3]" {
		t.Fatalf("joins seen by the subscription: %v", joined)
	}
}

func TestLeave(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{})
	n2 := startNode(t, "n2", 1, Config{Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "joined", seeing(n1, aliveAll("n1", "n2")))
	sub := n1.Subscribe()
	defer sub.Close()
	Recv(t, sub.C())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n2.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	var seen []Status
	defer func() {
		if t.Failed() {
			t.Logf("seen %v\nn1 log:\n%s", seen, n1.log.String())
		}
	}()
	for !slices.Contains(seen, Left) {
		for _, c := range Recv(t, sub.C()) {
			if c.Member.ID == n2.Self() {
				seen = append(seen, c.Member.Status)
			}
		}
	}
	if fmt.Sprint(seen) != "[leaving left]" {
		t.Fatalf("n1 saw n2 go %v, want [leaving left]", seen)
	}
}

func TestKillIsDetected(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{})
	n2 := startNode(t, "n2", 1, Config{Seeds: []string{n1.GossipAddr()}})
	n3 := startNode(t, "n3", 1, Config{Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "joined", seeing(n1, aliveAll("n1", "n2", "n3")))
	Eventually(t, "joined", seeing(n2, aliveAll("n1", "n2", "n3")))
	n3.Shutdown() // no leave message: to the others, n3 failed
	for _, n := range []*tnode{n1, n2} {
		Eventually(t, "n3 declared dead", func() bool {
			m, ok := n.Member(n3.Self())
			return ok && m.Status == Dead
		})
	}
}

// The fast path declares a killed peer dead at once, long before the LAN
// profile's failure detector would.
func TestConfirmDeclaresAKilledPeerDead(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{Profile: LAN})
	n2 := startNode(t, "n2", 1, Config{Profile: LAN, Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "joined", seeing(n1, aliveAll("n1", "n2")))
	sub := n1.Subscribe()
	defer sub.Close()
	Recv(t, sub.C())
	n2.Shutdown()
	start := time.Now()
	n1.Confirm(n2.Self(), "connection refused")
	for {
		var dead *Change
		for _, c := range Recv(t, sub.C()) {
			if c.Member.ID == n2.Self() && c.Member.Status == Dead {
				dead = &c
			}
		}
		if dead == nil {
			continue
		}
		took := time.Since(start)
		if took > time.Second || !strings.Contains(dead.Cause, "no answer to direct probes") {
			t.Fatalf("n2 declared dead after %v, cause %q", took, dead.Cause)
		}
		return
	}
}

func TestConfirmLeavesAnAlivePeerAlive(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{})
	n2 := startNode(t, "n2", 1, Config{Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "joined", seeing(n1, aliveAll("n1", "n2")))
	n1.Confirm(n2.Self(), "connection refused (but it is fine)")
	Eventually(t, "probe answered", func() bool {
		return strings.Contains(n1.log.String(), "peer answers a probe despite lost connections")
	})
	if m, _ := n1.Member(n2.Self()); m.Status != Alive {
		t.Fatalf("an answering peer became %v", m.Status)
	}
}

// A live peer wrongly confirmed dead (its probes were lost) is found alive
// again once it answers.
func TestAWrongConfirmIsUndone(t *testing.T) {
	fn := faultnet.New()
	n1 := startFaulty(t, fn, "n1")
	n2 := startFaulty(t, fn, "n2", n1.GossipAddr())
	Eventually(t, "joined", seeing(n1, aliveAll("n1", "n2")))
	fn.Partition([]string{"n1"}, []string{"n2"})
	n1.Confirm(n2.Self(), "connection refused (test)")
	Eventually(t, "n2 declared dead", func() bool {
		m, _ := n1.Member(n2.Self())
		return m.Status == Dead
	})
	fn.Heal()
	Eventually(t, "n2 alive again", seeing(n1, aliveAll("n1", "n2")))
}

func startFaulty(t *testing.T, fn *faultnet.Net, name string, seeds ...string) *tnode {
	t.Helper()
	tr, _, err := fn.NewMemberlistTransport(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return startNode(t, name, 1, Config{Transport: tr, Seeds: seeds})
}

func TestPartitionAndHeal(t *testing.T) {
	fn := faultnet.New()
	n1 := startFaulty(t, fn, "n1")
	n2 := startFaulty(t, fn, "n2", n1.GossipAddr())
	n3 := startFaulty(t, fn, "n3", n1.GossipAddr())
	n4 := startFaulty(t, fn, "n4", n1.GossipAddr())
	all := []*tnode{n1, n2, n3, n4}
	for _, n := range all {
		Eventually(t, n.Self().Name+" joined", seeing(n, aliveAll("n1", "n2", "n3", "n4")))
	}
	sub := n1.Subscribe()
	defer sub.Close()
	Recv(t, sub.C())
	fn.Partition([]string{"n1", "n2"}, []string{"n3", "n4"})
	split := map[string]map[string]Status{
		"n1": {"n1": Alive, "n2": Alive, "n3": Dead, "n4": Dead},
		"n2": {"n1": Alive, "n2": Alive, "n3": Dead, "n4": Dead},
		"n3": {"n1": Dead, "n2": Dead, "n3": Alive, "n4": Alive},
		"n4": {"n1": Dead, "n2": Dead, "n3": Alive, "n4": Alive},
	}
	for _, n := range all {
		Eventually(t, n.Self().Name+" sees the split", seeing(n, split[n.Self().Name]))
	}
	// n1 suspected someone across the split before declaring it dead
	// (memberlist tells suspicion only in its log; this catches a change).
	suspected := false
	for len(sub.C()) > 0 || !suspected {
		for _, c := range Recv(t, sub.C()) {
			if c.Member.Status == Suspect {
				suspected = true
			}
		}
		if suspected {
			break
		}
	}
	fn.Heal()
	for _, n := range all {
		Eventually(t, n.Self().Name+" sees everyone back", seeing(n, aliveAll("n1", "n2", "n3", "n4")))
	}
	m, _ := n1.Member(n3.Self())
	if m.ID.Incarnation != 1 {
		t.Fatalf("n3 came back as %v; a healed partition keeps the same life", m.ID)
	}
}

func TestRestartIsANewMember(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{})
	n2 := startNode(t, "n2", 1, Config{Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "joined", seeing(n1, aliveAll("n1", "n2")))
	n2.Shutdown()
	again := startNode(t, "n2", 2, Config{Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "n1 sees the new life", func() bool {
		m, ok := n1.Latest("n2")
		return ok && m.ID == again.Self() && m.Status == Alive
	})
	old, _ := n1.Member(n2.Self())
	if old.Status != Dead {
		t.Fatalf("the previous life is %v", old.Status)
	}
}

type fakeResolver struct {
	hosts map[string][]string
	srvs  map[string][]*net.SRV
}

func (f *fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	if a, ok := f.hosts[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (f *fakeResolver) LookupSRV(_ context.Context, _, _, name string) (string, []*net.SRV, error) {
	if s, ok := f.srvs[name]; ok {
		return name, s, nil
	}
	return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func TestDNSDiscovery(t *testing.T) {
	n1 := startNode(t, "n1", 1, Config{})
	host, port, _ := net.SplitHostPort(n1.GossipAddr())
	var p int
	fmt.Sscan(port, &p)
	r := &fakeResolver{
		hosts: map[string][]string{"herd.svc.example": {host}},
		srvs:  map[string][]*net.SRV{"_gossip._tcp.herd.svc.example": {{Target: host + ".", Port: uint16(p)}}},
	}
	viaA := startNode(t, "via-a", 1, Config{DNSName: "herd.svc.example", DNSPort: p, Resolver: r})
	viaSRV := startNode(t, "via-srv", 1, Config{DNSSRV: "_gossip._tcp.herd.svc.example", Resolver: r})
	Eventually(t, "joined through DNS", seeing(n1, aliveAll("n1", "via-a", "via-srv")))
	_ = viaA
	_ = viaSRV
}

// A seed that is not up yet is retried, with backoff, until it answers.
func TestSeedsRetriedUntilTheyAnswer(t *testing.T) {
	// Reserve a port, then free it for the seed to take later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	early := startNode(t, "early", 1, Config{Seeds: []string{addr}, RetryMax: 200 * time.Millisecond})
	if len(early.Members()) != 1 {
		t.Fatal("joined a seed that does not exist")
	}
	seed := startNode(t, "seed", 1, Config{BindAddr: addr})
	Eventually(t, "early joined the late seed", seeing(seed, aliveAll("early", "seed")))
}

// Events that arrive together reach subscribers as one batch.
func TestChurnIsBatched(t *testing.T) {
	m := &Membership{
		cfg: Config{Self: proc.NodeID{Name: "self", Incarnation: 1}}, log: slog.New(slog.DiscardHandler),
		done: make(chan struct{}), evWake: make(chan struct{}, 1),
		table: NewTable(proc.NodeID{Name: "self", Incarnation: 1}), subs: map[*Subscription]struct{}{},
	}
	sub := m.Subscribe()
	Recv(t, sub.C()) // the (empty) snapshot
	for i := range 40 {
		m.push(Event{Kind: EvAlive, Member: Member{ID: proc.NodeID{Name: fmt.Sprint("node-", i), Incarnation: 1}}})
	}
	m.wg.Add(1)
	go m.dispatch()
	defer func() { close(m.done); m.wg.Wait() }()
	if batch := Recv(t, sub.C()); len(batch) != 40 {
		t.Fatalf("forty joins at once came as a batch of %d", len(batch))
	}
	select {
	case b := <-sub.C():
		t.Fatalf("a second batch: %v", b)
	default:
	}
}

func TestGossipEncryptionAndKeyRotation(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	n1 := startNode(t, "n1", 1, Config{GossipKeys: [][]byte{k1}})
	// Without the key, a node cannot join.
	outsider := startNode(t, "outsider", 1, Config{GossipKeys: [][]byte{k2}, Seeds: []string{n1.GossipAddr()}})
	plain := startNode(t, "plain", 1, Config{Seeds: []string{n1.GossipAddr()}})
	n2 := startNode(t, "n2", 1, Config{GossipKeys: [][]byte{k1}, Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "n2 joined", seeing(n1, aliveAll("n1", "n2")))
	for _, n := range []*tnode{outsider, plain} {
		if len(n.Members()) != 1 {
			t.Fatalf("%s joined without the key: %v", n.Self().Name, n.Members())
		}
	}
	// Rotation: add k2 everywhere, make it primary everywhere, drop k1.
	for _, n := range []*tnode{n1, n2} {
		if err := n.Keyring().AddKey(k2); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*tnode{n1, n2} {
		if err := n.Keyring().UseKey(k2); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*tnode{n1, n2} {
		if err := n.Keyring().RemoveKey(k1); err != nil {
			t.Fatal(err)
		}
	}
	late := startNode(t, "late", 1, Config{GossipKeys: [][]byte{k2}, Seeds: []string{n1.GossipAddr()}})
	Eventually(t, "a node with only the new key joins", seeing(n2, aliveAll("n1", "n2", "late")))
	_ = late
}

func TestMetadataLimits(t *testing.T) {
	tags := map[string]string{"big": strings.Repeat("x", 600)}
	_, err := Start(context.Background(), Config{Self: proc.NodeID{Name: "n", Incarnation: 1}, Tags: tags, Profile: Local, Logger: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized tags: %v", err)
	}
	if _, err := Start(context.Background(), Config{Self: proc.NodeID{Name: "n", Incarnation: 1}, Profile: "wan"}); err == nil {
		t.Fatal("unknown profile accepted")
	}
}
