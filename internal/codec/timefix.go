package codec

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// cbor decodes a time.Time from RFC 3339 text (what Encode writes) but also,
// since it cannot be told otherwise without accepting CBOR tags, from a
// number of seconds since the epoch, which gives a time in time.Local and
// years far outside what RFC 3339 can hold. A timeFixer walks a freshly
// decoded value and fixes both, so that every value Decode returns has its
// times in UTC, the form Encode writes and Decode reads back, and can be
// encoded and decoded again. It is built once per registered type, and only
// for types in which a time.Time can be decoded; other types pay nothing.

var (
	timeType              = reflect.TypeFor[time.Time]()
	cborUnmarshalerType   = reflect.TypeFor[cbor.Unmarshaler]()
	binaryUnmarshalerType = reflect.TypeFor[encoding.BinaryUnmarshaler]()
)

// Years RFC 3339 text can hold.
const (
	minTimeYear = 0
	maxTimeYear = 9999
)

var errTimeRange = errors.New("time.Time outside years 0000 to 9999")

// A pointer to the zero time is made nil too: Encode writes the zero time
// as null, which decodes into a pointer as nil.

// timeFixer fixes the time.Time values inside values of one type.
type timeFixer struct {
	fn func(v reflect.Value) error // set once the fixer is built
}

// fix fixes the times inside v, which must be addressable.
func (f *timeFixer) fix(v reflect.Value) error {
	return f.fn(v)
}

// newTimeFixer returns the fixer for values of t, or nil if no time.Time can
// be decoded inside one.
func newTimeFixer(t reflect.Type) *timeFixer {
	return buildTimeFixer(t, map[reflect.Type]*timeFixer{})
}

// decodesItself reports whether cbor decodes t with t's own method rather
// than field by field; the walk does not look inside such types.
func decodesItself(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	return pt.Implements(cborUnmarshalerType) || pt.Implements(binaryUnmarshalerType)
}

// decodedFields returns the indexes of the struct fields cbor can decode
// into: exported fields and embedded structs (whose exported fields are
// promoted).
func decodedFields(t reflect.Type) []int {
	var idx []int
	for i := range t.NumField() {
		f := t.Field(i)
		if f.IsExported() || f.Anonymous {
			idx = append(idx, i)
		}
	}
	return idx
}

// holdsTime reports whether a time.Time can be decoded somewhere inside a
// value of type t. seen guards against recursive types.
func holdsTime(t reflect.Type, seen map[reflect.Type]bool) bool {
	if t == timeType {
		return true
	}
	if seen[t] {
		return false
	}
	seen[t] = true
	if decodesItself(t) {
		return false
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return holdsTime(t.Elem(), seen)
	case reflect.Map:
		return holdsTime(t.Key(), seen) || holdsTime(t.Elem(), seen)
	case reflect.Struct:
		for _, i := range decodedFields(t) {
			if holdsTime(t.Field(i).Type, seen) {
				return true
			}
		}
	}
	// Interfaces: with CBOR tags forbidden, cbor never decodes a time.Time
	// into an interface value.
	return false
}

// buildTimeFixer returns the fixer for t, or nil if t holds no time. memo
// holds the fixers built or being built, which makes recursive types work.
func buildTimeFixer(t reflect.Type, memo map[reflect.Type]*timeFixer) *timeFixer {
	if f, ok := memo[t]; ok {
		return f
	}
	if !holdsTime(t, map[reflect.Type]bool{}) {
		return nil
	}
	f := &timeFixer{}
	memo[t] = f // before recursing, for recursive types

	if t == timeType {
		f.fn = fixTime
		return f
	}
	switch t.Kind() {
	case reflect.Pointer:
		elem := buildTimeFixer(t.Elem(), memo)
		f.fn = func(v reflect.Value) error {
			if v.IsNil() {
				return nil
			}
			if err := elem.fix(v.Elem()); err != nil {
				return err
			}
			if encodesAsNull(v.Elem()) && v.CanSet() {
				// Encode writes the zero time, and so a pointer to it,
				// as null, which decodes as a nil pointer.
				v.SetZero()
			}
			return nil
		}
	case reflect.Slice, reflect.Array:
		elem := buildTimeFixer(t.Elem(), memo)
		f.fn = func(v reflect.Value) error {
			for i := range v.Len() {
				if err := elem.fix(v.Index(i)); err != nil {
					return err
				}
			}
			return nil
		}
	case reflect.Map:
		f.fn = mapFixer(t, memo)
	case reflect.Struct:
		type field struct {
			index int
			fixer *timeFixer
		}
		var fields []field
		for _, i := range decodedFields(t) {
			if ff := buildTimeFixer(t.Field(i).Type, memo); ff != nil {
				fields = append(fields, field{i, ff})
			}
		}
		f.fn = func(v reflect.Value) error {
			for _, fl := range fields {
				if err := fl.fixer.fix(v.Field(fl.index)); err != nil {
					return err
				}
			}
			return nil
		}
	default:
		panic("codec: unexpected kind " + t.Kind().String()) // holdsTime is false for other kinds
	}
	return f
}

// mapFixer fixes map values in place. Map keys are only checked: changing
// a key's location would make it a different key.
func mapFixer(t reflect.Type, memo map[reflect.Type]*timeFixer) func(reflect.Value) error {
	key := buildTimeFixer(t.Key(), memo)
	elem := buildTimeFixer(t.Elem(), memo)
	return func(v reflect.Value) error {
		if v.Len() == 0 {
			return nil
		}
		var tmp reflect.Value
		if elem != nil {
			tmp = reflect.New(t.Elem()).Elem()
		}
		iter := v.MapRange()
		for iter.Next() {
			if key != nil {
				// Check a copy: the key itself cannot be changed.
				cp := reflect.New(t.Key()).Elem()
				cp.Set(iter.Key())
				if err := key.fix(cp); err != nil {
					return err
				}
			}
			if elem != nil {
				tmp.Set(iter.Value())
				if err := elem.fix(tmp); err != nil {
					return err
				}
				v.SetMapIndex(iter.Key(), tmp)
			}
		}
		return nil
	}
}

// encodesAsNull reports whether v, a fixed value, is a zero time.Time or
// a nil pointer, which Encode writes as CBOR null.
func encodesAsNull(v reflect.Value) bool {
	switch {
	case v.Type() == timeType:
		return v.CanSet() && v.Addr().Interface().(*time.Time).IsZero()
	case v.Kind() == reflect.Pointer:
		return v.IsNil()
	}
	return false
}

// fixTime checks that the time.Time v can be encoded again and moves it to
// UTC. v is addressable; if it is not settable (it was reached through an
// unexported field, which cbor never decodes into) it is left alone.
func fixTime(v reflect.Value) error {
	if !v.CanSet() {
		return nil
	}
	p := v.Addr().Interface().(*time.Time)
	if p.IsZero() {
		*p = time.Time{} // the zero time in any location is encoded as null
		return nil
	}
	u := p.UTC()
	if y := u.Year(); y < minTimeYear || y > maxTimeYear {
		return fmt.Errorf("%w: year %d", errTimeRange, y)
	}
	*p = u
	return nil
}
