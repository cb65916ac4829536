// Package crdt holds herd's replicated state as pure state machines: a
// hybrid logical clock, a causal context, and a delta-state add-wins map
// with last-writer-wins values. Nothing here starts a goroutine, touches the
// network or a disk, or reads a clock: time comes in as a value, and what a
// replica must send comes out as a Delta for the driver (package replica) to
// ship. That keeps every rule testable with a seeded simulator.
//
// The package depends on proc for node identities only.
package crdt

// Timestamp is a hybrid logical clock reading: wall-clock milliseconds in
// the high 48 bits and a logical counter in the low 16. Timestamps order
// events across nodes: a node's clock never goes back, and it moves past
// every timestamp it receives, so a write that saw another is later than it
// even when the writer's wall clock lags.
type Timestamp uint64

const logicalBits = 16

// MakeTimestamp builds a timestamp from wall milliseconds and a logical count.
func MakeTimestamp(wallMillis int64, logical uint16) Timestamp {
	if wallMillis < 0 {
		wallMillis = 0
	}
	return Timestamp(uint64(wallMillis)<<logicalBits | uint64(logical))
}

// WallMillis returns the wall-clock part, in Unix milliseconds.
func (t Timestamp) WallMillis() int64 { return int64(t >> logicalBits) }

// Logical returns the logical counter.
func (t Timestamp) Logical() uint16 { return uint16(t) }

// Clock is a hybrid logical clock. The zero Clock is ready. It is not safe
// for concurrent use; a driver guards it.
type Clock struct {
	last Timestamp
}

// Now returns a timestamp later than every one returned or observed before,
// and no earlier than wallMillis. (A logical counter that overflows carries
// into the milliseconds, moving the clock a millisecond ahead of the wall.)
func (c *Clock) Now(wallMillis int64) Timestamp {
	if w := MakeTimestamp(wallMillis, 0); w > c.last {
		c.last = w
	} else {
		c.last++
	}
	return c.last
}

// Observe moves the clock past a timestamp received from another node.
func (c *Clock) Observe(remote Timestamp) {
	if remote > c.last {
		c.last = remote
	}
}

// Last returns the latest timestamp returned or observed.
func (c *Clock) Last() Timestamp { return c.last }
