package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/herdkit/herd/herdtest"
)

// agentEnv makes the test binary run as `herd` (see TestMain).
const agentEnv = "HERD_TEST_RUN_COMMAND"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

const processToken = "process-test-token-0123456789"

// osAgent is `herd agent` running as its own process.
type osAgent struct {
	*herdtest.Process
	api, gossip string
}

var agentLine = regexp.MustCompile(`^(\S+): api (http://\S+), node \S+, gossip (\S+)$`)

func startOSAgent(t *testing.T, name, dir string, join []string) *osAgent {
	t.Helper()
	args := []string{"agent", "-name", name, "-bind", "127.0.0.1:0", "-http", "127.0.0.1:0", "-profile", "local",
		"-data-dir", dir, "-token", processToken + ":*:write", "-log-level", "warn"}
	if len(join) > 0 {
		args = append(args, "-join", strings.Join(join, ","))
	}
	p := herdtest.StartProcess(t, name, herdtest.ReexecCommand(agentEnv+"=1", args...))
	line := p.WaitLine(t, "herd agent ", herdtest.DefaultTimeout)
	m := agentLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("%s printed %q", name, line)
	}
	return &osAgent{Process: p, api: m[2], gossip: m[3]}
}

func (a *osAgent) get(t *testing.T, path string, out any) int {
	t.Helper()
	return a.do(t, "GET", path, "", out)
}

func (a *osAgent) do(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, a.api+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+processToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0 // the agent may be stopping
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil {
		_ = json.Unmarshal(raw, out)
	}
	return resp.StatusCode
}

type apiChild struct {
	ID, Name, Node, PID string
}

type apiEntry struct {
	PID       string `json:"pid"`
	NodeID    string `json:"node_id"`
	ProcessID uint64 `json:"process_id"`
}

// TestAgentProcesses runs three agents as OS processes and checks, through
// the HTTP API, that nothing registered or started is lost: before and
// after kill -9 of one (started again afterwards), and through a rolling
// SIGTERM of all three.
func TestAgentProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three agent processes; skipped in -short")
	}
	root := t.TempDir()
	agents := make([]*osAgent, 3)
	start := func(i int) {
		var join []string
		for _, a := range agents {
			if a != nil {
				join = append(join, a.gossip)
			}
		}
		name := fmt.Sprintf("agent-%d", i+1)
		agents[i] = startOSAgent(t, name, filepath.Join(root, name), join)
	}
	for i := range agents {
		start(i)
	}
	// seen: every running agent lists the running agents as alive.
	seen := func() bool {
		for _, a := range agents {
			if a == nil {
				continue
			}
			var nodes []struct{ Name, Status string }
			if a.get(t, "/api/nodes", &nodes) != http.StatusOK {
				return false
			}
			alive := 0
			for _, n := range nodes {
				if n.Status == "alive" {
					alive++
				}
			}
			up := 0
			for _, b := range agents {
				if b != nil {
					up++
				}
			}
			if alive != up {
				return false
			}
		}
		return true
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		herdtest.Eventually(t, cond, time.Minute, what)
	}
	wait("three agents seeing each other", seen)

	const children = 24
	for k := range children {
		body := fmt.Sprintf(`{"id": "c%02d", "kind": "counter", "name": "c%02d"}`, k, k)
		if st := agents[k%3].do(t, "POST", "/api/children", body, nil); st != http.StatusCreated {
			t.Fatalf("start c%02d: %d", k, st)
		}
	}
	if st := agents[0].do(t, "POST", "/api/registry", `{"name": "edge", "node_id": "edge-host", "process_id": 77}`, nil); st != http.StatusCreated {
		t.Fatalf("external registration: %d", st)
	}
	// intact: asked through agent a, every child runs once, on a node
	// that is up and not gone, and its name resolves to it; the external
	// registration is there.
	intact := func(a *osAgent, gone string) func() bool {
		return func() bool {
			var cs []apiChild
			if a.get(t, "/api/children", &cs) != http.StatusOK || len(cs) != children {
				return false
			}
			for _, c := range cs {
				if c.PID == "" || (gone != "" && strings.HasPrefix(c.Node, gone+"@")) {
					return false
				}
				var e apiEntry
				if a.get(t, "/api/registry/"+c.Name, &e) != http.StatusOK || e.PID != c.PID {
					return false
				}
			}
			var e apiEntry
			return a.get(t, "/api/registry/edge", &e) == http.StatusOK && e.ProcessID == 77
		}
	}
	for _, a := range agents {
		wait("children and names on "+a.Name, intact(a, ""))
	}

	// kill -9 one agent: its children run elsewhere, their names follow.
	if err := agents[1].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = agents[1].Wait(t, time.Minute)
	killed := agents[1].Name
	agents[1] = nil
	wait("children moved off the killed agent", intact(agents[0], killed))
	wait("the same, asked through agent-3", intact(agents[2], killed))
	start(1)
	wait("the restarted agent seen", seen)

	// A rolling SIGTERM: each agent hands its children over and exits 0.
	for i := range agents {
		a := agents[i]
		if err := a.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := a.Wait(t, time.Minute); err != nil {
			t.Fatalf("%s after SIGTERM: %v", a.Name, err)
		}
		agents[i] = nil
		other := agents[(i+1)%3]
		wait("children moved off "+a.Name, intact(other, a.Name))
		start(i)
		wait(a.Name+" back", seen)
	}
	for _, a := range agents {
		wait("everything intact on "+a.Name+" at the end", intact(a, ""))
	}
}
