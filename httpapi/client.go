package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Client calls an agent's API. Its methods return the API's *Error for an
// error answer (test it with errors.As).
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client of the agent at base ("http://host:port"),
// sending token if not empty. hc nil means http.DefaultClient.
func NewClient(base, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(base, "/"), token: token, hc: hc}
}

// maxAnswer bounds an answer's size.
const maxAnswer = 64 << 20

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(raw, e) != nil || e.Code == "" {
			return &Error{Status: resp.StatusCode, Code: "http", Message: fmt.Sprintf("%s %s: %s", method, path, resp.Status)}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("httpapi: %s %s: answer: %w", method, path, err)
	}
	return nil
}

func envQuery(env string) url.Values {
	q := url.Values{}
	if env != "" {
		q.Set("env", env)
	}
	return q
}

// escape escapes a name or key for a path, keeping its slashes (the
// routes take them).
func escape(s string) string {
	parts := strings.Split(s, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// Nodes lists the members as the agent sees them.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var out []Node
	return out, c.do(ctx, "GET", "/api/nodes", nil, nil, &out)
}

// Names lists the registry's names in env ("" for the token's or the
// default), those matching pattern if it is not empty.
func (c *Client) Names(ctx context.Context, env, pattern string) ([]Entry, error) {
	q := envQuery(env)
	if pattern != "" {
		q.Set("pattern", pattern)
	}
	var out []Entry
	return out, c.do(ctx, "GET", "/api/registry", q, nil, &out)
}

// Lookup returns who holds name in env.
func (c *Client) Lookup(ctx context.Context, env, name string) (Entry, error) {
	var out Entry
	return out, c.do(ctx, "GET", "/api/registry/"+escape(name), envQuery(env), nil, &out)
}

// Register registers an external process.
func (c *Client) Register(ctx context.Context, r Registration) (Entry, error) {
	var out Entry
	return out, c.do(ctx, "POST", "/api/registry", nil, r, &out)
}

// Unregister removes an external registration and returns it.
func (c *Client) Unregister(ctx context.Context, env, name string) (Entry, error) {
	var out Entry
	return out, c.do(ctx, "DELETE", "/api/registry/"+escape(name), envQuery(env), nil, &out)
}

// Children lists the distributed supervisor's children.
func (c *Client) Children(ctx context.Context) ([]Child, error) {
	var out []Child
	return out, c.do(ctx, "GET", "/api/children", nil, nil, &out)
}

// StartChild starts a child of a kind the agent knows.
func (c *Client) StartChild(ctx context.Context, s ChildStart) (Child, error) {
	var out Child
	return out, c.do(ctx, "POST", "/api/children", nil, s, &out)
}

// TerminateChild stops a child and forgets it.
func (c *Client) TerminateChild(ctx context.Context, id string) (Child, error) {
	var out Child
	return out, c.do(ctx, "DELETE", "/api/children/"+escape(id), nil, nil, &out)
}

// MapList lists a replicated map's entries whose keys start with prefix.
func (c *Client) MapList(ctx context.Context, m, prefix string) ([]MapEntry, error) {
	q := url.Values{}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	var out []MapEntry
	return out, c.do(ctx, "GET", "/api/maps/"+url.PathEscape(m), q, nil, &out)
}

// MapGet reads one key.
func (c *Client) MapGet(ctx context.Context, m, key string) (MapEntry, error) {
	var out MapEntry
	return out, c.do(ctx, "GET", "/api/maps/"+url.PathEscape(m)+"/"+escape(key), nil, nil, &out)
}

// MapPut writes one key.
func (c *Client) MapPut(ctx context.Context, m, key string, value []byte) (MapEntry, error) {
	w := MapWrite{Value: value}
	if utf8.Valid(value) {
		text := string(value)
		w = MapWrite{Text: &text}
	}
	var out MapEntry
	return out, c.do(ctx, "PUT", "/api/maps/"+url.PathEscape(m)+"/"+escape(key), nil, w, &out)
}

// MapDelete deletes one key and returns it.
func (c *Client) MapDelete(ctx context.Context, m, key string) (MapEntry, error) {
	var out MapEntry
	return out, c.do(ctx, "DELETE", "/api/maps/"+url.PathEscape(m)+"/"+escape(key), nil, nil, &out)
}
