package codec

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// NodeID and PID are the shapes herd uses for process IDs.
type NodeID struct {
	_           struct{} `cbor:",toarray"`
	Name        string
	Incarnation uint64
}

type PID struct {
	_    struct{} `cbor:",toarray"`
	Node NodeID
	ID   uint64
}

type Inner struct {
	Label  string
	Weight float64
}

type Rich struct {
	Name    string
	Count   int64
	Small   int8
	U       uint32
	Ratio   float64
	F32     float32
	Data    []byte
	Tags    []string
	Scores  map[string]int
	Inner   Inner
	Inners  []Inner
	Ptr     *Inner
	NilPtr  *Inner
	When    time.Time
	Stamps  map[string]time.Time
	Flag    bool
	From    PID
	Opt     *int
	private int // not encoded
}

// Small is the benchmark message: a typical small actor message.
type Small struct {
	From PID
	Seq  uint64
	Text string
}

type Counter int

type Names []string

type Deep struct {
	V any
}

type Ints struct {
	V []int
}

type Pairs struct {
	M map[string]int
}

type WithChan struct {
	A int
	C chan int
}

func newRegistry(t testing.TB, opts Options) *Registry {
	t.Helper()
	r, err := NewRegistry(opts)
	if err != nil {
		t.Fatalf("NewRegistry(%+v): %v", opts, err)
	}
	return r
}

func roundTrip(t *testing.T, r *Registry, v any) any {
	t.Helper()
	b, err := r.Encode(v)
	if err != nil {
		t.Fatalf("Encode(%T): %v", v, err)
	}
	got, err := r.Decode(b)
	if err != nil {
		t.Fatalf("Decode(%T): %v (bytes %x)", v, err, b)
	}
	return got
}

func sampleRich() Rich {
	opt := 42
	return Rich{
		Name:   "hello, wörld",
		Count:  -1 << 40,
		Small:  -7,
		U:      math.MaxUint32,
		Ratio:  3.141592653589793,
		F32:    1.5,
		Data:   []byte{0, 1, 2, 0xff},
		Tags:   []string{"a", "", "c"},
		Scores: map[string]int{"x": 1, "y": -2},
		Inner:  Inner{Label: "in", Weight: 0.25},
		Inners: []Inner{{"a", 1}, {"b", 2}},
		Ptr:    &Inner{Label: "ptr", Weight: -1},
		When:   time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.UTC),
		Stamps: map[string]time.Time{"start": time.Date(1999, 12, 31, 0, 0, 0, 1, time.UTC)},
		Flag:   true,
		From:   PID{Node: NodeID{Name: "node-a@host", Incarnation: 3}, ID: 99},
		Opt:    &opt,
	}
}

func TestRoundTripStruct(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Rich](r, "test.Rich")

	in := sampleRich()
	got := roundTrip(t, r, in)
	out, ok := got.(Rich)
	if !ok {
		t.Fatalf("Decode returned %T, want Rich", got)
	}
	if !reflect.DeepEqual(out, in) {
		t.Fatalf("round trip mismatch:\n got %#v\nwant %#v", out, in)
	}
}

func TestRoundTripTimeIsUTC(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Rich](r, "test.Rich")

	in := Rich{When: time.Date(2020, 5, 1, 10, 0, 0, 5, time.FixedZone("CEST", 2*3600))}
	out := roundTrip(t, r, in).(Rich)
	if !out.When.Equal(in.When) {
		t.Fatalf("When = %v, want instant %v", out.When, in.When)
	}
	if out.When.Location() != time.UTC {
		t.Fatalf("When location = %v, want UTC", out.When.Location())
	}
	// time.Now carries a monotonic reading, which is not sent.
	now := time.Now()
	out = roundTrip(t, r, Rich{When: now}).(Rich)
	if !out.When.Equal(now) || out.When != now.Round(0).UTC() {
		t.Fatalf("When = %v, want %v", out.When, now)
	}
}

func TestRoundTripPointerType(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[*Inner](r, "test.InnerPtr")

	in := &Inner{Label: "x", Weight: 2}
	got := roundTrip(t, r, in)
	out, ok := got.(*Inner)
	if !ok {
		t.Fatalf("Decode returned %T, want *Inner", got)
	}
	if out == in || *out != *in {
		t.Fatalf("got %+v (%p), want a new copy of %+v", out, out, in)
	}

	got = roundTrip(t, r, (*Inner)(nil))
	if p, ok := got.(*Inner); !ok || p != nil {
		t.Fatalf("nil pointer round trip = %#v, want (*Inner)(nil)", got)
	}

	if _, err := r.Encode(Inner{}); !errors.Is(err, ErrUnregisteredType) {
		t.Fatalf("Encode(Inner) with only *Inner registered: err = %v, want ErrUnregisteredType", err)
	}
}

func TestRoundTripValueType(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Inner](r, "test.Inner")

	got := roundTrip(t, r, Inner{Label: "v", Weight: 1})
	if _, ok := got.(Inner); !ok {
		t.Fatalf("Decode returned %T, want Inner", got)
	}
	if _, err := r.Encode(&Inner{}); !errors.Is(err, ErrUnregisteredType) {
		t.Fatalf("Encode(*Inner) with only Inner registered: err = %v, want ErrUnregisteredType", err)
	}
}

func TestRoundTripNonStruct(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Counter](r, "test.Counter")
	MustRegister[Names](r, "test.Names")
	MustRegister[map[string]int](r, "test.Map")
	MustRegister[string](r, "test.String")

	for _, v := range []any{Counter(-12), Names{"a", "b"}, Names(nil), Names{}, map[string]int{"k": 1}, "plain"} {
		if got := roundTrip(t, r, v); !reflect.DeepEqual(got, v) {
			t.Errorf("round trip %#v = %#v", v, got)
		}
	}
}

func TestPIDToArray(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[PID](r, "herd.PID")

	in := PID{Node: NodeID{Name: "n1", Incarnation: 7}, ID: 300}
	b, err := r.Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x82,                                         // envelope: array(2)
		0x68, 'h', 'e', 'r', 'd', '.', 'P', 'I', 'D', // name: text(8)
		0x82,                 // PID: array(2)
		0x82,                 // NodeID: array(2)
		0x62, 'n', '1', 0x07, // "n1", 7
		0x19, 0x01, 0x2c, // 300
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("Encode(PID) = %x, want %x", b, want)
	}
	got, err := r.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != any(in) {
		t.Fatalf("Decode = %#v, want %#v", got, in)
	}
}

func TestNameOf(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[PID](r, "herd.PID")
	if name, ok := r.NameOf(PID{}); !ok || name != "herd.PID" {
		t.Fatalf("NameOf(PID) = %q, %v", name, ok)
	}
	for _, v := range []any{&PID{}, nil, 1} {
		if name, ok := r.NameOf(v); ok || name != "" {
			t.Fatalf("NameOf(%#v) = %q, %v; want \"\", false", v, name, ok)
		}
	}
}

func TestRegisterErrors(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[PID](r, "herd.PID")
	MustRegister[NodeID](r, "herd.NodeID")

	// The same pair again is a no-op and does not even replace the snapshot.
	before := r.tab.Load()
	if err := Register[PID](r, "herd.PID"); err != nil {
		t.Fatalf("re-registering the same pair: %v", err)
	}
	if r.tab.Load() != before {
		t.Fatal("re-registering the same pair replaced the table")
	}

	long := strings.Repeat("n", 129)
	cases := []struct {
		desc string
		reg  func() error
		want error
	}{
		{"name taken by another type", func() error { return Register[Inner](r, "herd.PID") }, ErrDuplicateName},
		{"type has another name", func() error { return Register[PID](r, "herd.PID2") }, ErrDuplicateType},
		{"empty name", func() error { return Register[Inner](r, "") }, ErrInvalidName},
		{"129-byte name", func() error { return Register[Inner](r, long) }, ErrInvalidName},
		{"NUL byte", func() error { return Register[Inner](r, "a\x00b") }, ErrInvalidName},
		{"newline", func() error { return Register[Inner](r, "a\nb") }, ErrInvalidName},
		{"DEL byte", func() error { return Register[Inner](r, "a\x7f") }, ErrInvalidName},
		{"non-ASCII", func() error { return Register[Inner](r, "caf\u00e9") }, ErrInvalidName},
		{"interface type", func() error { return Register[any](r, "any") }, nil},
		{"unencodable type", func() error { return Register[WithChan](r, "chan") }, nil},
		{"unencodable pointer type", func() error { return Register[*WithChan](r, "chanptr") }, nil},
	}
	for _, c := range cases {
		err := c.reg()
		if err == nil {
			t.Errorf("%s: Register succeeded", c.desc)
			continue
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.desc, err, c.want)
		}
		if r.tab.Load() != before {
			t.Fatalf("%s: failed Register changed the registry", c.desc)
		}
	}
	tab := r.tab.Load()
	if len(tab.byName) != 2 || len(tab.byType) != 2 {
		t.Fatalf("registry has %d names, %d types; want 2, 2", len(tab.byName), len(tab.byType))
	}
	if name, _ := r.NameOf(PID{}); name != "herd.PID" {
		t.Fatalf("NameOf(PID) = %q after failed registrations", name)
	}
	if _, ok := r.NameOf(Inner{}); ok {
		t.Fatal("Inner became registered")
	}

	// Boundary names are valid.
	if err := Register[Inner](r, strings.Repeat("n", 128)); err != nil {
		t.Fatalf("128-byte name: %v", err)
	}
	if err := Register[Counter](r, " !~ with spaces"); err != nil {
		t.Fatalf("printable name with spaces: %v", err)
	}
}

func TestMustRegisterPanics(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[PID](r, "herd.PID")
	defer func() {
		err, _ := recover().(error)
		if !errors.Is(err, ErrDuplicateName) {
			t.Fatalf("recovered %v, want ErrDuplicateName", err)
		}
	}()
	MustRegister[NodeID](r, "herd.PID")
	t.Fatal("MustRegister did not panic")
}

func TestNewRegistryOptions(t *testing.T) {
	r := newRegistry(t, Options{})
	want := Options{MaxMessageSize: 4 << 20, MaxNestedLevels: 32, MaxArrayElements: 131072, MaxMapPairs: 131072}
	if r.opts != want {
		t.Fatalf("defaults = %+v, want %+v", r.opts, want)
	}
	if got := r.dm.DecOptions(); got.MaxNestedLevels != 32 || got.MaxArrayElements != 131072 || got.MaxMapPairs != 131072 {
		t.Fatalf("cbor options = %+v", got)
	}

	for _, o := range []Options{
		{MaxMessageSize: 1, MaxNestedLevels: 4, MaxArrayElements: 16, MaxMapPairs: 16},
		{MaxNestedLevels: 65535, MaxArrayElements: math.MaxInt32, MaxMapPairs: math.MaxInt32},
	} {
		if _, err := NewRegistry(o); err != nil {
			t.Errorf("NewRegistry(%+v): %v", o, err)
		}
	}
	for _, o := range []Options{
		{MaxMessageSize: -1},
		{MaxNestedLevels: -1},
		{MaxNestedLevels: 3},
		{MaxNestedLevels: 65536},
		{MaxArrayElements: 15},
		{MaxArrayElements: -5},
		{MaxMapPairs: 15},
	} {
		if r, err := NewRegistry(o); err == nil || r != nil {
			t.Errorf("NewRegistry(%+v) = %v, %v; want an error", o, r, err)
		} else if !strings.Contains(err.Error(), "Options.Max") {
			t.Errorf("NewRegistry(%+v) error %q does not name the option", o, err)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	r := newRegistry(t, Options{MaxMessageSize: 64})
	MustRegister[Small](r, "test.Small")
	MustRegister[Rich](r, "test.Rich")

	_, err := r.Encode(Inner{})
	if !errors.Is(err, ErrUnregisteredType) || !strings.Contains(err.Error(), "codec.Inner") {
		t.Fatalf("Encode(unregistered) err = %v, want ErrUnregisteredType naming codec.Inner", err)
	}
	if _, err := r.Encode(nil); !errors.Is(err, ErrUnregisteredType) {
		t.Fatalf("Encode(nil) err = %v", err)
	}

	// Exactly at the limit is fine, one byte over is not.
	fits := Small{Text: ""}
	b, err := r.Encode(fits)
	if err != nil {
		t.Fatal(err)
	}
	fits.Text = strings.Repeat("x", 64-len(b)-1) // text head grows by one byte past 23
	if b, err = r.Encode(fits); err != nil || len(b) != 64 {
		t.Fatalf("Encode at the limit: %d bytes, %v", len(b), err)
	}
	fits.Text += "x"
	if _, err := r.Encode(fits); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Encode over the limit: err = %v, want ErrTooLarge", err)
	}

	// AppendEncode leaves dst alone on error and appends on success.
	dst := []byte("prefix")
	out, err := r.AppendEncode(dst, fits)
	if !errors.Is(err, ErrTooLarge) || !bytes.Equal(out, []byte("prefix")) {
		t.Fatalf("AppendEncode over the limit = %q, %v", out, err)
	}
	out, err = r.AppendEncode(dst, Inner{})
	if !errors.Is(err, ErrUnregisteredType) || !bytes.Equal(out, []byte("prefix")) {
		t.Fatalf("AppendEncode unregistered = %q, %v", out, err)
	}

	// A value cbor cannot encode is an error of its own.
	MustRegister[Deep](r, "test.Deep")
	if _, err := r.Encode(Deep{V: make(chan int)}); err == nil || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnregisteredType) {
		t.Fatalf("Encode(unencodable value): err = %v", err)
	}
}

func TestAppendEncode(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Small](r, "test.Small")
	msg := Small{From: PID{Node: NodeID{Name: "a", Incarnation: 1}, ID: 2}, Seq: 3, Text: "hi"}
	want, err := r.Encode(msg)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 256)
	buf = append(buf, 0xAA)
	buf, err = r.AppendEncode(buf, msg)
	if err != nil {
		t.Fatal(err)
	}
	buf, err = r.AppendEncode(buf, msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, append(append([]byte{0xAA}, want...), want...)) {
		t.Fatalf("AppendEncode = %x, want aa%x%x", buf, want, want)
	}
	var boxed any = msg // boxing is the caller's allocation
	allocs := testing.AllocsPerRun(100, func() {
		buf, err = r.AppendEncode(buf[:0], boxed)
	})
	if err != nil || (allocs > 0 && !raceEnabled) {
		t.Fatalf("AppendEncode into a large enough buffer: %v allocations, err %v", allocs, err)
	}
}

// cborBytes encodes v with plain cbor, to build payloads by hand.
func cborBytes(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// message builds a wire message from a name and raw payload bytes.
func message(name string, payload []byte) []byte {
	return append(envelopeHeader(name), payload...)
}

func TestDecodeErrors(t *testing.T) {
	r := newRegistry(t, Options{MaxNestedLevels: 4, MaxArrayElements: 16, MaxMapPairs: 16})
	MustRegister[Rich](r, "test.Rich")
	MustRegister[Small](r, "test.Small")
	MustRegister[Deep](r, "test.Deep")
	MustRegister[Ints](r, "test.Ints")
	MustRegister[Pairs](r, "test.Pairs")
	MustRegister[PID](r, "herd.PID")

	valid, err := r.Encode(Small{Text: "ok"})
	if err != nil {
		t.Fatal(err)
	}

	nested := func(depth int) []byte { // {"V": [[[...0...]]]} with depth arrays
		p := []byte{0xa1, 0x61, 'V'}
		for range depth {
			p = append(p, 0x81)
		}
		return append(p, 0x00)
	}
	ints := func(n int) []byte { return cborBytes(t, Ints{V: make([]int, n)}) }
	pairs := func(n int) []byte {
		m := map[string]int{}
		for i := range n {
			m[fmt.Sprint(i)] = i
		}
		return cborBytes(t, Pairs{M: m})
	}

	cases := []struct {
		desc string
		data []byte
		want error
	}{
		{"empty input", nil, ErrMalformed},
		{"trailing garbage", append(bytes.Clone(valid), 0x00), ErrMalformed},
		{"trailing garbage after the payload", append(bytes.Clone(valid), 0xff, 0xff), ErrMalformed},
		{"not an array", cborBytes(t, "test.Small"), ErrMalformed},
		{"array of one", cborBytes(t, []any{"test.Small"}), ErrMalformed},
		{"array of three", cborBytes(t, []any{"test.Small", map[string]any{}, 1}), ErrMalformed},
		{"name not a string", cborBytes(t, []any{7, map[string]any{}}), ErrMalformed},
		{"name a byte string", cborBytes(t, []any{[]byte("test.Small"), map[string]any{}}), ErrMalformed},
		{"indefinite-length envelope", []byte{0x9f, 0x61, 'x', 0x00, 0xff}, ErrMalformed},
		{"indefinite-length name", []byte{0x82, 0x7f, 0x61, 'x', 0xff, 0x00}, ErrMalformed},
		{"name not UTF-8", []byte{0x82, 0x62, 0xc3, 0x28, 0x00}, ErrMalformed},
		{"missing payload", envelopeHeader("test.Small"), ErrMalformed},
		{"name length past the end", []byte{0x82, 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00}, ErrMalformed},
		{"unknown name", message("test.Nope", []byte{0xa0}), ErrUnknownType},
		{"payload of the wrong shape", message("test.Small", cborBytes(t, 12)), ErrMalformed},
		{"payload field of the wrong type", message("test.Small", cborBytes(t, map[string]any{"Seq": "x"})), ErrMalformed},
		{"int overflowing the field", message("test.Rich", cborBytes(t, map[string]any{"Small": 1000})), ErrMalformed},
		{"unknown field", message("test.Small", cborBytes(t, map[string]any{"Seq": 1, "Nope": 2})), ErrMalformed},
		{"field name in the wrong case", message("test.Small", cborBytes(t, map[string]any{"seq": 1})), ErrMalformed},
		{"duplicate map key", message("test.Small", []byte{0xa2, 0x63, 'S', 'e', 'q', 0x01, 0x63, 'S', 'e', 'q', 0x02}), ErrMalformed},
		{"duplicate key in a map field", message("test.Pairs", []byte{0xa1, 0x61, 'M', 0xa2, 0x61, 'k', 0x01, 0x61, 'k', 0x02}), ErrMalformed},
		{"indefinite-length map", message("test.Small", []byte{0xbf, 0x63, 'S', 'e', 'q', 0x01, 0xff}), ErrMalformed},
		{"indefinite-length text", message("test.Small", []byte{0xa1, 0x64, 'T', 'e', 'x', 't', 0x7f, 0x61, 'a', 0xff}), ErrMalformed},
		{"CBOR tag", message("test.Rich", []byte{0xa1, 0x64, 'W', 'h', 'e', 'n', 0xc1, 0x1a, 0x5f, 0x00, 0x00, 0x00}), ErrMalformed},
		{"tagged payload", message("test.Small", []byte{0xd9, 0xd9, 0xf7, 0xa0}), ErrMalformed},
		{"invalid UTF-8 text", message("test.Small", []byte{0xa1, 0x64, 'T', 'e', 'x', 't', 0x62, 0xc3, 0x28}), ErrMalformed},
		{"truncated payload", message("test.Small", []byte{0xa1, 0x64, 'T', 'e', 'x', 't', 0x65, 'a'}), ErrMalformed},
		{"toarray with too few elements", message("herd.PID", cborBytes(t, []any{[]any{"n", 1}})), ErrMalformed},
		{"toarray with too many elements", message("herd.PID", cborBytes(t, []any{[]any{"n", 1}, 2, 3})), ErrMalformed},
		{"toarray given a map", message("herd.PID", cborBytes(t, map[string]any{"ID": 1})), ErrMalformed},
		{"nesting deeper than the limit", message("test.Deep", nested(4)), ErrMalformed},
		{"array longer than the limit", message("test.Ints", ints(17)), ErrMalformed},
		{"map larger than the limit", message("test.Pairs", pairs(17)), ErrMalformed},
		{"time out of range", message("test.Rich", cborBytes(t, map[string]any{"When": int64(1) << 50})), ErrMalformed},
		{"map time out of range", message("test.Rich", cborBytes(t, map[string]any{"Stamps": map[string]any{"a": -(int64(1) << 50)}})), ErrMalformed},
	}
	for _, c := range cases {
		v, err := r.Decode(c.data)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Decode(%x) = %#v, %v; want %v", c.desc, c.data, v, err, c.want)
			continue
		}
		if v != nil {
			t.Errorf("%s: Decode returned a value with the error: %#v", c.desc, v)
		}
	}

	// The limits themselves are accepted (the payload's outer map is one level).
	for desc, data := range map[string][]byte{
		"nesting at the limit": message("test.Deep", nested(3)),
		"array at the limit":   message("test.Ints", ints(16)),
		"map at the limit":     message("test.Pairs", pairs(16)),
	} {
		if _, err := r.Decode(data); err != nil {
			t.Errorf("%s: %v", desc, err)
		}
	}

	// Every proper prefix of a valid message is malformed.
	full, err := r.Encode(sampleRich())
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(full) {
		if _, err := r.Decode(full[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Decode of %d of %d bytes: err = %v, want ErrMalformed", n, len(full), err)
		}
	}
}

func TestDecodeErrorDetails(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Small](r, "test.Small")

	// The cbor error is wrapped along with ErrMalformed.
	_, err := r.Decode(message("test.Small", cborBytes(t, map[string]any{"Nope": 1})))
	var unknown *cbor.UnknownFieldError
	if !errors.As(err, &unknown) {
		t.Fatalf("err = %v, want a wrapped *cbor.UnknownFieldError", err)
	}
	_, err = r.Decode(append(message("test.Small", []byte{0xa0}), 0x01))
	var extra *cbor.ExtraneousDataError
	if !errors.As(err, &extra) || !strings.Contains(err.Error(), "extraneous data") {
		t.Fatalf("err = %v, want a wrapped *cbor.ExtraneousDataError", err)
	}
	// Malformed CBOR in the envelope itself is reported by cbor too.
	_, err = r.Decode([]byte{0x82, 0x61})
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("truncated envelope: err = %v", err)
	}

	// Unknown names are quoted and truncated to 128 bytes.
	long := strings.Repeat("z", 300)
	_, err = r.Decode(message(long, []byte{0xa0}))
	if !errors.Is(err, ErrUnknownType) {
		t.Fatalf("err = %v, want ErrUnknownType", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `"`+strings.Repeat("z", 128)+`"`) {
		t.Fatalf("message %q does not quote the name truncated to 128 bytes", msg)
	}
	_, err = r.Decode(message("evil\n\x1b[31m", []byte{0xa0}))
	if !errors.Is(err, ErrUnknownType) || strings.ContainsAny(err.Error(), "\n\x1b") {
		t.Fatalf("err = %q, want ErrUnknownType with the name escaped", err)
	}
}

func TestDecodeTooLarge(t *testing.T) {
	r := newRegistry(t, Options{MaxMessageSize: 40})
	MustRegister[Small](r, "test.Small")

	// The size is checked before anything else, even for garbage.
	if _, err := r.Decode(bytes.Repeat([]byte{0xff}, 41)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Decode of 41 bytes of garbage: err = %v, want ErrTooLarge", err)
	}

	big := newRegistry(t, Options{})
	MustRegister[Small](big, "test.Small")
	b, err := big.Encode(Small{Text: strings.Repeat("x", 100)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Decode(b); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Decode of %d bytes: err = %v, want ErrTooLarge", len(b), err)
	}
	if _, err := big.Decode(b); err != nil {
		t.Fatalf("Decode with the default limit: %v", err)
	}

	b, err = big.Encode(Small{Text: "x"})
	if err != nil || len(b) > 40 {
		t.Fatalf("small message: %d bytes, %v", len(b), err)
	}
	if _, err := r.Decode(b); err != nil {
		t.Fatalf("Decode under the limit: %v", err)
	}
}

func TestDecodeTimes(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Rich](r, "test.Rich")

	// Epoch seconds (not what Encode writes) decode to UTC.
	v, err := r.Decode(message("test.Rich", cborBytes(t, map[string]any{"When": 1700000000})))
	if err != nil {
		t.Fatal(err)
	}
	when := v.(Rich).When
	if when != time.Unix(1700000000, 0).UTC() {
		t.Fatalf("When = %v (%v), want %v UTC", when, when.Location(), time.Unix(1700000000, 0).UTC())
	}
	// RFC 3339 text with an offset decodes to UTC.
	v, err = r.Decode(message("test.Rich", cborBytes(t, map[string]any{
		"When":   "2020-01-02T03:04:05.5+02:00",
		"Stamps": map[string]any{"a": "2020-01-02T03:04:05-07:00"},
	})))
	if err != nil {
		t.Fatal(err)
	}
	rich := v.(Rich)
	if rich.When != time.Date(2020, 1, 2, 1, 4, 5, 5e8, time.UTC) {
		t.Fatalf("When = %v", rich.When)
	}
	if a := rich.Stamps["a"]; a != time.Date(2020, 1, 2, 10, 4, 5, 0, time.UTC) {
		t.Fatalf("Stamps[a] = %v", a)
	}
	// The zero instant as epoch seconds is the zero time.Time, which Encode
	// writes as null.
	v, err = r.Decode(message("test.Rich", cborBytes(t, map[string]any{"When": int64(-62135596800)})))
	if err != nil {
		t.Fatal(err)
	}
	if when := v.(Rich).When; when != (time.Time{}) {
		t.Fatalf("When = %#v, want time.Time{}", when)
	}
	// Year 10000 is refused, year 9999 is not.
	for _, c := range []struct {
		s  string
		ok bool
	}{{"9999-12-31T23:59:59Z", true}, {"0000-01-01T00:00:00Z", true}} {
		_, err := r.Decode(message("test.Rich", cborBytes(t, map[string]any{"When": c.s})))
		if (err == nil) != c.ok {
			t.Errorf("When %s: err = %v", c.s, err)
		}
	}
	if _, err := r.Decode(message("test.Rich", cborBytes(t, map[string]any{"When": 253402300800}))); !errors.Is(err, ErrMalformed) {
		t.Errorf("When in year 10000: err = %v, want ErrMalformed", err)
	}
}

// Times inside maps, slices, pointers, arrays and recursive types are
// normalized too.
type TimeHolder struct {
	List  []time.Time
	Arr   [2]time.Time
	Ptr   *time.Time
	ByKey map[time.Time]int
	Next  *TimeHolder
	embeddedTimes
	hidden time.Time
}

type embeddedTimes struct {
	Embedded time.Time
}

func TestDecodeTimesEverywhere(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[*TimeHolder](r, "test.TimeHolder")
	epoch := func(s int64) any { return s }
	payload := cborBytes(t, map[string]any{
		"List":     []any{epoch(1), epoch(2)},
		"Arr":      []any{epoch(3), nil},
		"Ptr":      epoch(4),
		"Embedded": epoch(5),
		"Next":     map[string]any{"List": []any{epoch(6)}},
	})
	v, err := r.Decode(message("test.TimeHolder", payload))
	if err != nil {
		t.Fatal(err)
	}
	h := v.(*TimeHolder)
	all := []time.Time{h.List[0], h.List[1], h.Arr[0], *h.Ptr, h.Embedded, h.Next.List[0]}
	for i, tm := range all {
		if tm.Location() != time.UTC {
			t.Errorf("time %d: %v in %v, want UTC", i, tm, tm.Location())
		}
	}
	if !h.Arr[1].IsZero() {
		t.Errorf("Arr[1] = %v, want zero", h.Arr[1])
	}

	// Times in map keys are range-checked.
	bad := []byte{0xa1, 0x65, 'B', 'y', 'K', 'e', 'y', 0xa1, 0x1b, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x01}
	if _, err := r.Decode(message("test.TimeHolder", bad)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("map key time out of range: err = %v", err)
	}
	good := []byte{0xa1, 0x65, 'B', 'y', 'K', 'e', 'y', 0xa1, 0x01, 0x01}
	if _, err := r.Decode(message("test.TimeHolder", good)); err != nil {
		t.Fatalf("map key time: %v", err)
	}

	// A pointer to the zero time is nil: Encode writes &time.Time{} as null.
	zero := "0001-01-01T00:00:00Z"
	v, err = r.Decode(message("test.TimeHolder", cborBytes(t, map[string]any{"Ptr": zero})))
	if err != nil {
		t.Fatal(err)
	}
	if h := v.(*TimeHolder); h.Ptr != nil {
		t.Fatalf("Ptr = %v, want nil", *h.Ptr)
	}
	MustRegister[*time.Time](r, "test.TimePtr")
	v, err = r.Decode(message("test.TimePtr", cborBytes(t, zero)))
	if p, ok := v.(*time.Time); err != nil || !ok || p != nil {
		t.Fatalf("Decode(*time.Time zero) = %#v, %v; want (*time.Time)(nil)", v, err)
	}
	if got := roundTrip(t, r, &time.Time{}); got != (*time.Time)(nil) {
		t.Fatalf("round trip of &time.Time{} = %#v", got)
	}
	v, err = r.Decode(message("test.TimePtr", cborBytes(t, 5)))
	if p, ok := v.(*time.Time); err != nil || !ok || *p != time.Unix(5, 0).UTC() {
		t.Fatalf("Decode(*time.Time 5) = %#v, %v", v, err)
	}

	if newTimeFixer(reflect.TypeFor[Small]()) != nil || newTimeFixer(reflect.TypeFor[Deep]()) != nil {
		t.Fatal("types without time.Time got a time fixer")
	}
}

func TestDecodedValueOwnsItsMemory(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Rich](r, "test.Rich")
	in := sampleRich()
	b, err := r.Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0
	}
	if !reflect.DeepEqual(v, in) {
		t.Fatal("decoded value changed when the input was overwritten")
	}
}

func TestDeterministicEncoding(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[map[string]int](r, "test.Map")
	MustRegister[Rich](r, "test.Rich")

	a, b := map[string]int{}, map[string]int{}
	for i := range 1000 {
		a[fmt.Sprintf("key-%d", i)] = i
		b[fmt.Sprintf("key-%d", 999-i)] = 999 - i
	}
	first, err := r.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		m := a
		if i%2 == 1 {
			m = b
		}
		got, err := r.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, first) {
			t.Fatalf("encoding %d differs", i)
		}
	}

	// Equal instants in different zones encode alike.
	when := time.Date(2021, 1, 1, 12, 0, 0, 0, time.UTC)
	x, _ := r.Encode(Rich{When: when})
	y, _ := r.Encode(Rich{When: when.In(time.FixedZone("X", -5*3600))})
	if !bytes.Equal(x, y) {
		t.Fatalf("same instant encodes differently: %x vs %x", x, y)
	}
}

type conc0 struct{ A int }
type conc1 struct{ A int }
type conc2 struct{ A int }
type conc3 struct{ A int }
type conc4 struct{ A int }
type conc5 struct{ A int }
type conc6 struct{ A int }
type conc7 struct{ A int }

func TestConcurrentUse(t *testing.T) {
	r := newRegistry(t, Options{})
	MustRegister[Small](r, "test.Small")
	msg := Small{From: PID{Node: NodeID{Name: "n", Incarnation: 1}, ID: 5}, Seq: 9, Text: "hi"}

	registers := []func() error{
		func() error { return Register[conc0](r, "c0") },
		func() error { return Register[conc1](r, "c1") },
		func() error { return Register[conc2](r, "c2") },
		func() error { return Register[conc3](r, "c3") },
		func() error { return Register[conc4](r, "c4") },
		func() error { return Register[conc5](r, "c5") },
		func() error { return Register[conc6](r, "c6") },
		func() error { return Register[conc7](r, "c7") },
	}
	// Racing registrations of one name for different types: exactly one wins.
	contested := []func() error{
		func() error { return Register[Inner](r, "contested") },
		func() error { return Register[NodeID](r, "contested") },
		func() error { return Register[PID](r, "contested") },
	}

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for _, reg := range registers {
		for range 3 { // the same pair several times: all succeed
			wg.Go(func() {
				if err := reg(); err != nil {
					errs <- err
				}
			})
		}
	}
	var wins sync.Map
	for i, reg := range contested {
		wg.Go(func() {
			if err := reg(); err == nil {
				wins.Store(i, true)
			} else if !errors.Is(err, ErrDuplicateName) {
				errs <- err
			}
		})
	}
	for range 8 {
		wg.Go(func() {
			for range 200 {
				b, err := r.Encode(msg)
				if err != nil {
					errs <- err
					return
				}
				v, err := r.Decode(b)
				if err != nil {
					errs <- err
					return
				}
				if v != any(msg) {
					errs <- fmt.Errorf("decoded %#v", v)
					return
				}
				r.NameOf(conc3{})
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	wins.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("%d contested registrations won, want 1", n)
	}
	if got := len(r.tab.Load().byName); got != 1+8+1 {
		t.Fatalf("%d names registered, want 10", got)
	}
	for i, v := range []any{conc0{1}, conc1{2}, conc2{3}, conc3{4}, conc4{5}, conc5{6}, conc6{7}, conc7{8}} {
		if got := roundTrip(t, r, v); got != v {
			t.Fatalf("type %d: round trip %#v = %#v", i, v, got)
		}
	}
}
