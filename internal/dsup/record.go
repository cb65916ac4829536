package dsup

import (
	"errors"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
	"github.com/herdkit/herd/internal/supervisor"
)

// Spec is a child as the cluster keeps it: everything needed to start it on
// any node.
type Spec struct {
	_ struct{} `cbor:",toarray"`
	// Kind is registered on every node that may run the child.
	Kind string
	// Args are the encoded arguments to Init (the node's codec), or empty.
	Args []byte
	// Name and Env: the unique name the child registers before Init, if
	// any.
	Name string
	Env  string
	// Labels and Capabilities are the name's metadata.
	Labels       map[string]string
	Capabilities []string
	// Restart says when the child restarts.
	Restart supervisor.Restart
	// Shutdown is the stop budget (supervisor.Brutal, supervisor.Infinity,
	// or zero for the default).
	Shutdown time.Duration
}

// Record is a child's entry in the replicated map of children, under its
// ID. Plain (not owned): it outlives every node.
type Record struct {
	_    struct{} `cbor:",toarray"`
	Spec Spec
	// Owner is the node life that should run the child (zero: none yet).
	Owner proc.NodeID
	// PID is the instance running, once Owner started it.
	PID proc.PID
	// Epoch counts placements: each claim, handoff or move adds one.
	Epoch uint64
	// Failed, if not empty, is why the child was given up (restart
	// intensity exceeded): nobody starts it.
	Failed string
	// State is the child's last stashed or checkpointed state, restored at
	// its next start, when HasState.
	State    []byte
	HasState bool
}

const recordFormat = 1

// MaxRecord bounds a record's encoding.
const MaxRecord = 64 << 20

var (
	recEnc, _ = cbor.CoreDetEncOptions().EncMode()
	recDec, _ = cbor.DecOptions{
		MaxNestedLevels: 6, MaxArrayElements: 4096, MaxMapPairs: 4096,
		DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden, TagsMd: cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
)

// errBadRecord: a replicated record that does not parse. It can only come
// from a broken or hostile peer; the child is left alone.
var errBadRecord = errors.New("dsup: malformed child record")

func encodeRecord(r *Record) ([]byte, error) {
	b, err := recEnc.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("dsup: encode record: %w", err)
	}
	return append([]byte{recordFormat}, b...), nil
}

func decodeRecord(b []byte) (*Record, error) {
	if len(b) < 2 || b[0] != recordFormat || len(b) > MaxRecord {
		return nil, errBadRecord
	}
	r := new(Record)
	if err := recDec.Unmarshal(b[1:], r); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadRecord, err)
	}
	if r.Spec.Kind == "" || r.Spec.Restart > supervisor.Temporary || (r.PID.Node != r.Owner && !r.PID.IsZero()) {
		return nil, errBadRecord
	}
	return r, nil
}

// Resolve is the resolver of the map of children: of records written
// concurrently, the one with the highest epoch wins; at equal epochs a
// handoff (written by the old owner, naming another node) beats a claim
// (written by the new owner itself), since the old owner was alive to
// write it; then the latest write. A node that claims or hands over a
// child writes the epoch it read plus one, so a claim made from a stale
// view (a node still catching up, or cut off while the others moved the
// child on) loses to the placements made since, whenever it lands.
func Resolve(_ string, vs []crdt.Version) crdt.Version {
	best, bestEpoch, bestHandoff := len(vs)-1, uint64(0), false
	found := false
	for i, v := range vs {
		r, err := decodeRecord(v.Value)
		if err != nil {
			continue // a malformed record never wins
		}
		handoff := r.Owner != v.Dot.Node
		if !found || r.Epoch > bestEpoch || (r.Epoch == bestEpoch && (handoff || !bestHandoff)) {
			best, bestEpoch, bestHandoff, found = i, r.Epoch, handoff, true
		}
	}
	return vs[best]
}
