package registry

import (
	"sync"

	"github.com/herdkit/herd/internal/unbounded"
)

// Watch delivers the changes a query selects, in the order the registry
// made them. Events queue without bound while the reader is slow, so a
// registry never waits for its watchers; a reader that stops reading should
// Close. Safe for concurrent use.
type Watch struct {
	q      Query
	events *unbounded.Queue[Event]
	remove func(*Watch) // detaches from the registry, once
	once   sync.Once
}

// NewWatch returns a watch for q. Backends call it; remove is called once,
// by Close, to detach it.
func NewWatch(q Query, remove func(*Watch)) *Watch {
	q.Limit = 0
	return &Watch{q: q, events: unbounded.New[Event](), remove: remove}
}

// Events returns the channel events arrive on. It is closed by Close.
func (w *Watch) Events() <-chan Event { return w.events.Out() }

// Query returns what the watch selects.
func (w *Watch) Query() *Query { return &w.q }

// Close stops the watch; events not yet read are dropped and the channel is
// closed. Close is idempotent.
func (w *Watch) Close() {
	w.once.Do(func() {
		if w.remove != nil {
			w.remove(w)
		}
		w.events.Close()
	})
}

// Offer queues e if the watch's query selects its entry. Backends call it
// in the order changes happen; it never blocks.
func (w *Watch) Offer(e Event) {
	if w.q.Matches(&e.Entry) {
		w.events.Push(e)
	}
}
