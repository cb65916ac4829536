// Package codec is the wire encoding of user messages that cross the network
// between herd nodes. Its one job is to turn a registered Go value into bytes
// and back: it keeps a registry of Go types under stable names and encodes
// values as CBOR (github.com/fxamacker/cbor/v2) with strict decode limits.
//
// It is the lowest layer of herd and depends on nothing else in herd.
//
// # Wire form
//
// A message is a CBOR array of exactly two elements:
//
//	[name (text string), payload]
//
// where name is the name the value's type was registered under and payload is
// the core deterministic CBOR encoding of the value. No CBOR tags and no
// indefinite-length items appear anywhere in a message. time.Time values are
// encoded as RFC 3339 text in UTC with nanosecond precision.
package codec

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/fxamacker/cbor/v2"
)

// Errors returned by this package. They are always wrapped with more detail;
// test for them with errors.Is.
var (
	// ErrUnregisteredType is returned by Encode and AppendEncode for a value
	// whose dynamic Go type has not been registered. The message names the
	// Go type.
	ErrUnregisteredType = errors.New("codec: unregistered type")

	// ErrUnknownType is returned by Decode when the message names a type that
	// is not registered. The message quotes the name (at most 128 bytes of it).
	ErrUnknownType = errors.New("codec: unknown type name")

	// ErrTooLarge is returned by Encode, AppendEncode and Decode when a
	// message is larger than Options.MaxMessageSize.
	ErrTooLarge = errors.New("codec: message too large")

	// ErrMalformed is returned by Decode for any input that is not a valid
	// message for the registered type it names: bad CBOR, trailing bytes,
	// a wrong envelope, a payload that does not match the type, exceeded
	// limits, duplicate map keys, indefinite-length items, CBOR tags, unknown
	// struct fields (field names match case-sensitively), invalid UTF-8. The underlying cbor error, when there is
	// one, is wrapped too.
	ErrMalformed = errors.New("codec: malformed message")

	// ErrDuplicateName is returned by Register when the name is already
	// registered for another type.
	ErrDuplicateName = errors.New("codec: name already registered")

	// ErrDuplicateType is returned by Register when the type is already
	// registered under another name.
	ErrDuplicateType = errors.New("codec: type already registered")

	// ErrInvalidName is returned by Register for an empty name, a name longer
	// than 128 bytes, or a name with bytes outside printable ASCII
	// (0x20 to 0x7E).
	ErrInvalidName = errors.New("codec: invalid name")
)

// maxNameLen is the longest type name, in bytes, that Register accepts.
const maxNameLen = 128

// Defaults used for zero fields of Options.
const (
	defaultMaxMessageSize   = 4 << 20
	defaultMaxNestedLevels  = 32
	defaultMaxArrayElements = 128 * 1024
	defaultMaxMapPairs      = 128 * 1024
)

// Ranges accepted by cbor for the decode limits.
const (
	minNestedLevels = 4
	maxNestedLevels = 65535
	minElements     = 16
	maxElements     = math.MaxInt32
)

// Options are the limits of a Registry. A zero field takes its default. The
// options are copied by NewRegistry and cannot change afterwards.
type Options struct {
	// MaxMessageSize is the largest message, in bytes, including the
	// envelope, that Encode produces and Decode accepts. Default 4 MiB.
	MaxMessageSize int

	// MaxNestedLevels is the deepest nesting of arrays and maps accepted in
	// a payload (the envelope does not count). Default 32; range [4, 65535].
	MaxNestedLevels int

	// MaxArrayElements is the longest array accepted in a payload.
	// Default 131072; range [16, 2147483647].
	MaxArrayElements int

	// MaxMapPairs is the largest map accepted in a payload, in key/value
	// pairs. Default 131072; range [16, 2147483647].
	MaxMapPairs int
}

// withDefaults returns o with zero fields set to defaults, or an error for
// out-of-range fields.
func (o Options) withDefaults() (Options, error) {
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = defaultMaxMessageSize
	}
	if o.MaxNestedLevels == 0 {
		o.MaxNestedLevels = defaultMaxNestedLevels
	}
	if o.MaxArrayElements == 0 {
		o.MaxArrayElements = defaultMaxArrayElements
	}
	if o.MaxMapPairs == 0 {
		o.MaxMapPairs = defaultMaxMapPairs
	}
	if o.MaxMessageSize < 0 {
		return o, fmt.Errorf("codec: Options.MaxMessageSize is %d, must be positive", o.MaxMessageSize)
	}
	check := func(field string, v, lo, hi int) error {
		if v < lo || v > hi {
			return fmt.Errorf("codec: Options.%s is %d, must be 0 (default) or in [%d, %d]", field, v, lo, hi)
		}
		return nil
	}
	return o, errors.Join(
		check("MaxNestedLevels", o.MaxNestedLevels, minNestedLevels, maxNestedLevels),
		check("MaxArrayElements", o.MaxArrayElements, minElements, maxElements),
		check("MaxMapPairs", o.MaxMapPairs, minElements, maxElements),
	)
}

// Registry maps Go types to stable names and encodes and decodes registered
// values. It is safe for concurrent use by multiple goroutines: Register may
// run concurrently with Encode, Decode and NameOf, though registration
// normally happens at start-up. Encode and Decode take no lock; they read an
// immutable snapshot of the registrations. A Registry must be created with
// NewRegistry (the zero value is not usable) and lives as long as it is
// referenced; it holds no goroutines or other resources needing release.
type Registry struct {
	opts Options
	em   cbor.UserBufferEncMode
	dm   cbor.DecMode

	mu  sync.Mutex // serializes writers of tab
	tab atomic.Pointer[table]
}

// table is an immutable snapshot of the registrations; Register replaces it.
type table struct {
	byType map[reflect.Type]*entry
	byName map[string]*entry
}

// entry is one registration. It is immutable once published.
type entry struct {
	name   string
	typ    reflect.Type
	header []byte // the envelope up to the payload: array head and name
	// decode decodes a payload into a new value of typ.
	decode func(dm cbor.DecMode, payload []byte) (any, error)
	// fixTimes, when non-nil, checks and normalizes the time.Time values
	// inside a freshly decoded value (see timefix.go).
	fixTimes *timeFixer
}

// NewRegistry returns an empty Registry with the given limits. Zero Options
// give the defaults; an out-of-range option is an error.
func NewRegistry(opts Options) (*Registry, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	eo := cbor.CoreDetEncOptions() // sorted map keys, shortest forms, no indefinite lengths
	eo.TagsMd = cbor.TagsForbidden
	eo.Time = cbor.TimeRFC3339NanoUTC
	em, err := eo.UserBufferEncMode()
	if err != nil {
		return nil, fmt.Errorf("codec: cbor encode options: %w", err)
	}
	do := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		MaxNestedLevels:   opts.MaxNestedLevels,
		MaxArrayElements:  opts.MaxArrayElements,
		MaxMapPairs:       opts.MaxMapPairs,
		UTF8:              cbor.UTF8RejectInvalid,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
	}
	dm, err := do.DecMode()
	if err != nil {
		return nil, fmt.Errorf("codec: cbor decode options: %w", err)
	}
	r := &Registry{opts: opts, em: em, dm: dm}
	r.tab.Store(&table{
		byType: map[reflect.Type]*entry{},
		byName: map[string]*entry{},
	})
	return r, nil
}

// Register associates name with the type of T, so that values of exactly
// that type can be encoded and messages naming it decoded. T may be a
// struct, a pointer to a struct, or any type cbor can encode.
//
// Registering the same (name, type) pair again is a no-op. Otherwise the
// errors, testable with errors.Is, are ErrInvalidName, ErrDuplicateName (the
// name is taken by another type) and ErrDuplicateType (the type already has
// another name). Register also fails, with an error that is none of these,
// for an interface type and for a type cbor cannot encode: it encodes T's
// zero value (for a pointer type, a pointer to the zero element) as a check,
// which rejects channels, functions and complex numbers, also inside
// structs. A failed Register leaves the registry unchanged. Register is safe
// for concurrent use with every other method.
func Register[T any](r *Registry, name string) error {
	if err := validateName(name); err != nil {
		return err
	}
	typ := reflect.TypeFor[T]()
	if typ.Kind() == reflect.Interface {
		return fmt.Errorf("codec: cannot register %q: %v is an interface type", name, typ)
	}

	e := &entry{
		name:     name,
		typ:      typ,
		header:   envelopeHeader(name),
		fixTimes: newTimeFixer(typ),
	}
	if typ.Kind() == reflect.Pointer {
		e.decode = e.decodePointer
	} else {
		e.decode = decodeValue[T](e)
	}

	sample := reflect.Zero(typ).Interface()
	if typ.Kind() == reflect.Pointer {
		sample = reflect.New(typ.Elem()).Interface()
	}
	if _, err := r.em.Marshal(sample); err != nil {
		return fmt.Errorf("codec: cannot register %q: %v cannot be encoded: %w", name, typ, err)
	}
	return r.add(e)
}

// decodeValue returns the decoder for a non-pointer registered type T.
func decodeValue[T any](e *entry) func(cbor.DecMode, []byte) (any, error) {
	return func(dm cbor.DecMode, payload []byte) (any, error) {
		p := new(T)
		if err := dm.Unmarshal(payload, p); err != nil {
			return nil, err
		}
		if e.fixTimes != nil {
			if err := e.fixTimes.fix(reflect.ValueOf(p).Elem()); err != nil {
				return nil, err
			}
		}
		return *p, nil
	}
}

// decodePointer is the decoder for a registered pointer type: null gives a
// nil pointer, anything else a pointer to a new value.
func (e *entry) decodePointer(dm cbor.DecMode, payload []byte) (any, error) {
	if isNull(payload) {
		return reflect.Zero(e.typ).Interface(), nil
	}
	p := reflect.New(e.typ.Elem())
	if err := dm.Unmarshal(payload, p.Interface()); err != nil {
		return nil, err
	}
	if e.fixTimes != nil {
		// The fixer may replace the pointer itself (see timefix.go), so
		// it needs an addressable copy.
		pv := reflect.New(e.typ).Elem()
		pv.Set(p)
		if err := e.fixTimes.fix(pv); err != nil {
			return nil, err
		}
		p = pv
	}
	return p.Interface(), nil
}

// MustRegister is like Register but panics on error. It is meant for
// init-style set-up where a failure is a programming error. It is safe for
// concurrent use.
func MustRegister[T any](r *Registry, name string) {
	if err := Register[T](r, name); err != nil {
		panic(err)
	}
}

// add publishes e in a new snapshot unless it conflicts with an existing
// registration.
func (r *Registry) add(e *entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.tab.Load()
	if cur, ok := old.byName[e.name]; ok {
		if cur.typ == e.typ {
			return nil
		}
		return fmt.Errorf("%w: %q is registered for %v, cannot register it for %v", ErrDuplicateName, e.name, cur.typ, e.typ)
	}
	if cur, ok := old.byType[e.typ]; ok {
		return fmt.Errorf("%w: %v is registered as %q, cannot register it as %q", ErrDuplicateType, e.typ, cur.name, e.name)
	}
	next := &table{
		byType: make(map[reflect.Type]*entry, len(old.byType)+1),
		byName: make(map[string]*entry, len(old.byName)+1),
	}
	for k, v := range old.byType {
		next.byType[k] = v
	}
	for k, v := range old.byName {
		next.byName[k] = v
	}
	next.byType[e.typ] = e
	next.byName[e.name] = e
	r.tab.Store(next)
	return nil
}

// validateName reports whether name is acceptable as a type name.
func validateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: %d bytes long, the limit is %d: %q...", ErrInvalidName, len(name), maxNameLen, name[:32])
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("%w: %q has byte %#02x at offset %d, outside printable ASCII", ErrInvalidName, name, c, i)
		}
	}
	return nil
}

// NameOf returns the name the dynamic type of v is registered under, and
// whether it is registered. It is safe for concurrent use.
func (r *Registry) NameOf(v any) (string, bool) {
	e := r.tab.Load().byType[reflect.TypeOf(v)]
	if e == nil {
		return "", false
	}
	return e.name, true
}

// Encode returns the message for v, whose dynamic type must be registered
// (exactly: registering T does not register *T). The returned slice is newly
// allocated and owned by the caller. Errors: ErrUnregisteredType,
// ErrTooLarge, or a wrapped cbor error for a value cbor cannot encode (such
// as a channel held in an interface field). A time.Time outside years 0000
// to 9999 is encoded, but Decode refuses it. It is safe for concurrent use.
func (r *Registry) Encode(v any) ([]byte, error) {
	e, buf, err := r.encodePayload(v)
	if err != nil {
		return nil, err
	}
	defer putBuffer(buf)
	out := make([]byte, 0, len(e.header)+buf.Len())
	out = append(out, e.header...)
	return append(out, buf.Bytes()...), nil
}

// AppendEncode appends the message for v to dst and returns the extended
// slice, like Encode, for callers that reuse write buffers. On error it
// returns dst unchanged. It is safe for concurrent use (on distinct dst).
func (r *Registry) AppendEncode(dst []byte, v any) ([]byte, error) {
	e, buf, err := r.encodePayload(v)
	if err != nil {
		return dst, err
	}
	defer putBuffer(buf)
	dst = append(dst, e.header...)
	return append(dst, buf.Bytes()...), nil
}

// encodePayload encodes v into a pooled buffer and checks the size of the
// whole message. On success the caller must putBuffer the buffer.
func (r *Registry) encodePayload(v any) (*entry, *bytes.Buffer, error) {
	typ := reflect.TypeOf(v)
	e := r.tab.Load().byType[typ]
	if e == nil {
		if typ == nil {
			return nil, nil, fmt.Errorf("%w: nil interface value", ErrUnregisteredType)
		}
		return nil, nil, fmt.Errorf("%w: %v", ErrUnregisteredType, typ)
	}
	buf := getBuffer()
	if err := r.em.MarshalToBuffer(v, buf); err != nil {
		putBuffer(buf)
		return nil, nil, fmt.Errorf("codec: encode %q (%v): %w", e.name, typ, err)
	}
	if n := len(e.header) + buf.Len(); n > r.opts.MaxMessageSize {
		putBuffer(buf)
		return nil, nil, fmt.Errorf("%w: %q message is %d bytes, the limit is %d", ErrTooLarge, e.name, n, r.opts.MaxMessageSize)
	}
	return e, buf, nil
}

// Decode decodes a message and returns a new value of exactly the registered
// type (T when T was registered, *T when *T was). The input is not retained
// and the result shares no memory with it. Errors: ErrTooLarge,
// ErrMalformed, ErrUnknownType; on error the value is nil, never partially
// filled. Decoded time.Time values are in UTC, a pointer to the zero time
// is nil (as Encode's null for it decodes), and a time outside years 0000
// to 9999 is malformed (it could not be encoded again), also when a foreign
// encoder sent it as epoch seconds. It is safe for concurrent use.
func (r *Registry) Decode(data []byte) (any, error) {
	if len(data) > r.opts.MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), r.opts.MaxMessageSize)
	}
	name, payload, err := splitEnvelope(data)
	if err != nil {
		if werr := r.dm.Wellformed(data); werr != nil {
			err = werr // report cbor's own diagnosis of bad CBOR
		}
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	e := r.tab.Load().byName[string(name)]
	if e == nil {
		if len(name) > maxNameLen {
			name = name[:maxNameLen]
		}
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, name)
	}
	v, err := e.decode(r.dm, payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload for %q (%v): %w", ErrMalformed, e.name, e.typ, err)
	}
	return v, nil
}

// Encoding buffers are pooled; a buffer that grew past maxPooledBuffer is
// dropped rather than kept alive by the pool.
const maxPooledBuffer = 64 << 10

var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuffer() *bytes.Buffer {
	buf := bufferPool.Get().(*bytes.Buffer)
	buf.Reset()
	return buf
}

func putBuffer(buf *bytes.Buffer) {
	if buf.Cap() <= maxPooledBuffer {
		bufferPool.Put(buf)
	}
}
