package replica

import (
	"testing"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
)

func seedMessages(t testing.TB) [][]byte {
	self := proc.NodeID{Name: "a", Incarnation: 1}
	m := crdt.NewMap(self, nil)
	put, err := m.Put("k", []byte("v"), crdt.Owner{Node: self, Process: 7}, crdt.MakeTimestamp(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	del, _ := m.Delete("k")
	state := m.State()
	var out [][]byte
	for _, msg := range []struct {
		k kind
		v any
	}{
		{kindDeltas, &deltasMsg{Maps: []mapDeltas{{Map: "m", Deltas: []crdt.Delta{put, del}}}}},
		{kindDigest, &digestMsg{Maps: []mapDigest{{Map: "m", Context: m.Context().Clone()}}}},
		{kindState, &stateMsg{Map: "m", Xfer: 1, Last: true, Part: state}},
	} {
		b, err := encode(msg.k, msg.v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b[1:]) // Channel is stripped before decode
	}
	return out
}

func TestDecodeRoundTrip(t *testing.T) {
	for _, b := range seedMessages(t) {
		if _, _, err := decode(b); err != nil {
			t.Fatalf("decode of an encoded message: %v", err)
		}
	}
	for _, bad := range [][]byte{nil, {0}, {byte(kindEnd)}, {byte(kindDeltas), 0xff}, {byte(kindDigest)}} {
		if _, _, err := decode(bad); err == nil {
			t.Fatalf("decode(%x) accepted", bad)
		}
	}
}

// FuzzMessage feeds arbitrary payloads to the decoder and, when one
// decodes, joins what it carries into a map: nothing may panic, and the
// map must stay well formed.
func FuzzMessage(f *testing.F) {
	for _, b := range seedMessages(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, v, err := decode(b)
		if err != nil {
			return
		}
		m := crdt.NewMap(proc.NodeID{Name: "z", Incarnation: 9}, nil)
		switch k {
		case kindDeltas:
			for _, md := range v.(*deltasMsg).Maps {
				for i := range md.Deltas {
					m.Join(&md.Deltas[i])
				}
			}
		case kindState:
			part := v.(*stateMsg).Part
			if part.Validate() == nil {
				m.Join(&part)
			}
		}
		if err := m.Check(); err != nil {
			t.Fatalf("map broken by a decoded message: %v", err)
		}
	})
}
