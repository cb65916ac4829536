package transport

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/herdkit/herd/internal/proc"
)

// protocolVersion is sent in every hello; a peer speaking another version is
// refused.
const protocolVersion = 1

// hello opens a connection: who is dialing, from which session, and where it
// listens (so the acceptor can dial back for responses).
type hello struct {
	Version uint8
	Node    proc.NodeID
	Epoch   uint64 // the dialer's session number with this peer
	Addr    string // where the dialer accepts connections
}

const maxHelloString = 1024

func (h hello) encode() []byte {
	b := []byte{h.Version}
	b = binary.BigEndian.AppendUint64(b, h.Node.Incarnation)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	b = binary.AppendUvarint(b, uint64(len(h.Node.Name)))
	b = append(b, h.Node.Name...)
	b = binary.AppendUvarint(b, uint64(len(h.Addr)))
	return append(b, h.Addr...)
}

var errBadHello = errors.New("transport: malformed hello")

func decodeHello(b []byte) (hello, error) {
	var h hello
	if len(b) < 17 {
		return h, fmt.Errorf("%w: %d bytes", errBadHello, len(b))
	}
	h.Version = b[0]
	h.Node.Incarnation = binary.BigEndian.Uint64(b[1:9])
	h.Epoch = binary.BigEndian.Uint64(b[9:17])
	b = b[17:]
	str := func() (string, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > maxHelloString || uint64(len(b)-k) < n {
			return "", errBadHello
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, nil
	}
	var err error
	if h.Node.Name, err = str(); err != nil {
		return h, err
	}
	if h.Addr, err = str(); err != nil {
		return h, err
	}
	if len(b) != 0 {
		return h, fmt.Errorf("%w: %d trailing bytes", errBadHello, len(b))
	}
	if h.Node.Name == "" {
		return h, fmt.Errorf("%w: no node name", errBadHello)
	}
	return h, nil
}
