package dsup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/membership"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/proctest"
	"github.com/herdkit/herd/internal/replica"
)

// fakeMembers is a fixed membership: every member alive.
type fakeMembers struct{ ms []membership.Member }

func newFakeMembers(ids ...proc.NodeID) *fakeMembers {
	f := &fakeMembers{}
	for _, id := range ids {
		f.ms = append(f.ms, membership.Member{ID: id, Status: membership.Alive})
	}
	return f
}

func (f *fakeMembers) Members() []membership.Member { return slices.Clone(f.ms) }

func (f *fakeMembers) Member(id proc.NodeID) (membership.Member, bool) {
	for _, m := range f.ms {
		if m.ID == id {
			return m, true
		}
	}
	return membership.Member{}, false
}

func (f *fakeMembers) Latest(name string) (membership.Member, bool) {
	for _, m := range f.ms {
		if m.ID.Name == name {
			return m, true
		}
	}
	return membership.Member{}, false
}

func (f *fakeMembers) Subscribe() *membership.Subscription { return nil }

var (
	nodeA = proc.NodeID{Name: "a", Incarnation: 1}
	nodeB = proc.NodeID{Name: "b", Incarnation: 1}
	nodeC = proc.NodeID{Name: "c", Incarnation: 1}
)

// prefer places on the first node of order among the candidates.
func prefer(order ...proc.NodeID) Placement {
	return PlacementFunc(func(req PlaceRequest) (proc.NodeID, bool) {
		for _, n := range order {
			if slices.Contains(req.Nodes, n) {
				return n, true
			}
		}
		return proc.NodeID{}, false
	})
}

// rig is node a's supervisor, in a cluster of a, b and c whose other
// supervisors are played by the test through Ask and Share.
type rig struct {
	s        *Supervisor
	children *replica.Map

	mu     sync.Mutex
	asked  []proc.NodeID
	shared []proc.NodeID
	// answer says what b or c answers a start request; nil means a
	// started instance there.
	answer map[proc.NodeID]error
	// share says what b or c answers a shared write.
	share func(proc.NodeID, []byte) error
}

func newRig(t *testing.T, placement Placement) *rig {
	t.Helper()
	rt := proctest.NewRuntimeWith(t, proc.Config{Node: nodeA})
	if err := rt.RegisterKind("k", func() proc.Process { return &proctest.Func{} }); err != nil {
		t.Fatal(err)
	}
	reps, err := replica.New(replica.Config{Self: nodeA})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reps.Close() })
	children, err := reps.Open("herd.children", Resolve, false)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{children: children, answer: map[proc.NodeID]error{}}
	r.s = New(Config{
		Self: nodeA, Runtime: rt, Children: children, Members: newFakeMembers(nodeA, nodeB, nodeC),
		Placement: placement, Grace: time.Millisecond, ShareTimeout: time.Second,
		Spawn: func(spec *Spec, opts []proc.SpawnOption) (proc.PID, error) {
			return rt.Spawn(spec.Kind, nil, opts...)
		},
		Ask: func(ctx context.Context, node proc.NodeID, body []byte) ([]byte, error) {
			r.mu.Lock()
			r.asked = append(r.asked, node)
			err := r.answer[node]
			r.mu.Unlock()
			if err != nil {
				return nil, err
			}
			// The node's supervisor writes the record and answers
			// with it.
			var req startReq
			if err := recDec.Unmarshal(body, &req); err != nil {
				t.Errorf("start request: %v", err)
				return nil, err
			}
			pid := proc.PID{Node: node, ID: 7}
			rec, err := encodeRecord(&Record{Spec: req.Spec, Owner: node, PID: pid})
			if err != nil {
				return nil, err
			}
			reps, err := replica.New(replica.Config{Self: node})
			if err != nil {
				return nil, err
			}
			defer reps.Close()
			theirs, err := reps.Open("herd.children", Resolve, false)
			if err != nil {
				return nil, err
			}
			shared, err := theirs.PutShared(req.ID, rec, crdt.Owner{})
			if err != nil {
				return nil, err
			}
			return recEnc.Marshal(&startResp{PID: pid, Record: shared})
		},
		Share: func(ctx context.Context, node proc.NodeID, body []byte) error {
			r.mu.Lock()
			r.shared = append(r.shared, node)
			share := r.share
			r.mu.Unlock()
			if share != nil {
				return share(node, body)
			}
			return nil
		},
	})
	t.Cleanup(r.s.Close)
	rt.SetCheckpointer(r.s)
	return r
}

func (r *rig) calls() (asked, shared []proc.NodeID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.asked), slices.Clone(r.shared)
}

// TestStartChildPlacesAgainAfterRefusal: a target that refuses (leaving,
// no quorum) or is lost before it answers is left out, and the child is
// placed on the next node the placement names.
func TestStartChildPlacesAgainAfterRefusal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	t.Run("leaving then lost, then here", func(t *testing.T) {
		r := newRig(t, prefer(nodeB, nodeC, nodeA))
		r.answer[nodeB] = fmt.Errorf("start on b: %w", ErrLeaving)
		r.answer[nodeC] = fmt.Errorf("ask c: %w", proc.ErrNodeDown)
		pid, err := r.s.StartChild(ctx, "x", Spec{Kind: "k"})
		if err != nil {
			t.Fatal(err)
		}
		if pid.Node != nodeA {
			t.Fatalf("started on %v, want a, the only node that did not refuse", pid.Node)
		}
		if asked, _ := r.calls(); !slices.Equal(asked, []proc.NodeID{nodeB, nodeC}) {
			t.Fatalf("asked %v, want b then c", asked)
		}
		if c, ok := r.s.Child("x"); !ok || c.Owner != nodeA || c.PID != pid {
			t.Fatalf("record %+v (%v), want owner a with %v", c, ok, pid)
		}
	})

	t.Run("no quorum, then the next node", func(t *testing.T) {
		r := newRig(t, prefer(nodeB, nodeC, nodeA))
		r.answer[nodeB] = fmt.Errorf("start on b: %w", ErrNoQuorum)
		pid, err := r.s.StartChild(ctx, "x", Spec{Kind: "k"})
		if err != nil {
			t.Fatal(err)
		}
		if pid != (proc.PID{Node: nodeC, ID: 7}) {
			t.Fatalf("started as %v, want c's answer", pid)
		}
		// The caller reads its own start: c's record is in its replica.
		if c, ok := r.s.Child("x"); !ok || c.Owner != nodeC || c.PID != pid {
			t.Fatalf("caller's record %+v (%v), want c's", c, ok)
		}
		if asked, _ := r.calls(); !slices.Equal(asked, []proc.NodeID{nodeB, nodeC}) {
			t.Fatalf("asked %v, want b then c", asked)
		}
	})

	t.Run("another error is the answer", func(t *testing.T) {
		r := newRig(t, prefer(nodeB, nodeC, nodeA))
		unknown := errors.New("unknown kind")
		r.answer[nodeB] = unknown
		if _, err := r.s.StartChild(ctx, "x", Spec{Kind: "k"}); !errors.Is(err, unknown) {
			t.Fatalf("StartChild: %v, want b's error", err)
		}
		if asked, _ := r.calls(); !slices.Equal(asked, []proc.NodeID{nodeB}) {
			t.Fatalf("asked %v, want b only", asked)
		}
	})

	t.Run("every node refuses", func(t *testing.T) {
		r := newRig(t, prefer(nodeB, nodeC))
		r.answer[nodeB] = fmt.Errorf("b: %w", ErrLeaving)
		r.answer[nodeC] = fmt.Errorf("c: %w", ErrLeaving)
		_, err := r.s.StartChild(ctx, "x", Spec{Kind: "k"})
		if !errors.Is(err, ErrNoNode) || !errors.Is(err, ErrLeaving) {
			t.Fatalf("StartChild: %v, want ErrNoNode carrying the last refusal", err)
		}
		if _, ok := r.s.Child("x"); ok {
			t.Fatal("a refused child has a record")
		}
	})

	t.Run("context ends between refusals", func(t *testing.T) {
		r := newRig(t, prefer(nodeB, nodeC, nodeA))
		ended, stop := context.WithCancel(ctx)
		stop()
		r.answer[nodeB] = fmt.Errorf("b: %w", proc.ErrNodeDown)
		_, err := r.s.StartChild(ended, "x", Spec{Kind: "k"})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("StartChild: %v, want the context's error", err)
		}
		if asked, _ := r.calls(); !slices.Equal(asked, []proc.NodeID{nodeB}) {
			t.Fatalf("asked %v, want b only", asked)
		}
	})
}

// checkpointer is a child that checkpoints what it is called with.
func checkpointer() proc.Process {
	return &proctest.Func{OnCall: func(c *proc.Context, m any) (any, error) {
		return nil, c.Checkpoint([]byte(m.(string)))
	}}
}

// TestCheckpointSharedWithSuccessor: a start and a checkpoint return once
// the node that would take the child over has the record; a checkpoint it
// does not confirm is ErrNotReplicated, and stays stored here.
func TestCheckpointSharedWithSuccessor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := newRig(t, prefer(nodeA, nodeC, nodeB))
	if err := r.s.cfg.Runtime.RegisterKind("cp", checkpointer); err != nil {
		t.Fatal(err)
	}
	// b's replica, to join what a shares.
	repsB, err := replica.New(replica.Config{Self: nodeB})
	if err != nil {
		t.Fatal(err)
	}
	defer repsB.Close()
	atB, err := repsB.Open("herd.children", Resolve, false)
	if err != nil {
		t.Fatal(err)
	}
	r.share = func(node proc.NodeID, body []byte) error { return atB.JoinShared(body) }

	pid, err := r.s.StartChild(ctx, "x", Spec{Kind: "cp"})
	if err != nil || pid.Node != nodeA {
		t.Fatalf("StartChild: %v, %v", pid, err)
	}
	// Without a, the placement names c: that is where the record went.
	if _, shared := r.calls(); !slices.Equal(shared, []proc.NodeID{nodeC}) {
		t.Fatalf("shared with %v, want c", shared)
	}
	if _, ok := atB.Get("x"); !ok {
		t.Fatal("the shared start did not reach the other replica")
	}
	if _, err := r.s.cfg.Runtime.Call(ctx, pid, "one"); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	v, ok := atB.Get("x")
	if !ok {
		t.Fatal("no record at the other replica")
	}
	rec, err := decodeRecord(v.Value)
	if err != nil || string(rec.State) != "one" {
		t.Fatalf("the other replica has %+v (%v), want the checkpoint", rec, err)
	}

	r.mu.Lock()
	r.share = func(proc.NodeID, []byte) error { return proc.ErrNodeDown }
	r.mu.Unlock()
	_, err = r.s.cfg.Runtime.Call(ctx, pid, "two")
	if !errors.Is(err, ErrNotReplicated) || !errors.Is(err, proc.ErrNodeDown) {
		t.Fatalf("unconfirmed checkpoint: %v, want ErrNotReplicated", err)
	}
	if c, _ := r.s.Child("x"); !c.HasState {
		t.Fatal("lost the record")
	}
	if v, _ := r.children.Get("x"); func() string { rec, _ := decodeRecord(v.Value); return string(rec.State) }() != "two" {
		t.Fatal("an unconfirmed checkpoint is not stored here")
	}
}

// TestServeShareRefusesJunk: a shared write that does not parse, or is of
// another map, is refused and changes nothing.
func TestServeShareRefusesJunk(t *testing.T) {
	r := newRig(t, prefer(nodeA))
	reps, err := replica.New(replica.Config{Self: nodeB})
	if err != nil {
		t.Fatal(err)
	}
	defer reps.Close()
	other, err := reps.Open("other", nil, false)
	if err != nil {
		t.Fatal(err)
	}
	wrongMap, err := other.PutShared("x", []byte{1}, crdt.Owner{})
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		"empty": nil, "junk": []byte("junk"), "bad kind": {9, 1, 2}, "another map": wrongMap,
	} {
		if _, err := r.s.ServeShare(context.Background(), nodeB, body); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if r.children.Len() != 0 {
		t.Fatalf("refused writes changed the map: %d keys", r.children.Len())
	}
}
