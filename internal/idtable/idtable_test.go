package idtable

import (
	"sync"
	"testing"
)

func TestReserveStoreLoadRemove(t *testing.T) {
	var tab Table[int]
	if got := tab.Load(1); got != nil {
		t.Fatalf("empty table: Load(1) = %v, want nil", got)
	}
	ids := make([]uint64, 3*pageSize+7)
	vals := make([]int, len(ids))
	for i := range ids {
		ids[i] = tab.Reserve()
		if i > 0 && ids[i] != ids[i-1]+1 {
			t.Fatalf("ids not sequential: %d after %d", ids[i], ids[i-1])
		}
		vals[i] = i
		tab.Store(ids[i], &vals[i])
	}
	if ids[0] != 1 {
		t.Fatalf("first id = %d, want 1", ids[0])
	}
	for i, id := range ids {
		if got := tab.Load(id); got == nil || *got != i {
			t.Fatalf("Load(%d) = %v, want %d", id, got, i)
		}
	}
	if tab.Load(0) != nil || tab.Load(ids[len(ids)-1]+1) != nil || tab.Load(1<<40) != nil {
		t.Fatal("Load of an id never stored must be nil")
	}
	for _, id := range ids {
		tab.Remove(id)
		if tab.Load(id) != nil {
			t.Fatalf("Load(%d) after Remove is not nil", id)
		}
	}
}

func TestPagesAreReleased(t *testing.T) {
	var tab Table[int]
	v := 7
	for range 4 * pageSize {
		id := tab.Reserve()
		tab.Store(id, &v)
		tab.Remove(id)
	}
	d := tab.dir.Load()
	for i := range d.pages {
		if d.pages[i].Load() != nil {
			// Only the page holding the next id may still be allocated.
			if uint64(i) != tab.last.Load()>>pageBits {
				t.Fatalf("page %d still allocated after all its ids were removed", i)
			}
		}
	}
}

func TestRange(t *testing.T) {
	var tab Table[int]
	vals := []int{10, 20, 30, 40}
	var ids []uint64
	for i := range vals {
		id := tab.Reserve()
		tab.Store(id, &vals[i])
		ids = append(ids, id)
	}
	tab.Remove(ids[1])
	var seen []int
	tab.Range(func(id uint64, v *int) bool {
		seen = append(seen, *v)
		return true
	})
	if len(seen) != 3 || seen[0] != 10 || seen[1] != 30 || seen[2] != 40 {
		t.Fatalf("Range saw %v, want [10 30 40]", seen)
	}
	n := 0
	tab.Range(func(uint64, *int) bool { n++; return false })
	if n != 1 {
		t.Fatalf("Range did not stop when fn returned false: %d calls", n)
	}
}

func TestConcurrent(t *testing.T) {
	var tab Table[uint64]
	const workers, per = 8, 3 * pageSize
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			live := make([]uint64, 0, 64)
			for i := range per {
				id := tab.Reserve()
				v := id
				tab.Store(id, &v)
				live = append(live, id)
				for _, l := range live {
					if got := tab.Load(l); got == nil || *got != l {
						t.Errorf("Load(%d) = %v", l, got)
						return
					}
				}
				if i%3 != 0 || len(live) > 32 {
					tab.Remove(live[0])
					live = live[1:]
				}
			}
			for _, l := range live {
				tab.Remove(l)
			}
		})
	}
	wg.Wait()
	tab.Range(func(id uint64, _ *uint64) bool {
		t.Errorf("id %d still present after every id was removed", id)
		return true
	})
}

func BenchmarkLoad(b *testing.B) {
	var tab Table[int]
	ids := make([]uint64, 100_000)
	v := 1
	for i := range ids {
		ids[i] = tab.Reserve()
		tab.Store(ids[i], &v)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if tab.Load(ids[i%len(ids)]) == nil {
			b.Fatal("missing")
		}
	}
}
