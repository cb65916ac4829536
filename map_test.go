package herd_test

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"testing"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
)

func openMap(t testing.TB, n *herd.Node, name string, opts ...herd.MapOption) *herd.Map {
	t.Helper()
	m, err := n.Map(name, opts...)
	if err != nil {
		t.Fatalf("open map %q on %v: %v", name, n.ID(), err)
	}
	return m
}

// snapshot returns a map's contents on one node.
func snapshot(m *herd.Map) map[string]string {
	out := make(map[string]string)
	m.Range(func(k string, v []byte) bool { out[k] = string(v); return true })
	return out
}

// sameEverywhere reports whether the map reads alike on every running
// node, and holds want if want is not nil.
func sameEverywhere(t testing.TB, c *herdtest.Cluster, name string, want map[string]string) bool {
	var first map[string]string
	for _, i := range c.Up() {
		got := snapshot(openMap(t, c.Node(i), name))
		if first == nil {
			first = got
		} else if !maps.Equal(first, got) {
			return false
		}
	}
	return want == nil || maps.Equal(first, want)
}

func startNode(t testing.TB) *herd.Node {
	t.Helper()
	n, err := herd.Start(context.Background(), herd.Config{Name: "alone"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Stop(context.Background()) })
	setup(0, n)
	return n
}

func TestMapAlone(t *testing.T) {
	n := startNode(t)
	m := openMap(t, n, "m")
	w := m.Watch()
	defer w.Close()
	if err := m.Put("a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Get("a"); !ok || string(v) != "1" {
		t.Fatalf("get straight after put: %q %v", v, ok)
	}
	if ev := <-w.C(); ev.Key != "a" || string(ev.Value) != "1" || ev.Deleted {
		t.Fatalf("watch: %+v", ev)
	}
	pid, err := n.Spawn(context.Background(), "counter", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.PutOwned("owned", []byte("x"), pid); err != nil {
		t.Fatal(err)
	}
	<-w.C()
	if _, ok := m.Get("owned"); !ok {
		t.Fatal("owned entry missing")
	}
	if err := n.Exit(pid, herd.Kill); err != nil {
		t.Fatal(err)
	}
	if ev := <-w.C(); ev.Key != "owned" || !ev.Deleted {
		t.Fatalf("watch after owner exit: %+v", ev)
	}
	if _, ok := m.Get("owned"); ok {
		t.Fatal("owned entry outlived its process")
	}
	if err := m.PutOwned("late", []byte("x"), pid); err == nil {
		t.Fatal("PutOwned with a dead owner succeeded")
	}
	if ok, err := m.Delete("a"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if m.Len() != 0 {
		t.Fatalf("map not empty: %v", snapshot(m))
	}
}

func TestMapReplicatesToEveryNode(t *testing.T) {
	c := newCluster(t, 3)
	for i := range 3 {
		m := openMap(t, c.Node(i), "m")
		for k := range 50 {
			if err := m.Put(fmt.Sprintf("n%d-%d", i, k), []byte(fmt.Sprint(k))); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := make(map[string]string)
	for i := range 3 {
		for k := range 50 {
			want[fmt.Sprintf("n%d-%d", i, k)] = fmt.Sprint(k)
		}
	}
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "m", want) }, "every write on every node")

	m0 := openMap(t, c.Node(0), "m")
	for k := range 50 {
		if _, err := m0.Delete(fmt.Sprintf("n1-%d", k)); err != nil {
			t.Fatal(err)
		}
		delete(want, fmt.Sprintf("n1-%d", k))
	}
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "m", want) }, "deletes on every node")
}

func TestMapPartitionAndHeal(t *testing.T) {
	c := newCluster(t, 3)
	ms := []*herd.Map{openMap(t, c.Node(0), "m"), openMap(t, c.Node(1), "m"), openMap(t, c.Node(2), "m")}
	if err := ms[0].Put("shared", []byte("before")); err != nil {
		t.Fatal(err)
	}
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "m", map[string]string{"shared": "before"}) }, "first write everywhere")

	c.Partition([]int{0}, []int{1, 2})
	c.Eventually(t, func() bool { return !c.Sees(0, 1) && !c.Sees(1, 0) }, "the split seen")
	// Both sides write, the shared key too: once the sides meet, every node
	// must read the same one of the two.
	for k := range 20 {
		ms[0].Put(fmt.Sprintf("a%d", k), []byte("A"))
		ms[1].Put(fmt.Sprintf("b%d", k), []byte("B"))
	}
	ms[1].Put("shared", []byte("majority"))
	c.Eventually(t, func() bool {
		_, ok := ms[2].Get("b19")
		return ok
	}, "the majority's writes within the majority")
	if ok, _ := ms[2].Delete("b0"); !ok {
		t.Fatal("b0 absent where b19 arrived")
	}
	if v, _ := ms[0].Get("shared"); string(v) != "before" {
		t.Fatalf("the minority saw a write across the split: %q", v)
	}
	ms[0].Put("shared", []byte("minority"))

	c.Heal()
	c.WaitConverged()
	want := map[string]string{}
	for k := range 20 {
		want[fmt.Sprintf("a%d", k)] = "A"
		if k != 0 {
			want[fmt.Sprintf("b%d", k)] = "B"
		}
	}
	c.Eventually(t, func() bool {
		v, _ := ms[1].Get("shared")
		want["shared"] = string(v)
		return (string(v) == "minority" || string(v) == "majority") && sameEverywhere(t, c, "m", want)
	}, "both sides' writes everywhere after the heal")
	// Both concurrent writes are kept; every node reads the later one.
	vs := ms[1].Versions("shared")
	if len(vs) != 2 || vs[0].Time.After(vs[1].Time) {
		t.Fatalf("shared after the heal: %+v; want both concurrent versions, oldest first", vs)
	}
	if v, _ := ms[0].Get("shared"); string(v) != string(vs[1].Value) {
		t.Fatalf("shared reads %q; want the later write %q", v, vs[1].Value)
	}
}

func TestMapConcurrentWritesResolveAlike(t *testing.T) {
	c := newCluster(t, 3)
	c.Partition([]int{0}, []int{1}, []int{2})
	c.Eventually(t, func() bool { return !c.Sees(0, 1) && !c.Sees(1, 2) && !c.Sees(0, 2) }, "three islands")
	for i := range 3 {
		m := openMap(t, c.Node(i), "m", herd.MapResolver(func(_ string, vs []herd.MapVersion) []byte {
			var sum []byte
			for _, v := range vs {
				sum = append(sum, v.Value...)
			}
			return sum // every version, oldest first
		}))
		if err := m.Put("k", []byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	c.Heal()
	c.WaitConverged()
	c.Eventually(t, func() bool {
		if !sameEverywhere(t, c, "m", nil) {
			return false
		}
		v, _ := openMap(t, c.Node(0), "m").Get("k")
		return len(v) == 3
	}, "the three concurrent writes merged alike everywhere")
}

func TestMapOwnedEntriesFollowTheirNode(t *testing.T) {
	c := newCluster(t, 3)
	owner := c.Node(2)
	pid, err := owner.Spawn(context.Background(), "counter", nil)
	if err != nil {
		t.Fatal(err)
	}
	m2 := openMap(t, owner, "m")
	m2.PutOwned("owned", []byte("o"), pid)
	m2.Put("plain", []byte("p"))
	c.Eventually(t, func() bool {
		return sameEverywhere(t, c, "m", map[string]string{"owned": "o", "plain": "p"})
	}, "both entries everywhere")

	c.Kill(2)
	c.Eventually(t, func() bool {
		return sameEverywhere(t, c, "m", map[string]string{"plain": "p"})
	}, "the killed node's owned entry gone, the plain one kept")

	c.Restart(2)
	c.WaitConverged()
	c.Eventually(t, func() bool {
		return sameEverywhere(t, c, "m", map[string]string{"plain": "p"})
	}, "the new life caught up, without its old life's entry")
}

func TestMapOwnedEntriesComeBackAfterPartition(t *testing.T) {
	c := newCluster(t, 3)
	pid, err := c.Node(2).Spawn(context.Background(), "counter", nil)
	if err != nil {
		t.Fatal(err)
	}
	openMap(t, c.Node(2), "m").PutOwned("owned", []byte("o"), pid)
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "m", map[string]string{"owned": "o"}) }, "owned entry everywhere")
	c.Partition([]int{0, 1}, []int{2})
	m0 := openMap(t, c.Node(0), "m")
	c.Eventually(t, func() bool { _, ok := m0.Get("owned"); return !ok }, "entry hidden while its node is cut off")
	c.Heal()
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "m", map[string]string{"owned": "o"}) }, "entry back after the heal")
}

func TestMapNewNodeCatchesUp(t *testing.T) {
	c := newCluster(t, 2)
	m := openMap(t, c.Node(0), "m")
	want := make(map[string]string)
	// More keys than a map's delta log holds, and more bytes than one
	// chunk: the new node gets the whole state, in chunks.
	value := make([]byte, 100)
	for k := range 12000 {
		key := fmt.Sprintf("key-%05d", k)
		if err := m.Put(key, value); err != nil {
			t.Fatal(err)
		}
		want[key] = string(value)
	}
	i := c.Add()
	c.WaitConverged()
	c.Eventually(t, func() bool {
		return maps.Equal(snapshot(openMap(t, c.Node(i), "m")), want)
	}, "the new node holds every key")
}

func TestMapDurableAcrossFullClusterRestart(t *testing.T) {
	dir := t.TempDir()
	c := newCluster(t, 3, herdtest.WithConfig(func(i int, cfg *herd.Config) {
		cfg.DataDir = filepath.Join(dir, fmt.Sprint(i))
	}))
	want := make(map[string]string)
	for i := range 3 {
		m := openMap(t, c.Node(i), "durable", herd.MapDurable())
		for k := range 300 {
			key := fmt.Sprintf("n%d-%d", i, k)
			m.Put(key, []byte(key))
			want[key] = key
		}
	}
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "durable", want) }, "every write everywhere")
	for i := range 3 {
		c.Stop(i)
	}
	for i := range 3 {
		c.Restart(i)
	}
	c.WaitConverged()
	for i := range 3 {
		if got := snapshot(openMap(t, c.Node(i), "durable", herd.MapDurable())); !maps.Equal(got, want) {
			t.Fatalf("node %d after the restart holds %d keys, want %d", i, len(got), len(want))
		}
	}
	// And the cluster goes on writing.
	openMap(t, c.Node(1), "durable").Put("after", []byte("x"))
	want["after"] = "x"
	c.Eventually(t, func() bool { return sameEverywhere(t, c, "durable", want) }, "a write after the restart everywhere")
}
