package remote

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/fxamacker/cbor/v2"

	"github.com/herdkit/herd/internal/proc"
)

// op says what a remote frame asks for. Sends and casts, the hot path, are
// framed by hand: op, the target's local id (uvarint), the encoded message.
// The rest carry a ctl struct in CBOR.
type op uint8

const (
	opSend op = iota + 1
	opCast
	opExit
	opMonitor
	opDemonitor
	opDown
	opLink
	opUnlink
	opLinkExit
	opCall
	opSpawn
	opService
	opEnd
)

// ctl is every frame but sends and casts.
type ctl struct {
	_        struct{} `cbor:",toarray"`
	From     proc.PID
	To       proc.PID
	Ref      uint64
	Reason   *wireError
	Body     []byte // an encoded message, or spawn arguments
	Kind     string // spawn: the kind; service: the service's name
	Deadline int64  // call: the caller's deadline, unix nanoseconds; 0 for none
}

// reply answers a call or a spawn.
type reply struct {
	_    struct{} `cbor:",toarray"`
	Body []byte
	PID  proc.PID
	Err  *wireError
}

var (
	wireEnc, _ = cbor.CoreDetEncOptions().EncMode()
	wireDec, _ = cbor.DecOptions{
		MaxNestedLevels: 24, MaxArrayElements: 64, MaxMapPairs: 64,
		DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden, TagsMd: cbor.TagsForbidden,
	}.DecMode()
)

// errMalformed: a frame from a peer that does not parse.
var errMalformed = errors.New("remote: malformed frame")

func encodeCtl(o op, c *ctl) ([]byte, error) {
	b, err := wireEnc.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(o)}, b...), nil
}

// parse splits a frame into its op and the rest.
func parse(payload []byte) (op, []byte, error) {
	if len(payload) == 0 || payload[0] == 0 || op(payload[0]) >= opEnd {
		return 0, nil, fmt.Errorf("%w: bad op", errMalformed)
	}
	return op(payload[0]), payload[1:], nil
}

func decodeCtl(b []byte) (*ctl, error) {
	var c ctl
	if err := wireDec.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	return &c, nil
}

// sendHeader starts a send or cast frame to local id.
func sendHeader(dst []byte, o op, id uint64) []byte {
	return binary.AppendUvarint(append(dst, byte(o)), id)
}

func parseSend(b []byte) (id uint64, body []byte, err error) {
	id, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, fmt.Errorf("%w: bad target id", errMalformed)
	}
	return id, b[n:], nil
}

// Errors travel as a tree, so errors.Is still finds a sentinel that was
// wrapped on the other side.
type wireError struct {
	_      struct{} `cbor:",toarray"`
	Kind   uint8
	Text   string
	Stack  []byte
	PID    proc.PID
	Causes []*wireError
}

const (
	errSentinel uint8 = iota + 1 // a registered error value, by its text
	errCrash                     // a *proc.CrashError
	errExit                      // a *proc.ExitError
	errOther                     // anything else: text, and what it wraps
)

// maxErrDepth bounds how deep an error tree is encoded.
const maxErrDepth = 8

// Errors is the table of error values that keep their identity across
// nodes: an error equal to one of them is sent by its text and received as
// the same value. Safe for concurrent use.
type Errors struct {
	mu     sync.RWMutex
	byText map[string]error
}

// NewErrors returns a table holding proc's sentinels.
func NewErrors() *Errors {
	e := &Errors{byText: map[string]error{}}
	for _, err := range []error{
		proc.Normal, proc.Shutdown, proc.Killed, proc.Kill, proc.ErrNoProcess, proc.ErrNodeDown, proc.ErrNoName,
		proc.ErrCallSelf, proc.ErrUnknownKind, proc.ErrStopped, proc.ErrUnhandled, proc.ErrBadReply, proc.ErrTimeout,
	} {
		e.Register(err)
	}
	return e
}

// Register makes err keep its identity across nodes. Both nodes must
// register it. Errors are told apart by their text.
func (e *Errors) Register(err error) {
	e.mu.Lock()
	e.byText[err.Error()] = err
	e.mu.Unlock()
}

func (e *Errors) lookup(text string) (error, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	err, ok := e.byText[text]
	return err, ok
}

func (e *Errors) encode(err error, depth int) *wireError {
	if err == nil {
		return nil
	}
	if known, ok := e.lookup(err.Error()); ok && known == err {
		return &wireError{Kind: errSentinel, Text: err.Error()}
	}
	if depth >= maxErrDepth {
		return &wireError{Kind: errOther, Text: err.Error()}
	}
	switch v := err.(type) {
	case *proc.CrashError:
		return &wireError{Kind: errCrash, Text: fmt.Sprint(v.Value), Stack: v.Stack}
	case *proc.ExitError:
		return &wireError{Kind: errExit, PID: v.PID, Causes: []*wireError{e.encode(v.Reason, depth+1)}}
	}
	w := &wireError{Kind: errOther, Text: err.Error()}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if c := u.Unwrap(); c != nil {
			w.Causes = []*wireError{e.encode(c, depth+1)}
		}
	case interface{ Unwrap() []error }:
		for _, c := range u.Unwrap() {
			if c != nil {
				w.Causes = append(w.Causes, e.encode(c, depth+1))
			}
		}
	}
	return w
}

func (e *Errors) decode(w *wireError) error {
	if w == nil {
		return nil
	}
	switch w.Kind {
	case errSentinel:
		if err, ok := e.lookup(w.Text); ok {
			return err
		}
		return &RemoteError{Text: w.Text}
	case errCrash:
		return &proc.CrashError{Value: w.Text, Stack: w.Stack}
	case errExit:
		var reason error = proc.ErrNoProcess
		if len(w.Causes) > 0 && w.Causes[0] != nil {
			reason = e.decode(w.Causes[0])
		}
		return &proc.ExitError{PID: w.PID, Reason: reason}
	}
	re := &RemoteError{Text: w.Text}
	for _, c := range w.Causes {
		if c != nil {
			re.causes = append(re.causes, e.decode(c))
		}
	}
	return re
}

// RemoteError is an error that happened on another node and was not
// registered there to keep its identity (see Errors). It carries the text,
// and unwraps to what it wrapped, so errors.Is still finds registered
// sentinels inside it.
type RemoteError struct {
	Text   string
	causes []error
}

func (e *RemoteError) Error() string { return e.Text }

// Unwrap returns the errors it wrapped on the other node.
func (e *RemoteError) Unwrap() []error { return e.causes }
