package proc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// NodeID identifies one life of a node: its name and the incarnation it was
// given when it booted. A node that restarts under the same name gets a new
// incarnation, so nothing that belonged to its previous life (processes,
// monitors, registered names) is confused with what belongs to the new one.
//
// NodeID is comparable and usable as a map key. It encodes as a two-element
// CBOR array.
type NodeID struct {
	_           struct{} `cbor:",toarray"`
	Name        string
	Incarnation uint64
}

// String returns "name@incarnation" with the incarnation in base 36.
func (n NodeID) String() string {
	return n.Name + "@" + strconv.FormatUint(n.Incarnation, 36)
}

// IsZero reports whether n is the zero NodeID.
func (n NodeID) IsZero() bool { return n.Name == "" && n.Incarnation == 0 }

// PID identifies a process: the node life it runs on and an id local to that
// node. PIDs are never reused within a node's life. A PID is a small value:
// comparable, usable as a map key, printable, and encodable (it encodes as a
// CBOR array [node, id] and as text "name@incarnation.id", the incarnation in
// base 36, which JSON carries without escaping).
//
// The zero PID names no process; its text form is empty.
type PID struct {
	_    struct{} `cbor:",toarray"`
	Node NodeID
	ID   uint64
}

// IsZero reports whether p is the zero PID.
func (p PID) IsZero() bool { return p.ID == 0 && p.Node.IsZero() }

// String returns "name@incarnation.id", or "nopid" for the zero PID.
func (p PID) String() string {
	if p.IsZero() {
		return "nopid"
	}
	return string(p.appendText(make([]byte, 0, len(p.Node.Name)+32)))
}

func (p PID) appendText(b []byte) []byte {
	b = append(b, p.Node.Name...)
	b = append(b, '@')
	b = strconv.AppendUint(b, p.Node.Incarnation, 36)
	b = append(b, '.')
	return strconv.AppendUint(b, p.ID, 10)
}

// AppendText appends p's text form to b.
func (p PID) AppendText(b []byte) ([]byte, error) { return p.appendText(b), nil }

// MarshalText encodes p as "name@incarnation.id"; the zero PID as "".
func (p PID) MarshalText() ([]byte, error) {
	if p.IsZero() {
		return []byte{}, nil
	}
	return p.appendText(nil), nil
}

// UnmarshalText parses what MarshalText produces.
func (p *PID) UnmarshalText(b []byte) error {
	q, err := ParsePID(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// ErrBadPID is returned by ParsePID for text that is not a PID.
var ErrBadPID = errors.New("proc: malformed pid")

// ParsePID parses "name@incarnation.id" as printed by PID.String. The empty
// string and "nopid" give the zero PID.
func ParsePID(s string) (PID, error) {
	if s == "" || s == "nopid" {
		return PID{}, nil
	}
	at := strings.LastIndexByte(s, '@')
	dot := strings.LastIndexByte(s, '.')
	if at <= 0 || dot < at {
		return PID{}, fmt.Errorf("%w: %q: want name@incarnation.id", ErrBadPID, s)
	}
	inc, err := strconv.ParseUint(s[at+1:dot], 36, 64)
	if err != nil {
		return PID{}, fmt.Errorf("%w: %q: incarnation: %v", ErrBadPID, s, err)
	}
	id, err := strconv.ParseUint(s[dot+1:], 10, 64)
	if err != nil || id == 0 {
		return PID{}, fmt.Errorf("%w: %q: id must be a positive integer", ErrBadPID, s)
	}
	return PID{Node: NodeID{Name: s[:at], Incarnation: inc}, ID: id}, nil
}

// Ref identifies one monitor. It is unique within the node that created it.
type Ref uint64

// Target is where a message can be sent: a PID, a Name, or an EnvName. The
// set is closed; other packages cannot add to it.
type Target interface {
	isTarget()
}

// Name addresses the process registered under a unique name in the default
// environment. It can be used wherever a PID is: herd.Name("game:42").
type Name string

// EnvName addresses the process registered under a unique name within an
// environment. Names in different environments never collide.
type EnvName struct {
	_    struct{} `cbor:",toarray"`
	Env  string
	Name string
}

// InEnv returns the address of name within environment env.
func InEnv(env, name string) EnvName { return EnvName{Env: env, Name: name} }

func (PID) isTarget()     {}
func (Name) isTarget()    {}
func (EnvName) isTarget() {}

// String returns the name.
func (n Name) String() string { return string(n) }

// String returns "env/name", or just the name in the default environment.
func (n EnvName) String() string {
	if n.Env == "" {
		return n.Name
	}
	return n.Env + "/" + n.Name
}

// describe formats any target for error messages.
func describe(t Target) string {
	switch t := t.(type) {
	case PID:
		return t.String()
	case Name:
		return strconv.Quote(string(t))
	case EnvName:
		return strconv.Quote(t.String())
	}
	return fmt.Sprintf("%v", t)
}
