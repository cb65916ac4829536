package registry

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/herdkit/herd/internal/proc"
)

// Local is the registry of one node's own processes. All methods are safe for
// concurrent use. Reads take a read lock and allocate nothing (Lookup,
// Whereis); writes take the write lock.
type Local struct {
	rt *proc.Runtime

	mu      sync.RWMutex
	def     *envTable // the default environment's table, also in envs
	envs    map[string]*envTable
	owners  map[proc.PID]*owner
	watches map[*Watch]struct{}
}

type envTable struct {
	unique map[string]slot
	groups map[string]map[proc.PID]*Entry
}

// slot keeps the holder's PID inline, so Whereis (the hot path of every send
// by name) reads one map slot and not a scattered Entry as well.
type slot struct {
	pid proc.PID
	e   *Entry
}

// owner is what a process holds, so its exit releases it all.
type owner struct {
	ref  proc.Ref
	keys []ownedKey
}

type ownedKey struct {
	kind Kind
	key  Key
}

var _ Registry = (*Local)(nil)

// NewLocal returns a registry for the processes of rt.
func NewLocal(rt *proc.Runtime) *Local {
	l := &Local{
		rt:      rt,
		envs:    make(map[string]*envTable),
		owners:  make(map[proc.PID]*owner),
		watches: make(map[*Watch]struct{}),
	}
	l.def = l.table("", true)
	return l
}

// read returns the table of env for a reader holding the read lock.
func (l *Local) read(env string) *envTable {
	if env == "" {
		return l.def
	}
	return l.envs[env]
}

// Resolver returns a proc.Resolver backed by this registry, for
// proc.Runtime.SetResolver.
func (l *Local) Resolver() proc.Resolver {
	return func(n proc.EnvName) (proc.PID, bool) {
		return l.Whereis(Key{Env: n.Env, Name: n.Name})
	}
}

// prepare validates a write and returns the copy of meta to store.
func (l *Local) prepare(key Key, pid proc.PID, meta Meta) (Meta, error) {
	if err := key.Validate(); err != nil {
		return Meta{}, err
	}
	if pid.IsZero() {
		return Meta{}, fmt.Errorf("%w: zero PID", ErrInvalid)
	}
	if pid.Node != l.rt.Node() {
		return Meta{}, fmt.Errorf("%w: %v is not a process of this node (%v); the local registry holds local processes only", ErrInvalid, pid, l.rt.Node())
	}
	if err := meta.Validate(); err != nil {
		return Meta{}, err
	}
	return meta.Clone(), nil
}

func (l *Local) table(env string, create bool) *envTable {
	t := l.envs[env]
	if t == nil && create {
		t = &envTable{unique: make(map[string]slot), groups: make(map[string]map[proc.PID]*Entry)}
		l.envs[env] = t
	}
	return t
}

// own records that pid holds key, installing the exit hook for a process seen
// for the first time. Called with l.mu held: the hook itself takes l.mu, but
// only on the exiting goroutine, after the process lock is released.
func (l *Local) own(pid proc.PID, kind Kind, key Key) error {
	o := l.owners[pid]
	if o != nil && !l.rt.Alive(pid) {
		// Exiting: its hook is waiting for our lock to release the rest.
		return fmt.Errorf("registry: %v: %w", pid, proc.ErrNoProcess)
	}
	if o == nil {
		ref, ok := l.rt.ExitHook(pid, l.exited)
		if !ok {
			return fmt.Errorf("registry: %v: %w", pid, proc.ErrNoProcess)
		}
		o = &owner{ref: ref}
		l.owners[pid] = o
	}
	o.keys = append(o.keys, ownedKey{kind, key})
	return nil
}

// disown forgets that pid holds key, dropping the exit hook when it holds
// nothing any more. Called with l.mu held.
func (l *Local) disown(pid proc.PID, kind Kind, key Key) {
	o := l.owners[pid]
	if o == nil {
		return
	}
	if i := slices.Index(o.keys, ownedKey{kind, key}); i >= 0 {
		o.keys = slices.Delete(o.keys, i, i+1)
	}
	if len(o.keys) == 0 {
		delete(l.owners, pid)
		l.rt.DemonitorFunc(pid, o.ref)
	}
}

// exited releases everything pid held. It runs on the exiting process's
// goroutine, before any monitor or link hears of the exit.
func (l *Local) exited(pid proc.PID, reason error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o := l.owners[pid]
	if o == nil {
		return
	}
	delete(l.owners, pid)
	for _, ok := range o.keys {
		t := l.table(ok.key.Env, false)
		var e *Entry
		switch ok.kind {
		case Unique:
			e = t.unique[ok.key.Name].e
			delete(t.unique, ok.key.Name)
		case Group:
			e = t.groups[ok.key.Name][pid]
			l.removeMember(t, ok.key.Name, pid)
		}
		if e != nil {
			l.emit(Event{Type: Unregistered, Entry: *e, Reason: reason})
		}
	}
}

func (l *Local) removeMember(t *envTable, name string, pid proc.PID) {
	g := t.groups[name]
	delete(g, pid)
	if len(g) == 0 {
		delete(t.groups, name)
	}
}

// emit offers e to every watch. Called with l.mu held, so watches see
// changes in the order they were made.
func (l *Local) emit(e Event) {
	for w := range l.watches {
		w.Offer(e)
	}
}

// Register implements Registry.
func (l *Local) Register(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	meta, err := l.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.table(key.Env, true)
	if s, ok := t.unique[key.Name]; ok {
		if s.pid != pid {
			return &TakenError{Key: key, Holder: s.pid}
		}
		l.update(s.e, meta)
		return nil
	}
	if err := l.own(pid, Unique, key); err != nil {
		return err
	}
	e := &Entry{Kind: Unique, Key: key, PID: pid, Meta: meta}
	t.unique[key.Name] = slot{pid: pid, e: e}
	l.emit(Event{Type: Registered, Entry: *e})
	return nil
}

func (l *Local) update(e *Entry, meta Meta) {
	if e.Meta.Equal(meta) {
		return
	}
	// Replace, never mutate: readers may hold the old Meta.
	e.Meta = meta
	l.emit(Event{Type: Updated, Entry: *e})
}

// Unregister implements Registry.
func (l *Local) Unregister(_ context.Context, key Key, pid proc.PID) error {
	if err := key.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.table(key.Env, false)
	if t == nil {
		return nil
	}
	s, ok := t.unique[key.Name]
	if !ok || s.pid != pid {
		return nil
	}
	delete(t.unique, key.Name)
	l.disown(pid, Unique, key)
	l.emit(Event{Type: Unregistered, Entry: *s.e})
	return nil
}

// Lookup implements Registry.
func (l *Local) Lookup(key Key) (Entry, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if t := l.read(key.Env); t != nil {
		if s, ok := t.unique[key.Name]; ok {
			return *s.e, true
		}
	}
	return Entry{}, false
}

// Whereis implements Registry.
func (l *Local) Whereis(key Key) (proc.PID, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if t := l.read(key.Env); t != nil {
		if s, ok := t.unique[key.Name]; ok {
			return s.pid, true
		}
	}
	return proc.PID{}, false
}

// UpdateMeta implements Registry.
func (l *Local) UpdateMeta(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	return l.updateMeta(Unique, key, pid, meta)
}

// updateMeta replaces the metadata of pid's entry of kind under key.
func (l *Local) updateMeta(kind Kind, key Key, pid proc.PID, meta Meta) error {
	meta, err := l.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var e *Entry
	if t := l.table(key.Env, false); t != nil {
		if kind == Unique {
			e = t.unique[key.Name].e
		} else {
			e = t.groups[key.Name][pid]
		}
	}
	if e == nil || e.PID != pid {
		return fmt.Errorf("%w: %v holds no %s entry %q", ErrNotRegistered, pid, kind, key.String())
	}
	l.update(e, meta)
	return nil
}

// Join implements Registry.
func (l *Local) Join(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	meta, err := l.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.table(key.Env, true)
	g := t.groups[key.Name]
	if e := g[pid]; e != nil {
		l.update(e, meta)
		return nil
	}
	if err := l.own(pid, Group, key); err != nil {
		return err
	}
	if g == nil {
		g = make(map[proc.PID]*Entry)
		t.groups[key.Name] = g
	}
	e := &Entry{Kind: Group, Key: key, PID: pid, Meta: meta}
	g[pid] = e
	l.emit(Event{Type: Registered, Entry: *e})
	return nil
}

// Leave implements Registry.
func (l *Local) Leave(_ context.Context, key Key, pid proc.PID) error {
	if err := key.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.table(key.Env, false)
	if t == nil {
		return nil
	}
	e := t.groups[key.Name][pid]
	if e == nil {
		return nil
	}
	l.removeMember(t, key.Name, pid)
	l.disown(pid, Group, key)
	l.emit(Event{Type: Unregistered, Entry: *e})
	return nil
}

// Members implements Registry.
func (l *Local) Members(key Key) []Entry {
	l.mu.RLock()
	defer l.mu.RUnlock()
	t := l.read(key.Env)
	if t == nil {
		return nil
	}
	g := t.groups[key.Name]
	out := make([]Entry, 0, len(g))
	for _, e := range g {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return ComparePIDs(a.PID, b.PID) })
	return out
}

// UpdateMemberMeta implements Registry.
func (l *Local) UpdateMemberMeta(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	return l.updateMeta(Group, key, pid, meta)
}

// each calls fn for every entry q selects, in no particular order, with the
// read lock held.
func (l *Local) each(q *Query, fn func(*Entry)) {
	visit := func(t *envTable) {
		if q.Kind != Group {
			for _, s := range t.unique {
				if q.Matches(s.e) {
					fn(s.e)
				}
			}
		}
		if q.Kind != Unique {
			for _, g := range t.groups {
				for _, e := range g {
					if q.Matches(e) {
						fn(e)
					}
				}
			}
		}
	}
	if q.AllEnvs {
		for _, t := range l.envs {
			visit(t)
		}
	} else if t := l.envs[q.Env]; t != nil {
		visit(t)
	}
}

// Select implements Registry. An invalid query selects nothing.
func (l *Local) Select(q Query) []Entry {
	if q.Validate() != nil {
		return nil
	}
	l.mu.RLock()
	var out []Entry
	l.each(&q, func(e *Entry) { out = append(out, *e) })
	l.mu.RUnlock()
	slices.SortFunc(out, func(a, b Entry) int { return Less(&a, &b) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out
}

// Count implements Registry.
func (l *Local) Count(q Query) int {
	if q.Validate() != nil {
		return 0
	}
	n := 0
	l.mu.RLock()
	l.each(&q, func(*Entry) { n++ })
	l.mu.RUnlock()
	return n
}

// Watch implements Registry.
func (l *Local) Watch(q Query, opts WatchOptions) *Watch {
	w := NewWatch(q, func(w *Watch) {
		l.mu.Lock()
		delete(l.watches, w)
		l.mu.Unlock()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	if opts.Replay {
		var now []Entry
		l.each(w.Query(), func(e *Entry) { now = append(now, *e) })
		slices.SortFunc(now, func(a, b Entry) int { return Less(&a, &b) })
		for _, e := range now {
			w.Offer(Event{Type: Registered, Entry: e})
		}
	}
	l.watches[w] = struct{}{}
	return w
}
