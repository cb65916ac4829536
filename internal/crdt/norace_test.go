//go:build !race

package crdt

// raceEnabled reports whether the race detector is on; it slows the
// simulator about tenfold, so TestSimulator runs fewer seeds under it.
const raceEnabled = false
