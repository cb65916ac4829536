// Package unbounded is a queue that never blocks its producer and hands
// values, in order, to a channel a consumer reads. Layers use it to deliver
// events to subscribers without letting a slow subscriber hold them up. It
// depends on nothing else in herd.
package unbounded

import "sync"

// Queue is an ordered, unbounded hand-off to a channel. A goroutine moves
// values to the channel only while some wait, so an idle queue costs no
// goroutine. Safe for concurrent use. Memory grows while the reader lags;
// a reader that stops reading should Close.
type Queue[T any] struct {
	ch   chan T
	done chan struct{}

	mu      sync.Mutex
	items   []T
	pumping bool
	closed  bool
}

// New returns an empty queue.
func New[T any]() *Queue[T] {
	return &Queue[T]{ch: make(chan T), done: make(chan struct{})}
}

// Out is the channel values arrive on. It is closed by Close.
func (q *Queue[T]) Out() <-chan T { return q.ch }

// Push queues v; it never blocks. After Close it does nothing.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, v)
	start := !q.pumping
	q.pumping = true
	q.mu.Unlock()
	if start {
		go q.pump()
	}
}

// Len returns the number of values waiting.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// Close drops what waits and closes Out. It is idempotent.
func (q *Queue[T]) Close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	q.items = nil
	pumping := q.pumping
	q.mu.Unlock()
	close(q.done)
	if !pumping {
		close(q.ch)
	}
}

func (q *Queue[T]) pump() {
	for {
		q.mu.Lock()
		if q.closed || len(q.items) == 0 {
			q.pumping = false
			closed := q.closed
			q.items = q.items[:0]
			q.mu.Unlock()
			if closed {
				close(q.ch)
			}
			return
		}
		v := q.items[0]
		var zero T
		q.items[0] = zero
		q.items = q.items[1:]
		q.mu.Unlock()
		select {
		case q.ch <- v:
		case <-q.done:
		}
	}
}
