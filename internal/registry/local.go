package registry

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/herdkit/herd/internal/proc"
)

// Local is the registry of one node's own processes. All methods are safe for
// concurrent use. Lookups of unique names (Lookup, Whereis) are lock-free and
// allocate nothing; other reads take a read lock; writes take the write lock.
type Local struct {
	rt *proc.Runtime

	mu     sync.RWMutex
	ix     index
	owners map[proc.PID]*owner
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
	return &Local{rt: rt, ix: newIndex(), owners: make(map[proc.PID]*owner)}
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
		var e *Entry
		switch ok.kind {
		case Unique:
			if e = l.ix.holder(ok.key); e != nil {
				l.ix.dropHolder(ok.key)
			}
		case Group:
			if e = l.ix.member(ok.key, pid); e != nil {
				l.ix.dropMember(ok.key, pid)
			}
		}
		if e != nil {
			l.ix.emit(Event{Type: Unregistered, Entry: *e, Reason: reason})
		}
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
	if e := l.ix.holder(key); e != nil {
		if e.PID != pid {
			return &TakenError{Key: key, Holder: e.PID}
		}
		l.update(e, meta)
		return nil
	}
	if err := l.own(pid, Unique, key); err != nil {
		return err
	}
	e := &Entry{Kind: Unique, Key: key, PID: pid, Meta: meta}
	l.ix.setHolder(e)
	l.ix.emit(Event{Type: Registered, Entry: *e})
	return nil
}

// update replaces e's metadata, if it changed, with a new entry: readers
// may hold the old one.
func (l *Local) update(e *Entry, meta Meta) {
	if e.Meta.Equal(meta) {
		return
	}
	n := *e
	n.Meta = meta
	if n.Kind == Unique {
		l.ix.setHolder(&n)
	} else {
		l.ix.setMember(&n)
	}
	l.ix.emit(Event{Type: Updated, Entry: n})
}

// Unregister implements Registry.
func (l *Local) Unregister(_ context.Context, key Key, pid proc.PID) error {
	if err := key.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.ix.holder(key)
	if e == nil || e.PID != pid {
		return nil
	}
	l.ix.dropHolder(key)
	l.disown(pid, Unique, key)
	l.ix.emit(Event{Type: Unregistered, Entry: *e})
	return nil
}

// Lookup implements Registry. It is lock-free.
func (l *Local) Lookup(key Key) (Entry, bool) { return l.ix.lookup(key) }

// Whereis implements Registry. It is lock-free and allocates nothing.
func (l *Local) Whereis(key Key) (proc.PID, bool) { return l.ix.whereis(key) }

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
	if kind == Unique {
		e = l.ix.holder(key)
	} else {
		e = l.ix.member(key, pid)
	}
	if e == nil || e.PID != pid {
		return notRegistered(kind, key, pid)
	}
	l.update(e, meta)
	return nil
}

func notRegistered(kind Kind, key Key, pid proc.PID) error {
	return fmt.Errorf("%w: %v holds no %s entry %q", ErrNotRegistered, pid, kind, key.String())
}

// Join implements Registry.
func (l *Local) Join(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	meta, err := l.prepare(key, pid, meta)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.ix.member(key, pid); e != nil {
		l.update(e, meta)
		return nil
	}
	if err := l.own(pid, Group, key); err != nil {
		return err
	}
	e := &Entry{Kind: Group, Key: key, PID: pid, Meta: meta}
	l.ix.setMember(e)
	l.ix.emit(Event{Type: Registered, Entry: *e})
	return nil
}

// Leave implements Registry.
func (l *Local) Leave(_ context.Context, key Key, pid proc.PID) error {
	if err := key.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.ix.member(key, pid)
	if e == nil {
		return nil
	}
	l.ix.dropMember(key, pid)
	l.disown(pid, Group, key)
	l.ix.emit(Event{Type: Unregistered, Entry: *e})
	return nil
}

// Members implements Registry.
func (l *Local) Members(key Key) []Entry {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.ix.members(key)
}

// UpdateMemberMeta implements Registry.
func (l *Local) UpdateMemberMeta(_ context.Context, key Key, pid proc.PID, meta Meta) error {
	return l.updateMeta(Group, key, pid, meta)
}

// Select implements Registry. An invalid query selects nothing.
func (l *Local) Select(q Query) []Entry {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.ix.selectq(q)
}

// Count implements Registry.
func (l *Local) Count(q Query) int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.ix.count(q)
}

// Watch implements Registry.
func (l *Local) Watch(q Query, opts WatchOptions) *Watch {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ix.watch(q, opts, func(w *Watch) {
		l.mu.Lock()
		l.ix.unwatch(w)
		l.mu.Unlock()
	})
}
