// Package httpapi is herd's HTTP control API, as `herd agent` serves it:
// the cluster registry (names of herd processes, and of external processes
// registered over HTTP), nodes, distributed-supervisor children and
// replicated maps, as JSON. Every error is a JSON object
// {"message": ..., "code": ...}. openapi.yaml describes every route.
//
// Access is by bearer token, each scoped to environments and to reading or
// writing. A server with no tokens is open: `herd agent` allows that only
// on a loopback address.
package httpapi

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/herdkit/herd"
)

// Token is a bearer token and what it may do.
type Token struct {
	// Secret is the token itself, as clients send it after "Bearer ".
	Secret string
	// Envs are the registry environments it may touch ("" is the default
	// environment); "*" is every environment, and the cluster-wide data
	// that belongs to none (replicated maps).
	Envs []string
	// Write allows changes; without it the token only reads.
	Write bool
}

// Config configures a Server.
type Config struct {
	Node *herd.Node
	// Tokens grant access. None: every request may do everything.
	Tokens []Token
	// Environments, if set, are the only registry environments requests
	// may name ("" is the default one); any other is unknown_environment.
	Environments []string
	// MaxBody bounds a request body. Default 1 MiB.
	MaxBody int64
	// DurableRegistry keeps external registrations in the node's data
	// directory (Config.DataDir must be set).
	DurableRegistry bool
	Logger          *slog.Logger
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

// Server serves the API. It is an http.Handler.
type Server struct {
	cfg Config
	n   *herd.Node
	mux *http.ServeMux
	log *slog.Logger
	ext *external
	// routes lists "METHOD /path" patterns, for the OpenAPI check.
	routes []string
	// conflicts counts name conflicts seen resolved (for /metrics).
	conflicts atomic.Uint64
	watch     *herd.Watch
	done      chan struct{}
}

// New returns a server for cfg.Node.
func New(cfg Config) (*Server, error) {
	if cfg.Node == nil {
		return nil, errors.New("httpapi: no node")
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = cfg.Node.Logger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	for i, t := range cfg.Tokens {
		if len(t.Secret) < 16 {
			return nil, fmt.Errorf("httpapi: token %d: shorter than 16 characters", i)
		}
		if len(t.Envs) == 0 {
			return nil, fmt.Errorf("httpapi: token %d: no environments (use \"*\" for all)", i)
		}
	}
	ext, err := openExternal(cfg.Node, cfg.DurableRegistry, cfg.Now)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, n: cfg.Node, mux: http.NewServeMux(), log: cfg.Logger, ext: ext, done: make(chan struct{})}
	s.routesInit()
	s.watch = s.n.Registry().Watch(herd.Query{Kind: herd.Unique, AllEnvs: true}, herd.WatchOptions{})
	go s.countConflicts()
	return s, nil
}

// Close stops the server's own work (not the HTTP server serving it).
func (s *Server) Close() {
	s.watch.Close()
	<-s.done
}

func (s *Server) countConflicts() {
	defer close(s.done)
	for e := range s.watch.Events() {
		if e.Type == herd.Conflict {
			s.conflicts.Add(1)
		}
	}
}

// Routes returns the "METHOD /path" patterns the server answers.
func (s *Server) Routes() []string { return slices.Clone(s.routes) }

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBody)
	s.mux.ServeHTTP(w, r)
}

// access is what a request may do.
type access struct {
	tok  *Token // nil: open server
	open bool
}

func (a access) write() bool { return a.open || a.tok.Write }

func (a access) env(env string) bool {
	return a.open || slices.Contains(a.tok.Envs, "*") || slices.Contains(a.tok.Envs, env)
}

// need says what a route requires.
type need uint8

const (
	public    need = iota // no token (health)
	read                  // any valid token
	readWrite             // a token that may write
)

// handlerFunc is a route's handler: it returns the status and the body to
// send as JSON, or an error.
type handlerFunc func(r *http.Request, a access) (int, any, error)

func (s *Server) handle(pattern string, n need, h handlerFunc) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		a, err := s.authorize(r, n)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		status, body, err := h(r, a)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, status, body)
	})
}

func (s *Server) authorize(r *http.Request, n need) (access, error) {
	if n == public || len(s.cfg.Tokens) == 0 {
		return access{open: true}, nil
	}
	secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || secret == "" {
		return access{}, errorf(http.StatusUnauthorized, "unauthorized", "a bearer token is required")
	}
	for i := range s.cfg.Tokens {
		t := &s.cfg.Tokens[i]
		if subtle.ConstantTimeCompare([]byte(t.Secret), []byte(secret)) == 1 {
			if n == readWrite && !t.Write {
				return access{}, errorf(http.StatusForbidden, "forbidden", "this token may only read")
			}
			return access{tok: t}, nil
		}
	}
	return access{}, errorf(http.StatusUnauthorized, "unauthorized", "unknown token")
}

// envOf returns the registry environment a request names (parameter env),
// checked against the server's environments and the token's scope. With
// no parameter, a token scoped to one environment means that one;
// otherwise it is the default environment.
func (s *Server) envOf(r *http.Request, a access) (string, error) {
	env, given := r.URL.Query()["env"]
	var e string
	switch {
	case given:
		e = env[0]
	case !a.open && len(a.tok.Envs) == 1 && a.tok.Envs[0] != "*":
		e = a.tok.Envs[0]
	}
	return s.checkEnv(e, a)
}

// checkEnv checks environment e against the server's environments and the
// token's scope.
func (s *Server) checkEnv(e string, a access) (string, error) {
	if len(s.cfg.Environments) > 0 && !slices.Contains(s.cfg.Environments, e) {
		return "", errorf(http.StatusNotFound, "unknown_environment", "unknown environment %q", e)
	}
	if e != "" {
		if err := (herd.Key{Env: e, Name: "x"}).Validate(); err != nil {
			return "", errorf(http.StatusBadRequest, "bad_request", "environment %q: %v", e, err)
		}
	}
	if !a.env(e) {
		return "", errorf(http.StatusForbidden, "forbidden", "this token may not use environment %q", e)
	}
	return e, nil
}

// Error is an API error, as the body of every failed request carries it.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"message"`
	Code    string `json:"code"`
	// Holder is who holds a name a registration found taken.
	Holder *Entry `json:"holder,omitempty"`
}

func (e *Error) Error() string { return e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		s.log.Warn("httpapi: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		e = errorf(http.StatusInternalServerError, "internal", "%v", err)
	}
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if body != nil {
		_ = json.NewEncoder(w).Encode(body)
	}
}

// decode reads one JSON object into v: unknown fields, trailing data and
// bodies over the limit are refused. The content type is not looked at
// (curl -d sends a form type), only the body.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errorf(http.StatusRequestEntityTooLarge, "too_large", "request body over %d bytes", tooBig.Limit)
		}
		if errors.Is(err, io.EOF) {
			return errorf(http.StatusBadRequest, "bad_request", "empty body: a JSON object is expected")
		}
		return errorf(http.StatusBadRequest, "bad_request", "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errorf(http.StatusRequestEntityTooLarge, "too_large", "request body over %d bytes", tooBig.Limit)
		}
		return errorf(http.StatusBadRequest, "bad_request", "malformed JSON: data after the object")
	}
	return nil
}
