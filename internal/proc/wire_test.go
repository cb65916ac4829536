package proc_test

import (
	"bytes"
	"testing"

	"github.com/herdkit/herd/internal/codec"

	. "github.com/herdkit/herd/internal/proc"
)

// PIDs and the other identities travel between nodes: they round-trip
// through the codec as compact arrays.
func TestIdentitiesRoundTripThroughCodec(t *testing.T) {
	r, err := codec.NewRegistry(codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	codec.MustRegister[PID](r, "herd.PID")
	codec.MustRegister[NodeID](r, "herd.NodeID")
	codec.MustRegister[EnvName](r, "herd.EnvName")
	codec.MustRegister[Ref](r, "herd.Ref")
	pid := PID{Node: NodeID{Name: "n1.example", Incarnation: 1_763_700_000_123_456_789}, ID: 42}
	for _, v := range []any{pid, pid.Node, InEnv("tenant", "game:1"), Ref(7), PID{}} {
		data, err := r.Encode(v)
		if err != nil {
			t.Fatalf("encode %#v: %v", v, err)
		}
		back, err := r.Decode(data)
		if err != nil || back != v {
			t.Fatalf("round trip of %#v gave %#v, %v", v, back, err)
		}
	}
	// [name, [[node-name, incarnation], id]]: the PID is a two-element array
	// (0x82) whose first element is the node as a two-element array.
	data, _ := r.Encode(pid)
	payload := data[len(data)-len(mustEncodePayload(t, pid)):]
	if payload[0] != 0x82 || payload[1] != 0x82 {
		t.Fatalf("PID is not encoded as nested arrays: % x", payload)
	}
	if len(data) > 40 {
		t.Fatalf("encoded PID is %d bytes, want it compact", len(data))
	}
}

// mustEncodePayload is the PID's encoding without the envelope: the envelope
// is [name, payload], so the payload is the suffix after the name.
func mustEncodePayload(t *testing.T, pid PID) []byte {
	r, _ := codec.NewRegistry(codec.Options{})
	codec.MustRegister[PID](r, "p")
	data, err := r.Encode(pid)
	if err != nil {
		t.Fatal(err)
	}
	// 0x82 (array of 2), 0x61 'p' (text of 1): three bytes of envelope.
	if !bytes.HasPrefix(data, []byte{0x82, 0x61, 'p'}) {
		t.Fatalf("unexpected envelope % x", data[:3])
	}
	return data[3:]
}
