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

// since returns the deltas for every dot ctx has and peer lacks, or false
// if some are no longer (or never were) in the log.
func (l *deltaLog) since(ctx, peer *crdt.Context) ([]crdt.Delta, bool) {
	var out []crdt.Delta
	ok := true
	ctx.Missing(peer, func(d crdt.Dot) bool {
		delta, found := l.byDot[d]
		if !found {
			ok = false
			return false
		}
		out = append(out, delta)
		return true
	})
	return out, ok
}
