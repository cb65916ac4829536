package membership

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/hashicorp/memberlist"

	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/unbounded"
)

// Config configures a Membership.
type Config struct {
	// Self is this node's life.
	Self proc.NodeID
	// BindAddr is the host:port memberlist listens on (UDP and TCP); port 0
	// picks a free one. Ignored when Transport is set.
	BindAddr string
	// AdvertiseAddr is the host:port other members reach; default the bound
	// address.
	AdvertiseAddr string
	// TransportAddr is where this node's herd transport listens; it is
	// advertised in the node's metadata.
	TransportAddr string
	// Version is the herd version, advertised.
	Version string
	// Tags are advertised user tags (roles). With the rest of the metadata
	// they must fit in memberlist's 512 bytes.
	Tags map[string]string
	// Profile chooses the failure-detection timings. Default LAN.
	Profile Profile
	// GossipKeys encrypt gossip (AES, 16, 24 or 32 bytes each). The first
	// is used to send; all are tried to receive, which is how keys rotate:
	// add the new key everywhere, make it primary everywhere, remove the old.
	// Nil leaves gossip unencrypted; the layers above decide if that is
	// allowed.
	GossipKeys [][]byte
	// Seeds are host:port addresses of members to join through.
	Seeds []string
	// DNSName is looked up for A/AAAA records; each address with DNSPort is
	// a seed. For a Kubernetes headless service.
	DNSName string
	DNSPort int
	// DNSSRV is a full SRV name (like _gossip._tcp.herd.ns.svc.cluster.local)
	// whose targets are seeds.
	DNSSRV string
	// Resolver resolves DNSName and DNSSRV; default net.DefaultResolver.
	Resolver Resolver
	// RetryMax caps the wait between join attempts while no seed answers.
	// Default 30s.
	RetryMax time.Duration
	// ReconnectFor is how long members declared dead are still tried, in
	// case they were cut off by a partition that heals. Default 30 minutes.
	ReconnectFor time.Duration
	// Transport, if set, carries memberlist's packets and streams (tests
	// inject faults here) and must already be bound.
	Transport memberlist.NodeAwareTransport
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Resolver is the part of *net.Resolver discovery uses.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// Membership is this node's view of the cluster. Safe for concurrent use.
type Membership struct {
	cfg   Config
	log   *slog.Logger
	ml    *memberlist.Memberlist
	timed Timings
	done  chan struct{}
	wg    sync.WaitGroup

	keyring *memberlist.Keyring

	leaving atomic.Bool
	stopped atomic.Bool

	evMu   sync.Mutex
	evs    []Event
	evWake chan struct{}

	mu      sync.Mutex
	table   *Table
	subs    map[*Subscription]struct{}
	pinging map[proc.NodeID]bool
}

// Subscription delivers batches of changes in the order they happened. The
// first batch describes every member known when it started. A batch holds
// everything that happened since the last one: forty nodes joining at once
// is one batch, not forty.
type Subscription struct {
	q *unbounded.Queue[[]Change]
	m *Membership
}

// C returns the channel batches arrive on; it closes after Close.
func (s *Subscription) C() <-chan []Change { return s.q.Out() }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.m.mu.Lock()
	delete(s.m.subs, s)
	s.m.mu.Unlock()
	s.q.Close()
}

// meta is what a node advertises through memberlist.
type meta struct {
	_           struct{} `cbor:",toarray"`
	V           uint8
	Name        string
	Incarnation uint64
	Addr        string
	Version     string
	Leaving     bool
	Tags        map[string]string
}

var metaEnc, _ = cbor.CoreDetEncOptions().EncMode()
var metaDec, _ = cbor.DecOptions{MaxMapPairs: 64, MaxArrayElements: 16, MaxNestedLevels: 4}.DecMode()

// ErrMetaTooLarge: the node's tags do not fit memberlist's metadata.
var ErrMetaTooLarge = errors.New("membership: node metadata too large")

// Start joins the cluster: it starts memberlist, tries the seeds and DNS
// once, and keeps trying in the background with backoff while none answers.
func Start(ctx context.Context, cfg Config) (*Membership, error) {
	if cfg.Self.Name == "" {
		return nil, errors.New("membership: Config.Self is required")
	}
	timed, err := cfg.Profile.Timings()
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 30 * time.Second
	}
	if cfg.ReconnectFor <= 0 {
		cfg.ReconnectFor = 30 * time.Minute
	}
	m := &Membership{
		cfg: cfg, log: cfg.Logger, timed: timed,
		done:    make(chan struct{}),
		evWake:  make(chan struct{}, 1),
		table:   NewTable(cfg.Self),
		subs:    make(map[*Subscription]struct{}),
		pinging: make(map[proc.NodeID]bool),
	}
	if b, err := m.encodeMeta(); err != nil {
		return nil, err
	} else if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d: use fewer or shorter tags", ErrMetaTooLarge, len(b), memberlist.MetaMaxSize)
	}

	mc := memberlist.DefaultLANConfig()
	timed.apply(mc)
	mc.Name = cfg.Self.String() // one memberlist member per node life
	mc.Delegate = (*delegate)(m)
	mc.Events = (*events)(m)
	mc.Ping = (*events)(m)
	mc.Logger = log.New(&logAdapter{m: m}, "", 0)
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	} else {
		host, port, err := splitHostPort(cfg.BindAddr)
		if err != nil {
			return nil, err
		}
		mc.BindAddr, mc.BindPort = host, port
		mc.AdvertisePort = port
	}
	if cfg.AdvertiseAddr != "" {
		host, port, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, err
		}
		mc.AdvertiseAddr, mc.AdvertisePort = host, port
	}
	if len(cfg.GossipKeys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.GossipKeys, cfg.GossipKeys[0])
		if err != nil {
			return nil, fmt.Errorf("membership: gossip keys: %w", err)
		}
		mc.Keyring = kr
		m.keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start: %w", err)
	}
	m.ml = ml
	// This node is in its own view before Start returns.
	m.table.Apply(Event{Kind: EvAlive, Member: Member{
		ID: cfg.Self, Addr: cfg.TransportAddr, GossipAddr: ml.LocalNode().Address(), Version: cfg.Version, Tags: cfg.Tags,
	}, Cause: "started"}, time.Now())
	m.wg.Add(2)
	go m.dispatch()
	go m.reconnect()
	if m.discovery() {
		if !m.joinOnce(ctx) {
			m.wg.Add(1)
			go m.joinLoop()
		}
	}
	return m, nil
}

func splitHostPort(addr string) (string, int, error) {
	if addr == "" {
		return "127.0.0.1", 0, nil
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("membership: address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("membership: address %q: bad port", addr)
	}
	return host, port, nil
}

// Self returns this node's life.
func (m *Membership) Self() proc.NodeID { return m.cfg.Self }

// GossipAddr returns the address other members reach this one at.
func (m *Membership) GossipAddr() string { return m.ml.LocalNode().Address() }

// Timings returns the profile's timings.
func (m *Membership) Timings() Timings { return m.timed }

// Keyring returns memberlist's keyring, for key rotation (nil without
// encryption).
func (m *Membership) Keyring() *memberlist.Keyring { return m.keyring }

// Members returns every node life that has not ended, sorted by name.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := m.table.Members()
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	return out
}

// Member returns a node life's state.
func (m *Membership) Member(id proc.NodeID) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table.Member(id)
}

// Latest returns the latest live life of a node name.
func (m *Membership) Latest(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.table.Latest(name)
}

// Subscribe starts a subscription; its first batch is every member known
// now, each as a Change from None.
func (m *Membership) Subscribe() *Subscription {
	s := &Subscription{q: unbounded.New[[]Change](), m: m}
	m.mu.Lock()
	defer m.mu.Unlock()
	var first []Change
	for _, mem := range m.table.Members() {
		first = append(first, Change{Member: mem, From: None, Cause: "known"})
	}
	slices.SortFunc(first, func(a, b Change) int { return strings.Compare(a.Member.ID.String(), b.Member.ID.String()) })
	s.q.Push(first)
	m.subs[s] = struct{}{}
	return s
}

// Confirm is the fast path: a layer above lost its connection to id and
// could not open another (refused). A direct probe is sent at once; if it
// goes unanswered too, id is declared dead now, without waiting for the
// failure detector's suspicion. A slow but alive node answers the probe and
// stays alive.
func (m *Membership) Confirm(id proc.NodeID, cause string) {
	m.mu.Lock()
	mem, ok := m.table.Member(id)
	if !ok || mem.Status.Ended() || m.pinging[id] || id == m.cfg.Self || m.stopped.Load() {
		m.mu.Unlock()
		return
	}
	m.pinging[id] = true
	m.wg.Add(1) // under m.mu, which stop takes before waiting: no Add after Wait
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.pinging, id)
			m.mu.Unlock()
		}()
		// Two probes, so one lost packet does not condemn a live node.
		for range 2 {
			if m.probe(id, mem.GossipAddr) {
				m.log.Debug("membership: peer answers a probe despite lost connections", "peer", id.String(), "cause", cause)
				return
			}
		}
		m.push(Event{Kind: EvDead, Member: Member{ID: id}, Cause: cause + "; no answer to direct probes"})
	}()
}

// probe sends a direct probe to a member and reports whether it answered
// within the profile's probe timeout.
func (m *Membership) probe(id proc.NodeID, gossipAddr string) bool {
	addr, err := net.ResolveUDPAddr("udp", gossipAddr)
	if err != nil {
		return false
	}
	_, err = m.ml.Ping(id.String(), addr)
	return err == nil
}

// Announce tells the other members this node is leaving (they see it
// leaving), waiting up to ctx for the announcement to go out, and stays a
// member: the layers above use the time to hand over their work. Leave
// follows. Announcing twice announces once.
func (m *Membership) Announce(ctx context.Context) {
	if m.stopped.Load() || m.leaving.Swap(true) {
		return
	}
	if err := m.ml.UpdateNode(timeoutOf(ctx)); err != nil {
		m.log.Warn("membership: could not announce leaving", "err", err)
	}
}

// timeoutOf turns ctx's deadline into one of memberlist's timeouts (which
// wait without limit for zero or less).
func timeoutOf(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d)/2, 100*time.Millisecond)
	}
	return 5 * time.Second
}

// Leave announces this node is leaving (unless Announce did), waits up to
// ctx for the announcement to spread and the graceful leave to be sent,
// then stops. Other members see it leaving, then left.
func (m *Membership) Leave(ctx context.Context) error {
	if m.stopped.Load() {
		return nil
	}
	m.Announce(ctx)
	err := m.ml.Leave(timeoutOf(ctx))
	m.stop()
	return err
}

// Shutdown stops at once, without telling anyone: to the others this node
// has failed.
func (m *Membership) Shutdown() error {
	m.stop()
	return nil
}

func (m *Membership) stop() {
	m.mu.Lock()
	if !m.stopped.CompareAndSwap(false, true) {
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	close(m.done)
	_ = m.ml.Shutdown()
	m.wg.Wait()
	m.mu.Lock()
	for s := range m.subs {
		s.q.Close()
	}
	m.subs = nil
	m.mu.Unlock()
}

// push queues an event for the dispatcher.
func (m *Membership) push(ev Event) {
	m.evMu.Lock()
	m.evs = append(m.evs, ev)
	m.evMu.Unlock()
	select {
	case m.evWake <- struct{}{}:
	default:
	}
}

// dispatch applies queued events to the table in batches and hands each
// batch of changes to every subscriber.
func (m *Membership) dispatch() {
	defer m.wg.Done()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-m.evWake:
		case now := <-prune.C:
			m.mu.Lock()
			m.table.Prune(now.Add(-time.Hour))
			m.mu.Unlock()
			continue
		case <-m.done:
			return
		}
		m.evMu.Lock()
		evs := m.evs
		m.evs = nil
		m.evMu.Unlock()
		now := time.Now()
		var batch []Change
		m.mu.Lock()
		for _, ev := range evs {
			batch = append(batch, m.table.Apply(ev, now)...)
		}
		if len(batch) > 0 {
			for s := range m.subs {
				s.q.Push(batch)
			}
		}
		m.mu.Unlock()
		for _, c := range batch {
			lvl := slog.LevelInfo
			if c.Member.Status == Suspect || c.From == Suspect {
				lvl = slog.LevelWarn
			}
			m.log.Log(context.Background(), lvl, "membership: "+c.Member.Status.String(),
				"member", c.Member.ID.String(), "from", c.From.String(), "cause", c.Cause)
		}
	}
}

// reconnect tries, every few probe intervals, to join the members declared
// dead recently: memberlist alone stops talking to them, so two sides of a
// healed partition would otherwise never merge. A member that answers
// refutes its death and comes back Alive, as the same life.
func (m *Membership) reconnect() {
	defer m.wg.Done()
	tick := time.NewTicker(5 * m.timed.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-m.done:
			return
		}
		m.mu.Lock()
		dead := m.table.Dead(time.Now().Add(-m.cfg.ReconnectFor))
		m.mu.Unlock()
		var addrs []string
		for _, d := range dead {
			if d.GossipAddr == "" {
				continue
			}
			addrs = append(addrs, d.GossipAddr)
			// A member declared dead here that answers a direct probe is
			// alive: memberlist may never have thought otherwise (the fast
			// path decided alone), and would then send no news of it.
			if m.probe(d.ID, d.GossipAddr) {
				m.push(Event{Kind: EvAlive, Member: d, Cause: "answers probes again"})
			}
		}
		if len(addrs) > 0 {
			if n, _ := m.ml.Join(addrs); n > 0 {
				m.log.Debug("membership: reached members declared dead", "tried", len(addrs), "answered", n)
			}
		}
	}
}

func (m *Membership) encodeMeta() ([]byte, error) {
	return metaEnc.Marshal(meta{
		V: 1, Name: m.cfg.Self.Name, Incarnation: m.cfg.Self.Incarnation,
		Addr: m.cfg.TransportAddr, Version: m.cfg.Version, Leaving: m.leaving.Load(), Tags: m.cfg.Tags,
	})
}

func decodeMember(n *memberlist.Node) (Member, error) {
	var md meta
	if err := metaDec.Unmarshal(n.Meta, &md); err != nil {
		return Member{}, fmt.Errorf("membership: %s has no herd metadata: %w", n.Name, err)
	}
	if md.Name == "" {
		return Member{}, fmt.Errorf("membership: %s has no herd metadata", n.Name)
	}
	m := Member{
		ID:   proc.NodeID{Name: md.Name, Incarnation: md.Incarnation},
		Addr: md.Addr, GossipAddr: n.Address(), Version: md.Version, Tags: md.Tags,
	}
	if md.Leaving {
		m.Status = Leaving
	}
	return m, nil
}

// delegate gives memberlist the node's metadata; herd carries no data over
// memberlist (its broadcasts are best effort).
type delegate Membership

func (d *delegate) NodeMeta(limit int) []byte {
	b, err := (*Membership)(d).encodeMeta()
	if err != nil || len(b) > limit {
		(*Membership)(d).log.Error("membership: metadata does not fit", "err", err, "size", len(b), "limit", limit)
		return nil
	}
	return b
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events turns memberlist's callbacks into core events. They must not
// block, and do not: they only queue.
type events Membership

func (e *events) NotifyJoin(n *memberlist.Node)   { e.seen(n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.seen(n) }

func (e *events) seen(n *memberlist.Node) {
	m := (*Membership)(e)
	mem, err := decodeMember(n)
	if err != nil {
		m.log.Warn("membership: ignoring a member", "err", err)
		return
	}
	kind := EvAlive
	if mem.Status == Leaving {
		kind = EvLeaving
	}
	m.push(Event{Kind: kind, Member: mem})
}

// NotifyLeave reports a member gone. memberlist's Node.State is not kept
// up to date (its internal state shadows it), so a graceful leave is told
// from a failure by herd's own announcement: a member that said it was
// leaving and then goes, left.
func (e *events) NotifyLeave(n *memberlist.Node) {
	m := (*Membership)(e)
	mem, err := decodeMember(n)
	if err != nil {
		return
	}
	m.mu.Lock()
	cur, _ := m.table.Member(mem.ID)
	m.mu.Unlock()
	if mem.Status == Leaving || cur.Status == Leaving {
		m.push(Event{Kind: EvLeft, Member: mem, Cause: "left"})
	} else {
		m.push(Event{Kind: EvDead, Member: mem, Cause: "failure detector"})
	}
}

// AckPayload implements memberlist.PingDelegate.
func (e *events) AckPayload() []byte { return nil }

// NotifyPingComplete hears that a member answered one of this node's
// probes: a suspected member that answers is alive again.
func (e *events) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	m := (*Membership)(e)
	mem, err := decodeMember(n)
	if err != nil {
		return
	}
	m.mu.Lock()
	cur, ok := m.table.Member(mem.ID)
	m.mu.Unlock()
	if ok && cur.Status == Suspect {
		m.push(Event{Kind: EvAlive, Member: mem, Cause: "answers probes again"})
	}
}

// suspectLine is how memberlist v0.7 says its probe of a member failed;
// it has no callback for suspicion, so herd reads it from the log.
const suspectLine = "memberlist: Suspect "

// logAdapter turns memberlist's "[LEVEL] memberlist: ..." lines into slog
// records (at most Warn: they are memberlist's view, not herd's errors),
// and notices suspicion.
type logAdapter struct{ m *Membership }

func (a *logAdapter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelDebug
	for _, pfx := range []struct {
		prefix string
		lvl    slog.Level
	}{{"[ERR]", slog.LevelWarn}, {"[WARN]", slog.LevelWarn}, {"[INFO]", slog.LevelDebug}, {"[DEBUG]", slog.LevelDebug}} {
		if strings.HasPrefix(line, pfx.prefix) {
			lvl = pfx.lvl
			line = strings.TrimSpace(strings.TrimPrefix(line, pfx.prefix))
			break
		}
	}
	if rest, ok := strings.CutPrefix(line, suspectLine); ok {
		if name, _, ok := strings.Cut(rest, " "); ok {
			if id, err := parseNodeID(name); err == nil {
				a.m.push(Event{Kind: EvSuspect, Member: Member{ID: id}, Cause: "no answer to probes"})
			}
		}
	}
	a.m.log.Log(context.Background(), lvl, line)
	return len(p), nil
}

// parseNodeID parses a memberlist member name, which is NodeID.String().
func parseNodeID(s string) (proc.NodeID, error) {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 {
		return proc.NodeID{}, fmt.Errorf("membership: member name %q is not name@incarnation", s)
	}
	inc, err := strconv.ParseUint(s[at+1:], 36, 64)
	if err != nil {
		return proc.NodeID{}, fmt.Errorf("membership: member name %q: %w", s, err)
	}
	return proc.NodeID{Name: s[:at], Incarnation: inc}, nil
}

var _ io.Writer = (*logAdapter)(nil)
var _ memberlist.PingDelegate = (*events)(nil)
