package registry

import "sync"

// Watch delivers the changes a query selects, in the order the registry
// made them. Events queue without bound while the reader is slow, so a
// registry never waits for its watchers; a reader that stops reading should
// Close. Safe for concurrent use.
type Watch struct {
	q      Query
	ch     chan Event
	done   chan struct{}
	remove func(*Watch) // detaches from the registry, once

	mu      sync.Mutex
	queue   []Event
	pumping bool
	closed  bool
	once    sync.Once
}

// NewWatch returns a watch for q. Backends call it; remove is called once,
// by Close, to detach it.
func NewWatch(q Query, remove func(*Watch)) *Watch {
	q.Limit = 0
	return &Watch{q: q, ch: make(chan Event), done: make(chan struct{}), remove: remove}
}

// Events returns the channel events arrive on. It is closed by Close.
func (w *Watch) Events() <-chan Event { return w.ch }

// Query returns what the watch selects.
func (w *Watch) Query() *Query { return &w.q }

// Close stops the watch; events not yet read are dropped and the channel is
// closed. Close is idempotent.
func (w *Watch) Close() {
	w.once.Do(func() {
		if w.remove != nil {
			w.remove(w)
		}
		w.mu.Lock()
		w.closed = true
		w.queue = nil
		pumping := w.pumping
		w.mu.Unlock()
		close(w.done)
		if !pumping {
			close(w.ch)
		}
	})
}

// Offer queues e if the watch's query selects its entry. Backends call it
// in the order changes happen; it never blocks.
func (w *Watch) Offer(e Event) {
	if !w.q.Matches(&e.Entry) {
		return
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.queue = append(w.queue, e)
	start := !w.pumping
	w.pumping = true
	w.mu.Unlock()
	if start {
		go w.pump()
	}
}

// pump moves queued events to the channel, and ends when the queue is empty.
func (w *Watch) pump() {
	for {
		w.mu.Lock()
		if w.closed || len(w.queue) == 0 {
			w.pumping = false
			closed := w.closed
			w.queue = w.queue[:0]
			w.mu.Unlock()
			if closed {
				close(w.ch)
			}
			return
		}
		e := w.queue[0]
		w.queue[0] = Event{}
		w.queue = w.queue[1:]
		w.mu.Unlock()
		select {
		case w.ch <- e:
		case <-w.done:
		}
	}
}
