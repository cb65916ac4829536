package proc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd/internal/idtable"
)

// Config configures a Runtime.
type Config struct {
	// Node is the identity of this node's life. Required.
	Node NodeID
	// Logger receives the runtime's logs. Default: slog.Default().
	Logger *slog.Logger
	// MailboxWarn is the mailbox length at which a warning is logged (once
	// each time a mailbox grows past it). Default 10000; negative disables.
	MailboxWarn int
	// Owner is whatever owns the runtime (herd's Node), returned by Owner,
	// so code holding a process's Context can reach it.
	Owner any
}

// Checkpointer stores a process's checkpointed state; the distributed
// supervisor is one. It is called on the process's goroutine.
type Checkpointer interface {
	Checkpoint(pid PID, state []byte) error
}

// Resolver maps a registered name to its holder. It must not block and must
// not call back into the Runtime while holding its own locks.
type Resolver func(EnvName) (PID, bool)

// Runtime is one node's process runtime: its process table, kinds and
// timers. All methods are safe for concurrent use.
type Runtime struct {
	node        NodeID
	owner       any
	log         *slog.Logger
	mailboxWarn int
	table       idtable.Table[process]
	refs        atomic.Uint64
	resolve     atomic.Pointer[Resolver]
	remote      Remote
	live        atomic.Int64 // processes not yet fully ended
	roots       atomic.Int64 // of which spawned by the node
	closed      atomic.Bool
	drained     chan struct{}
	chunks      sync.Pool // of *chunk
	waiters     sync.Pool // of *waiter, for calls made outside processes

	checkpoint atomic.Pointer[Checkpointer]

	mu    sync.RWMutex
	kinds map[string]func() Process
}

// New returns a runtime for the node cfg.Node.
func New(cfg Config) (*Runtime, error) {
	if cfg.Node.Name == "" {
		return nil, errors.New("proc: Config.Node.Name is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.MailboxWarn == 0:
		cfg.MailboxWarn = 10000
	case cfg.MailboxWarn < 0:
		cfg.MailboxWarn = 0
	}
	rt := &Runtime{
		node:        cfg.Node,
		owner:       cfg.Owner,
		log:         cfg.Logger,
		mailboxWarn: cfg.MailboxWarn,
		drained:     make(chan struct{}, 1),
		kinds:       make(map[string]func() Process),
	}
	rt.chunks.New = func() any { return new(chunk) }
	rt.waiters.New = func() any { return newWaiter(PID{}) }
	return rt, nil
}

// Node returns the identity of the node the runtime belongs to.
func (rt *Runtime) Node() NodeID { return rt.node }

// Logger returns the runtime's logger.
func (rt *Runtime) Logger() *slog.Logger { return rt.log }

// Owner returns Config.Owner.
func (rt *Runtime) Owner() any { return rt.owner }

// SetCheckpointer sets where Context.Checkpoint stores state.
func (rt *Runtime) SetCheckpointer(c Checkpointer) { rt.checkpoint.Store(&c) }

// SetResolver installs the function that resolves Name and EnvName targets.
// Until one is set, sending to a name fails with ErrNoName.
func (rt *Runtime) SetResolver(r Resolver) { rt.resolve.Store(&r) }

// RegisterKind makes kind spawnable by name. new must return a fresh Process
// on each call. Registering a kind twice is an error.
func (rt *Runtime) RegisterKind(kind string, new func() Process) error {
	if kind == "" || new == nil {
		return errors.New("proc: RegisterKind needs a name and a constructor")
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if _, ok := rt.kinds[kind]; ok {
		return fmt.Errorf("proc: kind %q is already registered", kind)
	}
	rt.kinds[kind] = new
	return nil
}

// Kinds returns the registered kind names, sorted.
func (rt *Runtime) Kinds() []string {
	rt.mu.RLock()
	defer rt.mu.RUnlock()
	names := make([]string, 0, len(rt.kinds))
	for k := range rt.kinds {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// SpawnOption adjusts one Spawn.
type SpawnOption func(*spawnConfig)

type spawnConfig struct {
	link    bool
	trap    bool
	hooks   []func(*Context) error
	restore []byte
	restart bool // restore set
}

// Linked links the new process to the spawning process before Init runs.
// It applies only to spawns made from a process's Context. If Init fails the
// link is removed and no exit signal is sent: the spawner gets the error.
func Linked() SpawnOption { return func(c *spawnConfig) { c.link = true } }

// TrapExits starts the process trapping exits, before Init.
func TrapExits() SpawnOption { return func(c *spawnConfig) { c.trap = true } }

// BeforeInit runs fn with the new process's Context before Init; an error
// fails the spawn as an Init error would. The layers above use it to
// register a name for the process before anything else can see it.
func BeforeInit(fn func(*Context) error) SpawnOption {
	return func(c *spawnConfig) { c.hooks = append(c.hooks, fn) }
}

// RestoreState makes the new process restore state (from Stash or a
// checkpoint) after its Init and before its first message, when its
// behaviour has a Restore method (see Stasher); Restore's error fails the
// spawn as Init's would. A behaviour without one starts from Init alone.
func RestoreState(state []byte) SpawnOption {
	return func(c *spawnConfig) { c.restore, c.restart = state, true }
}

// Spawn starts a process of a registered kind. It returns once Init has
// returned; see Process.Init.
func (rt *Runtime) Spawn(kind string, args any, opts ...SpawnOption) (PID, error) {
	return rt.spawnKind(nil, kind, args, opts)
}

// SpawnProcess starts a process whose behaviour is b.
func (rt *Runtime) SpawnProcess(b Process, args any, opts ...SpawnOption) (PID, error) {
	return rt.spawn(nil, b, "", args, opts)
}

func (rt *Runtime) spawnKind(parent *process, kind string, args any, opts []SpawnOption) (PID, error) {
	rt.mu.RLock()
	newFn := rt.kinds[kind]
	rt.mu.RUnlock()
	if newFn == nil {
		return PID{}, fmt.Errorf("spawn %q: %w", kind, ErrUnknownKind)
	}
	b := newFn()
	if b == nil {
		return PID{}, fmt.Errorf("spawn %q: constructor returned nil", kind)
	}
	return rt.spawn(parent, b, kind, args, opts)
}

func (rt *Runtime) spawn(parent *process, b Process, kind string, args any, opts []SpawnOption) (PID, error) {
	if b == nil {
		return PID{}, errors.New("spawn: nil Process")
	}
	var cfg spawnConfig
	for _, o := range opts {
		o(&cfg)
	}
	if kind == "" {
		kind = fmt.Sprintf("%T", b)
	}
	id := rt.table.Reserve()
	p := &process{rt: rt, pid: PID{Node: rt.node, ID: id}, b: b, kind: kind, st: stInit}
	p.ctx.p = p
	p.trap.Store(cfg.trap)
	if parent != nil {
		p.parent = parent.pid
	} else {
		p.root = true
		rt.roots.Add(1)
	}
	rt.live.Add(1)
	rt.table.Store(id, p)
	// Published before closed is read: a Shutdown that this spawn did not
	// see will see this process (atomics are sequentially consistent).
	if rt.closed.Load() {
		p.die(ErrStopped)
		return PID{}, fmt.Errorf("spawn %s: %w", kind, ErrStopped)
	}

	if cfg.link && parent != nil {
		if err := rt.link(parent, p.pid); err != nil {
			p.die(err)
			return PID{}, fmt.Errorf("spawn %s: link to parent: %w", kind, err)
		}
	}
	fail := func(reason error) (PID, error) {
		if parent != nil {
			rt.unlink(parent, p.pid)
		}
		p.die(reason)
		return PID{}, fmt.Errorf("spawn %s: %w", kind, reason)
	}
	for _, h := range cfg.hooks {
		if err := h(&p.ctx); err != nil {
			return fail(err)
		}
	}
	if err := p.init(args); err != nil {
		return fail(err)
	}
	if cfg.restart {
		if err := p.restore(cfg.restore); err != nil {
			return fail(fmt.Errorf("restore: %w", err))
		}
	}

	p.mu.Lock()
	if p.st == stDead { // killed during Init
		reason := p.reason
		p.mu.Unlock()
		return PID{}, fmt.Errorf("spawn %s: %w", kind, &ExitError{PID: p.pid, Reason: reason})
	}
	if p.stopReq != nil && p.exitReq == nil {
		p.exitReq = p.stopReq
	}
	start := p.mbox.n > 0 || p.exitReq != nil
	if start {
		p.st = stRunning
	} else {
		p.st = stIdle
	}
	p.mu.Unlock()
	if start {
		go p.runner()()
	}
	return p.pid, nil
}

func (p *process) init(args any) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &CrashError{Value: v, Stack: stack()}
		}
	}()
	return p.b.Init(&p.ctx, args)
}

func (p *process) restore(state []byte) (err error) {
	s, ok := p.b.(interface{ Restore([]byte) error })
	if !ok {
		return nil
	}
	defer func() {
		if v := recover(); v != nil {
			err = &CrashError{Value: v, Stack: stack()}
		}
	}()
	return s.Restore(state)
}

// local returns the live process pid names on this node, or nil.
func (rt *Runtime) local(pid PID) *process {
	if pid.Node != rt.node {
		return nil
	}
	return rt.table.Load(pid.ID)
}

// Alive reports whether pid is a live process on this node.
func (rt *Runtime) Alive(pid PID) bool {
	p := rt.local(pid)
	if p == nil {
		return false
	}
	return p.flags.Load()&flagDead == 0
}

// Resolve turns a target into a PID: a PID as is, a name through the
// resolver. The error matches ErrNoName and ErrNoProcess.
func (rt *Runtime) Resolve(to Target) (PID, error) {
	var n EnvName
	switch t := to.(type) {
	case PID:
		return t, nil
	case Name:
		n = EnvName{Name: string(t)}
	case EnvName:
		n = t
	default: // the set is closed, so only a nil Target lands here
		return PID{}, fmt.Errorf("proc: nil target: %w", ErrNoProcess)
	}
	if r := rt.resolve.Load(); r != nil {
		if pid, ok := (*r)(n); ok {
			return pid, nil
		}
	}
	return PID{}, fmt.Errorf("%w: %w: %s", ErrNoProcess, ErrNoName, describe(n))
}

// route finds where pid lives: a local process, or another node (the
// Remote to reach it through), or explains why neither.
func (rt *Runtime) route(pid PID) (*process, Remote, error) {
	if pid.Node == rt.node {
		if p := rt.table.Load(pid.ID); p != nil {
			return p, nil, nil
		}
		return nil, nil, fmt.Errorf("%v: %w", pid, ErrNoProcess)
	}
	if pid.Node.Name == rt.node.Name {
		// A process of this node's previous life.
		return nil, nil, fmt.Errorf("%v: %w", pid, ErrNoProcess)
	}
	if rt.remote != nil && !pid.IsZero() {
		return nil, rt.remote, nil
	}
	return nil, nil, fmt.Errorf("%v: %w", pid, ErrNodeDown)
}

// Send delivers msg to HandleInfo of the target, asynchronously. Delivery is
// at most once; between one sender and one receiver, messages arrive in the
// order they were sent. A nil error means the message was accepted, not that
// it was handled; an error says the target is known not to exist. To a
// process of another node, it may wait for room in the send queue.
func (rt *Runtime) Send(to Target, msg any) error {
	return rt.send(context.Background(), PID{}, to, msg, kindInfo)
}

// Cast delivers msg to HandleCast of the target, asynchronously, as Send.
func (rt *Runtime) Cast(to Target, msg any) error {
	return rt.send(context.Background(), PID{}, to, msg, kindCast)
}

func (rt *Runtime) send(ctx context.Context, from PID, to Target, msg any, k kind) error {
	pid, ok := to.(PID)
	if !ok {
		var err error
		if pid, err = rt.Resolve(to); err != nil {
			return err
		}
	}
	p, remote, err := rt.route(pid)
	if err != nil {
		return err
	}
	if remote != nil {
		return remote.Send(ctx, from, pid, msg, k == kindCast)
	}
	if _, err := p.enqueue(envelope{msg: msg, kind: k}); err != nil {
		return err
	}
	return nil
}

// Call sends msg to HandleCall of the target and waits for the reply. It
// ends with the reply, ctx's error, or an error matching ErrNoProcess (an
// *ExitError with the reason if the process exited before replying). When
// ctx ends first, the call may still be handled; its reply is dropped.
func (rt *Runtime) Call(ctx context.Context, to Target, msg any) (any, error) {
	return rt.call(ctx, nil, to, msg)
}

func (rt *Runtime) call(ctx context.Context, from *process, to Target, msg any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pid, ok := to.(PID)
	if !ok {
		var err error
		if pid, err = rt.Resolve(to); err != nil {
			return nil, err
		}
	}
	if from != nil && pid == from.pid {
		return nil, fmt.Errorf("call %v: %w", pid, ErrCallSelf)
	}
	p, remote, err := rt.route(pid)
	if err != nil {
		return nil, err
	}
	if remote != nil {
		var fromPID PID
		if from != nil {
			fromPID = from.pid
		}
		return remote.Call(ctx, fromPID, pid, msg)
	}
	var w *waiter
	owned := false
	// A process's calls use its own waiter; a call made through its
	// Context from another goroutine, while that waiter is in use, gets a
	// pooled one (which does not carry the caller's PID).
	if from != nil && from.callsUse.CompareAndSwap(false, true) {
		if from.calls == nil {
			from.calls = newWaiter(from.pid)
		}
		w, owned = from.calls, true
		defer from.callsUse.Store(false)
	} else {
		w = rt.waiters.Get().(*waiter)
	}
	seq := w.begin()
	dead, err := p.enqueue(envelope{msg: msg, w: w, seq: seq, kind: kindCall})
	if err != nil {
		return nil, err
	}
	val, err := w.wait(ctx, seq, dead, p)
	// ch is empty again and seq is done: w can serve the next call.
	if !owned {
		rt.waiters.Put(w)
	}
	return val, err
}

// Exit sends an exit signal to pid, as if from a process `from` (zero for
// none). Kill ends the process at once. Any other reason stops a process
// that does not trap exits (its Terminate runs after its current callback),
// except Normal, which it ignores. A process that traps exits gets an Exit
// message instead, unless the signal comes from its parent (the process that
// spawned it, or the node, from=zero, for processes the node spawned): that
// always stops it, as a gen_server's parent does.
func (rt *Runtime) Exit(from, pid PID, reason error) error {
	p, remote, err := rt.route(pid)
	if err != nil {
		return err
	}
	if remote != nil {
		return remote.Exit(from, pid, normalize(reason))
	}
	p.signal(from, normalize(reason), sigExit)
	return nil
}

// StopProcess stops pid and waits for it to exit: it sends an exit signal
// with reason (see Exit), waits up to budget, then kills it. A budget of zero
// or less kills at once. It returns the exit reason and nil if the process
// exited within the budget, ErrTimeout (or ctx's error) if it had to be
// killed, and ErrNoProcess if there was no such process. When it returns,
// whatever the process held (its names) has been released.
func (rt *Runtime) StopProcess(ctx context.Context, from, pid PID, reason error, budget time.Duration) (exit error, err error) {
	p := rt.local(pid)
	if p == nil {
		return nil, fmt.Errorf("stop %v: %w", pid, ErrNoProcess)
	}
	// Closed after the exit hooks have run, so the caller can reuse what the
	// process held (its names) at once.
	dead := p.doneChan()
	if budget <= 0 {
		p.signal(from, Kill, sigExit)
		<-dead
		return p.exitReason(), nil
	}
	p.signal(from, normalize(reason), sigExit)
	t := time.NewTimer(budget)
	defer t.Stop()
	select {
	case <-dead:
		return p.exitReason(), nil
	case <-t.C:
		err = fmt.Errorf("stop %v after %v: %w", pid, budget, ErrTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.signal(from, Kill, sigExit)
	<-dead
	return p.exitReason(), err
}

// StashAndStop stops pid as StopProcess does with reason Shutdown, but
// first has it hand over its state: on the process's goroutine, after the
// callback it is running and before Terminate, its Stash runs. It returns
// the state and stashErr nil if Stash ran and succeeded; stashErr is
// ErrNoStash if the behaviour is not a Stasher or the process ended
// without running it (it was killed, or exited on its own first), or
// Stash's own error. err is StopProcess's.
func (rt *Runtime) StashAndStop(ctx context.Context, from, pid PID, budget time.Duration) (state []byte, stashErr, err error) {
	p := rt.local(pid)
	if p == nil {
		return nil, ErrNoStash, fmt.Errorf("stop %v: %w", pid, ErrNoProcess)
	}
	req := &stashReq{}
	p.stash.Store(req)
	_, err = rt.StopProcess(ctx, from, pid, Shutdown, budget)
	// The death channel closed after terminate wrote req (or never will
	// write it: the process was killed, and terminate saw it dead).
	if req.done.Load() {
		return req.state, req.err, err
	}
	return nil, ErrNoStash, err
}

// MonitorFunc calls fn when pid exits, on the goroutine ending it, after the
// exit hooks (what the process held is released) and before any Down or exit
// signal is delivered. fn must be quick and must not block. It reports false,
// and never calls fn, if pid is not a live local process.
func (rt *Runtime) MonitorFunc(pid PID, fn func(pid PID, reason error)) (Ref, bool) {
	return rt.watchFunc(pid, fn, false)
}

// MonitorRemoteFunc is MonitorFunc for a process that may be on another
// node: fn is called once when it exits or its node is lost (at once if it
// does not exist). cancel stops the monitor.
func (rt *Runtime) MonitorRemoteFunc(pid PID, fn func(pid PID, reason error)) (cancel func()) {
	_, remote, err := rt.route(pid)
	switch {
	case err != nil:
		reason := ErrNoProcess
		if errors.Is(err, ErrNodeDown) {
			reason = ErrNodeDown
		}
		fn(pid, reason)
		return func() {}
	case remote != nil:
		return remote.MonitorFunc(pid, fn)
	}
	ref, ok := rt.MonitorFunc(pid, fn)
	if !ok {
		fn(pid, ErrNoProcess)
		return func() {}
	}
	return func() { rt.DemonitorFunc(pid, ref) }
}

// ExitHook calls fn when pid exits, before anything else hears of the exit:
// it is how the layers above release what a process held (its names), so
// that whoever learns of the exit can take them at once. fn must be quick,
// must not block, and must not wait for other processes. It reports false,
// and never calls fn, if pid is not a live local process.
func (rt *Runtime) ExitHook(pid PID, fn func(pid PID, reason error)) (Ref, bool) {
	return rt.watchFunc(pid, fn, true)
}

func (rt *Runtime) watchFunc(pid PID, fn func(PID, error), hook bool) (Ref, bool) {
	p := rt.local(pid)
	if p == nil {
		return 0, false
	}
	ref := Ref(rt.refs.Add(1))
	return ref, p.addWatcher(ref, watcher{fn: fn, hook: hook})
}

// DemonitorFunc removes a MonitorFunc or an ExitHook. fn may still run if
// pid is exiting concurrently.
func (rt *Runtime) DemonitorFunc(pid PID, ref Ref) {
	if p := rt.local(pid); p != nil {
		p.removeWatcher(ref)
	}
}

func (rt *Runtime) monitor(w *process, target PID) Ref {
	ref := Ref(rt.refs.Add(1))
	w.mu.Lock()
	if w.st == stDead {
		w.mu.Unlock()
		return ref
	}
	if w.watching == nil {
		w.watching = make(map[Ref]PID)
	}
	w.watching[ref] = target
	w.mu.Unlock()
	p, remote, err := rt.route(target)
	if err != nil {
		reason := ErrNoProcess
		if errors.Is(err, ErrNodeDown) {
			reason = ErrNodeDown
		}
		rt.deliverDown(w.pid, ref, target, reason)
		return ref
	}
	if remote != nil {
		remote.Monitor(w.pid, ref, target)
		return ref
	}
	if !p.addWatcher(ref, watcher{pid: w.pid}) {
		rt.deliverDown(w.pid, ref, target, ErrNoProcess)
		return ref
	}
	// If the watcher died meanwhile, its exit could not remove this monitor
	// from the target; do it now, so a long-lived target does not keep it.
	if w.flags.Load()&flagDead != 0 {
		p.removeWatcher(ref)
	}
	return ref
}

func (rt *Runtime) demonitor(w *process, ref Ref) bool {
	w.mu.Lock()
	target, ok := w.watching[ref]
	delete(w.watching, ref)
	w.mu.Unlock()
	if !ok {
		return false
	}
	if _, remote, _ := rt.route(target); remote != nil {
		remote.Demonitor(w.pid, ref, target)
	} else if p := rt.local(target); p != nil {
		p.removeWatcher(ref)
	}
	return true
}

func (rt *Runtime) deliverDown(watcher PID, ref Ref, pid PID, reason error) {
	if w := rt.local(watcher); w != nil {
		w.enqueue(envelope{kind: kindDown, msg: Down{Ref: ref, PID: pid, Reason: reason}})
	}
}

func (rt *Runtime) link(a *process, pid PID) error {
	if pid == a.pid {
		return nil
	}
	b, remote, err := rt.route(pid)
	if err != nil {
		return err
	}
	if remote != nil {
		return rt.linkRemote(a, pid, remote)
	}
	first, second := a, b
	if b.pid.ID < a.pid.ID {
		first, second = b, a
	}
	first.mu.Lock()
	second.mu.Lock()
	defer first.mu.Unlock()
	defer second.mu.Unlock()
	if a.st == stDead {
		return fmt.Errorf("%v: %w", a.pid, ErrNoProcess)
	}
	if b.st == stDead {
		return fmt.Errorf("%v: %w", pid, ErrNoProcess)
	}
	if a.links == nil {
		a.links = make(map[PID]struct{})
	}
	if b.links == nil {
		b.links = make(map[PID]struct{})
	}
	a.links[pid] = struct{}{}
	b.links[a.pid] = struct{}{}
	return nil
}

// linkRemote records the link on a's side first, so that an exit signal
// through it that comes back at once is not mistaken for a stale one.
func (rt *Runtime) linkRemote(a *process, pid PID, remote Remote) error {
	a.mu.Lock()
	if a.st == stDead {
		a.mu.Unlock()
		return fmt.Errorf("%v: %w", a.pid, ErrNoProcess)
	}
	if a.links == nil {
		a.links = make(map[PID]struct{})
	}
	a.links[pid] = struct{}{}
	a.mu.Unlock()
	if err := remote.Link(a.pid, pid); err != nil {
		a.mu.Lock()
		delete(a.links, pid)
		a.mu.Unlock()
		return err
	}
	return nil
}

func (rt *Runtime) unlink(a *process, pid PID) {
	a.mu.Lock()
	_, had := a.links[pid]
	delete(a.links, pid)
	a.mu.Unlock()
	if _, remote, _ := rt.route(pid); remote != nil {
		if had {
			remote.Unlink(a.pid, pid)
		}
		return
	}
	if b := rt.local(pid); b != nil {
		b.mu.Lock()
		delete(b.links, a.pid)
		b.mu.Unlock()
	}
}

// released accounts for a process that ended, as the last step of its end.
// While shutting down, it wakes Shutdown to look again at what is left.
func (rt *Runtime) released(root bool) {
	if root {
		rt.roots.Add(-1)
	}
	rt.live.Add(-1)
	if rt.closed.Load() {
		select {
		case rt.drained <- struct{}{}:
		default:
		}
	}
}

// Count returns the number of live processes.
func (rt *Runtime) Count() int { return int(rt.live.Load()) }

// Info describes a live process.
type Info struct {
	PID       PID
	Kind      string // the registered kind, or the Go type for SpawnProcess
	Parent    PID    // the spawning process, zero for processes spawned by the node
	Mailbox   int    // messages not yet handled (counted to a chunk of 32 once a batch is under way)
	Running   bool   // holds a goroutine: handling messages, or in Init
	Links     int
	Monitors  int // monitors on this process
	TrapExits bool
}

// Info describes pid, if it is a live local process.
func (rt *Runtime) Info(pid PID) (Info, bool) {
	p := rt.local(pid)
	if p == nil {
		return Info{}, false
	}
	return p.info()
}

// Processes calls fn for every live local process, in spawn order, until fn
// returns false.
func (rt *Runtime) Processes(fn func(Info) bool) {
	rt.table.Range(func(_ uint64, p *process) bool {
		if in, ok := p.info(); ok {
			return fn(in)
		}
		return true
	})
}

func (p *process) info() (Info, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st == stDead {
		return Info{}, false
	}
	return Info{
		PID: p.pid, Kind: p.kind, Parent: p.parent, Mailbox: p.mbox.n + int(p.inflight.Load()), Running: p.st != stIdle,
		Links: len(p.links), Monitors: len(p.watchers), TrapExits: p.trap.Load(),
	}, true
}

// Shutdown stops every process and refuses new ones. Processes spawned by the
// node are told to stop with reason Shutdown, all at once, trapping exits or
// not, and run Terminate; a supervisor among them stops its own children in
// order first, so ordering is the supervisors' business. Whatever then
// remains (processes whose parent left them behind) is told the same.
// Whatever is still alive when ctx ends is killed, and Shutdown returns
// ctx's error.
func (rt *Runtime) Shutdown(ctx context.Context) error {
	rt.closed.Store(true)
	for _, pass := range []struct {
		match func(*process) bool
		left  *atomic.Int64
	}{
		{func(p *process) bool { return p.root }, &rt.roots},
		{func(*process) bool { return true }, &rt.live},
	} {
		rt.table.Range(func(_ uint64, p *process) bool {
			if pass.match(p) {
				p.signal(PID{}, Shutdown, sigStop)
			}
			return true
		})
		for pass.left.Load() > 0 {
			select {
			case <-rt.drained:
			case <-ctx.Done():
				rt.table.Range(func(_ uint64, p *process) bool {
					p.die(Killed)
					return true
				})
				return ctx.Err()
			}
		}
	}
	return nil
}
