package dsup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/registry"
	"github.com/herdkit/herd/internal/replica"
	"github.com/herdkit/herd/internal/supervisor"
)

// Errors. Test for them with errors.Is.
var (
	// ErrLeaving: the node is stopping and starts no children.
	ErrLeaving = errors.New("dsup: node is leaving")
	// ErrNoQuorum: the node sees too few members to run children.
	ErrNoQuorum = errors.New("dsup: no quorum")
	// ErrNoNode: the placement names no node for the child.
	ErrNoNode = errors.New("dsup: no node to place the child on")
	// ErrNotOwner: the child is not (or no longer) this node's.
	ErrNotOwner = errors.New("dsup: child not owned here")
	// ErrNotReplicated: a checkpoint is stored on this node, but the node
	// that would take the child over if this one were lost has not
	// confirmed it in time. It still spreads as any write does; until it
	// has, a failover may start from an older state.
	ErrNotReplicated = errors.New("dsup: checkpoint not confirmed by the node that would take over")
)

// Members is what the supervisor reads of the membership;
// *membership.Membership is one.
type Members interface {
	Members() []membership.Member
	Member(proc.NodeID) (membership.Member, bool)
	Latest(name string) (membership.Member, bool)
	Subscribe() *membership.Subscription
}

// Config configures a node's supervisor.
type Config struct {
	Self    proc.NodeID
	Runtime *proc.Runtime
	// Children is the replicated map of child records (herd.children).
	Children *replica.Map
	// Members is the cluster's membership; nil for a node alone.
	Members Members
	// Placement places children. Default Uniform.
	Placement Placement
	// Active moves children to where the placement puts them when members
	// change; default passive (a child moves only when its node goes).
	Active bool
	// Intensity is how many restarts of one child one node allows in
	// Period; one more and the child is given up (marked failed) without
	// affecting any other. Default 3 in 5s.
	Intensity int
	Period    time.Duration
	// Grace is how long this node must have been up before it claims a
	// child (its replica has caught up with the others by then) or takes
	// an owner it has never heard of for gone. Default 5s.
	Grace time.Duration
	// Spawn starts a process for spec on this node with opts (the node
	// adds the name registration and decodes the arguments).
	Spawn func(spec *Spec, opts []proc.SpawnOption) (proc.PID, error)
	// Ask sends a start request to another node's supervisor (ServeStart
	// there) and returns its answer.
	Ask func(ctx context.Context, node proc.NodeID, body []byte) ([]byte, error)
	// Share sends a record write to another node's supervisor (ServeShare
	// there) and returns once that node has joined it. Nil for a node
	// alone.
	Share func(ctx context.Context, node proc.NodeID, body []byte) error
	// ShareTimeout bounds how long a checkpoint or a start waits for the
	// node that would take the child over to confirm the write. Default
	// 2s.
	ShareTimeout time.Duration
	// Tick is how often every child is looked at again even if nothing
	// changed. Default 1s.
	Tick   time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// Stats counts what a node's supervisor did.
type Stats struct {
	Started   uint64 // children started here by StartChild
	Restarted uint64 // restarts here after an exit
	Claimed   uint64 // children taken over from a lost node
	HandedOff uint64 // children given to another node (graceful stop, moves)
	Received  uint64 // children started here that another node handed over
	Dropped   uint64 // duplicate instances stopped here
	GivenUp   uint64 // children marked failed here
}

type instState uint8

const (
	idle instState = iota // nothing runs; a start may be waiting for retryAt
	starting
	running
	stopping
)

type instance struct {
	state   instState
	pid     proc.PID
	retryAt time.Time
	armed   bool // a timer will look at the child again at retryAt
	fails   int  // consecutive failed starts, for the retry backoff
	// exited: the process ended while its start was still being recorded;
	// reason is why.
	exited bool
	reason error
}

// Supervisor is one node's part of the distributed supervisor.
type Supervisor struct {
	cfg   Config
	log   *slog.Logger
	self  proc.NodeID
	quor  Quorum
	since time.Time

	writeMu sync.Mutex // read-modify-write of records on this node

	mu       sync.Mutex
	inst     map[string]*instance
	byPID    map[uint64]string
	restarts map[string][]time.Time
	stashes  map[string]*pendingStash // from dropped duplicates, for the owner's instance
	handed   map[string]proc.NodeID   // children handed over while leaving, by target
	leaving  bool
	drainCtx context.Context
	passes   uint64 // full passes completed
	changed  chan struct{}

	leftMu      sync.Mutex                // not mu: ended runs inside Decide, under mu
	leftAt      map[proc.NodeID]time.Time // when each owner was first seen left
	unknownAt   map[proc.NodeID]time.Time // when each owner not known as a member was first met
	seenLeaving map[proc.NodeID]bool      // members seen leaving

	dirtyMu sync.Mutex
	dirty   map[string]struct{}
	all     bool
	kick    chan struct{}

	workers chan struct{}
	stats   struct {
		started, restarted, claimed, handedOff, received, dropped, givenUp atomic.Uint64
	}
	done chan struct{}
	wg   sync.WaitGroup
}

// New starts a node's supervisor.
func New(cfg Config) *Supervisor {
	if cfg.Placement == nil {
		cfg.Placement = Uniform()
	}
	if cfg.Intensity <= 0 {
		cfg.Intensity = 3
	}
	if cfg.Period <= 0 {
		cfg.Period = 5 * time.Second
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 5 * time.Second
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.ShareTimeout <= 0 {
		cfg.ShareTimeout = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Supervisor{
		cfg: cfg, log: cfg.Logger, self: cfg.Self, since: cfg.Now(),
		inst: make(map[string]*instance), byPID: make(map[uint64]string), restarts: make(map[string][]time.Time),
		stashes: make(map[string]*pendingStash), leftAt: make(map[proc.NodeID]time.Time), unknownAt: make(map[proc.NodeID]time.Time), handed: make(map[string]proc.NodeID), seenLeaving: make(map[proc.NodeID]bool),
		drainCtx: context.Background(), changed: make(chan struct{}),
		dirty: make(map[string]struct{}), all: true, kick: make(chan struct{}, 1),
		workers: make(chan struct{}, 64), done: make(chan struct{}),
	}
	s.quor, _ = cfg.Placement.(Quorum)
	cfg.Children.Observe(func(c crdt.Change) { s.markDirty(c.Key) })
	var sub *membership.Subscription
	if cfg.Members != nil {
		sub = cfg.Members.Subscribe()
	}
	s.wg.Add(1)
	go s.loop(sub)
	s.poke()
	return s
}

// Close stops the supervisor's work (not its children: the node's
// shutdown stops them) and waits for it.
func (s *Supervisor) Close() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.wg.Wait()
}

// Stats returns the counters so far.
func (s *Supervisor) Stats() Stats {
	return Stats{
		Started: s.stats.started.Load(), Restarted: s.stats.restarted.Load(), Claimed: s.stats.claimed.Load(),
		HandedOff: s.stats.handedOff.Load(), Received: s.stats.received.Load(), Dropped: s.stats.dropped.Load(),
		GivenUp: s.stats.givenUp.Load(),
	}
}

func (s *Supervisor) markDirty(id string) {
	s.dirtyMu.Lock()
	s.dirty[id] = struct{}{}
	s.dirtyMu.Unlock()
	s.poke()
}

func (s *Supervisor) markAll() {
	s.dirtyMu.Lock()
	s.all = true
	s.dirtyMu.Unlock()
	s.poke()
}

func (s *Supervisor) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Supervisor) loop(sub *membership.Subscription) {
	defer s.wg.Done()
	var members <-chan []membership.Change
	if sub != nil {
		defer sub.Close()
		members = sub.C()
	}
	tick := time.NewTicker(s.cfg.Tick)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-members:
			s.markAll()
			continue
		case <-tick.C:
			s.markAll()
			continue
		case <-s.kick:
		}
		s.dirtyMu.Lock()
		all, dirty := s.all, s.dirty
		s.all, s.dirty = false, make(map[string]struct{})
		s.dirtyMu.Unlock()
		v := s.view()
		if all {
			s.cfg.Children.Range(func(key string, _ crdt.Version) bool {
				dirty[key] = struct{}{}
				return true
			})
			s.mu.Lock()
			for id := range s.inst {
				dirty[id] = struct{}{}
			}
			s.mu.Unlock()
		}
		for id := range dirty {
			s.reconcile(v, id)
		}
		// Whoever waits on the supervisor (Drain) looks again: records
		// and members it depends on may have changed.
		s.mu.Lock()
		if all {
			s.passes++
		}
		s.signalLocked()
		s.mu.Unlock()
	}
}

// signalLocked wakes whoever waits for the supervisor's state to change.
func (s *Supervisor) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// view reads the membership as Decide needs it.
func (s *Supervisor) view() *View {
	s.mu.Lock()
	leaving := s.leaving
	s.mu.Unlock()
	v := &View{Self: s.self, Leaving: leaving, Quorum: true, Active: s.cfg.Active, Placement: s.cfg.Placement}
	status := map[proc.NodeID]membership.Status{}
	seen := 1
	if s.cfg.Members != nil {
		for _, m := range s.cfg.Members.Members() {
			status[m.ID] = m.Status
			if m.Status == membership.Leaving {
				s.leftMu.Lock()
				s.seenLeaving[m.ID] = true
				s.leftMu.Unlock()
			}
			if m.ID != s.self {
				seen++
			}
		}
	}
	if !leaving {
		v.Up = append(v.Up, s.self)
	}
	for id, st := range status {
		if id != s.self && (st == membership.Alive || st == membership.Suspect) {
			v.Up = append(v.Up, id)
		}
	}
	slices.SortFunc(v.Up, func(a, b proc.NodeID) int { return strings.Compare(a.Name, b.Name) })
	if s.quor != nil {
		v.Quorum = s.quor.HasQuorum(seen)
	}
	v.Alive = func(id proc.NodeID) bool { return id == s.self || status[id] == membership.Alive }
	now := s.cfg.Now()
	v.Settled = now.Sub(s.since) >= s.cfg.Grace
	ended := map[proc.NodeID]bool{}
	v.Ended = func(id proc.NodeID) bool {
		if id == s.self {
			return false
		}
		if e, ok := ended[id]; ok {
			return e
		}
		e := s.ended(id, now)
		ended[id] = e
		return e
	}
	return v
}

// ended reports whether node life id is gone (see View.Ended).
func (s *Supervisor) ended(id proc.NodeID, now time.Time) bool {
	if id.Name == s.self.Name {
		return id.Incarnation < s.self.Incarnation // an earlier life of this node
	}
	if s.cfg.Members == nil {
		return now.Sub(s.since) >= s.cfg.Grace
	}
	if m, ok := s.cfg.Members.Member(id); ok {
		s.leftMu.Lock()
		wasLeaving := s.seenLeaving[id]
		delete(s.unknownAt, id)
		s.leftMu.Unlock()
		if m.Status == membership.Left || m.Status == membership.Dead && wasLeaving {
			// (A node seen leaving and then declared dead was handing its
			// children over: under load, the detector may lose patience
			// with it before it is done.)
			// A node that left gracefully handed its children over before
			// it went; what it wrote may still be on its way here. Its
			// children are claimed only if it had to leave some behind.
			s.leftMu.Lock()
			at, seen := s.leftAt[id]
			if !seen {
				at = now
				s.leftAt[id] = now
				time.AfterFunc(s.cfg.Grace, s.markAll)
			}
			s.leftMu.Unlock()
			return now.Sub(at) >= s.cfg.Grace
		}
		return m.Status.Ended()
	}
	if m, ok := s.cfg.Members.Latest(id.Name); ok && m.ID.Incarnation > id.Incarnation {
		return true // superseded by a later life
	}
	// A life this node has not heard of, and no later one: most likely one
	// that just joined, whose records travelled faster than its join (or
	// one whose name's earlier lives were forgotten). It is taken for gone
	// only after a long wait, in case it joined and died unheard of.
	s.leftMu.Lock()
	defer s.leftMu.Unlock()
	at, seen := s.unknownAt[id]
	if !seen {
		at = now
		s.unknownAt[id] = now
		time.AfterFunc(unknownGrace*s.cfg.Grace, s.markAll)
	}
	return now.Sub(at) >= unknownGrace*s.cfg.Grace
}

// unknownGrace is how many grace periods a life unheard of must stay so
// before its children are claimed.
const unknownGrace = 5

// record reads a child's record here (nil if none, or malformed).
func (s *Supervisor) record(id string) *Record {
	v, ok := s.cfg.Children.Get(id)
	if !ok {
		return nil
	}
	r, err := decodeRecord(v.Value)
	if err != nil {
		s.log.Warn("dsup: ignoring malformed child record", "child", id, "err", err)
		return nil
	}
	return r
}

func (s *Supervisor) put(id string, r *Record) error {
	b, err := encodeRecord(r)
	if err != nil {
		return err
	}
	if err := s.cfg.Children.Put(id, b, crdt.Owner{}); err != nil {
		return fmt.Errorf("dsup: write %q: %w", id, err)
	}
	return nil
}

// update rewrites id's record with fn, under the write lock, if fn accepts
// the record as it reads now (fn returns false to leave it).
func (s *Supervisor) update(id string, fn func(r *Record) bool) (bool, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	r := s.record(id)
	if r == nil || !fn(r) {
		return false, nil
	}
	return true, s.put(id, r)
}

// localOf describes what runs of a child here.
func (s *Supervisor) localOf(in *instance, now time.Time) Local {
	if in == nil {
		return Local{}
	}
	switch in.state {
	case running:
		return Local{Running: true, PID: in.pid}
	case idle:
		return Local{Busy: now.Before(in.retryAt)}
	}
	return Local{Busy: true}
}

// reconcile decides about one child and starts acting on it.
func (s *Supervisor) reconcile(v *View, id string) {
	rec := s.record(id)
	now := s.cfg.Now()
	s.offerStash(id, rec, now)
	s.mu.Lock()
	in := s.inst[id]
	l := s.localOf(in, now)
	act := Decide(v, id, rec, l)
	if act.Op == None {
		if in != nil && in.state == idle && l.Busy {
			if !in.armed {
				in.armed = true
				time.AfterFunc(in.retryAt.Sub(now), func() {
					s.mu.Lock()
					in.armed = false
					s.mu.Unlock()
					s.markDirty(id)
				})
			}
			s.mu.Unlock()
			return
		}
		if in != nil && in.state == idle {
			delete(s.inst, id)
			s.signalLocked()
		}
		s.mu.Unlock()
		return
	}
	if in == nil {
		in = &instance{}
		s.inst[id] = in
	}
	switch act.Op {
	case Start, Claim:
		in.state = starting
	case Stop, Drop, Park:
		in.state = stopping
	case Handoff:
		if in.state == running {
			in.state = stopping
		}
	}
	pid, ctx := in.pid, s.drainCtx
	s.mu.Unlock()

	switch act.Op {
	case Start, Claim:
		s.spawnWorker(func() { s.restart(id, rec, act.Op) })
	case Adopt:
		ok, err := s.update(id, func(r *Record) bool { return adopt(r, rec.Owner, s.self, pid) })
		if err != nil {
			s.log.Warn("dsup: adopting a child", "child", id, "err", err)
		}
		if ok && rec.Owner != s.self {
			s.stats.claimed.Add(1)
		}
	case Stop:
		s.spawnWorker(func() { s.stop(ctx, id, pid, rec, Stop, proc.NodeID{}) })
	case Drop, Park:
		s.spawnWorker(func() { s.stop(ctx, id, pid, rec, act.Op, proc.NodeID{}) })
	case Handoff:
		if l.Running {
			s.spawnWorker(func() { s.stop(ctx, id, pid, rec, Handoff, act.Target) })
			return
		}
		// Nothing runs here: give the record on.
		if _, err := s.update(id, func(r *Record) bool { return s.handOver(id, r, act.Target, nil, false) }); err != nil {
			s.log.Warn("dsup: handing a child over", "child", id, "err", err)
		}
	}
}

func (s *Supervisor) spawnWorker(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.workers <- struct{}{}
		defer func() { <-s.workers }()
		fn()
	}()
}

// handOver makes target the owner of r, with state if given; false if r is
// no longer this node's.
func (s *Supervisor) handOver(id string, r *Record, target proc.NodeID, state []byte, stashed bool) bool {
	if r.Owner != s.self {
		return false
	}
	r.Owner, r.PID, r.Epoch = target, proc.PID{}, r.Epoch+1
	if stashed {
		r.State, r.HasState = state, true
	}
	s.stats.handedOff.Add(1)
	s.mu.Lock()
	if s.leaving {
		s.handed[id] = target
	}
	s.mu.Unlock()
	return true
}

// errSuperseded: the record changed between a decision and its start.
var errSuperseded = errors.New("dsup: record changed meanwhile")

// restart starts a child this node owns (Start) or takes over (Claim),
// from the state its record keeps.
func (s *Supervisor) restart(id string, rec *Record, op Op) {
	opts := []proc.SpawnOption{
		proc.BeforeInit(func(c *proc.Context) error {
			ok, err := s.update(id, func(r *Record) bool {
				if r.Failed != "" || (op == Start && r.Owner != s.self) || (op == Claim && r.Owner != rec.Owner) {
					return false
				}
				if r.Owner != s.self {
					r.Epoch++
				}
				r.Owner, r.PID = s.self, c.Self()
				return true
			})
			if err != nil {
				return err
			}
			if !ok {
				return errSuperseded
			}
			return s.track(id, c.Self())
		}),
	}
	if rec.HasState {
		opts = append(opts, proc.RestoreState(rec.State))
	}
	pid, err := s.cfg.Spawn(&rec.Spec, opts)
	s.mu.Lock()
	in := s.inst[id]
	if in == nil {
		in = &instance{}
		s.inst[id] = in
	}
	early, why := in.exited, in.reason
	in.exited, in.reason = false, nil
	if err == nil {
		in.state, in.pid, in.fails = running, pid, 0
		switch {
		case op == Claim:
			s.stats.claimed.Add(1)
		case rec.Owner == s.self && !rec.PID.IsZero():
			s.stats.restarted.Add(1)
		default:
			s.stats.received.Add(1)
		}
	} else {
		in.state = idle
		if !errors.Is(err, errSuperseded) {
			in.fails++
			in.retryAt = s.cfg.Now().Add(backoff(in.fails))
		}
	}
	s.signalLocked()
	s.mu.Unlock()
	switch {
	case err == nil, errors.Is(err, errSuperseded):
	case errors.Is(err, proc.ErrUnknownKind), errors.Is(err, registry.ErrTaken):
		// Not the child's fault: this node does not have its kind (yet;
		// a node registers its kinds after it starts), or its name is
		// still held by an instance elsewhere that is being stopped (a
		// duplicate after a partition), or by one on a node just lost
		// whose names are not yet hidden here. Retried, not counted.
		s.log.Warn("dsup: cannot start a child here yet; will retry", "child", id, "err", err)
	default:
		s.log.Warn("dsup: starting a child failed; will retry", "child", id, "err", err)
		s.countRestart(id, err)
	}
	if err == nil && early {
		s.exited(id, pid, why) // it ended before it was seen running
		return
	}
	s.markDirty(id)
}

// adopt makes r name instance pid of node self, if r still names owner:
// from an ended owner, with a new epoch; from self (whose record named
// another instance), in the same one.
func adopt(r *Record, owner, self proc.NodeID, pid proc.PID) bool {
	if r.Owner != owner || (r.Owner == self && r.PID == pid) {
		return false
	}
	if r.Owner != self {
		r.Epoch++
	}
	r.Owner, r.PID = self, pid
	return true
}

func backoff(fails int) time.Duration {
	d := 10 * time.Millisecond << min(fails-1, 7)
	return min(d, time.Second)
}

// track follows a process started for child id: its exits come to exited.
func (s *Supervisor) track(id string, pid proc.PID) error {
	s.mu.Lock()
	s.byPID[pid.ID] = id
	if in := s.inst[id]; in != nil {
		in.pid, in.exited = pid, false
	}
	s.mu.Unlock()
	if _, ok := s.cfg.Runtime.MonitorFunc(pid, func(pid proc.PID, reason error) {
		go s.exited(id, pid, reason)
	}); !ok {
		return proc.ErrNoProcess
	}
	return nil
}

// exited handles the exit of an instance of child id.
func (s *Supervisor) exited(id string, pid proc.PID, reason error) {
	select {
	case <-s.done:
		return // the node is stopping its processes
	default:
	}
	s.mu.Lock()
	delete(s.byPID, pid.ID)
	in := s.inst[id]
	if in != nil && in.pid == pid && in.state == starting {
		// Its start is still being recorded: that path handles the exit.
		in.exited, in.reason = true, reason
		s.mu.Unlock()
		return
	}
	if in == nil || in.pid != pid || in.state != running {
		// Stopped on purpose: that path handles it.
		s.mu.Unlock()
		return
	}
	in.state, in.pid = idle, proc.PID{}
	s.signalLocked()
	s.mu.Unlock()
	rec := s.record(id)
	if rec == nil || rec.Owner != s.self || rec.PID != pid {
		s.markDirty(id)
		return
	}
	switch {
	case errors.Is(reason, registry.ErrNameConflict):
		// A duplicate elsewhere kept the name when a partition healed;
		// this node owns the child, so the duplicate is being stopped:
		// start again once the name is free, whatever the restart type,
		// and without counting it.
	case rec.Spec.Restart == supervisor.Temporary,
		rec.Spec.Restart == supervisor.Transient && !proc.IsAbnormal(reason):
		// Done: the child is forgotten.
		s.writeMu.Lock()
		if r := s.record(id); r != nil && r.Owner == s.self && r.PID == pid {
			if _, err := s.cfg.Children.Delete(id); err != nil {
				s.log.Warn("dsup: forgetting a finished child", "child", id, "err", err)
			}
		}
		s.writeMu.Unlock()
	default:
		s.countRestart(id, reason)
	}
	s.markDirty(id)
}

// countRestart counts a restart (or failed start) of child id against the
// intensity, and gives the child up when it is exceeded.
func (s *Supervisor) countRestart(id string, reason error) {
	now := s.cfg.Now()
	s.mu.Lock()
	times := append(s.restarts[id], now)
	for len(times) > 0 && now.Sub(times[0]) > s.cfg.Period {
		times = times[1:]
	}
	s.restarts[id] = times
	over := len(times) > s.cfg.Intensity
	if over {
		delete(s.restarts, id)
	}
	s.mu.Unlock()
	if !over {
		return
	}
	why := fmt.Sprintf("more than %d restarts in %v on %v; last: %v", s.cfg.Intensity, s.cfg.Period, s.self, reason)
	ok, err := s.update(id, func(r *Record) bool {
		if r.Owner != s.self {
			return false
		}
		r.Failed, r.PID = why, proc.PID{}
		return true
	})
	if err != nil {
		s.log.Warn("dsup: giving a child up", "child", id, "err", err)
	}
	if ok {
		s.stats.givenUp.Add(1)
		s.log.Error("dsup: child given up", "child", id, "reason", why)
	}
}

// stop stops the instance of child id here: quietly (Stop), stashing for
// the owner's instance (Drop), or handing it to target (Handoff) or to
// its own next start (Park).
func (s *Supervisor) stop(ctx context.Context, id string, pid proc.PID, rec *Record, op Op, target proc.NodeID) {
	budget := rec.specOrZero().budget()
	var state []byte
	var stashErr error
	if op == Stop {
		stashErr = proc.ErrNoStash
		_, _ = s.cfg.Runtime.StopProcess(ctx, proc.PID{}, pid, proc.Shutdown, budget)
	} else {
		state, stashErr, _ = s.cfg.Runtime.StashAndStop(ctx, proc.PID{}, pid, budget)
	}
	stashed := stashErr == nil
	if stashErr != nil && !errors.Is(stashErr, proc.ErrNoStash) {
		s.log.Warn("dsup: stash failed; the child's last checkpoint goes instead", "child", id, "err", stashErr)
	}
	var err error
	switch op {
	case Drop:
		s.stats.dropped.Add(1)
		if stashed {
			s.mu.Lock()
			s.stashes[id] = &pendingStash{
				msg: Stashed{Child: id, From: pid, State: state}, sent: map[proc.PID]bool{},
				until: s.cfg.Now().Add(stashWindow),
			}
			s.mu.Unlock()
		}
	case Handoff:
		_, err = s.update(id, func(r *Record) bool { return s.handOver(id, r, target, state, stashed) })
	case Park:
		_, err = s.update(id, func(r *Record) bool {
			if r.Owner != s.self || r.PID != pid {
				return false
			}
			r.PID = proc.PID{}
			if stashed {
				r.State, r.HasState = state, true
			}
			return true
		})
	}
	if err != nil {
		s.log.Warn("dsup: recording a stopped child", "child", id, "op", op.String(), "err", err)
	}
	s.mu.Lock()
	delete(s.byPID, pid.ID)
	if in := s.inst[id]; in != nil && in.pid == pid {
		delete(s.inst, id)
	}
	s.signalLocked()
	s.mu.Unlock()
	s.markDirty(id)
}

// budget is the spec's stop budget for StopProcess.
func (s Spec) budget() time.Duration {
	switch {
	case s.Shutdown == supervisor.Brutal:
		return 0
	case s.Shutdown > 0:
		return s.Shutdown
	}
	return supervisor.DefaultShutdown
}

func (r *Record) specOrZero() Spec {
	if r == nil {
		return Spec{}
	}
	return r.Spec
}

// stashWindow is how long a dropped duplicate's stash is offered to the
// owner's instances: the one running when it is dropped, and any that
// replaces it meanwhile (the owner's instance may itself be restarting,
// having lost the name to the duplicate).
const stashWindow = 5 * time.Second

type pendingStash struct {
	msg   Stashed
	sent  map[proc.PID]bool
	until time.Time
}

// offerStash sends a dropped duplicate's stash to the instance rec names,
// once per instance, within the window.
func (s *Supervisor) offerStash(id string, rec *Record, now time.Time) {
	s.mu.Lock()
	p := s.stashes[id]
	if p == nil {
		s.mu.Unlock()
		return
	}
	if now.After(p.until) || rec == nil {
		delete(s.stashes, id)
		s.mu.Unlock()
		return
	}
	to := rec.PID
	if to.IsZero() || to.Node == s.self && !s.cfg.Runtime.Alive(to) || p.sent[to] {
		s.mu.Unlock()
		return
	}
	p.sent[to] = true
	s.mu.Unlock()
	_ = s.cfg.Runtime.Send(to, p.msg)
}

// Stashed is sent to a child's instance when a duplicate of it (found
// running on another node after a partition healed) is stopped and had
// state to give: the instance may merge it.
type Stashed struct {
	_     struct{} `cbor:",toarray"`
	Child string
	From  proc.PID
	State []byte
}

// Checkpoint stores state in the record of the child pid is an instance
// of. It implements proc.Checkpointer.
func (s *Supervisor) Checkpoint(pid proc.PID, state []byte) error {
	s.mu.Lock()
	id, ok := s.byPID[pid.ID]
	s.mu.Unlock()
	if !ok {
		return proc.ErrNoCheckpoint
	}
	s.writeMu.Lock()
	r := s.record(id)
	if r == nil || r.Owner != s.self || r.PID != pid {
		s.writeMu.Unlock()
		return fmt.Errorf("dsup: checkpoint of %q by %v: %w", id, pid, ErrNotOwner)
	}
	r.State, r.HasState = state, true
	shared, err := s.putShared(id, r)
	s.writeMu.Unlock()
	if err != nil {
		return err
	}
	return s.share(id, r.Epoch, shared)
}

// putShared is put, returning the write for share.
func (s *Supervisor) putShared(id string, r *Record) ([]byte, error) {
	b, err := encodeRecord(r)
	if err != nil {
		return nil, err
	}
	shared, err := s.cfg.Children.PutShared(id, b, crdt.Owner{})
	if err != nil {
		return nil, fmt.Errorf("dsup: write %q: %w", id, err)
	}
	return shared, nil
}

// share sends a write of child id's record (from putShared) to the node
// that would take the child over if this one were lost, the one the
// placement names among the others that are up, and waits until that
// node's replica has it: a failover there then starts from this write, not
// an older one. With no such node there is nothing to wait for.
func (s *Supervisor) share(id string, epoch uint64, shared []byte) error {
	t, ok := s.successor(id, epoch)
	if !ok {
		return nil
	}
	return s.shareWith(t, id, shared)
}

// successor returns the node that would take child id over if this one
// were lost: the one the placement names among the others that are up.
func (s *Supervisor) successor(id string, epoch uint64) (proc.NodeID, bool) {
	v := s.view()
	others := slices.DeleteFunc(slices.Clone(v.Up), func(n proc.NodeID) bool { return n == s.self })
	return v.Placement.Place(PlaceRequest{Child: id, Epoch: epoch, Nodes: others})
}

// shareWith sends a write of child id's record to node t and waits until
// t's replica has joined it.
func (s *Supervisor) shareWith(t proc.NodeID, id string, shared []byte) error {
	if s.cfg.Share == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShareTimeout)
	defer cancel()
	if err := s.cfg.Share(ctx, t, shared); err != nil {
		return fmt.Errorf("dsup: %q: %w: %v has not confirmed it: %w", id, ErrNotReplicated, t, err)
	}
	return nil
}

// ServeShare joins a record write another node's share sent here.
func (s *Supervisor) ServeShare(_ context.Context, _ proc.NodeID, body []byte) ([]byte, error) {
	if err := s.cfg.Children.JoinShared(body); err != nil {
		return nil, fmt.Errorf("dsup: %w", err)
	}
	return nil, nil
}

// Drain hands every child of this node to the others (or parks it, when no
// other node can take it) and refuses new starts; it returns once no child
// runs here and every node that took one has started it (so its record
// has reached that node), or when ctx ends. The node's shutdown follows.
func (s *Supervisor) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.leaving = true
	s.drainCtx = ctx
	from := s.passes
	s.mu.Unlock()
	s.markAll()
	for {
		s.mu.Lock()
		done := s.passes > from && len(s.inst) == 0
		ch := s.changed
		s.mu.Unlock()
		if done && s.confirmed() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("dsup: drain: %w", ctx.Err())
		}
	}
}

// confirmed reports whether every child handed over has been started by
// its new owner, or has gone elsewhere, or its new owner has gone; it
// forgets the ones that have, so each is read until it is confirmed only.
func (s *Supervisor) confirmed() bool {
	s.mu.Lock()
	handed := maps.Clone(s.handed)
	s.mu.Unlock()
	now := s.cfg.Now()
	for id, target := range handed {
		r := s.record(id)
		if r != nil && r.Owner == target && r.PID.IsZero() && r.Failed == "" && !s.ended(target, now) {
			return false
		}
		s.mu.Lock()
		delete(s.handed, id)
		s.mu.Unlock()
	}
	return true
}
