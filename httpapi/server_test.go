package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/herdtest"
	"github.com/herdkit/herd/httpapi"
)

const (
	adminToken  = "admin-token-0123456789"
	readToken   = "read-token-0123456789"
	tenantToken = "tenant-a-token-0123456789"
)

var tokens = []httpapi.Token{
	{Secret: adminToken, Envs: []string{"*"}, Write: true},
	{Secret: readToken, Envs: []string{"*"}},
	{Secret: tenantToken, Envs: []string{"tenant-a"}, Write: true},
}

// clock is a settable clock shared by a test's servers.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

type idle struct{ herd.Base }

// apiCluster is a herdtest cluster with an API server on every node.
type apiCluster struct {
	*herdtest.Cluster
	t     *testing.T
	urls  []string
	clock *clock
}

func newAPICluster(t *testing.T, n int, envs ...string) *apiCluster {
	t.Helper()
	ac := &apiCluster{t: t, clock: &clock{}}
	ac.Cluster = herdtest.NewCluster(t, n, herdtest.WithSetup(func(i int, node *herd.Node) {
		if err := herd.RegisterKind(node, "idle", func() herd.Process { return &idle{} }); err != nil {
			t.Fatal(err)
		}
	}))
	for i := range n {
		srv, err := httpapi.New(httpapi.Config{Node: ac.Node(i), Tokens: tokens, Environments: envs, MaxBody: 4096, Now: ac.clock.now})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv)
		t.Cleanup(srv.Close)
		t.Cleanup(hs.Close)
		ac.urls = append(ac.urls, hs.URL)
	}
	return ac
}

// call makes a request to node i's API and decodes the JSON answer.
func (ac *apiCluster) call(i int, token, method, path string, body any) (int, map[string]any, []any) {
	ac.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			ac.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, ac.urls[i]+path, rd)
	if err != nil {
		ac.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ac.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		ac.t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		ac.t.Fatalf("%s %s: content type %q: %s", method, path, ct, raw)
	}
	var obj map[string]any
	var arr []any
	if err := json.Unmarshal(raw, &obj); err != nil {
		if err := json.Unmarshal(raw, &arr); err != nil {
			ac.t.Fatalf("%s %s: not JSON: %s", method, path, raw)
		}
	}
	return resp.StatusCode, obj, arr
}

// wantError checks an error answer: its status and code, and a message.
func wantError(t *testing.T, what string, status int, body map[string]any, wantStatus int, wantCode string) {
	t.Helper()
	if status != wantStatus || body["code"] != wantCode || body["message"] == "" || body["message"] == nil {
		t.Errorf("%s: %d %v, want %d with code %q and a message", what, status, body, wantStatus, wantCode)
	}
}

func (ac *apiCluster) eventually(cond func() bool, what string) {
	ac.t.Helper()
	herdtest.Eventually(ac.t, cond, herdtest.DefaultTimeout, what)
}

func TestExternalRegistrationAcrossNodes(t *testing.T) {
	ac := newAPICluster(t, 3)
	reg := map[string]any{"name": "worker-1", "node_id": "edge-7", "process_id": 42}
	st, body, _ := ac.call(0, adminToken, "POST", "/api/registry", reg)
	if st != http.StatusCreated || body["node_id"] != "edge-7" || body["process_id"] != float64(42) || body["external"] != true {
		t.Fatalf("register: %d %v", st, body)
	}
	for i := range 3 {
		ac.eventually(func() bool {
			st, body, _ := ac.call(i, readToken, "GET", "/api/registry/worker-1", nil)
			return st == http.StatusOK && body["process_id"] == float64(42)
		}, fmt.Sprintf("node %d reading the registration", i))
	}
	// Taken: 409 with the holder; overwrite replaces it.
	reg["process_id"] = 43
	st, body, _ = ac.call(1, adminToken, "POST", "/api/registry", reg)
	wantError(t, "registering a taken name", st, body, http.StatusConflict, "taken")
	if h, _ := body["holder"].(map[string]any); h["process_id"] != float64(42) {
		t.Errorf("conflict names holder %v, want process 42", body["holder"])
	}
	reg["overwrite"] = true
	if st, body, _ = ac.call(1, adminToken, "POST", "/api/registry", reg); st != http.StatusCreated {
		t.Fatalf("overwrite: %d %v", st, body)
	}
	ac.eventually(func() bool {
		_, body, _ := ac.call(2, readToken, "GET", "/api/registry/worker-1", nil)
		return body["process_id"] == float64(43)
	}, "the overwrite everywhere")
	// Delete returns the previous entry; then the name is free.
	st, body, _ = ac.call(2, adminToken, "DELETE", "/api/registry/worker-1", nil)
	if st != http.StatusOK || body["process_id"] != float64(43) {
		t.Fatalf("delete: %d %v", st, body)
	}
	st, body, _ = ac.call(2, readToken, "GET", "/api/registry/worker-1", nil)
	wantError(t, "reading a deleted name", st, body, http.StatusNotFound, "not_found")
	st, body, _ = ac.call(2, adminToken, "DELETE", "/api/registry/worker-1", nil)
	wantError(t, "deleting it again", st, body, http.StatusNotFound, "not_found")
}

func TestExternalRegistrationTTL(t *testing.T) {
	ac := newAPICluster(t, 1)
	reg := map[string]any{"name": "lease", "node_id": "edge-1", "process_id": 1, "ttl_seconds": 30}
	if st, body, _ := ac.call(0, adminToken, "POST", "/api/registry", reg); st != http.StatusCreated || body["expires_at"] == nil {
		t.Fatalf("register with a TTL: %d %v", st, body)
	}
	ac.clock.advance(29 * time.Second)
	if st, _, _ := ac.call(0, readToken, "GET", "/api/registry/lease", nil); st != http.StatusOK {
		t.Fatalf("before its TTL: %d", st)
	}
	ac.clock.advance(2 * time.Second)
	st, body, _ := ac.call(0, readToken, "GET", "/api/registry/lease", nil)
	wantError(t, "after its TTL", st, body, http.StatusNotFound, "not_found")
	if _, _, list := ac.call(0, readToken, "GET", "/api/registry", nil); len(list) != 0 {
		t.Errorf("an expired entry is listed: %v", list)
	}
	reg["process_id"] = 2
	if st, body, _ := ac.call(0, adminToken, "POST", "/api/registry", reg); st != http.StatusCreated {
		t.Fatalf("taking an expired name: %d %v", st, body)
	}
}

// An external registration is no node's: it outlives the agent that
// accepted it, and concurrent ones on two sides of a partition resolve
// to the earliest everywhere after the heal.
func TestExternalRegistrationNodeLossAndPartition(t *testing.T) {
	ac := newAPICluster(t, 3)
	if st, body, _ := ac.call(2, adminToken, "POST", "/api/registry", map[string]any{"name": "kept", "node_id": "edge", "process_id": 5}); st != http.StatusCreated {
		t.Fatalf("register: %d %v", st, body)
	}
	ac.eventually(func() bool {
		st, _, _ := ac.call(0, readToken, "GET", "/api/registry/kept", nil)
		return st == http.StatusOK
	}, "node 0 reading it")
	gone := ac.Node(2).ID()
	ac.Kill(2)
	ac.eventually(func() bool {
		m, ok := ac.Node(0).Member(gone)
		return !ok || m.Status == herd.MemberDead
	}, "node 0 seeing node 2 dead")
	if st, body, _ := ac.call(0, readToken, "GET", "/api/registry/kept", nil); st != http.StatusOK || body["process_id"] != float64(5) {
		t.Fatalf("after the accepting node was killed: %d %v", st, body)
	}

	ac.Partition([]int{0}, []int{1})
	if st, body, _ := ac.call(0, adminToken, "POST", "/api/registry", map[string]any{"name": "split", "node_id": "first", "process_id": 1}); st != http.StatusCreated {
		t.Fatalf("register on side 0: %d %v", st, body)
	}
	ac.clock.advance(time.Second) // the second registration is later
	if st, body, _ := ac.call(1, adminToken, "POST", "/api/registry", map[string]any{"name": "split", "node_id": "second", "process_id": 2}); st != http.StatusCreated {
		t.Fatalf("register on side 1: %d %v", st, body)
	}
	ac.Heal()
	for i := range 2 {
		ac.eventually(func() bool {
			_, body, _ := ac.call(i, readToken, "GET", "/api/registry/split", nil)
			return body["node_id"] == "first"
		}, fmt.Sprintf("node %d holding the earliest registration", i))
	}
}

func TestHerdProcessNames(t *testing.T) {
	ac := newAPICluster(t, 2)
	ctx := context.Background()
	pid, err := ac.Node(1).Spawn(ctx, "idle", nil, herd.WithKey(herd.Key{Env: "tenant-a", Name: "svc"}, herd.Meta{Labels: map[string]string{"role": "api"}}))
	if err != nil {
		t.Fatal(err)
	}
	ac.eventually(func() bool {
		st, body, _ := ac.call(0, tenantToken, "GET", "/api/registry/svc", nil)
		return st == http.StatusOK && body["pid"] == pid.String()
	}, "node 0 finding the herd process by name")
	_, body, _ := ac.call(0, tenantToken, "GET", "/api/registry/svc", nil)
	if body["node_id"] != pid.Node.String() || body["process_id"] != float64(pid.ID) || body["external"] != false {
		t.Errorf("entry %v, want node %v process %d", body, pid.Node, pid.ID)
	}
	// Names stay in their environment.
	st, body, _ := ac.call(0, adminToken, "GET", "/api/registry/svc", nil)
	wantError(t, "the name in the default environment", st, body, http.StatusNotFound, "not_found")
	st, body, _ = ac.call(0, tenantToken, "GET", "/api/registry/svc?env=tenant-b", nil)
	wantError(t, "a tenant token reading another environment", st, body, http.StatusForbidden, "forbidden")
	if _, _, list := ac.call(0, adminToken, "GET", "/api/registry?env=tenant-b", nil); len(list) != 0 {
		t.Errorf("tenant-b lists %v", list)
	}
	if _, _, list := ac.call(0, tenantToken, "GET", "/api/registry", nil); len(list) != 1 {
		t.Errorf("tenant-a lists %v, want svc", list)
	}
	if _, _, list := ac.call(0, adminToken, "GET", "/api/nodes/"+ac.Node(1).ID().Name+"/names?env=tenant-a", nil); len(list) != 1 {
		t.Errorf("node 1's names: %v, want svc", list)
	}
	// A herd process's name is not taken or deleted over HTTP.
	st, body, _ = ac.call(0, tenantToken, "POST", "/api/registry", map[string]any{"name": "svc", "node_id": "x", "process_id": 1, "overwrite": true})
	wantError(t, "registering a herd process's name", st, body, http.StatusConflict, "taken")
	st, body, _ = ac.call(0, tenantToken, "DELETE", "/api/registry/svc", nil)
	wantError(t, "deleting a herd process's name", st, body, http.StatusConflict, "held_by_process")
}

func TestAccess(t *testing.T) {
	ac := newAPICluster(t, 1, "", "tenant-a")
	if st, _, _ := ac.call(0, "", "GET", "/healthz", nil); st != http.StatusOK {
		t.Errorf("healthz without a token: %d", st)
	}
	if st, _, _ := ac.call(0, "", "GET", "/readyz", nil); st != http.StatusOK {
		t.Errorf("readyz: %d", st)
	}
	st, body, _ := ac.call(0, "", "GET", "/api/nodes", nil)
	wantError(t, "no token", st, body, http.StatusUnauthorized, "unauthorized")
	st, body, _ = ac.call(0, "not-a-token-at-all-no", "GET", "/api/nodes", nil)
	wantError(t, "a wrong token", st, body, http.StatusUnauthorized, "unauthorized")
	reg := map[string]any{"name": "n", "node_id": "x", "process_id": 1}
	st, body, _ = ac.call(0, readToken, "POST", "/api/registry", reg)
	wantError(t, "a read token writing", st, body, http.StatusForbidden, "forbidden")
	st, body, _ = ac.call(0, adminToken, "GET", "/api/registry?env=nowhere", nil)
	wantError(t, "an unknown environment", st, body, http.StatusNotFound, "unknown_environment")
	st, body, _ = ac.call(0, tenantToken, "GET", "/api/maps/m", nil)
	wantError(t, "a tenant token reading a map", st, body, http.StatusForbidden, "forbidden")
	st, body, _ = ac.call(0, adminToken, "GET", "/api/nope", nil)
	wantError(t, "an unknown route", st, body, http.StatusNotFound, "not_found")
	if _, _, list := ac.call(0, adminToken, "GET", "/api/registry", nil); len(list) != 0 {
		t.Errorf("refused requests changed the registry: %v", list)
	}
	// The environment may come in the body of a registration.
	inA := map[string]any{"name": "n", "env": "tenant-a", "node_id": "x", "process_id": 1}
	st, body, _ = ac.call(0, tenantToken, "POST", "/api/registry?env=", inA)
	wantError(t, "environments differing in body and query", st, body, http.StatusBadRequest, "bad_request")
	inA["env"] = "nowhere"
	st, body, _ = ac.call(0, adminToken, "POST", "/api/registry", inA)
	wantError(t, "an unknown environment in the body", st, body, http.StatusNotFound, "unknown_environment")
	inA["env"] = ""
	st, body, _ = ac.call(0, tenantToken, "POST", "/api/registry?env=", inA)
	wantError(t, "a tenant token registering in the default environment", st, body, http.StatusForbidden, "forbidden")
	inA["env"] = "tenant-a"
	if st, body, _ := ac.call(0, tenantToken, "POST", "/api/registry", inA); st != http.StatusCreated || body["env"] != "tenant-a" {
		t.Errorf("registering with the body's environment: %d %v", st, body)
	}
	if _, err := httpapi.New(httpapi.Config{Node: ac.Node(0), Tokens: []httpapi.Token{{Secret: "short", Envs: []string{"*"}}}}); err == nil {
		t.Error("a short token was accepted")
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	ac := newAPICluster(t, 1)
	for _, tc := range []struct {
		what   string
		body   string
		status int
		code   string
	}{
		{"malformed JSON", `{"name": `, http.StatusBadRequest, "bad_request"},
		{"empty body", ``, http.StatusBadRequest, "bad_request"},
		{"an unknown field", `{"name":"a","node_id":"x","process_id":1,"color":"red"}`, http.StatusBadRequest, "bad_request"},
		{"data after the object", `{"name":"a","node_id":"x","process_id":1} {}`, http.StatusBadRequest, "bad_request"},
		{"a wrong type", `{"name":"a","node_id":"x","process_id":"one"}`, http.StatusBadRequest, "bad_request"},
		{"an oversized body", `{"name":"a","node_id":"` + strings.Repeat("x", 5000) + `","process_id":1}`, http.StatusRequestEntityTooLarge, "too_large"},
		{"an empty name", `{"name":"","node_id":"x","process_id":1}`, http.StatusBadRequest, "bad_request"},
		{"a name too long", `{"name":"` + strings.Repeat("n", 2000) + `","node_id":"x","process_id":1}`, http.StatusBadRequest, "bad_request"},
		{"no node_id", `{"name":"a","process_id":1}`, http.StatusBadRequest, "bad_request"},
		{"a control character in node_id", `{"name":"a","node_id":"x\u0001","process_id":1}`, http.StatusBadRequest, "bad_request"},
		{"a negative TTL", `{"name":"a","node_id":"x","process_id":1,"ttl_seconds":-1}`, http.StatusBadRequest, "bad_request"},
		{"a TTL over a year", `{"name":"a","node_id":"x","process_id":1,"ttl_seconds":40000000}`, http.StatusBadRequest, "bad_request"},
	} {
		st, body, _ := ac.call(0, adminToken, "POST", "/api/registry", tc.body)
		wantError(t, tc.what, st, body, tc.status, tc.code)
	}
	// A body that is not JSON.
	req, _ := http.NewRequest("POST", ac.urls[0]+"/api/registry", strings.NewReader("name=a"))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a form body: %d", resp.StatusCode)
	}
	for _, tc := range []struct{ what, method, path, body, code string }{
		{"a child of an unknown kind", "POST", "/api/children", `{"id":"c","kind":"nope"}`, "unknown_kind"},
		{"a child without an id", "POST", "/api/children", `{"kind":"idle"}`, "bad_request"},
		{"a bad restart type", "POST", "/api/children", `{"id":"c","kind":"idle","restart":"sometimes"}`, "bad_request"},
		{"a child with a bad name", "POST", "/api/children", `{"id":"c","kind":"idle","name":"` + strings.Repeat("n", 2000) + `"}`, "bad_request"},
		{"a map value and text", "PUT", "/api/maps/m/k", `{"value":"AQ==","text":"a"}`, "bad_request"},
		{"a map write without a value", "PUT", "/api/maps/m/k", `{}`, "bad_request"},
		{"a map value that is not base64", "PUT", "/api/maps/m/k", `{"value":"***"}`, "bad_request"},
		{"herd's own map", "GET", "/api/maps/herd.children", ``, "bad_request"},
		{"the agent's map", "PUT", "/api/maps/herdagent.registry/k", `{"text":"x"}`, "bad_request"},
	} {
		var body any
		if tc.body != "" {
			body = tc.body
		}
		st, got, _ := ac.call(0, adminToken, tc.method, tc.path, body)
		if st < 400 || got["code"] != tc.code {
			t.Errorf("%s: %d %v, want code %q", tc.what, st, got, tc.code)
		}
	}
	if _, _, list := ac.call(0, adminToken, "GET", "/api/registry", nil); len(list) != 0 {
		t.Errorf("bad input changed the registry: %v", list)
	}
	if _, _, list := ac.call(0, adminToken, "GET", "/api/children", nil); len(list) != 0 {
		t.Errorf("bad input started children: %v", list)
	}
	if _, _, list := ac.call(0, adminToken, "GET", "/api/maps/m", nil); len(list) != 0 {
		t.Errorf("bad input wrote to a map: %v", list)
	}
}

func TestChildrenAndNodes(t *testing.T) {
	ac := newAPICluster(t, 3)
	st, body, _ := ac.call(0, adminToken, "POST", "/api/children", map[string]any{"id": "job-1", "kind": "idle", "name": "job-1"})
	if st != http.StatusCreated || body["id"] != "job-1" || body["pid"] == nil {
		t.Fatalf("start a child: %d %v", st, body)
	}
	st, body, _ = ac.call(0, adminToken, "POST", "/api/children", map[string]any{"id": "job-1", "kind": "idle"})
	wantError(t, "starting it again", st, body, http.StatusConflict, "exists")
	var where string
	ac.eventually(func() bool {
		_, _, list := ac.call(2, readToken, "GET", "/api/children", nil)
		if len(list) != 1 {
			return false
		}
		c := list[0].(map[string]any)
		where, _ = c["node"].(string)
		return c["pid"] != nil && c["restart"] == "permanent"
	}, "node 2 listing the child")
	_, _, nodes := ac.call(1, readToken, "GET", "/api/nodes", nil)
	if len(nodes) != 3 {
		t.Fatalf("nodes: %v", nodes)
	}
	children := 0
	for _, n := range nodes {
		m := n.(map[string]any)
		if m["status"] != "alive" {
			t.Errorf("node %v not alive", m)
		}
		children += int(m["children"].(float64))
		if (m["self"] == true) != (m["processes"] != nil) {
			t.Errorf("processes counted for %v", m)
		}
	}
	if children != 1 {
		t.Errorf("nodes run %d children, want 1", children)
	}
	// The node running the child is killed: the nodes list shows it dead
	// and the child running elsewhere.
	victim := -1
	for i, n := range ac.Nodes() {
		if n.ID().String() == where {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("child on %s, which is no node", where)
	}
	ac.Kill(victim)
	other := (victim + 1) % 3
	ac.eventually(func() bool {
		_, _, nodes := ac.call(other, readToken, "GET", "/api/nodes", nil)
		dead := len(nodes) == 2 // an ended life may be dropped from the list
		for _, n := range nodes {
			m := n.(map[string]any)
			if m["id"] == where && m["status"] == "dead" {
				dead = true
			}
		}
		_, c, _ := ac.call(other, readToken, "GET", "/api/children/job-1", nil)
		return dead && c["node"] != where && c["pid"] != nil
	}, "the killed node shown dead and its child running elsewhere")
	st, body, _ = ac.call(other, adminToken, "DELETE", "/api/children/job-1", nil)
	if st != http.StatusOK || body["id"] != "job-1" {
		t.Fatalf("terminate: %d %v", st, body)
	}
	st, body, _ = ac.call(other, readToken, "GET", "/api/children/job-1", nil)
	wantError(t, "a terminated child", st, body, http.StatusNotFound, "not_found")
}

func TestMaps(t *testing.T) {
	ac := newAPICluster(t, 2)
	if st, body, _ := ac.call(0, adminToken, "PUT", "/api/maps/config/feature/x", map[string]any{"text": "on"}); st != http.StatusOK || body["text"] != "on" {
		t.Fatalf("put: %d %v", st, body)
	}
	if st, body, _ := ac.call(0, adminToken, "PUT", "/api/maps/config/raw", map[string]any{"value": []byte{0xff, 0}}); st != http.StatusOK || body["text"] != nil {
		t.Fatalf("put bytes: %d %v", st, body)
	}
	ac.eventually(func() bool {
		st, body, _ := ac.call(1, readToken, "GET", "/api/maps/config/feature/x", nil)
		return st == http.StatusOK && body["text"] == "on"
	}, "node 1 reading the key")
	if _, _, list := ac.call(1, readToken, "GET", "/api/maps/config?prefix=feature/", nil); len(list) != 1 {
		t.Errorf("prefix list: %v", list)
	}
	if st, body, _ := ac.call(1, adminToken, "DELETE", "/api/maps/config/feature/x", nil); st != http.StatusOK || body["text"] != "on" {
		t.Fatalf("delete: %d %v", st, body)
	}
	st, body, _ := ac.call(1, readToken, "GET", "/api/maps/config/feature/x", nil)
	wantError(t, "a deleted key", st, body, http.StatusNotFound, "not_found")
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	ac := newAPICluster(t, 1)
	srv, err := httpapi.New(httpapi.Config{Node: ac.Node(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	st, doc, _ := ac.call(0, "", "GET", "/api/openapi.json", nil)
	if st != http.StatusOK {
		t.Fatalf("openapi.json: %d", st)
	}
	documented := map[string]bool{}
	for path, ops := range doc["paths"].(map[string]any) {
		for method := range ops.(map[string]any) {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	served := map[string]bool{}
	for _, r := range srv.Routes() {
		served[strings.ReplaceAll(r, "...}", "}")] = true
	}
	for r := range served {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for r := range documented {
		if !served[r] {
			t.Errorf("openapi.json documents %s, which is not served", r)
		}
	}
}

func TestMetrics(t *testing.T) {
	ac := newAPICluster(t, 3)
	if st, _, _ := ac.call(0, adminToken, "POST", "/api/children", map[string]any{"id": "m1", "kind": "idle"}); st != http.StatusCreated {
		t.Fatalf("start: %d", st)
	}
	get := func(token string) (int, string) {
		req, _ := http.NewRequest("GET", ac.urls[0]+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := get(""); st != http.StatusUnauthorized {
		t.Errorf("metrics without a token: %d", st)
	}
	ac.eventually(func() bool {
		_, text := get(readToken)
		return strings.Contains(text, `herd_members{status="alive"} 3`) && strings.Contains(text, `herd_children{state="running"} 1`)
	}, "metrics showing three members and one child")
	_, text := get(readToken)
	for _, want := range []string{"herd_processes ", "herd_names ", `herd_transport_bytes_total{direction="sent"}`, "herd_supervisor_failovers_total 0", "herd_registry_conflicts_total 0", `herd_replication_deltas_total{direction="sent"}`} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// events reads server-sent events from a stream into a channel.
func (ac *apiCluster) events(i int, token, query string) <-chan httpapi.Event {
	ac.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ac.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", ac.urls[i]+"/api/events"+query, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ac.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		ac.t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan httpapi.Event, 1024)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		var name string
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var e httpapi.Event
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e); err != nil || e.Kind != name {
					return
				}
				out <- e
			}
		}
	}()
	return out
}

// waitEvent waits for an event that match accepts.
func waitEvent(t *testing.T, ch <-chan httpapi.Event, what string, match func(httpapi.Event) bool) {
	t.Helper()
	deadline := time.After(herdtest.DefaultTimeout)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatalf("the event stream ended before %s", what)
			}
			if match(e) {
				return
			}
		case <-deadline:
			t.Fatalf("no event: %s", what)
		}
	}
}

func TestEvents(t *testing.T) {
	ac := newAPICluster(t, 3)
	all := ac.events(0, adminToken, "?env=tenant-a")
	tenant := ac.events(0, tenantToken, "")
	for _, ch := range []<-chan httpapi.Event{all, tenant} {
		waitEvent(t, ch, "the members known", func(e httpapi.Event) bool { return e.Kind == "member" && e.Member.Name == ac.Node(2).ID().Name })
	}
	ctx := context.Background()
	pid, err := ac.Node(1).Spawn(ctx, "idle", nil, herd.WithKey(herd.Key{Env: "tenant-a", Name: "svc"}, herd.Meta{}))
	if err != nil {
		t.Fatal(err)
	}
	waitEvent(t, tenant, "the registration", func(e httpapi.Event) bool {
		return e.Kind == "registry" && e.Type == "registered" && e.Entry.Name == "svc" && e.Entry.PID == pid.String()
	})
	if _, err := ac.Node(1).Spawn(ctx, "idle", nil, herd.WithKey(herd.Key{Env: "tenant-b", Name: "other"}, herd.Meta{})); err != nil {
		t.Fatal(err)
	}
	st, _, _ := ac.call(0, adminToken, "POST", "/api/children", map[string]any{"id": "job", "kind": "idle", "name": "job", "env": "tenant-a"})
	if st != http.StatusCreated {
		t.Fatalf("start: %d", st)
	}
	var where string
	waitEvent(t, tenant, "the child", func(e httpapi.Event) bool {
		if e.Kind == "registry" && e.Entry.Env != "tenant-a" {
			t.Errorf("tenant-a's stream shows %+v", e.Entry)
		}
		if e.Kind == "child" && e.Child.ID == "job" && e.Child.PID != "" {
			where = e.Child.Node
			return true
		}
		return false
	})
	victim := -1
	for i, n := range ac.Nodes() {
		if n.ID().String() == where && i != 0 {
			victim = i
		}
	}
	if victim < 0 {
		victim = 2
	}
	gone := ac.Node(victim).ID().String()
	ac.Kill(victim)
	waitEvent(t, all, "the killed node dead", func(e httpapi.Event) bool {
		return e.Kind == "member" && e.Member.ID == gone && e.Type == "dead"
	})
	if where == gone {
		waitEvent(t, all, "the child moved", func(e httpapi.Event) bool {
			return e.Kind == "child" && e.Child.ID == "job" && e.Type == "moved" && e.Child.Node != gone
		})
	}
}
