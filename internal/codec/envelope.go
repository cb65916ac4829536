package codec

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"
)

// CBOR initial bytes used by the envelope.
const (
	cborArrayOf2  = 0x82 // major type 4 (array), length 2
	cborTextMajor = 3    // major type 3 (text string)
	cborNull      = 0xf6
	cborUndefined = 0xf7
)

var (
	errEnvelopeShape = errors.New("envelope is not a CBOR array of two elements")
	errEnvelopeName  = errors.New("envelope name is not a definite-length text string")
	errEnvelopeEOF   = errors.New("envelope is truncated")
	errEnvelopeUTF8  = errors.New("envelope name is not valid UTF-8")
)

// envelopeHeader returns the bytes of the envelope before the payload: the
// head of a two-element array and the name as a text string.
func envelopeHeader(name string) []byte {
	h := make([]byte, 0, 1+9+len(name))
	h = append(h, cborArrayOf2)
	n := uint64(len(name))
	const major = cborTextMajor << 5
	switch {
	case n < 24:
		h = append(h, major|byte(n))
	case n <= 0xff:
		h = append(h, major|24, byte(n))
	case n <= 0xffff:
		h = append(h, major|25)
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default: // names are at most maxNameLen bytes; kept for completeness
		h = append(h, major|27)
		h = binary.BigEndian.AppendUint64(h, n)
	}
	return append(h, name...)
}

// splitEnvelope parses the envelope head and name without allocating and
// returns the name and the remaining bytes, which should be exactly one
// payload data item (the payload decoder checks that, and trailing bytes).
// The name is returned as a sub-slice of data.
func splitEnvelope(data []byte) (name, payload []byte, err error) {
	if len(data) == 0 {
		return nil, nil, errEnvelopeEOF
	}
	if data[0] != cborArrayOf2 {
		return nil, nil, errEnvelopeShape
	}
	p := data[1:]
	if len(p) == 0 {
		return nil, nil, errEnvelopeEOF
	}
	if p[0]>>5 != cborTextMajor {
		return nil, nil, errEnvelopeName
	}
	var n uint64
	off := 1
	switch ai := p[0] & 0x1f; {
	case ai < 24:
		n = uint64(ai)
	case ai <= 27:
		size := 1 << (ai - 24) // 1, 2, 4 or 8 bytes of length
		if len(p) < 1+size {
			return nil, nil, errEnvelopeEOF
		}
		switch size {
		case 1:
			n = uint64(p[1])
		case 2:
			n = uint64(binary.BigEndian.Uint16(p[1:]))
		case 4:
			n = uint64(binary.BigEndian.Uint32(p[1:]))
		default:
			n = binary.BigEndian.Uint64(p[1:])
		}
		off += size
	default: // 28-30 are reserved, 31 is indefinite length
		return nil, nil, errEnvelopeName
	}
	if n > uint64(len(p)-off) {
		return nil, nil, errEnvelopeEOF
	}
	name = p[off : off+int(n)]
	payload = p[off+int(n):]
	if !utf8.Valid(name) {
		return nil, nil, errEnvelopeUTF8
	}
	if len(payload) == 0 {
		return nil, nil, errEnvelopeEOF
	}
	return name, payload, nil
}

// isNull reports whether payload is exactly a CBOR null or undefined.
func isNull(payload []byte) bool {
	return len(payload) == 1 && (payload[0] == cborNull || payload[0] == cborUndefined)
}
