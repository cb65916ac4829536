package transport

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf []byte
	frames := []Frame{
		{Type: FrameHello, Payload: []byte("hi")},
		{Type: FrameMessage, Payload: []byte{}},
		{Type: FrameRequest, ID: 1<<64 - 1, Payload: bytes.Repeat([]byte{7}, 1000)},
		{Type: FrameResponse, ID: 42},
	}
	for _, f := range frames {
		buf = AppendFrame(buf, f.Type, f.ID, f.Payload)
	}
	r := bytes.NewReader(buf)
	var scratch [headerSize]byte
	for i, want := range frames {
		got, err := ReadFrame(r, 1<<20, &scratch)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if got.Type != want.Type || got.ID != want.ID || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("frame %d: got %+v, want %+v", i, got, want)
		}
	}
	if _, err := ReadFrame(r, 1<<20, &scratch); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	var scratch [headerSize]byte
	big := AppendFrame(nil, FrameMessage, 0, make([]byte, 101))
	if _, err := ReadFrame(bytes.NewReader(big), 100, &scratch); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	// A length field announcing 4 GiB is refused without allocating it.
	huge := []byte{0xff, 0xff, 0xff, 0xff, byte(FrameMessage), 0, 0, 0, 0, 0, 0, 0, 0}
	if _, err := ReadFrame(bytes.NewReader(huge), 1<<20, &scratch); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("4 GiB length: %v", err)
	}
	short := []byte{0, 0, 0, 3, byte(FrameMessage), 0, 0, 0, 0, 0, 0, 0, 0}
	if _, err := ReadFrame(bytes.NewReader(short), 1<<20, &scratch); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("length shorter than header: %v", err)
	}
	for _, typ := range []byte{0, byte(frameTypeEnd), 200} {
		f := AppendFrame(nil, FrameType(typ), 0, nil)
		if _, err := ReadFrame(bytes.NewReader(f), 1<<20, &scratch); !errors.Is(err, ErrBadFrame) {
			t.Fatalf("type %d: %v", typ, err)
		}
	}
	trunc := AppendFrame(nil, FrameMessage, 0, []byte("hello"))
	if _, err := ReadFrame(bytes.NewReader(trunc[:len(trunc)-2]), 1<<20, &scratch); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated payload: %v", err)
	}
}

// FuzzReadFrame feeds arbitrary bytes to the frame decoder: it must never
// panic nor allocate past the limit, and what it accepts must re-encode to
// the same bytes.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, FrameHello, 0, []byte("node")))
	f.Add(AppendFrame(AppendFrame(nil, FrameRequest, 9, []byte("q")), FrameResponse, 9, []byte("a")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 4096
		r := bytes.NewReader(data)
		var scratch [headerSize]byte
		consumed := 0
		for {
			fr, err := ReadFrame(r, max, &scratch)
			if err != nil {
				return
			}
			if len(fr.Payload) > max {
				t.Fatalf("payload of %d bytes passed a limit of %d", len(fr.Payload), max)
			}
			enc := AppendFrame(nil, fr.Type, fr.ID, fr.Payload)
			if !bytes.Equal(enc, data[consumed:consumed+len(enc)]) {
				t.Fatalf("frame %+v re-encodes differently", fr)
			}
			consumed += len(enc)
		}
	})
}
