package dsup

import (
	"testing"

	"github.com/herdkit/herd/internal/proc"
)

// TestDecideOwnInstance: what a node does about a child whose record names
// it as owner, by what runs there.
func TestDecideOwnInstance(t *testing.T) {
	self := proc.NodeID{Name: "a", Incarnation: 1}
	v := &View{
		Self: self, Quorum: true, Up: []proc.NodeID{self}, Settled: true, Placement: Uniform(),
		Alive: func(proc.NodeID) bool { return true }, Ended: func(proc.NodeID) bool { return false },
	}
	mine := proc.PID{Node: self, ID: 5}
	for _, tc := range []struct {
		name string
		rec  Record
		l    Local
		want Op
	}{
		{"not running: start", Record{Owner: self, PID: mine}, Local{}, Start},
		{"running as recorded: nothing", Record{Owner: self, PID: mine}, Local{Running: true, PID: mine}, None},
		{"handed over while running: adopt", Record{Owner: self, Epoch: 3}, Local{Running: true, PID: mine}, Adopt},
		{"record names an older instance: adopt", Record{Owner: self, PID: proc.PID{Node: self, ID: 2}}, Local{Running: true, PID: mine}, Adopt},
		{"busy: nothing", Record{Owner: self}, Local{Busy: true}, None},
	} {
		if got := Decide(v, "c", &tc.rec, tc.l); got.Op != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got.Op, tc.want)
		}
	}
	r := &Record{Owner: self, Epoch: 3}
	if !adopt(r, self, self, mine) || r.PID != mine || r.Epoch != 3 {
		t.Fatalf("adopting its own record: %+v", r)
	}
	if adopt(r, self, self, mine) {
		t.Fatal("adopted a record that names the instance already")
	}
	other := proc.NodeID{Name: "b", Incarnation: 1}
	r = &Record{Owner: other, Epoch: 3}
	if !adopt(r, other, self, mine) || r.Owner != self || r.Epoch != 4 {
		t.Fatalf("adopting from an ended owner: %+v", r)
	}
}
