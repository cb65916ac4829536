package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
	"github.com/herdkit/herd/httpapi"
)

// TestCLI runs the cluster commands against a two-node cluster's APIs.
func TestCLI(t *testing.T) {
	token := "cli-test-token-0123456789"
	c := herdtest.NewCluster(t, 2, herdtest.WithSetup(func(_ int, n *herd.Node) {
		if err := registerAgentKinds(n); err != nil {
			t.Fatal(err)
		}
	}))
	var urls []string
	for i := range 2 {
		srv, err := httpapi.New(httpapi.Config{Node: c.Node(i), Tokens: []httpapi.Token{{Secret: token, Envs: []string{"*"}, Write: true}}})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv)
		t.Cleanup(srv.Close)
		t.Cleanup(hs.Close)
		urls = append(urls, hs.URL)
	}
	cli := func(agent int, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		getenv := env(map[string]string{"HERD_AGENT": urls[agent], "HERD_TOKEN": token})
		code := runCLI(context.Background(), args[0], args[1:], getenv, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := cli(0, "registry", "put", "worker-1", "edge-7", "42", "-ttl", "1h")
	if code != 0 || !strings.Contains(out, "worker-1") || !strings.Contains(out, "external") {
		t.Fatalf("registry put: %d %q %q", code, out, errs)
	}
	herdtest.Eventually(t, func() bool {
		code, out, _ := cli(1, "registry", "get", "worker-1", "-json")
		var e httpapi.Entry
		return code == 0 && json.Unmarshal([]byte(out), &e) == nil && e.ProcessID == 42 && e.ExpiresAt != nil
	}, herdtest.DefaultTimeout, "the other agent reading the registration as JSON")
	code, _, errs = cli(1, "registry", "put", "worker-1", "edge-8", "43")
	if code != 1 || !strings.Contains(errs, "held by process 42") {
		t.Errorf("a taken name: %d %q", code, errs)
	}
	if code, out, _ := cli(1, "registry", "ls"); code != 0 || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "edge-7") {
		t.Errorf("registry ls: %d %q", code, out)
	}
	if code, out, _ := cli(0, "registry", "rm", "worker-1"); code != 0 || !strings.Contains(out, "worker-1") {
		t.Errorf("registry rm: %d %q", code, out)
	}
	if code, _, errs := cli(0, "registry", "get", "worker-1"); code != 1 || !strings.Contains(errs, "no process holds") {
		t.Errorf("registry get of a removed name: %d %q", code, errs)
	}
	if code, out, _ := cli(0, "nodes"); code != 0 || strings.Count(out, "alive") != 2 || !strings.Contains(out, " *") {
		t.Errorf("nodes: %d %q", code, out)
	}
	if code, out, errs := cli(0, "map", "put", "config", "greeting", "hello"); code != 0 || !strings.Contains(out, "hello") {
		t.Errorf("map put: %d %q %q", code, out, errs)
	}
	herdtest.Eventually(t, func() bool {
		code, out, _ := cli(1, "map", "get", "config", "greeting")
		return code == 0 && strings.Contains(out, "hello")
	}, herdtest.DefaultTimeout, "the other agent reading the map")
	if code, out, _ := cli(1, "map", "ls", "config", "-json"); code != 0 || !strings.Contains(out, `"text": "hello"`) {
		t.Errorf("map ls -json: %d %q", code, out)
	}
	if _, err := httpapi.NewClient(urls[0], token, nil).StartChild(context.Background(), httpapi.ChildStart{ID: "c1", Kind: "counter"}); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := cli(0, "children"); code != 0 || !strings.Contains(out, "c1") || !strings.Contains(out, "counter") {
		t.Errorf("children: %d %q", code, out)
	}
	for _, bad := range [][]string{{"registry"}, {"registry", "put", "x", "y", "notanumber"}, {"map", "get", "onlymap"}, {"nodes", "extra"}} {
		if code, _, errs := cli(0, bad...); code != 2 || !strings.Contains(errs, "Usage") {
			t.Errorf("%v: %d %q, want a usage error", bad, code, errs)
		}
	}
	var out2, errb bytes.Buffer
	if code := runCLI(context.Background(), "nodes", nil, env(map[string]string{"HERD_AGENT": urls[0], "HERD_TOKEN": "wrong-token-0123456789"}), &out2, &errb); code != 1 || !strings.Contains(errb.String(), "unknown token") {
		t.Errorf("a wrong token: %d %q", code, errb.String())
	}
}
