package replica

import "github.com/herdkit/herd/internal/crdt"

// deltaLog keeps the latest deltas a map joined or made, by their op dot,
// so that anti-entropy can send a peer what it missed instead of the
// whole state. It forgets the oldest first once full.
type deltaLog struct {
	max   int
	byDot map[crdt.Dot]crdt.Delta
	ring  []crdt.Dot
	next  int // where the next dot goes in ring once it is full
}

func newDeltaLog(max int) *deltaLog {
	return &deltaLog{max: max, byDot: make(map[crdt.Dot]crdt.Delta)}
}

func (l *deltaLog) add(d crdt.Delta) {
	if d.Op.IsZero() || l.max <= 0 {
		return
	}
	if _, ok := l.byDot[d.Op]; ok {
		return
	}
	if len(l.ring) < l.max {
		l.ring = append(l.ring, d.Op)
	} else {
		delete(l.byDot, l.ring[l.next])
		l.ring[l.next] = d.Op
		l.next = (l.next + 1) % l.max
	}
	l.byDot[d.Op] = d
}

// get returns the deltas of dots, or false if some are no longer (or never
// were) in the log.
func (l *deltaLog) get(dots []crdt.Dot) ([]crdt.Delta, bool) {
	out := make([]crdt.Delta, 0, len(dots))
	for _, d := range dots {
		delta, ok := l.byDot[d]
		if !ok {
			return nil, false
		}
		out = append(out, delta)
	}
	return out, true
}

// present returns the deltas of those dots the log still holds.
func (l *deltaLog) present(dots []crdt.Dot) []crdt.Delta {
	var out []crdt.Delta
	for _, d := range dots {
		if delta, ok := l.byDot[d]; ok {
			out = append(out, delta)
		}
	}
	return out
}
