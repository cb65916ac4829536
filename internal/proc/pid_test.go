package proc_test

import (
	"encoding/json"
	"errors"
	"testing"

	. "github.com/herdkit/herd/internal/proc"
)

func TestPIDStringParseRoundTrip(t *testing.T) {
	pids := []PID{
		{Node: NodeID{Name: "n1", Incarnation: 1}, ID: 1},
		{Node: NodeID{Name: "host.example.com", Incarnation: 1_763_700_000_123_456_789}, ID: 42},
		{Node: NodeID{Name: "odd@name", Incarnation: 3}, ID: 4},
		{Node: NodeID{Name: "a-b_c", Incarnation: 0}, ID: 1<<64 - 1},
		{},
	}
	for _, p := range pids {
		s := p.String()
		q, err := ParsePID(s)
		if err != nil {
			t.Fatalf("ParsePID(%q): %v", s, err)
		}
		if q != p {
			t.Fatalf("round trip of %#v via %q gave %#v", p, s, q)
		}
	}
	if got := (PID{Node: NodeID{Name: "n1", Incarnation: 36}, ID: 7}).String(); got != "n1@10.7" {
		t.Fatalf("String = %q, want n1@10.7", got)
	}
	if got := (PID{}).String(); got != "nopid" {
		t.Fatalf("zero PID String = %q", got)
	}
}

func TestParsePIDRejectsMalformed(t *testing.T) {
	for _, s := range []string{"<>", "n1.1.2", "@1.2", "n1@1", "n1@1.", "n1.2@3", "n1@zz!.2", "n1@1.x", "n1@1.0", "n1@1.-3", "n1@.5"} {
		if _, err := ParsePID(s); !errors.Is(err, ErrBadPID) {
			t.Errorf("ParsePID(%q) error = %v, want ErrBadPID", s, err)
		}
	}
}

func TestPIDIsComparableMapKeyAndJSON(t *testing.T) {
	a := PID{Node: NodeID{Name: "n1", Incarnation: 5}, ID: 9}
	b := PID{Node: NodeID{Name: "n1", Incarnation: 5}, ID: 9}
	restarted := PID{Node: NodeID{Name: "n1", Incarnation: 6}, ID: 9}
	m := map[PID]int{a: 1}
	if m[b] != 1 {
		t.Fatal("equal PIDs are not the same map key")
	}
	if _, ok := m[restarted]; ok {
		t.Fatal("a PID of a later incarnation collides with an earlier one")
	}
	data, err := json.Marshal(map[string]PID{"p": a})
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"p":"n1@5.9"}` {
		t.Fatalf("JSON = %s", data)
	}
	var back map[string]PID
	if err := json.Unmarshal(data, &back); err != nil || back["p"] != a {
		t.Fatalf("JSON round trip: %v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"p":"nonsense"}`), &back); !errors.Is(err, ErrBadPID) {
		t.Fatalf("JSON with a bad pid: %v, want ErrBadPID", err)
	}
}

func TestTargets(t *testing.T) {
	var _ Target = PID{}
	var _ Target = Name("x")
	var _ Target = InEnv("e", "x")
	if s := InEnv("tenant", "game:1").String(); s != "tenant/game:1" {
		t.Fatalf("EnvName.String = %q", s)
	}
	if s := InEnv("", "game:1").String(); s != "game:1" {
		t.Fatalf("EnvName.String in default env = %q", s)
	}
}
