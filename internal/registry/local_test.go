package registry_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/herdkit/herd/internal/codec"
	"github.com/herdkit/herd/internal/proc"
	. "github.com/herdkit/herd/internal/proctest"
	"github.com/herdkit/herd/internal/registry"
	"github.com/herdkit/herd/internal/registry/registrytest"
)

// stoppable is a process that stops with any error it is sent.
func stoppable() proc.Process {
	return &Func{OnInfo: func(c *proc.Context, m any) {
		if r, ok := m.(error); ok {
			c.Stop(r)
		}
	}}
}

func localHarness(t *testing.T) (registrytest.Harness, *proc.Runtime) {
	rt := NewRuntime(t)
	return registrytest.Harness{
		Registry: registry.NewLocal(rt),
		Spawn: func(t *testing.T) proc.PID {
			pid, err := rt.SpawnProcess(stoppable(), nil)
			if err != nil {
				t.Fatal(err)
			}
			return pid
		},
		Exit: func(t *testing.T, pid proc.PID, reason error) {
			exits := Exits(t, rt, pid)
			if err := rt.Send(pid, reason); err != nil {
				t.Fatal(err)
			}
			Recv(t, exits)
		},
	}, rt
}

func TestLocalContract(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Harness {
		h, _ := localHarness(t)
		return h
	})
}

// backends are the registry backends every test here runs against.
var backends = []struct {
	name    string
	harness func(t *testing.T) (registrytest.Harness, *proc.Runtime)
}{
	{"Local", localHarness},
	{"Replicated", replicatedHarness},
}

func eachBackend(t *testing.T, fn func(t *testing.T, h registrytest.Harness, rt *proc.Runtime)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			h, rt := b.harness(t)
			fn(t, h, rt)
		})
	}
}

// Names are released before anyone hears of the exit: a monitor's Down
// finds the name gone, and the successor can take it.
func TestReleasesBeforeDown(t *testing.T) { eachBackend(t, testReleasesBeforeDown) }

func testReleasesBeforeDown(t *testing.T, h registrytest.Harness, rt *proc.Runtime) {
	r := h.Registry
	pid := h.Spawn(t)
	key := registry.K("", "held")
	if err := r.Register(context.Background(), key, pid, registry.Meta{}); err != nil {
		t.Fatal(err)
	}
	seen := make(chan error, 1)
	_, err := rt.SpawnProcess(&Func{
		OnInit: func(c *proc.Context, _ any) error { c.Monitor(pid); return nil },
		OnInfo: func(c *proc.Context, m any) {
			if _, ok := m.(proc.Down); ok {
				if holder, ok := r.Whereis(key); ok {
					seen <- fmt.Errorf("name still held by %v when the Down arrived", holder)
					return
				}
				seen <- r.Register(context.Background(), key, c.Self(), registry.Meta{})
			}
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = rt.Exit(proc.PID{}, pid, proc.Kill)
	if err := Recv(t, seen); err != nil {
		t.Fatal(err)
	}
}

func TestRejectsOtherNodesPIDs(t *testing.T) {
	eachBackend(t, func(t *testing.T, h registrytest.Harness, _ *proc.Runtime) {
		remote := proc.PID{Node: proc.NodeID{Name: "far", Incarnation: 1}, ID: 1}
		if err := h.Registry.Register(context.Background(), registry.K("", "x"), remote, registry.Meta{}); !errors.Is(err, registry.ErrInvalid) {
			t.Fatalf("Register of a remote pid: %v", err)
		}
	})
}

func TestResolverRoutesNamesThroughProc(t *testing.T) { eachBackend(t, testResolverRoutes) }

func testResolverRoutes(t *testing.T, h registrytest.Harness, rt *proc.Runtime) {
	l := h.Registry
	rt.SetResolver(l.(interface{ Resolver() proc.Resolver }).Resolver())
	got := make(chan any, 1)
	pid, _ := rt.SpawnProcess(&Func{OnInfo: func(_ *proc.Context, m any) { got <- m }}, nil)
	if err := l.Register(context.Background(), registry.K("tenant", "inbox"), pid, registry.Meta{}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Send(proc.InEnv("tenant", "inbox"), "hello"); err != nil {
		t.Fatal(err)
	}
	if v := Recv(t, got); v != "hello" {
		t.Fatalf("got %v", v)
	}
	if err := rt.Send(proc.Name("inbox"), "x"); !errors.Is(err, proc.ErrNoName) {
		t.Fatalf("name resolved outside its environment: %v", err)
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"", "", true}, {"", "a", false}, {"*", "", true}, {"*", "anything/at:all", true},
		{"game:*", "game:42", true}, {"game:*", "gamer:42", false}, {"*:42", "game:42", true},
		{"g?me", "game", true}, {"g?me", "gme", false}, {"g?me", "gäme", true},
		{"a*b*c", "aXXbYYc", true}, {"a*b*c", "aXXbYY", false}, {"a**", "a", true},
		{`a\*`, "a*", true}, {`a\*`, "ab", false}, {`\?`, "?", true}, {`a\\`, `a\`, true},
		{"*a*a*a*a*a*b", strings.Repeat("a", 60), false},
	} {
		if got := registry.Match(tc.pattern, tc.name); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

// globRegexp is the reference Match is checked against.
func globRegexp(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`(?s)^`)
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '*':
			b.WriteString(`.*`)
		case c == '?':
			b.WriteString(`.`)
		case c == '\\' && i+1 < len(pattern):
			i++
			b.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
		default:
			b.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
		}
	}
	b.WriteString(`$`)
	return regexp.MustCompile(b.String())
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"game:*", "game:1"}, {"a*b?c", "axxbyc"}, {`\*x`, "*x"}, {"**?", "ab"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		// The reference works on ASCII; '?' takes one character, which
		// for ASCII is one byte.
		for _, s := range []string{pattern, name} {
			for i := 0; i < len(s); i++ {
				if s[i] >= 0x80 {
					return
				}
			}
		}
		if got, want := registry.Match(pattern, name), globRegexp(pattern).MatchString(name); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", pattern, name, got, want)
		}
	})
}

// BenchmarkLookup reads random names among 100k: Whereis against a bare Go
// map read of the same keys, so the figure means something on a noisy
// machine.
// benchBackends are the backends benchmarks compare.
var benchBackends = []struct {
	name string
	new  func(b *testing.B, rt *proc.Runtime) registry.Registry
}{
	{"Local", func(_ *testing.B, rt *proc.Runtime) registry.Registry { return registry.NewLocal(rt) }},
	{"Replicated", func(b *testing.B, rt *proc.Runtime) registry.Registry { return newReplicated(b, rt) }},
}

func BenchmarkLookup(b *testing.B) {
	for _, bb := range benchBackends {
		b.Run(bb.name, func(b *testing.B) {
			rt := NewRuntime(b)
			benchLookup(b, bb.new(b, rt), rt)
		})
	}
}

func benchLookup(b *testing.B, r registry.Registry, rt *proc.Runtime) {
	const n = 100_000
	pid, _ := rt.SpawnProcess(stoppable(), nil)
	keys := make([]registry.Key, n)
	bare := make(map[string]proc.PID, n)
	for i := range keys {
		stored := registry.K("", fmt.Sprintf("game:%d", i))
		if err := r.Register(context.Background(), stored, pid, registry.Meta{}); err != nil {
			b.Fatal(err)
		}
		bare[stored.Name] = pid
		// Lookups come with names of their own (from a message, a
		// request), not the registry's copy: compare them byte by byte,
		// as in use.
		keys[i] = registry.K("", strings.Clone(stored.Name))
	}
	order := rand.Perm(n)
	b.Run("Whereis", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := r.Whereis(keys[order[i%n]]); !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
	b.Run("Lookup", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := r.Lookup(keys[order[i%n]]); !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
	b.Run("BareMap", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, ok := bare[keys[order[i%n]].Name]; !ok {
				b.Fatal("missing")
			}
			i++
		}
	})
	b.Run("WhereisHot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := r.Whereis(keys[42]); !ok {
				b.Fatal("missing")
			}
		}
	})
	b.Run("BareMapHot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := bare[keys[42].Name]; !ok {
				b.Fatal("missing")
			}
		}
	})
	b.Run("WhereisParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := rand.IntN(n)
			for pb.Next() {
				if _, ok := r.Whereis(keys[order[i%n]]); !ok {
					b.Fatal("missing")
				}
				i++
			}
		})
	})
}

// BenchmarkRegisterUnregister is one Register and one Unregister of a fresh
// name per op, by a process that holds other names (so the exit hook is
// installed once, as in steady use).
func BenchmarkRegisterUnregister(b *testing.B) {
	for _, bb := range benchBackends {
		b.Run(bb.name, func(b *testing.B) {
			rt := NewRuntime(b)
			benchRegisterUnregister(b, bb.new(b, rt), rt)
		})
	}
}

func benchRegisterUnregister(b *testing.B, r registry.Registry, rt *proc.Runtime) {
	pid, _ := rt.SpawnProcess(stoppable(), nil)
	ctx := context.Background()
	_ = r.Register(ctx, registry.K("", "anchor"), pid, registry.Meta{})
	keys := make([]registry.Key, 1024)
	for i := range keys {
		keys[i] = registry.K("", fmt.Sprintf("k%d", i))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i%len(keys)]
		if err := r.Register(ctx, k, pid, registry.Meta{}); err != nil {
			b.Fatal(err)
		}
		if err := r.Unregister(ctx, k, pid); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// Keys travel between nodes with the cluster backend: they round-trip
// through the codec as compact arrays.
func TestKeyRoundTripsThroughCodec(t *testing.T) {
	r, err := codec.NewRegistry(codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	codec.MustRegister[registry.Key](r, "herd.Key")
	for _, k := range []registry.Key{registry.K("", "game:1"), registry.K("tenant", "x/y"), {}} {
		data, err := r.Encode(k)
		if err != nil {
			t.Fatal(err)
		}
		back, err := r.Decode(data)
		if err != nil || back != k {
			t.Fatalf("round trip of %v gave %v, %v", k, back, err)
		}
	}
}
