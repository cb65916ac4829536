package dsup

import (
	"bytes"
	"testing"

	"github.com/herdkit/herd/internal/crdt"
	"github.com/herdkit/herd/internal/proc"
)

func sampleRecord() *Record {
	n := proc.NodeID{Name: "n1", Incarnation: 7}
	return &Record{
		Spec:  Spec{Kind: "game", Args: []byte{1, 2}, Name: "g", Labels: map[string]string{"a": "b"}, Capabilities: []string{"x"}, Restart: 1},
		Owner: n, PID: proc.PID{Node: n, ID: 3}, Epoch: 2, State: []byte("s"), HasState: true,
	}
}

func TestRecordRoundTrip(t *testing.T) {
	b, err := encodeRecord(sampleRecord())
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := encodeRecord(r)
	if !bytes.Equal(b, b2) {
		t.Fatal("round trip changed the record")
	}
	for _, bad := range [][]byte{nil, {recordFormat}, {2, 0x80}, append([]byte{recordFormat}, 0xff)} {
		if _, err := decodeRecord(bad); err == nil {
			t.Errorf("decoded %x", bad)
		}
	}
	// A PID on another node than the owner is refused.
	r.PID.Node.Name = "elsewhere"
	b, _ = encodeRecord(r)
	if _, err := decodeRecord(b); err == nil {
		t.Error("decoded a record whose PID is not on its owner")
	}
}

func TestResolvePrefersEpochThenLatest(t *testing.T) {
	mk := func(epoch uint64) crdt.Version {
		r := sampleRecord()
		r.Epoch = epoch
		b, _ := encodeRecord(r)
		return crdt.Version{Value: b}
	}
	vs := []crdt.Version{mk(3), mk(5), mk(4), {Value: []byte("junk")}}
	if got := Resolve("k", vs); !bytes.Equal(got.Value, vs[1].Value) {
		t.Fatal("the highest epoch did not win")
	}
	tie := []crdt.Version{mk(5), mk(5)}
	tie[1].Value = append([]byte(nil), tie[1].Value...)
	if got := Resolve("k", tie); &got.Value[0] != &tie[1].Value[0] {
		t.Fatal("a tie did not go to the latest write")
	}
}

func FuzzRecord(f *testing.F) {
	b, _ := encodeRecord(sampleRecord())
	f.Add(b)
	f.Add([]byte{recordFormat, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil {
			return
		}
		b, err := encodeRecord(r)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := decodeRecord(b); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}
