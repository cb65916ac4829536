package herd

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd/internal/codec"
	"github.com/herdkit/herd/internal/dsup"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
	"github.com/herdkit/herd/internal/remote"
	"github.com/herdkit/herd/internal/replica"
)

// Config configures a node.
type Config struct {
	// Name is the node's name, unique in its cluster: letters, digits,
	// '.', '_' and '-', starting with a letter or digit, at most 253 bytes.
	// Default: the host name.
	Name string
	// Incarnation tells this life of the node from earlier ones. Default:
	// the boot time in nanoseconds, which grows from one boot to the next.
	// Set it only in tests.
	Incarnation uint64
	// Logger receives the node's logs. Default: slog.Default().
	Logger *slog.Logger
	// MailboxWarn is the mailbox length at which a process's mailbox is
	// reported as long. Default 10000; negative disables.
	MailboxWarn int
	// StopTimeout bounds Stop when its context has no deadline: processes
	// still alive after it are killed. Default 30s.
	StopTimeout time.Duration

	// Clustering. A node with Bind set joins a cluster; without, it runs
	// alone and other nodes' PIDs are unreachable (ErrNodeDown).

	// Bind is the host:port node-to-node traffic is accepted on (port 0
	// picks one).
	Bind string
	// Advertise is the host:port other nodes dial; default the bound one.
	Advertise string
	// GossipBind is the host:port membership gossip uses (UDP and TCP);
	// default Bind's host with a free port. Join addresses are gossip
	// addresses.
	GossipBind string
	// GossipAdvertise is the gossip host:port other members reach; default
	// the bound one.
	GossipAdvertise string
	// Join lists gossip addresses (host:port) of members to join through.
	// They are retried with backoff until one answers.
	Join []string
	// DNSName, with DNSPort, finds members by A/AAAA records (a Kubernetes
	// headless service); DNSSRV by SRV records. Retried like Join.
	DNSName string
	DNSPort int
	DNSSRV  string
	// Profile names the failure-detection timings: "lan" (default, about
	// 2-2.5 s to declare a silent failure) or "local" (tests, about 0.5 s).
	// A killed node is usually declared dead much faster, when its
	// connections are refused.
	Profile string
	// Tags are advertised to other members (roles, zones).
	Tags map[string]string
	// TLS makes node-to-node traffic mutual TLS with the cluster CA.
	TLS *TLS
	// GossipKeys encrypt gossip (16, 24 or 32 bytes each; the first is
	// used to send). Rotate by adding the new key on every node, then
	// making it first, then removing the old one.
	GossipKeys [][]byte
	// Insecure allows listening beyond loopback without TLS or gossip
	// encryption. Without it, such a node refuses to start.
	Insecure bool

	// DataDir, if set, is where the node keeps durable state (one bbolt
	// file, herd.db): replicated maps opened with MapDurable. One node
	// per directory.
	DataDir string

	// NameResolver, if set, decides which registration of a unique name
	// keeps it when a healed partition finds it held twice. Default: the
	// earliest registration, then the lower node identity. Every node of
	// a cluster must use the same.
	NameResolver NameResolver

	// Distributed supervisor (Node.Supervisor). Every node of a cluster
	// must use the same Placement.

	// Placement places children; default UniformPlacement.
	Placement Placement
	// Redistribute says whether running children move when members join;
	// default RedistributePassive.
	Redistribute Redistribution
	// ChildIntensity is how many restarts of one distributed child one
	// node allows in ChildPeriod; one more and the child is given up
	// (Child.Failed), without affecting any other child. Default 3 in 5s.
	ChildIntensity int
	ChildPeriod    time.Duration
}

// startReplicas opens the node's replicated maps, with what its data
// directory holds.
func startReplicas(cfg *Config, id NodeID, log *slog.Logger) (*replica.Replicas, error) {
	rc := replica.Config{Self: id, Logger: log, AntiEntropy: time.Second}
	if cfg.Profile == string(membership.Local) {
		rc.AntiEntropy = 100 * time.Millisecond
	}
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("herd: data directory: %w", err)
		}
		st, err := replica.OpenStore(filepath.Join(cfg.DataDir, "herd.db"))
		if err != nil {
			return nil, fmt.Errorf("herd: %w", err)
		}
		rc.Store = st
	}
	reps, err := replica.New(rc)
	if err != nil {
		if rc.Store != nil {
			rc.Store.Close()
		}
		return nil, fmt.Errorf("herd: %w", err)
	}
	return reps, nil
}

var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// Node is one herd node: a process runtime, its kinds, and its registry.
// All methods are safe for concurrent use. A Node is started by Start and
// lives until Stop.
type Node struct {
	id       NodeID
	rt       *proc.Runtime
	reg      *registry.Replicated
	mem      atomic.Pointer[membership.Membership] // set once clustered
	log      *slog.Logger
	stopWait time.Duration
	codec    *codec.Registry
	errs     *remote.Errors
	cl       *cluster // nil when not clustered
	reps     *replica.Replicas

	mapsMu sync.Mutex
	maps   map[string]*Map

	flights flights // GetOrStart decisions in progress here
	sup     *dsup.Supervisor

	stopOnce sync.Once
	stopErr  error
}

// Start starts a node: alone, or joining a cluster when Config.Bind is set.
// It returns once the node is up and has tried to join once; joining goes on
// in the background while no member answers. Options are for herdtest.
func Start(ctx context.Context, cfg Config, opts ...StartOption) (*Node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("herd: Config.Name is empty and the host name is unknown: %w", err)
		}
		cfg.Name = host
	}
	if !nodeName.MatchString(cfg.Name) {
		return nil, fmt.Errorf("herd: node name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 253 bytes", cfg.Name)
	}
	if cfg.Incarnation == 0 {
		cfg.Incarnation = uint64(time.Now().UnixNano())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	n := &Node{
		id:       NodeID{Name: cfg.Name, Incarnation: cfg.Incarnation},
		stopWait: cfg.StopTimeout,
		codec:    newCodec(),
		errs:     newErrors(),
		maps:     make(map[string]*Map),
	}
	n.log = cfg.Logger.With("node", n.id.String())
	rt, err := proc.New(proc.Config{Node: n.id, Logger: n.log, MailboxWarn: cfg.MailboxWarn, Owner: n})
	if err != nil {
		return nil, fmt.Errorf("herd: %w", err)
	}
	n.rt = rt
	if n.reps, err = startReplicas(&cfg, n.id, n.log); err != nil {
		return nil, err
	}
	if err := n.startRegistry(&cfg); err != nil {
		n.reps.Close()
		return nil, err
	}
	if cfg.Bind != "" {
		if err := n.startCluster(ctx, &cfg, opts); err != nil {
			n.reps.Close()
			return nil, err
		}
	} else if len(opts) > 0 || len(cfg.Join) > 0 || cfg.DNSName != "" || cfg.DNSSRV != "" {
		n.reps.Close()
		return nil, errors.New("herd: joining a cluster needs Config.Bind")
	} else if err := n.startSupervisor(&cfg, nil, nil); err != nil {
		n.reps.Close()
		return nil, err
	}
	return n, nil
}

// NodeOf returns the node a process runs on, from its Context.
func NodeOf(c *Context) *Node {
	n, _ := c.Runtime().Owner().(*Node)
	return n
}

// Stop stops the node gracefully. First it hands its distributed children
// over: the other members see it leaving, it starts no new children, and
// each child is stashed (if a Stasher) and stopped within its shutdown
// budget, then given to the node the placement names, which restores the
// state before the child takes messages (with no other node to take them,
// the children keep their state for their next start). Then it stops every
// other process (see the shutdown order in the package documentation) and
// returns once they have all exited. Processes
// still alive when ctx ends, or after Config.StopTimeout if ctx has no
// deadline, are killed, and Stop returns the context's error. Stop is
// idempotent: later calls return the first call's result.
func (n *Node) Stop(ctx context.Context) error {
	n.stopOnce.Do(func() {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, n.stopWait)
			defer cancel()
		}
		if n.cl != nil {
			announce, cancel := context.WithTimeout(ctx, time.Second)
			n.cl.mem.Announce(announce)
			cancel()
		}
		if err := n.sup.Drain(ctx); err != nil {
			n.log.Warn("handing children over", "err", err)
		}
		n.sup.Close()
		n.stopErr = n.rt.Shutdown(ctx)
		if n.stopErr != nil {
			n.log.Warn("node stopped; processes that would not stop were killed", "err", n.stopErr)
		}
		if n.cl != nil {
			// What the processes sent as they stopped (Downs, link exits,
			// replies) goes out before the node leaves; then the others see
			// it leaving, then left. Each step is bounded even if the
			// processes used up the deadline.
			flush, cancel := context.WithTimeout(context.Background(), time.Second)
			n.reps.Flush()
			n.cl.tr.Flush(flush)
			cancel()
			// The leave goes out within a few gossip rounds or not at all:
			// when every member stops at once, no one is left to take it,
			// and waiting for the rest of ctx would only delay the stop.
			leave, cancel := context.WithTimeout(context.Background(), 4*time.Second)
			if err := n.cl.mem.Leave(leave); err != nil {
				n.log.Warn("leaving the cluster", "err", err)
			}
			cancel()
			n.cl.tr.Close()
			n.cl.remote.Close()
		}
		n.reg.Close()
		if err := n.reps.Close(); err != nil {
			n.log.Error("closing replicated maps", "err", err)
		}
	})
	return n.stopErr
}

// ID returns the node's identity.
func (n *Node) ID() NodeID { return n.id }

// Logger returns the node's logger.
func (n *Node) Logger() *slog.Logger { return n.log }

// Registry returns the node's registry of names and groups.
func (n *Node) Registry() Registry { return n.reg }

// RegisterKind makes a kind of process spawnable by name on node n: new
// must return a fresh Process each time. Kinds are how processes are
// started by specs that travel (supervisor child specs, and later other
// nodes): code cannot travel, a kind name can.
func RegisterKind(n *Node, kind string, new func() Process) error {
	if err := n.rt.RegisterKind(kind, new); err != nil {
		return fmt.Errorf("herd: %w", err)
	}
	return nil
}

// Kinds returns the kinds registered on the node, sorted.
func (n *Node) Kinds() []string { return n.rt.Kinds() }

// Spawn starts a process of a registered kind and returns once its Init has
// returned. If Init fails or panics, Spawn returns that error.
func (n *Node) Spawn(ctx context.Context, kind string, args any, opts ...SpawnOption) (PID, error) {
	if err := ctx.Err(); err != nil {
		return PID{}, err
	}
	return n.rt.Spawn(kind, args, opts...)
}

// SpawnProcess starts a process whose behaviour is p; see Spawn.
func (n *Node) SpawnProcess(ctx context.Context, p Process, args any, opts ...SpawnOption) (PID, error) {
	if err := ctx.Err(); err != nil {
		return PID{}, err
	}
	return n.rt.SpawnProcess(p, args, opts...)
}

// Send delivers msg to the target's HandleInfo, asynchronously and at most
// once; between one sender and one receiver, in order. The error says the
// target is known not to exist (ErrNoProcess, ErrNoName); nil does not mean
// the message was handled.
func (n *Node) Send(to Target, msg any) error { return n.rt.Send(to, msg) }

// Cast delivers msg to the target's HandleCast; otherwise as Send.
func (n *Node) Cast(to Target, msg any) error { return n.rt.Cast(to, msg) }

// Call sends msg to the target's HandleCall and waits for the reply, ctx's
// end, or the target's exit (an *ExitError matching ErrNoProcess, carrying
// the exit reason). See the typed helper Call.
func (n *Node) Call(ctx context.Context, to Target, msg any) (any, error) {
	return n.rt.Call(ctx, to, msg)
}

// SendAfter delivers msg to the target's HandleInfo after d. The target is
// resolved when the timer fires.
func (n *Node) SendAfter(to Target, msg any, d time.Duration) *Timer {
	return n.rt.SendAfter(to, msg, d)
}

// Exit sends the target an exit signal: Kill ends it at once; Shutdown or
// any other reason stops it (Terminate runs) unless it traps exits and the
// signal is not from its parent, in which case it gets an Exit message.
func (n *Node) Exit(to Target, reason error) error {
	pid, err := n.rt.Resolve(to)
	if err != nil {
		return err
	}
	return n.rt.Exit(PID{}, pid, reason)
}

// Monitor watches the target, on this node or another, from outside any
// process: the channel receives exactly one Down, when the process exits
// (after its names are released), when its node is lost (ErrNodeDown), or at
// once if it does not exist (ErrNoProcess). cancel stops the monitor; a Down
// may still arrive if the process was exiting as cancel ran.
func (n *Node) Monitor(to Target) (downs <-chan Down, cancel func()) {
	ch := make(chan Down, 1)
	pid, err := n.rt.Resolve(to)
	if err != nil {
		ch <- Down{PID: pid, Reason: ErrNoProcess}
		return ch, func() {}
	}
	cancel = n.rt.MonitorRemoteFunc(pid, func(pid PID, reason error) { ch <- Down{PID: pid, Reason: reason} })
	return ch, cancel
}

// Alive reports whether pid is a live process of this node.
func (n *Node) Alive(pid PID) bool { return n.rt.Alive(pid) }

// Info describes a live process of this node.
func (n *Node) Info(pid PID) (ProcessInfo, bool) { return n.rt.Info(pid) }

// Processes yields every live process of the node, in spawn order.
func (n *Node) Processes() iter.Seq[ProcessInfo] {
	return func(yield func(ProcessInfo) bool) { n.rt.Processes(yield) }
}

// CountProcesses returns the number of live processes.
func (n *Node) CountProcesses() int { return n.rt.Count() }
