package remote

import (
	"errors"
	"fmt"
	"testing"

	"github.com/herdkit/herd/internal/proc"
)

var errCustom = errors.New("game over")

func roundTrip(t *testing.T, e *Errors, err error) error {
	t.Helper()
	b, mErr := wireEnc.Marshal(e.encode(err, 0))
	if mErr != nil {
		t.Fatal(mErr)
	}
	var w *wireError
	if uErr := wireDec.Unmarshal(b, &w); uErr != nil {
		t.Fatal(uErr)
	}
	return e.decode(w)
}

func TestErrorsKeepTheirIdentity(t *testing.T) {
	e := NewErrors()
	e.Register(errCustom)
	pid := proc.PID{Node: proc.NodeID{Name: "n2", Incarnation: 3}, ID: 9}
	for _, tc := range []struct {
		err   error
		check func(error) bool
	}{
		{proc.Normal, func(got error) bool { return got == proc.Normal }},
		{proc.ErrNoProcess, func(got error) bool { return got == proc.ErrNoProcess }},
		{errCustom, func(got error) bool { return got == errCustom }},
		{fmt.Errorf("level %d: %w", 3, errCustom), func(got error) bool {
			return errors.Is(got, errCustom) && got.Error() == "level 3: game over"
		}},
		{fmt.Errorf("%w: %w: x", proc.ErrNoProcess, proc.ErrNoName), func(got error) bool {
			return errors.Is(got, proc.ErrNoProcess) && errors.Is(got, proc.ErrNoName)
		}},
		{&proc.CrashError{Value: "boom", Stack: []byte("stack")}, func(got error) bool {
			c, ok := errors.AsType[*proc.CrashError](got)
			return ok && c.Value == "boom" && string(c.Stack) == "stack" && proc.IsAbnormal(got)
		}},
		{&proc.ExitError{PID: pid, Reason: proc.Killed}, func(got error) bool {
			x, ok := errors.AsType[*proc.ExitError](got)
			return ok && x.PID == pid && errors.Is(got, proc.ErrNoProcess) && errors.Is(got, proc.Killed)
		}},
		{errors.New("unregistered"), func(got error) bool {
			r, ok := errors.AsType[*RemoteError](got)
			return ok && r.Text == "unregistered"
		}},
		{nil, func(got error) bool { return got == nil }},
	} {
		if got := roundTrip(t, e, tc.err); !tc.check(got) {
			t.Errorf("%v came back as %#v", tc.err, got)
		}
	}
	// A sentinel unknown on the receiving side arrives as its text.
	other := NewErrors()
	b, _ := wireEnc.Marshal(e.encode(errCustom, 0))
	var w *wireError
	_ = wireDec.Unmarshal(b, &w)
	if got := other.decode(w); got.Error() != "game over" {
		t.Fatalf("unknown sentinel: %v", got)
	}
}

// An error chain deeper than the limit is cut, not encoded without end.
func TestErrorDepthIsBounded(t *testing.T) {
	e := NewErrors()
	var err error = errCustom
	for i := range 100 {
		err = fmt.Errorf("wrap %d: %w", i, err)
	}
	w := e.encode(err, 0)
	depth := 0
	for w != nil && len(w.Causes) > 0 {
		w = w.Causes[0]
		depth++
	}
	if depth > maxErrDepth {
		t.Fatalf("encoded %d levels, the limit is %d", depth, maxErrDepth)
	}
}

// FuzzFrame feeds arbitrary bytes to every decoder a peer's frame meets:
// none may panic, and a decoded error tree turns into an error.
func FuzzFrame(f *testing.F) {
	ctlFrame, _ := encodeCtl(opMonitor, &ctl{Ref: 7, Reason: NewErrors().encode(fmt.Errorf("x: %w", proc.Killed), 0)})
	f.Add(ctlFrame)
	svcFrame, _ := encodeCtl(opService, &ctl{Kind: "herd.getOrStart", Body: []byte{0xa0}, Deadline: 1})
	f.Add(svcFrame)
	f.Add(sendHeader(nil, opSend, 42))
	f.Add([]byte{byte(opCall), 0x80})
	f.Add([]byte{})
	e := NewErrors()
	f.Fuzz(func(t *testing.T, data []byte) {
		o, rest, err := parse(data)
		if err != nil {
			return
		}
		if o == opSend || o == opCast {
			_, _, _ = parseSend(rest)
			return
		}
		m, err := decodeCtl(rest)
		if err != nil {
			return
		}
		_ = e.decode(m.Reason)
		var r reply
		if wireDec.Unmarshal(rest, &r) == nil {
			_ = e.decode(r.Err)
		}
	})
}
