package registry

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/herdkit/herd/internal/proc"
)

func holderOf(k Key, id uint64) *holder {
	pid := proc.PID{Node: proc.NodeID{Name: "n", Incarnation: 1}, ID: id}
	return newHolder(&Entry{Kind: Unique, Key: k, PID: pid})
}

// TestTableModel runs random puts and deletes against a Go map and checks
// every key after each step, through growth, tombstones and rebuilds.
func TestTableModel(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		tb := newTable()
		model := map[Key]uint64{}
		keys := make([]Key, 300)
		for i := range keys {
			keys[i] = K([]string{"", "a", "b"}[i%3], fmt.Sprint("k", i/3))
		}
		for step := range 5000 {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(3) == 0 {
				_, had := model[k]
				if got := tb.del(k); got != had {
					t.Fatalf("seed %d step %d: del(%v) = %v, model %v", seed, step, k, got, had)
				}
				delete(model, k)
			} else {
				id := uint64(step + 1)
				tb.put(holderOf(k, id))
				model[k] = id
			}
			if tb.len() != len(model) {
				t.Fatalf("seed %d step %d: len %d, model %d", seed, step, tb.len(), len(model))
			}
			if step%50 == 0 {
				for _, k := range keys {
					h := tb.get(k)
					id, ok := model[k]
					if (h != nil) != ok || (ok && h.pid.ID != id) {
						t.Fatalf("seed %d step %d: get(%v) = %+v, model %v %v", seed, step, k, h, id, ok)
					}
				}
			}
		}
	}
}

// TestTableConcurrentReads reads while one writer puts, replaces and
// deletes (run it under -race): a reader finds a key it knows is present,
// never a wrong one.
func TestTableConcurrentReads(t *testing.T) {
	tb := newTable()
	const stable = 100
	for i := range stable {
		tb.put(holderOf(K("", fmt.Sprint("stable", i)), uint64(i)))
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for n := 0; !stop.Load(); n++ {
				i := n % stable
				h := tb.get(K("", fmt.Sprint("stable", i)))
				if h == nil || h.pid.ID != uint64(i) {
					t.Errorf("stable%d read as %+v", i, h)
					return
				}
				if h := tb.get(K("", "never")); h != nil {
					t.Errorf("absent key read as %+v", h)
					return
				}
			}
		})
	}
	for i := range 20000 {
		k := K("churn", fmt.Sprint(i%500))
		if i%3 == 2 {
			tb.del(k)
		} else {
			tb.put(holderOf(k, uint64(i)))
		}
	}
	stop.Store(true)
	wg.Wait()
}

func TestHolderFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(holder{}); n != 128 {
		t.Fatalf("holder is %d bytes; the lookup path assumes 128", n)
	}
	if off := unsafe.Offsetof(holder{}.key); off != 64 {
		t.Fatalf("holder's hot fields end at %d, not 64", off)
	}
}

func TestHolderMatchesLongNamesAndEnvs(t *testing.T) {
	long := strings.Repeat("x", shortName+1)
	for _, k := range []Key{K("", "a"), K("", long), K("env", "a"), K("env", long), K("", strings.Repeat("y", shortName))} {
		h := newHolder(&Entry{Key: k})
		if !h.is(&k) {
			t.Errorf("%v does not match itself", k)
		}
		for _, o := range []Key{K("", "b"), K("", long+"z"), K("env2", k.Name), K("", k.Name+"z"), K("", k.Name[:len(k.Name)-1])} {
			if o != k && h.is(&o) {
				t.Errorf("%v matches %v", k, o)
			}
		}
	}
}

func TestTableZeroAllocs(t *testing.T) {
	tb := newTable()
	k := K("env", "name")
	tb.put(holderOf(k, 1))
	if n := testing.AllocsPerRun(100, func() { tb.get(k) }); n != 0 {
		t.Fatalf("get allocates %v times", n)
	}
}
