package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herdkit/herd/herdtest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestAgentConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(file, []byte(`{"name": "from-file", "bind": "127.0.0.1:7001", "data_dir": "/var/herd", "join": ["a:1"], "profile": "local"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parseAgent([]string{"-config", file, "-name", "from-flag", "-token", "aaaaaaaaaaaaaaaa:x,y:read"},
		env(map[string]string{"HERD_NAME": "from-env", "HERD_BIND": "127.0.0.1:7002", "HERD_TOKENS": "bbbbbbbbbbbbbbbb:*:write;cccccccccccccccc:z:read", "HERD_INSECURE": "true"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case c.Name != "from-flag":
		t.Errorf("name %q: the flag wins", c.Name)
	case c.Bind != "127.0.0.1:7002":
		t.Errorf("bind %q: the environment wins over the file", c.Bind)
	case c.DataDir != "/var/herd" || c.Profile != "local" || len(c.Join) != 1:
		t.Errorf("file settings lost: %+v", c)
	case len(c.Tokens) != 1 || !strings.HasPrefix(c.Tokens[0], "aaaa"):
		t.Errorf("tokens %v: the flag's replace the environment's", c.Tokens)
	case !c.Insecure:
		t.Error("HERD_INSECURE ignored")
	case c.HTTP != "127.0.0.1:7070":
		t.Errorf("default http %q", c.HTTP)
	}
	c, err = parseAgent(nil, env(map[string]string{"HERD_TOKENS": "bbbbbbbbbbbbbbbb:*:write;cccccccccccccccc:z:read", "HERD_JOIN": "a:1, b:2", "HERD_BIND": "127.0.0.1:0"}), &bytes.Buffer{})
	if err != nil || len(c.Tokens) != 2 || len(c.Join) != 2 {
		t.Fatalf("from the environment: %+v, %v", c, err)
	}
	if _, _, err := c.build(nil); err != nil {
		t.Fatalf("build: %v", err)
	}
}

func TestAgentConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unknown := write("unknown.json", `{"nmae": "x"}`)
	badKey := write("key", "not base64!")
	shortKey := write("short", "AAAA")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-config", unknown}, `unknown field "nmae"`},
		{[]string{"-config", filepath.Join(dir, "missing.json")}, "config file"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-insecure=maybe"}, "invalid boolean"},
		{[]string{"-token", "short:*:read"}, "at least 16 characters"},
		{[]string{"-token", "aaaaaaaaaaaaaaaa:*"}, "SECRET:ENV"},
		{[]string{"-token", "aaaaaaaaaaaaaaaa:*:admin"}, "read or write"},
		{[]string{"-http", "0.0.0.0:7070"}, "not loopback"},
		{[]string{"-http", "nonsense"}, "http address"},
		{[]string{"-tls-ca", "ca.pem"}, "all three"},
		{[]string{"-tls-ca", "a", "-tls-cert", "b", "-tls-key", "c"}, "TLS"},
		{[]string{"-gossip-key-file", badKey}, "not base64"},
		{[]string{"-gossip-key-file", shortKey}, "want 16, 24 or 32"},
		{[]string{"-profile", "wan"}, "lan or local"},
		{[]string{"-join", "127.0.0.1:1"}, "without -bind"},
		{[]string{"-log-level", "loud"}, "log level"},
	} {
		c, err := parseAgent(tc.args, env(nil), &bytes.Buffer{})
		if err == nil {
			_, _, err = c.build(nil)
		}
		if err == nil && tc.want == "log level" {
			_, err = agentLogger(c.LogLevel, &bytes.Buffer{})
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
	// Open on another address only when told.
	c, _ := parseAgent([]string{"-http", "0.0.0.0:7070", "-insecure"}, env(nil), &bytes.Buffer{})
	if _, _, err := c.build(nil); err != nil {
		t.Errorf("-insecure: %v", err)
	}
	c, _ = parseAgent([]string{"-http", "0.0.0.0:7070", "-token", "aaaaaaaaaaaaaaaa:*:read"}, env(nil), &bytes.Buffer{})
	if _, _, err := c.build(nil); err != nil {
		t.Errorf("tokens off loopback: %v", err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAgentServesAndStops runs an agent alone: its API answers and starts a
// child of its built-in kind, and it stops cleanly when its context ends.
func TestAgentServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	token := "agent-test-token-0123456789"
	c, err := parseAgent([]string{"-name", "solo", "-http", "127.0.0.1:0", "-token", token + ":*:write", "-log-level", "warn"}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	out, logs := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- runAgent(ctx, c, out, logs) }()
	addr := regexp.MustCompile(`api (http://[0-9.:]+)`)
	var base string
	herdtest.Eventually(t, func() bool {
		m := addr.FindStringSubmatch(out.String())
		if m != nil {
			base = m[1]
		}
		return m != nil
	}, herdtest.DefaultTimeout, "the agent printing its address")
	do := func(method, path, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if st, m := do("GET", "/healthz", ""); st != http.StatusOK || !strings.HasPrefix(m["node"].(string), "solo@") {
		t.Fatalf("healthz: %d %v", st, m)
	}
	if st, m := do("POST", "/api/children", `{"id": "c1", "kind": "counter", "name": "c1"}`); st != http.StatusCreated || m["pid"] == nil {
		t.Fatalf("start a counter: %d %v", st, m)
	}
	if st, m := do("POST", "/api/children", `{"id": "c2", "kind": "session"}`); st != http.StatusBadRequest || m["code"] != "unknown_kind" {
		t.Fatalf("an unknown kind: %d %v", st, m)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent: %v; logs:\n%s", err, logs.String())
		}
	case <-time.After(herdtest.DefaultTimeout):
		t.Fatal("the agent did not stop")
	}
	if !strings.Contains(out.String(), "stopped") {
		t.Errorf("output: %s", out.String())
	}
}
