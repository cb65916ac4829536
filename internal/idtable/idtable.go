// Package idtable maps sequentially allocated uint64 ids to pointers, with
// lock-free lookups. It is the node's process table: ids are handed out in
// increasing order, never reused, and each reserved id is removed exactly
// once. It depends on nothing else in herd.
//
// Ids are grouped into pages of 4096 slots. A lookup is three atomic loads
// and no hashing. A page is freed when every id it holds has been removed, so
// memory follows the number of live entries, plus eight bytes of directory per
// 4096 ids ever allocated.
package idtable

import (
	"sync"
	"sync/atomic"
)

const (
	pageBits = 12
	pageSize = 1 << pageBits
	pageMask = pageSize - 1
)

type page[T any] struct {
	slots [pageSize]atomic.Pointer[T]
	// remaining counts the ids of this page not yet removed. It starts at
	// pageSize, so the page can only reach zero after all of its ids were
	// reserved and removed: no reservation can race with the page's release.
	remaining atomic.Int64
}

type directory[T any] struct {
	pages []atomic.Pointer[page[T]]
}

// Table maps ids to *T. The zero value is ready to use. All methods are safe
// for concurrent use.
type Table[T any] struct {
	last atomic.Uint64 // the most recently reserved id; ids start at 1
	dir  atomic.Pointer[directory[T]]
	mu   sync.Mutex // serialises directory growth, page creation and release
}

// Reserve allocates the next id. The id maps to nothing until Store; it must
// eventually be passed to Remove exactly once, even if Store is never called.
func (t *Table[T]) Reserve() uint64 {
	id := t.last.Add(1)
	idx := (id - 1) >> pageBits
	if d := t.dir.Load(); d != nil && idx < uint64(len(d.pages)) && d.pages[idx].Load() != nil {
		return id
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.dir.Load()
	if d == nil || idx >= uint64(len(d.pages)) {
		n := 2 * (idx + 1)
		nd := &directory[T]{pages: make([]atomic.Pointer[page[T]], n)}
		if d != nil {
			for i := range d.pages {
				nd.pages[i].Store(d.pages[i].Load())
			}
		}
		t.dir.Store(nd)
		d = nd
	}
	if d.pages[idx].Load() == nil {
		p := new(page[T])
		p.remaining.Store(pageSize)
		d.pages[idx].Store(p)
	}
	return id
}

// Store makes id map to v. id must have been returned by Reserve and not yet
// removed.
func (t *Table[T]) Store(id uint64, v *T) {
	t.slot(id).Store(v)
}

// Load returns what id maps to, or nil.
func (t *Table[T]) Load(id uint64) *T {
	d := t.dir.Load()
	if d == nil || id == 0 {
		return nil
	}
	idx := (id - 1) >> pageBits
	if idx >= uint64(len(d.pages)) {
		return nil
	}
	p := d.pages[idx].Load()
	if p == nil {
		return nil
	}
	return p.slots[(id-1)&pageMask].Load()
}

// Remove unmaps id. It must be called exactly once for every reserved id.
func (t *Table[T]) Remove(id uint64) {
	idx := (id - 1) >> pageBits
	d := t.dir.Load()
	p := d.pages[idx].Load()
	p.slots[(id-1)&pageMask].Store(nil)
	if p.remaining.Add(-1) > 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dir.Load().pages[idx].Store(nil)
}

// Range calls fn for every stored entry, in increasing id order, until fn
// returns false. Entries stored or removed during the walk may or may not be
// seen.
func (t *Table[T]) Range(fn func(id uint64, v *T) bool) {
	d := t.dir.Load()
	if d == nil {
		return
	}
	for i := range d.pages {
		p := d.pages[i].Load()
		if p == nil {
			continue
		}
		for j := range p.slots {
			if v := p.slots[j].Load(); v != nil {
				if !fn(uint64(i)<<pageBits+uint64(j)+1, v) {
					return
				}
			}
		}
	}
}

func (t *Table[T]) slot(id uint64) *atomic.Pointer[T] {
	idx := (id - 1) >> pageBits
	return &t.dir.Load().pages[idx].Load().slots[(id-1)&pageMask]
}
