package unbounded

import (
	"testing"
	"time"
)

func TestOrderAndNoBlocking(t *testing.T) {
	q := New[int]()
	for i := range 10000 { // nobody reads yet: Push must not block
		q.Push(i)
	}
	for i := range 10000 {
		select {
		case v := <-q.Out():
			if v != i {
				t.Fatalf("got %d, want %d", v, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("nothing arrived")
		}
	}
	if q.Len() != 0 {
		t.Fatalf("Len %d after draining", q.Len())
	}
}

func TestCloseDropsAndClosesOut(t *testing.T) {
	q := New[string]()
	q.Push("a")
	q.Push("b")
	q.Close()
	q.Close()
	q.Push("after")
	for v := range q.Out() {
		if v != "a" && v != "b" {
			t.Fatalf("value after Close: %q", v)
		}
	}
	idle := New[int]()
	idle.Close()
	if _, ok := <-idle.Out(); ok {
		t.Fatal("Out of a closed idle queue is open")
	}
}
