package httpapi

import (
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/herdkit/herd"
)

func (s *Server) routesInit() {
	s.handle("GET /healthz", public, s.healthz)
	s.handle("GET /readyz", public, s.readyz)
	s.handle("GET /api/nodes", read, s.nodes)
	s.handle("GET /api/nodes/{node}/names", read, s.nodeNames)
	s.registryRoutes()
	s.handle("GET /api/children", read, s.children)
	s.handle("GET /api/children/{id...}", read, s.child)
	s.handle("POST /api/children", readWrite, s.startChild)
	s.handle("DELETE /api/children/{id...}", readWrite, s.terminateChild)
	s.handle("GET /api/maps/{map}", read, s.mapList)
	s.handle("GET /api/maps/{map}/{key...}", read, s.mapGet)
	s.handle("PUT /api/maps/{map}/{key...}", readWrite, s.mapPut)
	s.handle("DELETE /api/maps/{map}/{key...}", readWrite, s.mapDelete)
	s.raw("GET /api/events", s.events)
	s.raw("GET /metrics", s.metricsHandler().ServeHTTP)
	s.raw("GET /api/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	// Anything else is a JSON 404, not the mux's plain text.
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, errorf(http.StatusNotFound, "not_found", "no route %s %s", r.Method, r.URL.Path))
	})
}

// openAPI describes every route; a test checks it against the routes.
//
//go:embed openapi.json
var openAPI []byte

// raw adds a route whose handler writes its own answer.
func (s *Server) raw(pattern string, h http.HandlerFunc) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, h)
}

func (s *Server) healthz(*http.Request, access) (int, any, error) {
	return http.StatusOK, map[string]string{"status": "ok", "node": s.n.ID().String()}, nil
}

// readyz: the node is a member of its cluster (it sees itself alive).
func (s *Server) readyz(*http.Request, access) (int, any, error) {
	if m, ok := s.n.Member(s.n.ID()); !ok || m.Status != herd.MemberAlive {
		return 0, nil, errorf(http.StatusServiceUnavailable, "unavailable", "node %v is not an alive member", s.n.ID())
	}
	return http.StatusOK, map[string]string{"status": "ready", "node": s.n.ID().String()}, nil
}

// Node is a member of the cluster, as this node sees it.
type Node struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Incarnation uint64            `json:"incarnation"`
	Status      string            `json:"status"`
	Addr        string            `json:"addr,omitempty"`
	GossipAddr  string            `json:"gossip_addr,omitempty"`
	Version     string            `json:"version,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	// Self: the node answering.
	Self bool `json:"self"`
	// Processes counts the answering node's processes (omitted for others).
	Processes *int `json:"processes,omitempty"`
	// Names and Children count the names its processes hold (all
	// environments) and the distributed children it runs, from the
	// answering node's replicas.
	Names    int `json:"names"`
	Children int `json:"children"`
}

func (s *Server) nodes(*http.Request, access) (int, any, error) {
	names := map[herd.NodeID]int{}
	for _, e := range s.n.Registry().Select(herd.Query{Kind: herd.Unique, AllEnvs: true}) {
		names[e.PID.Node]++
	}
	children := map[herd.NodeID]int{}
	for _, c := range s.n.Supervisor().WhichChildren() {
		if !c.PID.IsZero() {
			children[c.PID.Node]++
		}
	}
	out := []Node{}
	for _, m := range s.n.Members() {
		n := s.nodeOf(m)
		n.Names, n.Children = names[m.ID], children[m.ID]
		if n.Self {
			count := s.n.CountProcesses()
			n.Processes = &count
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return http.StatusOK, out, nil
}

// nodeNames lists the names held by processes of a node (by name: its
// current life), in the request's environment.
func (s *Server) nodeNames(r *http.Request, a access) (int, any, error) {
	env, err := s.envOf(r, a)
	if err != nil {
		return 0, nil, err
	}
	name := r.PathValue("node")
	if !slices.ContainsFunc(s.n.Members(), func(m herd.Member) bool { return m.ID.Name == name }) {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no member named %q", name)
	}
	out := []Entry{}
	for _, e := range s.n.Registry().Select(herd.Query{Env: env, Kind: herd.Unique}) {
		if e.PID.Node.Name == name && e.Key.Env == env {
			out = append(out, entryOf(e))
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return http.StatusOK, out, nil
}

// Child is a distributed-supervisor child.
type Child struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Name     string `json:"name,omitempty"`
	Env      string `json:"env,omitempty"`
	Restart  string `json:"restart"`
	Node     string `json:"node"`
	PID      string `json:"pid,omitempty"`
	Epoch    uint64 `json:"epoch"`
	Failed   string `json:"failed,omitempty"`
	HasState bool   `json:"has_state"`
}

// ChildStart is the body of POST /api/children.
type ChildStart struct {
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	Name    string `json:"name,omitempty"`
	Env     string `json:"env,omitempty"`
	Restart string `json:"restart,omitempty"` // permanent (default), transient, temporary
}

var restartNames = map[string]herd.Restart{"permanent": herd.Permanent, "transient": herd.Transient, "temporary": herd.Temporary}

func restartName(r herd.Restart) string {
	for n, v := range restartNames {
		if v == r {
			return n
		}
	}
	return fmt.Sprint(r)
}

func childOf(c herd.Child) Child {
	out := Child{
		ID: c.ID, Kind: c.Kind, Name: c.Name, Env: c.Env, Restart: restartName(c.Restart),
		Node: c.Node.String(), Epoch: c.Epoch, Failed: c.Failed, HasState: c.HasState,
	}
	if !c.PID.IsZero() {
		out.PID = c.PID.String()
	}
	return out
}

// children lists the children whose names are in environments the token
// may see (a child without a name is cluster-wide: "*" tokens only).
func (s *Server) children(r *http.Request, a access) (int, any, error) {
	out := []Child{}
	for _, c := range s.n.Supervisor().WhichChildren() {
		if a.env(childEnv(c)) {
			out = append(out, childOf(c))
		}
	}
	return http.StatusOK, out, nil
}

// childEnv is the environment a child belongs to for access: its name's,
// or "*" (cluster-wide) if it has no name.
func childEnv(c herd.Child) string {
	if c.Name == "" {
		return "*"
	}
	return c.Env
}

func (s *Server) child(r *http.Request, a access) (int, any, error) {
	c, ok := s.n.Supervisor().WhichChild(r.PathValue("id"))
	if !ok || !a.env(childEnv(c)) {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no child %q", r.PathValue("id"))
	}
	return http.StatusOK, childOf(c), nil
}

func (s *Server) startChild(r *http.Request, a access) (int, any, error) {
	var req ChildStart
	if err := decode(r, &req); err != nil {
		return 0, nil, err
	}
	restart, ok := herd.Permanent, true
	if req.Restart != "" {
		restart, ok = restartNames[req.Restart]
	}
	switch {
	case req.ID == "" || len(req.ID) > 1024 || !utf8.ValidString(req.ID):
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "id: 1 to 1024 bytes of UTF-8")
	case !ok:
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "restart %q: permanent, transient or temporary", req.Restart)
	case !slices.Contains(s.n.Kinds(), req.Kind):
		return 0, nil, errorf(http.StatusBadRequest, "unknown_kind", "kind %q: this agent knows %s", req.Kind, strings.Join(s.n.Kinds(), ", "))
	}
	env := "*"
	if req.Name != "" {
		env = req.Env
	}
	if !a.env(env) {
		return 0, nil, errorf(http.StatusForbidden, "forbidden", "this token may not start children in environment %q", env)
	}
	spec := herd.ChildSpec{ID: req.ID, Kind: req.Kind, Name: req.Name, Env: req.Env, Restart: restart}
	if _, err := s.n.Supervisor().StartChild(r.Context(), spec); err != nil {
		switch {
		case errors.Is(err, herd.ErrAlreadyStarted):
			return 0, nil, errorf(http.StatusConflict, "exists", "child %q exists", req.ID)
		case errors.Is(err, herd.ErrInvalid):
			return 0, nil, errorf(http.StatusBadRequest, "bad_request", "%v", err)
		case errors.Is(err, herd.ErrNoQuorum), errors.Is(err, herd.ErrNoNode), errors.Is(err, herd.ErrLeaving):
			return 0, nil, errorf(http.StatusServiceUnavailable, "unavailable", "%v", err)
		}
		return 0, nil, err
	}
	c, _ := s.n.Supervisor().WhichChild(req.ID)
	return http.StatusCreated, childOf(c), nil
}

func (s *Server) terminateChild(r *http.Request, a access) (int, any, error) {
	id := r.PathValue("id")
	c, ok := s.n.Supervisor().WhichChild(id)
	if !ok || !a.env(childEnv(c)) {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no child %q", id)
	}
	if err := s.n.Supervisor().TerminateChild(r.Context(), id); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, childOf(c), nil
}

// MapEntry is one key of a replicated map. Value is the bytes (base64 in
// JSON); Text is the same as a string, when it is valid UTF-8.
type MapEntry struct {
	Key   string  `json:"key"`
	Value []byte  `json:"value"`
	Text  *string `json:"text,omitempty"`
}

// MapWrite is the body of PUT /api/maps/{map}/{key}: the value as bytes
// (base64) or as text, one of the two.
type MapWrite struct {
	Value []byte  `json:"value,omitempty"`
	Text  *string `json:"text,omitempty"`
}

func mapEntry(key string, v []byte) MapEntry {
	e := MapEntry{Key: key, Value: v}
	if utf8.Valid(v) {
		t := string(v)
		e.Text = &t
	}
	return e
}

// openMap opens the map a request names. Maps are cluster-wide: only a
// token for every environment ("*") reaches them. herd's own maps and the
// agent's are not reachable here.
func (s *Server) openMap(r *http.Request, a access) (*herd.Map, error) {
	if !a.env("*") {
		return nil, errorf(http.StatusForbidden, "forbidden", "replicated maps need a token for every environment (\"*\")")
	}
	name := r.PathValue("map")
	if strings.HasPrefix(name, "herdagent.") || len(name) > 256 {
		return nil, errorf(http.StatusBadRequest, "bad_request", "map %q is not open to the API", name)
	}
	m, err := s.n.Map(name)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "bad_request", "%v", err)
	}
	return m, nil
}

// mapAndKey opens the map a request names and checks its key.
func (s *Server) mapAndKey(r *http.Request, a access) (*herd.Map, string, error) {
	m, err := s.openMap(r, a)
	if err != nil {
		return nil, "", err
	}
	k := r.PathValue("key")
	if k == "" || len(k) > 1024 {
		return nil, "", errorf(http.StatusBadRequest, "bad_request", "key: 1 to 1024 bytes")
	}
	return m, k, nil
}

func (s *Server) mapList(r *http.Request, a access) (int, any, error) {
	m, err := s.openMap(r, a)
	if err != nil {
		return 0, nil, err
	}
	prefix := r.URL.Query().Get("prefix")
	out := []MapEntry{}
	m.Range(func(k string, v []byte) bool {
		if strings.HasPrefix(k, prefix) {
			out = append(out, mapEntry(k, v))
		}
		return true
	})
	slices.SortFunc(out, func(a, b MapEntry) int { return strings.Compare(a.Key, b.Key) })
	return http.StatusOK, out, nil
}

func (s *Server) mapGet(r *http.Request, a access) (int, any, error) {
	m, k, err := s.mapAndKey(r, a)
	if err != nil {
		return 0, nil, err
	}
	v, ok := m.Get(k)
	if !ok {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no key %q in map %q", k, m.Name())
	}
	return http.StatusOK, mapEntry(k, v), nil
}

func (s *Server) mapPut(r *http.Request, a access) (int, any, error) {
	m, k, err := s.mapAndKey(r, a)
	if err != nil {
		return 0, nil, err
	}
	var body MapWrite
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	v := body.Value
	switch {
	case body.Text != nil && body.Value != nil:
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "give value or text, not both")
	case body.Text != nil:
		v = []byte(*body.Text)
	case body.Value == nil:
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "no value: give value (base64) or text")
	}
	if err := m.Put(k, v); err != nil {
		return 0, nil, err
	}
	return http.StatusOK, mapEntry(k, v), nil
}

func (s *Server) mapDelete(r *http.Request, a access) (int, any, error) {
	m, k, err := s.mapAndKey(r, a)
	if err != nil {
		return 0, nil, err
	}
	prev, had := m.Get(k)
	if _, err := m.Delete(k); err != nil {
		return 0, nil, err
	}
	if !had {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no key %q in map %q", k, m.Name())
	}
	return http.StatusOK, mapEntry(k, prev), nil
}
