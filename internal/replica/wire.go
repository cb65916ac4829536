package replica

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/crdt"
)

// Channel is the first byte of every transport payload this package sends;
// the node's transport handler routes payloads that start with it here.
const Channel byte = 0xC0

// kind says what a replica message carries; it follows Channel.
type kind uint8

const (
	kindDeltas kind = iota + 1 // deltas, batched over maps
	kindDigest                 // causal contexts, for anti-entropy
	kindState                  // a chunk of a map's whole state
	kindEnd
)

// deltasMsg carries deltas of several maps.
type deltasMsg struct {
	_    struct{} `cbor:",toarray"`
	Maps []mapDeltas
}

type mapDeltas struct {
	_      struct{} `cbor:",toarray"`
	Map    string
	Deltas []crdt.Delta
}

// digestMsg says what a node has seen of each map. Reply marks an answer
// to a digest, which is not answered again.
type digestMsg struct {
	_     struct{} `cbor:",toarray"`
	Reply bool
	Maps  []mapDigest
}

type mapDigest struct {
	_       struct{} `cbor:",toarray"`
	Map     string
	Context crdt.Context
}

// stateMsg is one chunk of a map's whole state. Chunks of one transfer
// share Xfer and come in order; the last carries the context and retired
// lives, and only then is the whole joined.
type stateMsg struct {
	_    struct{} `cbor:",toarray"`
	Map  string
	Xfer uint64
	Seq  uint32
	Last bool
	Part crdt.Delta
}

var encMode, _ = cbor.CoreDetEncOptions().EncMode()

// errMalformed: a message from a peer that does not parse.
var errMalformed = errors.New("replica: malformed message")

func encode(k kind, v any) ([]byte, error) {
	b, err := encMode.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append([]byte{Channel, byte(k)}, b...), nil
}

// decode parses a payload (Channel stripped) into its kind and message.
func decode(payload []byte) (kind, any, error) {
	if len(payload) == 0 || payload[0] == 0 || kind(payload[0]) >= kindEnd {
		return 0, nil, fmt.Errorf("%w: bad kind", errMalformed)
	}
	k, body := kind(payload[0]), payload[1:]
	var v any
	switch k {
	case kindDeltas:
		var m deltasMsg
		if err := crdt.DecMode.Unmarshal(body, &m); err != nil {
			return 0, nil, fmt.Errorf("%w: %v", errMalformed, err)
		}
		for _, md := range m.Maps {
			for i := range md.Deltas {
				if err := md.Deltas[i].Validate(); err != nil {
					return 0, nil, err
				}
			}
		}
		v = &m
	case kindDigest:
		var m digestMsg
		if err := crdt.DecMode.Unmarshal(body, &m); err != nil {
			return 0, nil, fmt.Errorf("%w: %v", errMalformed, err)
		}
		v = &m
	case kindState:
		var m stateMsg
		if err := crdt.DecMode.Unmarshal(body, &m); err != nil {
			return 0, nil, fmt.Errorf("%w: %v", errMalformed, err)
		}
		v = &m
	}
	return k, v, nil
}
