package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/replica"
	"github.com/herdkit/herd/internal/unbounded"
)

// ErrNameConflict matches the exit reason of a process that lost its unique
// name to another holder after a partition healed; see NameConflict.
var ErrNameConflict = errors.New("registry: name conflict")

// NameConflict is the exit signal a process gets when it lost its unique
// name: after a partition healed, two processes held Name, and Winner keeps
// it. Only the loser's node sends it, once. It is trappable: a process that
// traps exits gets it as a message, with Winner as the sender, and may hand
// its state to the winner before it stops (or go on without the name).
type NameConflict struct {
	Name   Key
	Winner proc.PID
}

func (e *NameConflict) Error() string {
	return fmt.Sprintf("registry: name %q lost to %v", e.Name.String(), e.Winner)
}

// Is reports true for ErrNameConflict.
func (e *NameConflict) Is(target error) bool { return target == ErrNameConflict }

// Candidate is one registration of a unique name, as a ConflictResolver
// sees it.
type Candidate struct {
	Entry Entry
	// At is the registration's hybrid-clock time: it does not change when
	// the holder updates its metadata.
	At crdt.Timestamp
}

// ConflictResolver picks which of two or more registrations of one unique
// name holds it, returning its index in cs. cs is in the default order:
// earliest registration first (At, then node identity, then process id).
// It must be a pure function of its arguments, and the same on every node,
// so that every node reads the name alike.
type ConflictResolver func(key Key, cs []Candidate) int

// ReplicatedConfig configures the cluster backend.
type ReplicatedConfig struct {
	// Runtime is the node's runtime: the processes it registers are its.
	Runtime *proc.Runtime
	// Map is the replicated map the registry lives in, used by nothing
	// else.
	Map *replica.Map
	// Clock reads the node's hybrid logical clock (Replicas.Now).
	Clock func() crdt.Timestamp
	// NodeUp reports whether a node life is up, as membership sees it; it
	// gives the reason of an entry removed on another node. Nil: always.
	NodeUp func(proc.NodeID) bool
	// Resolve, if set, replaces earliest-registration-wins.
	Resolve ConflictResolver
	// Logger receives what the registry has to say.
	Logger *slog.Logger
}

// Replicated is the cluster backend of the Registry. Every node holds every
// entry, in a replicated map; reads never leave the node, and lookups of
// unique names are lock-free and allocate nothing. A write applies to the
// node's replica before it returns and reaches the other nodes within
// milliseconds.
//
// Each entry is written by its process's node only, and removed by it when
// the process exits; the entries of a node that is down are hidden (its
// names are free to take), and go for good when it leaves or is replaced
// by a later life.
//
// Two nodes that cannot see each other can give one unique name to two
// processes. When they see each other again, every node reads the name as
// held by the same one (earliest registration, then node identity, unless
// Resolve says otherwise), watches report a Conflict, and the loser's node
// removes the loser's entry and sends it a NameConflict exit signal.
// Registrations racing on two connected nodes within the replication delay
// end the same way.
type Replicated struct {
	rt      *proc.Runtime
	self    proc.NodeID
	mp      *replica.Map
	clock   func() crdt.Timestamp
	nodeUp  func(proc.NodeID) bool
	resolve ConflictResolver
	log     *slog.Logger

	// writeMu serialises this node's writes, so that checking a name and
	// taking it are one step here.
	writeMu sync.Mutex
	owners  map[proc.PID]*regOwner

	// mu guards the index. The map's observer changes the index with it
	// held for writing, inside the map's own lock.
	mu    sync.RWMutex
	ix    index
	cands map[Key][]Candidate // unique names with registrations, holder first
	// exiting is the process whose exit is being applied, and why, so the
	// observer can give the reason.
	exitPID    proc.PID
	exitReason error

	losers *unbounded.Queue[loser]
	done   chan struct{}
	wg     sync.WaitGroup
}

// regOwner is a local process holding entries: its exit hook, and how many.
type regOwner struct {
	ref proc.Ref
	n   int
}

type loser struct {
	key Key
	pid proc.PID
}

var _ Registry = (*Replicated)(nil)

// NewReplicated returns the cluster backend over cfg.Map, which may already
// hold entries. Close it when done.
func NewReplicated(cfg ReplicatedConfig) *Replicated {
	r := &Replicated{
		rt: cfg.Runtime, self: cfg.Runtime.Node(), mp: cfg.Map, clock: cfg.Clock,
		nodeUp: cfg.NodeUp, resolve: cfg.Resolve, log: cfg.Logger,
		owners: make(map[proc.PID]*regOwner),
		ix:     newIndex(), cands: make(map[Key][]Candidate),
		losers: unbounded.New[loser](), done: make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.nodeUp == nil {
		r.nodeUp = func(proc.NodeID) bool { return true }
	}
	r.mp.Observe(r.observe)
	r.wg.Add(1)
	go r.actOnLosers()
	return r
}

// Close stops acting on conflicts and ends the watches. Reads go on
// answering from the last state.
func (r *Replicated) Close() {
	select {
	case <-r.done:
		return
	default:
	}
	close(r.done)
	r.losers.Close()
	r.wg.Wait()
	r.mu.Lock()
	ws := make([]*Watch, 0, len(r.ix.watches))
	for w := range r.ix.watches {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.Close()
	}
}

// Resolver returns a proc.Resolver backed by this registry, for
// proc.Runtime.SetResolver.
func (r *Replicated) Resolver() proc.Resolver {
	return func(n proc.EnvName) (proc.PID, bool) {
		return r.ix.whereis(Key{Env: n.Env, Name: n.Name})
	}
}

// ---- reading the replicated map ----

// observe applies one change of the replicated map to the index. It runs
// inside the map's lock: it must not call the map.
func (r *Replicated) observe(c crdt.Change) {
	r.mu.Lock()
	r.apply(c.Key, c.Old, c.New)
	r.mu.Unlock()
}

// apply moves the index from old to new for one replicated key (either may
// be nil). Called with r.mu held.
func (r *Replicated) apply(k string, old, new *crdt.Version) {
	kind, key, pid, err := parseEntryKey(k)
	if err != nil {
		r.log.Warn("registry: ignoring an entry", "err", err)
		return
	}
	var at crdt.Timestamp
	var e *Entry
	if new != nil {
		var meta Meta
		if at, meta, err = parseEntryValue(new.Value); err != nil {
			r.log.Warn("registry: ignoring an entry", "key", key.String(), "err", err)
			new = nil
		} else {
			e = &Entry{Kind: kind, Key: key, PID: pid, Meta: meta}
		}
	}
	if kind == Group {
		r.applyMember(key, pid, e)
		return
	}
	r.applyName(key, pid, e, at)
}

// removal gives the reason an entry of pid went.
func (r *Replicated) removal(pid proc.PID) error {
	switch {
	case pid == r.exitPID:
		return r.exitReason
	case pid.Node != r.self && !r.nodeUp(pid.Node):
		return proc.ErrNodeDown
	}
	return nil
}

func (r *Replicated) applyMember(key Key, pid proc.PID, e *Entry) {
	was := r.ix.member(key, pid)
	switch {
	case e == nil && was != nil:
		r.ix.dropMember(key, pid)
		r.ix.emit(Event{Type: Unregistered, Entry: *was, Reason: r.removal(pid)})
	case e != nil && was == nil:
		r.ix.setMember(e)
		r.ix.emit(Event{Type: Registered, Entry: *e})
	case e != nil && !was.Meta.Equal(e.Meta):
		r.ix.setMember(e)
		r.ix.emit(Event{Type: Updated, Entry: *e})
	}
}

// applyName replaces pid's registration of key by e (nil: removes it), and
// works out the holder and what watches hear.
func (r *Replicated) applyName(key Key, pid proc.PID, e *Entry, at crdt.Timestamp) {
	cs := r.cands[key]
	before := r.ix.holder(key)
	i := slices.IndexFunc(cs, func(c Candidate) bool { return c.Entry.PID == pid })
	var removed *Entry
	if i >= 0 {
		removed = &cs[i].Entry
		cs = slices.Delete(slices.Clone(cs), i, i+1)
	}
	if e != nil {
		cs = append(slices.Clone(cs), Candidate{Entry: *e, At: at})
	}
	if len(cs) > 1 {
		// The default order, always, so a resolver sees the same input
		// on every node whatever order the registrations came in.
		slices.SortFunc(cs, compareCandidates)
		if r.resolve != nil {
			if w := r.resolve(key, slices.Clone(cs)); w > 0 && w < len(cs) {
				cs[0], cs[w] = cs[w], cs[0]
			}
		}
	}
	if len(cs) == 0 {
		delete(r.cands, key)
	} else {
		r.cands[key] = cs
	}

	// The holder, and what changed for watches.
	var after *Entry
	if len(cs) > 0 {
		after = &cs[0].Entry
	}
	switch {
	case after == nil:
		if before != nil {
			r.ix.dropHolder(key)
			r.ix.emit(Event{Type: Unregistered, Entry: *before, Reason: r.removal(before.PID)})
		}
	case before == nil:
		r.setHolder(after)
		r.ix.emit(Event{Type: Registered, Entry: *after})
	case before.PID == after.PID:
		if !before.Meta.Equal(after.Meta) {
			r.setHolder(after)
			r.ix.emit(Event{Type: Updated, Entry: *after})
		}
	default:
		// A new holder: the old one either went, or lost to it.
		r.setHolder(after)
		if slices.ContainsFunc(cs, func(c Candidate) bool { return c.Entry.PID == before.PID }) {
			r.ix.emit(Event{Type: Conflict, Entry: *before, Winner: after.PID})
		} else {
			r.ix.emit(Event{Type: Unregistered, Entry: *before, Reason: r.removal(before.PID)})
		}
		r.ix.emit(Event{Type: Registered, Entry: *after})
	}
	// A registration that arrived losing.
	if e != nil && after != nil && e.PID != after.PID && removed == nil {
		r.ix.emit(Event{Type: Conflict, Entry: *e, Winner: after.PID})
	}
	// This node's processes that hold a registration but not the name
	// are losers: their node acts, outside the map's lock.
	for _, c := range cs[min(1, len(cs)):] {
		if c.Entry.PID.Node == r.self {
			r.losers.Push(loser{key: key, pid: c.Entry.PID})
		}
	}
}

func (r *Replicated) setHolder(e *Entry) {
	c := *e
	r.ix.setHolder(&c)
}

// compareCandidates is the default order of registrations of one name:
// earliest first, then by node identity and process id.
func compareCandidates(a, b Candidate) int {
	if a.At != b.At {
		if a.At < b.At {
			return -1
		}
		return 1
	}
	return ComparePIDs(a.Entry.PID, b.Entry.PID)
}

// actOnLosers removes the registrations this node's processes lost, and
// tells each process.
func (r *Replicated) actOnLosers() {
	defer r.wg.Done()
	for l := range r.losers.Out() {
		r.writeMu.Lock()
		r.mu.RLock()
		cs := r.cands[l.key]
		lost := len(cs) > 1 && cs[0].Entry.PID != l.pid &&
			slices.ContainsFunc(cs[1:], func(c Candidate) bool { return c.Entry.PID == l.pid })
		var winner proc.PID
		if lost {
			winner = cs[0].Entry.PID
		}
		r.mu.RUnlock()
		if lost {
			if err := r.remove(Unique, l.key, l.pid); err != nil {
				r.log.Warn("registry: removing a lost name", "name", l.key.String(), "err", err)
			}
		}
		r.writeMu.Unlock()
		if lost {
			r.log.Info("registry: name conflict resolved", "name", l.key.String(), "loser", l.pid.String(), "winner", winner.String())
			_ = r.rt.Exit(winner, l.pid, &NameConflict{Name: l.key, Winner: winner})
		}
	}
}

// ---- writing ----

// prepare validates a write and returns the copy of meta to store.
func (r *Replicated) prepare(key Key, pid proc.PID, meta Meta) (Meta, error) {
	if err := key.Validate(); err != nil {
		return Meta{}, err
	}
	if pid.IsZero() {
		return Meta{}, fmt.Errorf("%w: zero PID", ErrInvalid)
	}
	if pid.Node != r.self {
		return Meta{}, fmt.Errorf("%w: %v is not a process of this node (%v): register a process on its own node", ErrInvalid, pid, r.self)
	}
	if err := meta.Validate(); err != nil {
		return Meta{}, err
	}
	return meta.Clone(), nil
}

// own counts an entry of pid, installing its exit hook with the first.
// Called with writeMu held.
func (r *Replicated) own(pid proc.PID) error {
	o := r.owners[pid]
	if o != nil && !r.rt.Alive(pid) {
		return fmt.Errorf("registry: %v: %w", pid, proc.ErrNoProcess)
	}
	if o == nil {
		ref, ok := r.rt.ExitHook(pid, r.exited)
		if !ok {
			return fmt.Errorf("registry: %v: %w", pid, proc.ErrNoProcess)
		}
		o = &regOwner{ref: ref}
		r.owners[pid] = o
	}
	o.n++
	return nil
}

// disown uncounts an entry of pid, dropping the hook with the last.
// Called with writeMu held.
func (r *Replicated) disown(pid proc.PID) {
	o := r.owners[pid]
	if o == nil {
		return
	}
	if o.n--; o.n <= 0 {
		delete(r.owners, pid)
		r.rt.DemonitorFunc(pid, o.ref)
	}
}

// exited removes every entry of pid. It runs on the exiting process's
// goroutine, before any monitor or link hears of the exit.
func (r *Replicated) exited(pid proc.PID, reason error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if _, ok := r.owners[pid]; !ok {
		return
	}
	delete(r.owners, pid)
	r.mu.Lock()
	r.exitPID, r.exitReason = pid, reason
	r.mu.Unlock()
	r.mp.RemoveOwner(crdt.Owner{Node: pid.Node, Process: pid.ID})
	r.mu.Lock()
	r.exitPID, r.exitReason = proc.PID{}, nil
	r.mu.Unlock()
}

// put writes pid's entry. Called with writeMu held.
func (r *Replicated) put(kind Kind, key Key, pid proc.PID, at crdt.Timestamp, meta *Meta) error {
	v, err := entryValue(at, meta)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if err := r.mp.Put(entryKey(kind, key, pid), v, crdt.Owner{Node: pid.Node, Process: pid.ID}); err != nil {
		return fmt.Errorf("registry: %s %q: %w", kind, key.String(), err)
	}
	return nil
}

// add writes a new entry of pid, counting it. Called with writeMu held.
func (r *Replicated) add(kind Kind, key Key, pid proc.PID, meta *Meta) error {
	if err := r.own(pid); err != nil {
		return err
	}
	if err := r.put(kind, key, pid, r.clock(), meta); err != nil {
		r.disown(pid)
		return err
	}
	return nil
}

// remove deletes an entry of pid, uncounting it. Called with writeMu held.
func (r *Replicated) remove(kind Kind, key Key, pid proc.PID) error {
	if _, err := r.mp.Delete(entryKey(kind, key, pid)); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	r.disown(pid)
	return nil
}

// registration returns pid's registration of unique key, if it has one.
func (r *Replicated) registration(key Key, pid proc.PID) (Candidate, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, c := range r.cands[key] {
		if c.Entry.PID == pid {
			return c, true
		}
	}
	return Candidate{}, false
}

// Register implements Registry.
func (r *Replicated) Register(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	meta, err := r.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	h := r.entry(Unique, key, pid)
	switch {
	case h != nil && h.PID != pid:
		return &TakenError{Key: key, Holder: h.PID}
	case h != nil:
		return r.rewrite(h, &meta)
	}
	return r.add(Unique, key, pid, &meta)
}

// entry returns what the index reads for pid under key: the holder of a
// unique name (whoever it is), or pid's membership of a group.
func (r *Replicated) entry(kind Kind, key Key, pid proc.PID) *Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if kind == Unique {
		return r.ix.holder(key)
	}
	return r.ix.member(key, pid)
}

// rewrite replaces the metadata of an entry of this node, if it changed;
// a unique name keeps its registration time. Called with writeMu held.
func (r *Replicated) rewrite(e *Entry, meta *Meta) error {
	if e.Meta.Equal(*meta) {
		return nil
	}
	at := r.clock()
	if e.Kind == Unique {
		c, _ := r.registration(e.Key, e.PID)
		at = c.At
	}
	return r.put(e.Kind, e.Key, e.PID, at, meta)
}

// updateMeta replaces the metadata of pid's entry of kind under key.
func (r *Replicated) updateMeta(kind Kind, key Key, pid proc.PID, meta Meta) error {
	meta, err := r.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	e := r.entry(kind, key, pid)
	if e == nil || e.PID != pid {
		return notRegistered(kind, key, pid)
	}
	return r.rewrite(e, &meta)
}

// Unregister implements Registry. It also withdraws a registration of pid
// that is losing a conflict.
func (r *Replicated) Unregister(_ context.Context, key Key, pid proc.PID) error {
	if err := key.Validate(); err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if _, ok := r.registration(key, pid); !ok {
		return nil
	}
	return r.remove(Unique, key, pid)
}

// Lookup implements Registry. It is lock-free.
func (r *Replicated) Lookup(key Key) (Entry, bool) { return r.ix.lookup(key) }

// Whereis implements Registry. It is lock-free and allocates nothing.
func (r *Replicated) Whereis(key Key) (proc.PID, bool) { return r.ix.whereis(key) }

// UpdateMeta implements Registry.
func (r *Replicated) UpdateMeta(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	return r.updateMeta(Unique, key, pid, meta)
}

// Join implements Registry.
func (r *Replicated) Join(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	meta, err := r.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if m := r.entry(Group, key, pid); m != nil {
		return r.rewrite(m, &meta)
	}
	return r.add(Group, key, pid, &meta)
}

// Leave implements Registry.
func (r *Replicated) Leave(_ context.Context, key Key, pid proc.PID) error {
	if err := key.Validate(); err != nil {
		return err
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if r.entry(Group, key, pid) == nil {
		return nil
	}
	return r.remove(Group, key, pid)
}

// Members implements Registry.
func (r *Replicated) Members(key Key) []Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ix.members(key)
}

// UpdateMemberMeta implements Registry.
func (r *Replicated) UpdateMemberMeta(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	return r.updateMeta(Group, key, pid, meta)
}

// Select implements Registry. An invalid query selects nothing.
func (r *Replicated) Select(q Query) []Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ix.selectq(q)
}

// Count implements Registry.
func (r *Replicated) Count(q Query) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ix.count(q)
}

// Watch implements Registry. It reports the changes of every node's
// entries as they reach this node, conflicts included.
func (r *Replicated) Watch(q Query, opts WatchOptions) *Watch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ix.watch(q, opts, func(w *Watch) {
		r.mu.Lock()
		r.ix.unwatch(w)
		r.mu.Unlock()
	})
}

// Candidates returns every registration of unique key this node sees,
// holder first: more than one only while a conflict is being resolved.
func (r *Replicated) Candidates(key Key) []Candidate {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.cands[key])
}
