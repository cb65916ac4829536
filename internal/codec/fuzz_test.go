package codec

import (
	"bytes"
	"math"
	"reflect"
	"testing"
	"time"
)

// Loose holds values cbor decodes generically.
type Loose struct {
	Any  any
	Anys []any
	M    map[string]any
	Keys map[int64]string
}

// fuzzRegistry registers the types FuzzDecode exercises.
func fuzzRegistry(t testing.TB) *Registry {
	r := newRegistry(t, Options{})
	MustRegister[Rich](r, "test.Rich")
	MustRegister[*Inner](r, "test.InnerPtr")
	MustRegister[PID](r, "herd.PID")
	MustRegister[Small](r, "test.Small")
	MustRegister[Counter](r, "test.Counter")
	MustRegister[Names](r, "test.Names")
	MustRegister[Loose](r, "test.Loose")
	MustRegister[*TimeHolder](r, "test.TimeHolder")
	return r
}

func FuzzDecode(f *testing.F) {
	r := fuzzRegistry(f)
	when := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	for _, v := range []any{
		sampleRich(),
		Rich{},
		&Inner{Label: "x", Weight: math.Inf(-1)},
		(*Inner)(nil),
		PID{Node: NodeID{Name: "n", Incarnation: 1}, ID: 2},
		Small{Text: "hello"},
		Counter(-5),
		Names{"a", "b"},
		Loose{
			Any:  map[string]any{"k": []any{1, -2, 1.5, "s", []byte{1}, true, nil}},
			Anys: []any{uint64(math.MaxUint64), int64(math.MinInt64), math.NaN()},
			M:    map[string]any{"a": map[string]any{}},
			Keys: map[int64]string{-1: "neg", 1: "pos"},
		},
		&TimeHolder{List: []time.Time{when}, Ptr: &when, ByKey: map[time.Time]int{when: 1}},
		Loose{Any: map[any]any{math.NaN(): 1, 1.5: []any{math.Inf(1)}}},
	} {
		b, err := r.Encode(v)
		if err != nil {
			f.Fatalf("Encode(%#v): %v", v, err)
		}
		f.Add(b)
	}
	for _, b := range [][]byte{
		nil,
		{0x82},
		{0x82, 0x60, 0xa0},
		{0x82, 0x61, 'x', 0x00},
		{0x82, 0x69, 't', 'e', 's', 't', '.', 'R', 'i', 'c', 'h', 0xbf, 0xff},
		{0x9f, 0xff},
		{0xff, 0xff, 0xff},
		[]byte("garbage that is not cbor at all"),
		// Times sent as epoch seconds, which decode in time.Local: the
		// fuzzer found that re-encoding changed their location.
		message("test.Rich", []byte{0xa1, 0x64, 'W', 'h', 'e', 'n', 0x30}),
		message("test.Rich", []byte{0xa1, 0x64, 'W', 'h', 'e', 'n', 0xfb, 0x41, 0xd9, 0x4c, 0x0a, 0x3b, 0x12, 0x34, 0x56}),
		// The zero instant as epoch seconds: zero but not time.Time{}.
		message("test.Rich", []byte{0xa1, 0x64, 'W', 'h', 'e', 'n', 0x3b, 0x00, 0x00, 0x00, 0x0e, 0x77, 0x91, 0xf6, 0xff}),
		// Year 10000: decodes from a number but cannot be encoded as text.
		message("test.Rich", []byte{0xa1, 0x64, 'W', 'h', 'e', 'n', 0x1b, 0x00, 0x00, 0x00, 0x3a, 0xff, 0xf4, 0x41, 0x80}),
		// Several NaN map keys (duplicate detection cannot see them).
		message("test.Loose", []byte{0xa1, 0x63, 'A', 'n', 'y', 0xa2, 0xf9, 0x7e, 0x00, 0x01, 0xf9, 0x7e, 0x00, 0x02}),
	} {
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		v1, err := r.Decode(data)
		if err != nil {
			if v1 != nil {
				t.Fatalf("Decode returned %#v with error %v", v1, err)
			}
			return
		}
		b1, err := r.Encode(v1)
		if err != nil {
			t.Fatalf("re-encoding %#v: %v", v1, err)
		}
		v2, err := r.Decode(b1)
		if err != nil {
			t.Fatalf("decoding the re-encoding %x of %#v: %v", b1, v1, err)
		}
		equal, nanKeys := deepEqualNaN(reflect.ValueOf(v1), reflect.ValueOf(v2))
		if !equal {
			t.Fatalf("round trip changed the value:\nfirst  %#v\nsecond %#v", v1, v2)
		}
		// The encoding is canonical: encoding again gives the same bytes.
		// Not with several NaN map keys: they encode alike, so their order
		// follows Go's map iteration order.
		b2, err := r.Encode(v2)
		if err != nil || (!nanKeys && !bytes.Equal(b1, b2)) {
			t.Fatalf("re-encoding is not stable: %x vs %x (%v)", b1, b2, err)
		}
	})
}

// deepEqualNaN is reflect.DeepEqual except that NaN floats are equal to
// each other: cbor carries NaN faithfully, but NaN != NaN. Map keys that are
// not equal to themselves (NaN, or interfaces holding NaN) cannot be looked
// up, so such entries are matched by content. nanKeys reports whether a
// was a map with such keys anywhere inside.
func deepEqualNaN(a, b reflect.Value) (equal, nanKeys bool) {
	var e nanEqual
	return e.equal(a, b), e.nanKeys
}

type nanEqual struct{ nanKeys bool }

// equal compares a and b. Decoded values are trees, so there is no cycle
// detection.
func (e *nanEqual) equal(a, b reflect.Value) bool {
	if !a.IsValid() || !b.IsValid() {
		return a.IsValid() == b.IsValid()
	}
	if a.Type() != b.Type() {
		return false
	}
	switch a.Kind() {
	case reflect.Float32, reflect.Float64:
		x, y := a.Float(), b.Float()
		return x == y || (math.IsNaN(x) && math.IsNaN(y))
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return a.UnsafePointer() == b.UnsafePointer() || e.equal(a.Elem(), b.Elem())
	case reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return e.equal(a.Elem(), b.Elem())
	case reflect.Slice:
		if a.IsNil() != b.IsNil() {
			return false
		}
		fallthrough
	case reflect.Array:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !e.equal(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Struct:
		for i := range a.NumField() {
			if !e.equal(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		return e.equalMaps(a, b)
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return a.Uint() == b.Uint()
	case reflect.String:
		return a.String() == b.String()
	default:
		panic("deepEqualNaN: unexpected kind " + a.Kind().String())
	}
}

func (e *nanEqual) equalMaps(a, b reflect.Value) bool {
	if a.IsNil() != b.IsNil() || a.Len() != b.Len() {
		return false
	}
	type entry struct{ k, v reflect.Value }
	var lostA, lostB []entry // entries whose key cannot be looked up
	for it := a.MapRange(); it.Next(); {
		bv := b.MapIndex(it.Key())
		if !bv.IsValid() {
			lostA = append(lostA, entry{it.Key(), it.Value()})
			continue
		}
		if !e.equal(it.Value(), bv) {
			return false
		}
	}
	if len(lostA) == 0 {
		return true
	}
	e.nanKeys = true
	for it := b.MapRange(); it.Next(); {
		if !a.MapIndex(it.Key()).IsValid() {
			lostB = append(lostB, entry{it.Key(), it.Value()})
		}
	}
	if len(lostA) != len(lostB) {
		return false
	}
	// Equality is an equivalence relation, so greedy matching is enough.
	used := make([]bool, len(lostB))
	for _, x := range lostA {
		found := false
		for j, y := range lostB {
			if !used[j] && e.equal(x.k, y.k) && e.equal(x.v, y.v) {
				used[j], found = true, true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func TestDeepEqualNaN(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		a, b any
		want bool
	}{
		{nan, nan, true},
		{[]any{nan, 1}, []any{nan, 1}, true},
		{map[string]float64{"a": nan}, map[string]float64{"a": nan}, true},
		{1.0, 2.0, false},
		{[]int(nil), []int{}, false},
		{map[string]int{"a": 1}, map[string]int{"b": 1}, false},
		{sampleRich(), sampleRich(), true},
		{uint64(1), int64(1), false},
		{time.Unix(0, 0), time.Unix(0, 0).UTC(), false},
		{map[any]int{nan: 1, 1.5: 2}, map[any]int{nan: 1, 1.5: 2}, true},
		{map[float64]int{nan: 1, 1.5: 2}, map[float64]int{nan: 2, 1.5: 2}, false},
		{map[float64]int{nan: 1}, map[float64]int{1: 1}, false},
	} {
		if got, _ := deepEqualNaN(reflect.ValueOf(c.a), reflect.ValueOf(c.b)); got != c.want {
			t.Errorf("deepEqualNaN(%#v, %#v) = %v", c.a, c.b, got)
		}
	}
}
