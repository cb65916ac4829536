package registry

import (
	"slices"

	"github.com/herdkit/herd/internal/proc"
)

// index is what every backend answers reads from: the holder of each unique
// name, the members of each group, by environment, and the watches to tell
// of changes. Lookups of unique names (lookup, whereis) are lock-free; the
// rest needs the backend's lock, held for reading by readers and for
// writing by whoever changes the index.
type index struct {
	names   *table
	envs    map[string]*envIndex
	watches map[*Watch]struct{}
}

type envIndex struct {
	unique map[string]*Entry
	groups map[string]map[proc.PID]*Entry
}

func newIndex() index {
	return index{names: newTable(), envs: make(map[string]*envIndex), watches: make(map[*Watch]struct{})}
}

func (ix *index) env(name string, create bool) *envIndex {
	t := ix.envs[name]
	if t == nil && create {
		t = &envIndex{unique: make(map[string]*Entry), groups: make(map[string]map[proc.PID]*Entry)}
		ix.envs[name] = t
	}
	return t
}

// dropEnv forgets an environment left with no entries.
func (ix *index) dropEnv(name string, t *envIndex) {
	if len(t.unique) == 0 && len(t.groups) == 0 {
		delete(ix.envs, name)
	}
}

// lookup returns the entry holding key. Lock-free.
func (ix *index) lookup(key Key) (Entry, bool) {
	if h := ix.names.get(key); h != nil {
		return *h.e, true
	}
	return Entry{}, false
}

// whereis returns the PID holding key. Lock-free, allocation-free.
func (ix *index) whereis(key Key) (proc.PID, bool) {
	if h := ix.names.get(key); h != nil {
		return h.pid, true
	}
	return proc.PID{}, false
}

// holder returns the entry holding key (writer's or reader's lock held).
func (ix *index) holder(key Key) *Entry {
	if t := ix.envs[key.Env]; t != nil {
		return t.unique[key.Name]
	}
	return nil
}

// setHolder makes e the holder of its unique name (writer's lock held). e
// must not be modified afterwards: replace it instead.
func (ix *index) setHolder(e *Entry) {
	ix.env(e.Key.Env, true).unique[e.Key.Name] = e
	ix.names.put(newHolder(e))
}

// dropHolder removes the holder of key (writer's lock held).
func (ix *index) dropHolder(key Key) {
	if t := ix.envs[key.Env]; t != nil {
		delete(t.unique, key.Name)
		ix.dropEnv(key.Env, t)
	}
	ix.names.del(key)
}

// member returns pid's membership of group key (lock held).
func (ix *index) member(key Key, pid proc.PID) *Entry {
	if t := ix.envs[key.Env]; t != nil {
		return t.groups[key.Name][pid]
	}
	return nil
}

// setMember adds or replaces a membership (writer's lock held).
func (ix *index) setMember(e *Entry) {
	t := ix.env(e.Key.Env, true)
	g := t.groups[e.Key.Name]
	if g == nil {
		g = make(map[proc.PID]*Entry)
		t.groups[e.Key.Name] = g
	}
	g[e.PID] = e
}

// dropMember removes a membership (writer's lock held).
func (ix *index) dropMember(key Key, pid proc.PID) {
	t := ix.envs[key.Env]
	if t == nil {
		return
	}
	g := t.groups[key.Name]
	delete(g, pid)
	if len(g) == 0 {
		delete(t.groups, key.Name)
		ix.dropEnv(key.Env, t)
	}
}

// members returns the members of group key ordered by PID (lock held).
func (ix *index) members(key Key) []Entry {
	t := ix.envs[key.Env]
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

// each calls fn for every entry q selects, in no particular order (lock
// held).
func (ix *index) each(q *Query, fn func(*Entry)) {
	visit := func(t *envIndex) {
		if q.Kind != Group {
			for _, e := range t.unique {
				if q.Matches(e) {
					fn(e)
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
		for _, t := range ix.envs {
			visit(t)
		}
	} else if t := ix.envs[q.Env]; t != nil {
		visit(t)
	}
}

// selectq answers Select (lock held). An invalid query selects nothing.
func (ix *index) selectq(q Query) []Entry {
	if q.Validate() != nil {
		return nil
	}
	var out []Entry
	ix.each(&q, func(e *Entry) { out = append(out, *e) })
	slices.SortFunc(out, func(a, b Entry) int { return Less(&a, &b) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out
}

// count answers Count (lock held).
func (ix *index) count(q Query) int {
	if q.Validate() != nil {
		return 0
	}
	n := 0
	ix.each(&q, func(*Entry) { n++ })
	return n
}

// watch starts a watch (writer's lock held, so a replay is atomic with
// the start). remove must take the lock and call unwatch.
func (ix *index) watch(q Query, opts WatchOptions, remove func(*Watch)) *Watch {
	w := NewWatch(q, remove)
	if opts.Replay {
		for _, e := range ix.selectq(*w.Query()) {
			w.Offer(Event{Type: Registered, Entry: e})
		}
	}
	ix.watches[w] = struct{}{}
	return w
}

func (ix *index) unwatch(w *Watch) { delete(ix.watches, w) }

// emit offers e to every watch (writer's lock held, so watches see changes
// in the order they were made).
func (ix *index) emit(e Event) {
	for w := range ix.watches {
		w.Offer(e)
	}
}
