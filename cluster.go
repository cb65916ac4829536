package herd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/herdkit/herd/internal/codec"
	"github.com/herdkit/herd/internal/dsup"
	"github.com/herdkit/herd/internal/hooks"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/pki"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
	"github.com/herdkit/herd/internal/remote"
	"github.com/herdkit/herd/internal/replica"
	"github.com/herdkit/herd/internal/supervisor"
	"github.com/herdkit/herd/internal/transport"
)

// Version is the herd version a node advertises to its cluster.
const Version = "0.1.0-dev"

// TLS is a node's mutual-TLS identity: the cluster CA, and this node's
// certificate, which must name the node (its DNS names or common name
// include Config.Name). Give files or values.
type TLS struct {
	CAFile, CertFile, KeyFile string
	CA                        *x509.CertPool
	Cert                      *tls.Certificate
}

func (t *TLS) load() (*transport.TLS, error) {
	ca, cert := t.CA, t.Cert
	if ca == nil {
		if t.CAFile == "" {
			return nil, errors.New("herd: TLS needs a CA (CAFile or CA)")
		}
		data, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("herd: TLS CA: %w", err)
		}
		if ca, err = pki.LoadPool(data); err != nil {
			return nil, fmt.Errorf("herd: TLS CA %s: %w", t.CAFile, err)
		}
	}
	if cert == nil {
		if t.CertFile == "" || t.KeyFile == "" {
			return nil, errors.New("herd: TLS needs a certificate (CertFile and KeyFile, or Cert)")
		}
		c, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("herd: TLS certificate: %w", err)
		}
		cert = &c
	}
	return &transport.TLS{CA: ca, Cert: *cert}, nil
}

// Member is a node life as the cluster sees it.
type Member = membership.Member

// MemberStatus is where a node life stands.
type MemberStatus = membership.Status

// Member statuses.
const (
	MemberAlive   = membership.Alive
	MemberSuspect = membership.Suspect
	MemberLeaving = membership.Leaving
	MemberDead    = membership.Dead
	MemberLeft    = membership.Left
)

// MemberChange is one status change; MemberSubscription delivers them in
// batches.
type (
	MemberChange       = membership.Change
	MemberSubscription = membership.Subscription
)

// RemoteError is an error from another node that was not registered there
// with RegisterError; it keeps its text and what it wrapped.
type RemoteError = remote.RemoteError

// StartOption replaces part of a node's network; herdtest uses them to
// inject faults. Users have no need of them.
type StartOption func(*hooks.Options)

// cluster is what a clustered node runs besides its processes.
type cluster struct {
	mem    *membership.Membership
	tr     *transport.Transport
	remote *remote.Cluster
}

// mux routes what peers send: replicated-map traffic to the replicas,
// the rest to the remote-process layer.
type mux struct {
	remote *remote.Cluster
	reps   *replica.Replicas
}

func (m mux) Message(from NodeID, payload []byte) {
	if len(payload) > 0 && payload[0] == replica.Channel {
		m.reps.Message(from, payload[1:])
		return
	}
	m.remote.Message(from, payload)
}

func (m mux) Request(from NodeID, payload []byte, reply func([]byte)) {
	m.remote.Request(from, payload, reply)
}

func (m mux) SessionDown(peer NodeID, err error) {
	m.remote.SessionDown(peer, err)
	m.reps.SessionDown(peer)
}

func (m mux) Unreachable(peer NodeID, err error) { m.remote.Unreachable(peer, err) }

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkSecurity refuses a node reachable from other hosts without TLS and
// gossip encryption, unless told Insecure.
func (cfg *Config) checkSecurity() error {
	if cfg.Insecure {
		return nil
	}
	for _, addr := range []string{cfg.Bind, cfg.GossipBind} {
		if addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("herd: address %q: %w", addr, err)
		}
		if isLoopback(host) {
			continue
		}
		if cfg.TLS == nil {
			return fmt.Errorf("herd: refusing to listen on %s without TLS: set Config.TLS (herd tls init makes a CA), or Insecure to allow it", addr)
		}
		if len(cfg.GossipKeys) == 0 {
			return fmt.Errorf("herd: refusing to gossip on %s unencrypted: set Config.GossipKeys, or Insecure to allow it", addr)
		}
	}
	return nil
}

// startCluster brings up membership, transport and the remote layer.
func (n *Node) startCluster(ctx context.Context, cfg *Config, opts []StartOption) error {
	var o hooks.Options
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.checkSecurity(); err != nil {
		return err
	}
	var tlsID *transport.TLS
	if cfg.TLS != nil {
		var err error
		if tlsID, err = cfg.TLS.load(); err != nil {
			return err
		}
	}
	ln := o.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.Bind); err != nil {
			return fmt.Errorf("herd: listen on %s: %w", cfg.Bind, err)
		}
	}
	advertise := cfg.Advertise
	if advertise == "" {
		advertise = ln.Addr().String()
	}
	gossip := cfg.GossipBind
	if gossip == "" && o.Gossip == nil {
		host, _, _ := net.SplitHostPort(ln.Addr().String())
		gossip = net.JoinHostPort(host, "0")
	}
	mem, err := membership.Start(ctx, membership.Config{
		Self: n.id, BindAddr: gossip, AdvertiseAddr: cfg.GossipAdvertise, TransportAddr: advertise,
		Version: Version, Tags: cfg.Tags, Profile: membership.Profile(cfg.Profile), GossipKeys: cfg.GossipKeys,
		Seeds: cfg.Join, DNSName: cfg.DNSName, DNSPort: cfg.DNSPort, DNSSRV: cfg.DNSSRV,
		Transport: o.Gossip, Logger: n.log,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("herd: %w", err)
	}
	rc := remote.New(remote.Config{Runtime: n.rt, Codec: n.codec, Errors: n.errs, Members: mem, Logger: n.log})
	rc.Handle(getOrStartService, n.serveGetOrStart)
	tr, err := transport.New(transport.Config{
		Self: n.id, Listener: ln, Advertise: advertise, TLS: tlsID, Dial: o.Dial, Handler: mux{rc, n.reps}, Logger: n.log,
	})
	if err != nil {
		mem.Shutdown()
		ln.Close()
		return fmt.Errorf("herd: %w", err)
	}
	rc.Attach(tr)
	n.mem.Store(mem)
	n.reps.Attach(tr, mem)
	n.rt.SetRemote(rc)
	n.cl = &cluster{mem: mem, tr: tr, remote: rc}
	if err := n.startSupervisor(cfg, mem, rc); err != nil {
		tr.Close()
		mem.Shutdown()
		return err
	}
	tr.Start() // only now: what arrives finds everything wired
	return nil
}

// newCodec returns a codec registry that already knows the types every
// node can send without registering them.
func newCodec() *codec.Registry {
	r, _ := codec.NewRegistry(codec.Options{})
	codec.MustRegister[string](r, "string")
	codec.MustRegister[[]byte](r, "bytes")
	codec.MustRegister[bool](r, "bool")
	codec.MustRegister[int](r, "int")
	codec.MustRegister[int64](r, "int64")
	codec.MustRegister[uint64](r, "uint64")
	codec.MustRegister[float64](r, "float64")
	codec.MustRegister[time.Time](r, "time")
	codec.MustRegister[time.Duration](r, "duration")
	codec.MustRegister[PID](r, "herd.PID")
	codec.MustRegister[NodeID](r, "herd.NodeID")
	codec.MustRegister[[]string](r, "[]string")
	codec.MustRegister[map[string]string](r, "map[string]string")
	codec.MustRegister[*getOrStartReq](r, getOrStartService)
	codec.MustRegister[ChildStash](r, "herd.ChildStash")
	return r
}

// newErrors returns the table of errors that keep their identity across
// nodes: the runtime's, the registry's and the supervisor's.
func newErrors() *remote.Errors {
	e := remote.NewErrors()
	for _, err := range []error{
		registry.ErrTaken, registry.ErrNotRegistered, registry.ErrInvalid,
		supervisor.ErrMaxRestarts, supervisor.ErrAlreadyStarted, supervisor.ErrAlreadyPresent,
		supervisor.ErrNotFound, supervisor.ErrRunning, supervisor.ErrMaxChildren,
		dsup.ErrLeaving, dsup.ErrNoQuorum, dsup.ErrNoNode, dsup.ErrNotOwner, dsup.ErrNotReplicated, proc.ErrNoCheckpoint,
	} {
		e.Register(err)
	}
	return e
}

// RegisterMessage makes values of type T sendable to processes of other
// nodes, under a stable name that every node must register alike. Local
// messages need no registration. Sending an unregistered type to another
// node fails at the sender with a clear error.
func RegisterMessage[T any](n *Node, name string) error {
	if err := codec.Register[T](n.codec, name); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	return nil
}

// RegisterError makes err keep its identity when it crosses nodes (as an
// exit reason, or a call's error): errors.Is(received, err) holds on the
// other node if it registered err too. Errors are matched by their text.
func RegisterError(n *Node, err error) { n.errs.Register(err) }

// Clustered reports whether the node runs in a cluster (Config.Bind set).
func (n *Node) Clustered() bool { return n.cl != nil }

// Members returns the node lives of the cluster that have not ended
// (only this node when not clustered).
func (n *Node) Members() []Member {
	if n.cl == nil {
		return []Member{{ID: n.id, Status: MemberAlive, Version: Version}}
	}
	return n.cl.mem.Members()
}

// Member returns how the cluster sees a node life.
func (n *Node) Member(id NodeID) (Member, bool) {
	if n.cl == nil {
		if id == n.id {
			return Member{ID: n.id, Status: MemberAlive, Version: Version}, true
		}
		return Member{}, false
	}
	return n.cl.mem.Member(id)
}

// Lookup returns the current life of the node named name, if it is a
// member that has not ended.
func (n *Node) Lookup(name string) (NodeID, bool) {
	if n.cl == nil {
		return n.id, name == n.id.Name
	}
	m, ok := n.cl.mem.Latest(name)
	return m.ID, ok
}

// SubscribeMembers delivers membership changes in batches, starting with
// every member known now. Close the subscription when done.
func (n *Node) SubscribeMembers() (*MemberSubscription, error) {
	if n.cl == nil {
		return nil, errors.New("herd: not clustered")
	}
	return n.cl.mem.Subscribe(), nil
}

// SpawnOn starts a process of a registered kind on another node (or this
// one) and returns once its Init has returned there. args must be a
// registered message type (see RegisterMessage) when node is another one.
func (n *Node) SpawnOn(ctx context.Context, node NodeID, kind string, args any, opts ...SpawnOption) (PID, error) {
	if node == n.id || node.IsZero() {
		return n.Spawn(ctx, kind, args, opts...)
	}
	if n.cl == nil {
		return PID{}, fmt.Errorf("herd: spawn on %v: %w", node, ErrNodeDown)
	}
	if len(opts) > 0 {
		return PID{}, errors.New("herd: spawn options apply to local spawns only")
	}
	return n.cl.remote.Spawn(ctx, node, kind, args)
}

// TransportStats returns the node-to-node transport's counters.
func (n *Node) TransportStats() transport.Stats {
	if n.cl == nil {
		return transport.Stats{}
	}
	return n.cl.tr.Stats()
}

// GossipAddr returns the address other members join this node at ("" when
// not clustered).
func (n *Node) GossipAddr() string {
	if n.cl == nil {
		return ""
	}
	return n.cl.mem.GossipAddr()
}

// Addr returns the address other nodes' transports dial ("" when not
// clustered).
func (n *Node) Addr() string {
	if n.cl == nil {
		return ""
	}
	return n.cl.tr.Addr()
}

// Halt stops the node at once, as a crash would: no leave message, no
// Terminate, connections cut. Other nodes see it fail. It is for tests of
// failure handling; use Stop to leave gracefully.
func (n *Node) Halt() {
	n.stopOnce.Do(func() {
		n.sup.Close()
		if n.cl != nil {
			n.cl.mem.Shutdown()
			n.cl.tr.Close()
			n.cl.remote.Close()
		}
		n.reps.Halt()
		n.reg.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = n.rt.Shutdown(ctx) // an ended context: everything is killed
		n.stopErr = errors.New("herd: node halted")
	})
}
