package codec

import "testing"

func benchMessage() Small {
	return Small{
		From: PID{Node: NodeID{Name: "worker-3@10.0.0.7", Incarnation: 1700000000}, ID: 123456},
		Seq:  42,
		Text: "tick",
	}
}

func BenchmarkEncode(b *testing.B) {
	r := newRegistry(b, Options{})
	MustRegister[Small](r, "bench.Small")
	var msg any = benchMessage()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Encode(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendEncode(b *testing.B) {
	r := newRegistry(b, Options{})
	MustRegister[Small](r, "bench.Small")
	var msg any = benchMessage()
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = r.AppendEncode(buf[:0], msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	r := newRegistry(b, Options{})
	MustRegister[Small](r, "bench.Small")
	data, err := r.Encode(benchMessage())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
