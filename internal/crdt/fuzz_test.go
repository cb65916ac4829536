package crdt

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/herdkit/herd/internal/proc"
)

// FuzzDecodeDelta: DecodeDelta takes bytes from peers and the disk. On any
// input it must return a delta or ErrMalformed, never panic; a delta it
// accepts must join without breaking a replica, and must survive
// re-encoding unchanged in meaning and in bytes.
func FuzzDecodeDelta(f *testing.F) {
	// A replica with plain, owned, hidden and retired entries to join into,
	// and the deltas that made it as the seed corpus.
	g := newGen(f, 3, 3)
	for range 120 {
		g.step()
	}
	base := g.maps[0].State()
	seeds := slices.Clone(g.deltas)
	for _, m := range g.maps {
		seeds = append(seeds, m.State())
	}
	for i := range seeds {
		b, err := AppendDelta(nil, &seeds[i])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(nil))
	f.Add([]byte{0x86, 0x82, 0x82, 0x60, 0x00, 0x00, 0x80, 0x80, 0x82, 0x80, 0x80, 0x80, 0xf4})
	self := proc.NodeID{Name: "fuzz", Incarnation: 1}

	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeDelta(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeDelta error %v is not ErrMalformed", err)
			}
			return
		}
		into := func(d *Delta) *Map {
			m := NewMap(self, nil)
			m.Join(&base)
			m.Join(d)
			if err := m.Check(); err != nil {
				t.Fatalf("after joining the decoded delta: %v", err)
			}
			return m
		}
		empty := NewMap(self, nil)
		empty.Join(&d)
		if err := empty.Check(); err != nil {
			t.Fatalf("after joining the decoded delta into an empty replica: %v", err)
		}
		m1 := into(&d)

		enc, err := AppendDelta(nil, &d)
		if err != nil {
			t.Fatalf("AppendDelta of a decoded delta: %v", err)
		}
		d2, err := DecodeDelta(enc)
		if err != nil {
			t.Fatalf("a re-encoded delta does not decode: %v", err)
		}
		if again, err := AppendDelta(nil, &d2); err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("a delta's encoding changes over a round trip (%v)", err)
		}
		m2 := into(&d2)
		if !m1.Equal(m2) {
			t.Fatal("the re-encoded delta joins differently")
		}
		m2.Join(&d)
		if !m1.Equal(m2) {
			t.Fatal("joining a delta twice is not idempotent")
		}
	})
}
