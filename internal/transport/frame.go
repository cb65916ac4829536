// Package transport moves frames between herd nodes over authenticated
// streams: mutual TLS, length-prefixed frames with a maximum size, writes
// coalesced while one is in flight, bounded per-peer send queues, reconnect
// with backoff, and request/response correlation. It knows node identities
// but nothing of processes or membership: payloads are opaque bytes, and
// what a lost session means is for the layer above to decide. It depends
// only on proc (for NodeID).
package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame layout, big-endian:
//
//	length  uint32  bytes after this field: 1 + 8 + len(payload)
//	type    uint8
//	id      uint64  request/response correlation; 0 for other frames
//	payload
const headerSize = 4 + 1 + 8

// FrameType says what a frame carries.
type FrameType uint8

const (
	// FrameHello opens a connection: the dialer's identity and session.
	FrameHello FrameType = iota + 1
	// FrameHelloAck answers it with the acceptor's identity.
	FrameHelloAck
	// FrameMessage is a one-way message.
	FrameMessage
	// FrameRequest asks for a response with the same id.
	FrameRequest
	// FrameResponse answers the request with its id.
	FrameResponse
	frameTypeEnd
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameHelloAck:
		return "hello-ack"
	case FrameMessage:
		return "message"
	case FrameRequest:
		return "request"
	case FrameResponse:
		return "response"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// Frame is one decoded frame. Payload is owned by the frame.
type Frame struct {
	Type    FrameType
	ID      uint64
	Payload []byte
}

// Errors of frame decoding; a connection that produces one is closed.
var (
	ErrFrameTooLarge = errors.New("transport: frame too large")
	ErrBadFrame      = errors.New("transport: malformed frame")
)

// AppendFrame appends the encoding of a frame to dst.
func AppendFrame(dst []byte, t FrameType, id uint64, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+8+len(payload)))
	dst = append(dst, byte(t))
	dst = binary.BigEndian.AppendUint64(dst, id)
	return append(dst, payload...)
}

// FrameSize is the encoded size of a frame with a payload of n bytes.
func FrameSize(n int) int { return headerSize + n }

// ReadFrame reads one frame from r. A frame whose payload would exceed max
// bytes is refused before anything is allocated for it. scratch holds the
// header; the payload is always a new slice.
func ReadFrame(r io.Reader, max int, scratch *[headerSize]byte) (Frame, error) {
	return readFrame(r, max, scratch, nil)
}

// readFrame is ReadFrame with the payload read into buf when it fits; the
// payload then aliases buf and is valid until buf is reused.
func readFrame(r io.Reader, max int, scratch *[headerSize]byte, buf []byte) (Frame, error) {
	h := scratch[:]
	if _, err := io.ReadFull(r, h); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(h[:4])
	if n < 1+8 {
		return Frame{}, fmt.Errorf("%w: length %d is shorter than the header", ErrBadFrame, n)
	}
	size := int64(n) - (1 + 8)
	if size > int64(max) {
		return Frame{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrFrameTooLarge, size, max)
	}
	t := FrameType(h[4])
	if t == 0 || t >= frameTypeEnd {
		return Frame{}, fmt.Errorf("%w: unknown frame type %d", ErrBadFrame, h[4])
	}
	f := Frame{Type: t, ID: binary.BigEndian.Uint64(h[5:13])}
	if size > 0 {
		if int64(cap(buf)) >= size {
			f.Payload = buf[:size]
		} else {
			f.Payload = make([]byte, size)
		}
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}
