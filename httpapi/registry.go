package httpapi

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/herdkit/herd"
)

// Entry is a registered name, as the API shows it: held by a herd process
// (NodeID is its node life, ProcessID its id there, PID the two as text),
// or by an external process registered over HTTP (External).
type Entry struct {
	Name         string            `json:"name"`
	Env          string            `json:"env"`
	NodeID       string            `json:"node_id"`
	ProcessID    uint64            `json:"process_id"`
	PID          string            `json:"pid,omitempty"`
	External     bool              `json:"external"`
	RegisteredAt *time.Time        `json:"registered_at,omitempty"`
	ExpiresAt    *time.Time        `json:"expires_at,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Capabilities []string          `json:"capabilities,omitempty"`
}

// Registration is the body of POST /api/registry.
type Registration struct {
	Name      string `json:"name"`
	Env       string `json:"env,omitempty"`
	NodeID    string `json:"node_id"`
	ProcessID uint64 `json:"process_id"`
	// TTLSeconds, if set, makes the entry expire that long after it was
	// registered (at most a year).
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
	// Overwrite replaces an external entry holding the name (never a herd
	// process's).
	Overwrite bool `json:"overwrite,omitempty"`
}

const (
	externalMap = "herdagent.registry"
	maxNodeID   = 253
	maxTTL      = 365 * 24 * time.Hour
)

// external is the registry of external processes: a replicated map keyed
// by environment and name, not owned by any node, so an entry outlives the
// agent that accepted it. Concurrent registrations of one name on two
// nodes resolve, on every node, to the earliest.
type external struct {
	mu  sync.Mutex // orders this node's check-then-write
	m   *herd.Map
	now func() time.Time
}

type extRecord struct {
	NodeID       string `json:"node_id"`
	ProcessID    uint64 `json:"process_id"`
	RegisteredAt int64  `json:"registered_at"`        // Unix ms
	ExpiresAt    int64  `json:"expires_at,omitempty"` // Unix ms; 0: never
}

func openExternal(n *herd.Node, durable bool, now func() time.Time) (*external, error) {
	opts := []herd.MapOption{herd.MapResolver(earliest)}
	if durable {
		opts = append(opts, herd.MapDurable())
	}
	m, err := n.Map(externalMap, opts...)
	if err != nil {
		return nil, fmt.Errorf("httpapi: %w", err)
	}
	return &external{m: m, now: now}, nil
}

// earliest resolves concurrent registrations of a name: the earliest
// registered wins, then the smaller node and process ids; a value that
// does not parse loses.
func earliest(_ string, vs []herd.MapVersion) []byte {
	var best []byte
	var bestRec extRecord
	for _, v := range vs {
		var r extRecord
		if json.Unmarshal(v.Value, &r) != nil {
			continue
		}
		if best == nil || cmp.Or(cmp.Compare(r.RegisteredAt, bestRec.RegisteredAt), strings.Compare(r.NodeID, bestRec.NodeID), cmp.Compare(r.ProcessID, bestRec.ProcessID)) < 0 {
			best, bestRec = v.Value, r
		}
	}
	if best == nil {
		return vs[len(vs)-1].Value
	}
	return best
}

func extKey(env, name string) string { return env + "\x00" + name }

// get returns the live entry for env/name.
func (x *external) get(env, name string) (Entry, bool) {
	b, ok := x.m.Get(extKey(env, name))
	if !ok {
		return Entry{}, false
	}
	return x.entry(env, name, b)
}

func (x *external) entry(env, name string, b []byte) (Entry, bool) {
	var r extRecord
	if json.Unmarshal(b, &r) != nil {
		return Entry{}, false
	}
	if r.ExpiresAt != 0 && x.now().UnixMilli() >= r.ExpiresAt {
		return Entry{}, false
	}
	e := Entry{Name: name, Env: env, NodeID: r.NodeID, ProcessID: r.ProcessID, External: true}
	at := time.UnixMilli(r.RegisteredAt).UTC()
	e.RegisteredAt = &at
	if r.ExpiresAt != 0 {
		exp := time.UnixMilli(r.ExpiresAt).UTC()
		e.ExpiresAt = &exp
	}
	return e, true
}

// list returns the live entries of env whose names match pattern.
func (x *external) list(env, pattern string) []Entry {
	var out []Entry
	x.m.Range(func(key string, b []byte) bool {
		e, n, ok := strings.Cut(key, "\x00")
		if ok && e == env && (pattern == "" || herd.Match(pattern, n)) {
			if entry, live := x.entry(env, n, b); live {
				out = append(out, entry)
			}
		}
		return true
	})
	return out
}

func (s *Server) registryRoutes() {
	s.handle("GET /api/registry", read, s.listNames)
	s.handle("GET /api/registry/{name...}", read, s.getName)
	s.handle("POST /api/registry", readWrite, s.postName)
	s.handle("DELETE /api/registry/{name...}", readWrite, s.deleteName)
}

// herdEntry returns the herd process holding env/name, if one does.
func (s *Server) herdEntry(env, name string) (Entry, bool) {
	e, ok := s.n.Registry().Lookup(herd.Key{Env: env, Name: name})
	if !ok {
		return Entry{}, false
	}
	return entryOf(e), true
}

func entryOf(e herd.Entry) Entry {
	return Entry{
		Name: e.Key.Name, Env: e.Key.Env, NodeID: e.PID.Node.String(), ProcessID: e.PID.ID, PID: e.PID.String(),
		Labels: e.Meta.Labels, Capabilities: e.Meta.Capabilities,
	}
}

func (s *Server) lookup(env, name string) (Entry, bool) {
	if e, ok := s.herdEntry(env, name); ok {
		return e, true
	}
	return s.ext.get(env, name)
}

// envAndName returns the environment and the name a request names.
func (s *Server) envAndName(r *http.Request, a access) (string, string, error) {
	env, err := s.envOf(r, a)
	if err != nil {
		return "", "", err
	}
	name := r.PathValue("name")
	if err := (herd.Key{Env: env, Name: name}).Validate(); err != nil {
		return "", "", errorf(http.StatusBadRequest, "bad_request", "name %q: %v", name, err)
	}
	return env, name, nil
}

func (s *Server) getName(r *http.Request, a access) (int, any, error) {
	env, name, err := s.envAndName(r, a)
	if err != nil {
		return 0, nil, err
	}
	e, ok := s.lookup(env, name)
	if !ok {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no process holds %q", name)
	}
	return http.StatusOK, e, nil
}

func (s *Server) listNames(r *http.Request, a access) (int, any, error) {
	env, err := s.envOf(r, a)
	if err != nil {
		return 0, nil, err
	}
	pattern := r.URL.Query().Get("pattern")
	out := []Entry{}
	for _, e := range s.n.Registry().Select(herd.Query{Env: env, Kind: herd.Unique, Pattern: pattern}) {
		if e.Key.Env == env {
			out = append(out, entryOf(e))
		}
	}
	for _, e := range s.ext.list(env, pattern) {
		if _, taken := s.herdEntry(env, e.Name); !taken {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return http.StatusOK, out, nil
}

func (s *Server) postName(r *http.Request, a access) (int, any, error) {
	var reg Registration
	if err := decode(r, &reg); err != nil {
		return 0, nil, err
	}
	env, err := s.envOf(r, a)
	if reg.Env != "" {
		if e, ok := r.URL.Query()["env"]; ok && e[0] != reg.Env {
			return 0, nil, errorf(http.StatusBadRequest, "bad_request", "environment %q in the body and %q in the query", reg.Env, e[0])
		}
		env, err = s.checkEnv(reg.Env, a)
	}
	if err != nil {
		return 0, nil, err
	}
	switch err := (herd.Key{Env: env, Name: reg.Name}).Validate(); {
	case err != nil:
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "name %q: %v", reg.Name, err)
	case reg.NodeID == "" || len(reg.NodeID) > maxNodeID || strings.ContainsFunc(reg.NodeID, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "node_id: 1 to %d printable characters", maxNodeID)
	case reg.TTLSeconds < 0 || time.Duration(reg.TTLSeconds)*time.Second > maxTTL:
		return 0, nil, errorf(http.StatusBadRequest, "bad_request", "ttl_seconds %d: 0 (none) to %d", reg.TTLSeconds, int64(maxTTL/time.Second))
	}
	if h, ok := s.herdEntry(env, reg.Name); ok {
		return 0, nil, &Error{Status: http.StatusConflict, Code: "taken", Message: fmt.Sprintf("%q is held by herd process %s", reg.Name, h.PID), Holder: &h}
	}
	x := s.ext
	x.mu.Lock()
	defer x.mu.Unlock()
	if h, ok := x.get(env, reg.Name); ok && !reg.Overwrite {
		return 0, nil, &Error{Status: http.StatusConflict, Code: "taken", Message: fmt.Sprintf("%q is held by process %d of %s (overwrite to replace it)", reg.Name, h.ProcessID, h.NodeID), Holder: &h}
	}
	now := x.now()
	rec := extRecord{NodeID: reg.NodeID, ProcessID: reg.ProcessID, RegisteredAt: now.UnixMilli()}
	if reg.TTLSeconds > 0 {
		rec.ExpiresAt = now.Add(time.Duration(reg.TTLSeconds) * time.Second).UnixMilli()
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, nil, err
	}
	if err := x.m.Put(extKey(env, reg.Name), b); err != nil {
		return 0, nil, err
	}
	e, _ := x.entry(env, reg.Name, b)
	return http.StatusCreated, e, nil
}

func (s *Server) deleteName(r *http.Request, a access) (int, any, error) {
	env, name, err := s.envAndName(r, a)
	if err != nil {
		return 0, nil, err
	}
	if h, ok := s.herdEntry(env, name); ok {
		return 0, nil, &Error{Status: http.StatusConflict, Code: "held_by_process", Message: fmt.Sprintf("%q is held by herd process %s: it goes when the process exits", name, h.PID), Holder: &h}
	}
	x := s.ext
	x.mu.Lock()
	defer x.mu.Unlock()
	prev, ok := x.get(env, name)
	if _, err := x.m.Delete(extKey(env, name)); err != nil {
		return 0, nil, err
	}
	if !ok {
		return 0, nil, errorf(http.StatusNotFound, "not_found", "no process holds %q", name)
	}
	return http.StatusOK, prev, nil
}
