package registry

import (
	"hash/maphash"
	"sync/atomic"

	"github.com/herdkit/herd/internal/proc"
)

// holder is what a lookup of a unique name finds: the key, its holder's PID
// inline (the hot path of every send by name reads nothing else), and the
// whole entry. It is immutable once published.
//
// Its first 64 bytes hold all a lookup reads for a short name in the default
// environment (the PID, and the name's bytes to compare), and holders are
// 128 bytes, which the allocator places on 128-byte boundaries: one cache
// line per hit, where a string compare would fetch another.
type holder struct {
	pid    proc.PID
	short  uint8 // length of a name of up to shortName bytes copied in name; 255: compare key
	defEnv bool  // key.Env == ""
	name   [shortName]byte
	key    Key
	e      *Entry
	_      [24]byte
}

const shortName = 30

func newHolder(e *Entry) *holder {
	h := &holder{pid: e.PID, key: e.Key, e: e, short: 255, defEnv: e.Key.Env == ""}
	if len(e.Key.Name) <= shortName {
		h.short = uint8(copy(h.name[:], e.Key.Name))
	}
	return h
}

// is reports whether h holds k.
func (h *holder) is(k *Key) bool {
	if h.short != 255 && h.defEnv && k.Env == "" {
		return len(k.Name) == int(h.short) && string(h.name[:h.short]) == k.Name
	}
	return h.key == *k
}

// tomb marks a slot whose key was removed; probes continue past it.
var tomb = &holder{}

// table maps keys to holders. Reads are lock-free: they load atomics only,
// never write shared memory and never allocate, so lookups scale with the
// cores reading. Writes (put, del) must be serialised by the caller.
//
// It is an open-addressing hash table with linear probing. A slot's hash is
// published after its holder, so a reader that sees the hash sees a holder
// (possibly a newer one: it checks the key). Removal leaves a tombstone; the
// table is rebuilt when live keys and tombstones fill three quarters of it,
// and the new array is swapped in whole.
type table struct {
	seed maphash.Seed
	cur  atomic.Pointer[cells]
	live int // keys present (writer only)
	used int // cells ever filled in cur: live keys and tombstones (writer only)
}

type cells struct {
	mask uint64
	s    []cell
}

type cell struct {
	hash atomic.Uint64 // 0: never used
	h    atomic.Pointer[holder]
}

func newTable() *table {
	t := &table{seed: maphash.MakeSeed()}
	t.cur.Store(&cells{mask: 15, s: make([]cell, 16)})
	return t
}

// hash is never 0, which marks an empty slot.
func (t *table) hash(k *Key) uint64 {
	h := maphash.String(t.seed, k.Name)
	if k.Env != "" {
		h = (h ^ maphash.String(t.seed, k.Env)) * 0x9E3779B97F4A7C15
	}
	return h | 1
}

// get returns the holder of k, or nil.
func (t *table) get(k Key) *holder {
	a := t.cur.Load()
	h := t.hash(&k)
	for i := h & a.mask; ; i = (i + 1) & a.mask {
		s := &a.s[i]
		switch s.hash.Load() {
		case 0:
			return nil
		case h:
			if r := s.h.Load(); r != tomb && r.is(&k) {
				return r
			}
		}
	}
}

// put makes r the holder of r.key.
func (t *table) put(r *holder) {
	a := t.cur.Load()
	h := t.hash(&r.key)
	free := -1
	for i := h & a.mask; ; i = (i + 1) & a.mask {
		s := &a.s[i]
		sh := s.hash.Load()
		if sh == 0 {
			if free < 0 {
				free = int(i)
				t.used++
			}
			break
		}
		cur := s.h.Load()
		if cur == tomb {
			if free < 0 {
				free = int(i)
			}
			continue
		}
		if sh == h && cur.is(&r.key) {
			s.h.Store(r)
			return
		}
	}
	s := &a.s[free]
	s.h.Store(r)
	s.hash.Store(h)
	t.live++
	if t.used*4 > len(a.s)*3 {
		t.rebuild(a)
	}
}

// del removes k; it reports whether k was present.
func (t *table) del(k Key) bool {
	a := t.cur.Load()
	h := t.hash(&k)
	for i := h & a.mask; ; i = (i + 1) & a.mask {
		s := &a.s[i]
		switch s.hash.Load() {
		case 0:
			return false
		case h:
			if r := s.h.Load(); r != tomb && r.is(&k) {
				s.h.Store(tomb)
				t.live--
				return true
			}
		}
	}
}

// rebuild copies the live keys into a fresh array sized for twice their
// number (dropping tombstones) and publishes it.
func (t *table) rebuild(old *cells) {
	n := 16
	for n < t.live*2+2 {
		n *= 2
	}
	a := &cells{mask: uint64(n - 1), s: make([]cell, n)}
	for i := range old.s {
		r := old.s[i].h.Load()
		if r == nil || r == tomb {
			continue
		}
		h := old.s[i].hash.Load()
		j := h & a.mask
		for a.s[j].hash.Load() != 0 {
			j = (j + 1) & a.mask
		}
		a.s[j].h.Store(r)
		a.s[j].hash.Store(h)
	}
	t.used = t.live
	t.cur.Store(a)
}

// len returns the number of keys present (writer only).
func (t *table) len() int { return t.live }
