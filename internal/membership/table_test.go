package membership

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/herdkit/herd/internal/proc"
)

var t0 = time.Unix(1_700_000_000, 0)

func life(name string, inc uint64) Member {
	return Member{ID: proc.NodeID{Name: name, Incarnation: inc}, Addr: name + ":1"}
}

func statuses(cs []Change) string {
	s := ""
	for _, c := range cs {
		s += fmt.Sprintf("[%v %v>%v]", c.Member.ID, c.From, c.Member.Status)
	}
	return s
}

func TestLifecycle(t *testing.T) {
	tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
	a := life("a", 1)
	steps := []struct {
		ev   Event
		want string
	}{
		{Event{Kind: EvAlive, Member: a}, "[a@1 none>alive]"},
		{Event{Kind: EvAlive, Member: a}, ""},
		{Event{Kind: EvSuspect, Member: a}, "[a@1 alive>suspect]"},
		{Event{Kind: EvSuspect, Member: a}, ""},
		{Event{Kind: EvAlive, Member: a}, "[a@1 suspect>alive]"},
		{Event{Kind: EvLeaving, Member: a}, "[a@1 alive>leaving]"},
		{Event{Kind: EvSuspect, Member: a}, ""},
		{Event{Kind: EvLeft, Member: a}, "[a@1 leaving>left]"},
		{Event{Kind: EvAlive, Member: a}, ""}, // left is final
		{Event{Kind: EvDead, Member: a}, ""},
	}
	for i, s := range steps {
		if got := statuses(tab.Apply(s.ev, t0)); got != s.want {
			t.Fatalf("step %d (%v): %s, want %s", i, s.ev.Kind, got, s.want)
		}
	}
	if _, ok := tab.Latest("a"); ok {
		t.Fatal("a life that left is still the latest")
	}
}

func TestRestartEndsThePreviousLife(t *testing.T) {
	tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
	tab.Apply(Event{Kind: EvAlive, Member: life("a", 1)}, t0)
	tab.Apply(Event{Kind: EvSuspect, Member: life("a", 1)}, t0)
	got := tab.Apply(Event{Kind: EvAlive, Member: life("a", 2)}, t0)
	if statuses(got) != "[a@1 suspect>dead][a@2 none>alive]" {
		t.Fatalf("restart: %s", statuses(got))
	}
	if got[0].Cause != "restarted as a@2" {
		t.Fatalf("cause %q", got[0].Cause)
	}
	// Late news of the earlier life changes nothing: superseded is final.
	if got := tab.Apply(Event{Kind: EvAlive, Member: life("a", 1)}, t0); len(got) != 0 {
		t.Fatalf("late alive of a superseded life: %s", statuses(got))
	}
	if m, _ := tab.Latest("a"); m.ID.Incarnation != 2 {
		t.Fatalf("latest %v", m.ID)
	}
	if got := tab.Apply(Event{Kind: EvAlive, Member: life("a", 0)}, t0); len(got) != 0 {
		t.Fatalf("an earlier life after a later one: %s", statuses(got))
	}
}

// The death of a later life, heard before anything else of it, still ends
// the earlier life.
func TestLaterLifesDeathSupersedes(t *testing.T) {
	tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
	tab.Apply(Event{Kind: EvAlive, Member: life("n", 1)}, t0)
	got := tab.Apply(Event{Kind: EvDead, Member: life("n", 2)}, t0)
	if statuses(got) != "[n@1 alive>dead]" {
		t.Fatalf("a later life's death: %s", statuses(got))
	}
	if got := tab.Apply(Event{Kind: EvAlive, Member: life("n", 1)}, t0); len(got) != 0 {
		t.Fatalf("the superseded life came back: %s", statuses(got))
	}
}

// A node cut off by a partition is declared dead, then comes back as the
// same life when the partition heals.
func TestDeadComesBackAfterAPartition(t *testing.T) {
	tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
	a := life("a", 1)
	tab.Apply(Event{Kind: EvAlive, Member: a}, t0)
	if got := statuses(tab.Apply(Event{Kind: EvDead, Member: a, Cause: "failure detector"}, t0)); got != "[a@1 alive>dead]" {
		t.Fatal(got)
	}
	if dead := tab.Dead(t0.Add(-time.Minute)); len(dead) != 1 || dead[0].ID != a.ID {
		t.Fatalf("Dead = %v", dead)
	}
	got := tab.Apply(Event{Kind: EvAlive, Member: a}, t0)
	if statuses(got) != "[a@1 dead>alive]" || got[0].Cause != "back after being declared dead" {
		t.Fatalf("heal: %s %q", statuses(got), got[0].Cause)
	}
	if len(tab.Dead(t0.Add(-time.Minute))) != 0 {
		t.Fatal("a revived life is still listed dead")
	}
	// A life that left does not come back.
	tab.Apply(Event{Kind: EvLeft, Member: a}, t0)
	if got := tab.Apply(Event{Kind: EvAlive, Member: a}, t0); len(got) != 0 {
		t.Fatalf("alive after left: %s", statuses(got))
	}
}

func TestMetadataFollowsAlive(t *testing.T) {
	tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
	m := life("a", 1)
	m.Tags = map[string]string{"role": "web"}
	tab.Apply(Event{Kind: EvAlive, Member: m}, t0)
	m.Tags = map[string]string{"role": "db"}
	m.Addr = "a:2"
	if got := tab.Apply(Event{Kind: EvAlive, Member: m}, t0); len(got) != 0 {
		t.Fatalf("metadata update reported as a change: %s", statuses(got))
	}
	got, _ := tab.Member(m.ID)
	if got.Tags["role"] != "db" || got.Addr != "a:2" {
		t.Fatalf("member %+v", got)
	}
	m.Tags["role"] = "mutated"
	if got, _ := tab.Member(m.ID); got.Tags["role"] != "db" {
		t.Fatal("the table kept the caller's map")
	}
}

func TestPrune(t *testing.T) {
	tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
	tab.Apply(Event{Kind: EvAlive, Member: life("a", 1)}, t0)
	tab.Apply(Event{Kind: EvLeft, Member: life("a", 1)}, t0)
	tab.Prune(t0.Add(time.Hour))
	if _, ok := tab.Member(life("a", 1).ID); ok {
		t.Fatal("ended life not pruned")
	}
	if got := tab.Apply(Event{Kind: EvAlive, Member: life("a", 1)}, t0); len(got) != 0 {
		t.Fatalf("a pruned life that left came back: %s", statuses(got))
	}
}

// Random event sequences keep the status machine's invariants.
func TestInvariantsUnderRandomEvents(t *testing.T) {
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 11))
		tab := NewTable(proc.NodeID{Name: "self", Incarnation: 1})
		last := map[proc.NodeID]Status{}
		left := map[proc.NodeID]bool{}
		maxInc := map[string]uint64{}
		for step := range 200 {
			name := fmt.Sprint("n", r.IntN(3))
			inc := uint64(r.IntN(4))
			ev := Event{Kind: EventKind(r.IntN(5) + 1), Member: life(name, inc)}
			for _, c := range tab.Apply(ev, t0.Add(time.Duration(step)*time.Second)) {
				id, to := c.Member.ID, c.Member.Status
				if c.From != last[id] {
					t.Fatalf("seed %d step %d: %v reported from %v, last %v", seed, step, id, c.From, last[id])
				}
				if left[id] {
					t.Fatalf("seed %d step %d: %v changed to %v after it left", seed, step, id, to)
				}
				if !to.Ended() && id.Incarnation < maxInc[id.Name] {
					t.Fatalf("seed %d step %d: %v became %v after a later life was seen", seed, step, id, to)
				}
				if c.From == Dead && to != Alive && to != Left && to != Leaving {
					t.Fatalf("seed %d step %d: %v went from dead to %v", seed, step, id, to)
				}
				left[id] = to == Left
				last[id] = to
			}
			if ev.Kind != EvDead && ev.Kind != EvLeft || inc > maxInc[name] {
				maxInc[name] = max(maxInc[name], inc)
			}
			live := map[string]int{}
			for _, m := range tab.Members() {
				live[m.ID.Name]++
			}
			for n, c := range live {
				if c > 1 {
					t.Fatalf("seed %d step %d: %d lives of %s not ended", seed, step, c, n)
				}
			}
		}
	}
}
