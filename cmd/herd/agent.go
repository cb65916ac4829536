package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/herdkit/herd"
	"github.com/herdkit/herd/httpapi"
)

// agentConfig is the agent's configuration. It comes from a JSON file
// (-config), then HERD_* environment variables, then flags: each later
// source wins for the settings it gives.
type agentConfig struct {
	Name            string   `json:"name"`
	Bind            string   `json:"bind"`
	Advertise       string   `json:"advertise"`
	GossipBind      string   `json:"gossip_bind"`
	GossipAdvertise string   `json:"gossip_advertise"`
	Join            []string `json:"join"`
	DNSName         string   `json:"dns_name"`
	DNSPort         int      `json:"dns_port"`
	DNSSRV          string   `json:"dns_srv"`
	Profile         string   `json:"profile"`
	TLSCA           string   `json:"tls_ca"`
	TLSCert         string   `json:"tls_cert"`
	TLSKey          string   `json:"tls_key"`
	// GossipKeyFile holds the gossip key, base64 (16, 24 or 32 bytes).
	GossipKeyFile string `json:"gossip_key_file"`
	DataDir       string `json:"data_dir"`
	HTTP          string `json:"http"`
	// Tokens are API tokens, "SECRET:ENV[,ENV...]:read|write".
	Tokens []string `json:"tokens"`
	// Environments, if set, are the only registry environments the API
	// accepts ("" or "default" for the default one).
	Environments []string `json:"environments"`
	// Insecure allows node traffic without TLS and an open HTTP API on
	// an address other than loopback.
	Insecure bool   `json:"insecure"`
	LogLevel string `json:"log_level"`
}

const agentUsage = `Usage: herd agent [flags]

Runs a herd node with the HTTP control API. Settings come from a JSON file
(-config), HERD_* environment variables (HERD_NAME, HERD_BIND, HERD_JOIN,
HERD_HTTP, HERD_TOKENS, ... : the flag's name in capitals, '-' as '_';
lists comma-separated, tokens separated by ';'), then flags, each later
source winning. On loopback the API may be open; on any other address it
needs tokens, and node traffic needs TLS, unless -insecure.

`

// stringList is a flag that may be given several times or comma-separated.
type stringList struct{ v *[]string }

func (l stringList) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l stringList) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

// tokenList is the -token flag: repeated, never split on commas (a token
// lists its environments with them).
type tokenList struct{ v *[]string }

func (l tokenList) String() string { return "" }

func (l tokenList) Set(s string) error { *l.v = append(*l.v, s); return nil }

// parseAgent reads the configuration: file, environment, flags.
func parseAgent(args []string, getenv func(string) string, stderr io.Writer) (agentConfig, error) {
	var c agentConfig
	fs := flag.NewFlagSet("herd agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "JSON configuration file")
	var flagJoin, flagTokens, flagEnvs []string
	fs.String("name", "", "node name (default: the host name)")
	fs.String("bind", "", "node-to-node address, host:port (port 0: any)")
	fs.String("advertise", "", "address other nodes dial (default: the bound one)")
	fs.String("gossip-bind", "", "membership gossip address (default: bind's host, any port)")
	fs.String("gossip-advertise", "", "gossip address other members reach")
	fs.Var(stringList{&flagJoin}, "join", "gossip addresses of members to join (repeat or comma-separate)")
	fs.String("dns-name", "", "find members by A/AAAA records of this name")
	fs.Int("dns-port", 0, "gossip port for -dns-name")
	fs.String("dns-srv", "", "find members by SRV records of this name")
	fs.String("profile", "", "failure detection: lan (default) or local")
	fs.String("tls-ca", "", "cluster CA certificate (PEM)")
	fs.String("tls-cert", "", "this node's certificate (PEM)")
	fs.String("tls-key", "", "this node's private key (PEM)")
	fs.String("gossip-key-file", "", "file holding the gossip encryption key, base64")
	fs.String("data-dir", "", "data directory: durable maps and children survive a full-cluster restart")
	fs.String("http", "", "HTTP API address (default 127.0.0.1:7070)")
	fs.Var(tokenList{&flagTokens}, "token", "API token SECRET:ENV[,ENV...]:read|write (repeat; * is every environment)")
	fs.Var(stringList{&flagEnvs}, "environments", "the only registry environments the API accepts")
	fs.Bool("insecure", false, "allow plaintext node traffic and an open API off loopback")
	fs.String("log-level", "", "debug, info (default), warn or error")
	fs.Usage = func() {
		fmt.Fprint(stderr, agentUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *file == "" {
		*file = getenv("HERD_CONFIG")
	}
	if *file != "" {
		raw, err := os.ReadFile(*file)
		if err != nil {
			return c, fmt.Errorf("config file: %w", err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config file %s: %w", *file, err)
		}
	}
	// Environment, then flags, over the file.
	given := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		env := "HERD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if f.Name == "token" {
			env = "HERD_TOKENS"
		}
		if v := getenv(env); v != "" {
			given[f.Name] = v
		}
	})
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "config", "join", "token", "environments": // lists: below
		default:
			given[f.Name] = f.Value.String()
		}
	})
	for name, v := range given {
		var err error
		switch name {
		case "name":
			c.Name = v
		case "bind":
			c.Bind = v
		case "advertise":
			c.Advertise = v
		case "gossip-bind":
			c.GossipBind = v
		case "gossip-advertise":
			c.GossipAdvertise = v
		case "join":
			c.Join = nil
			err = stringList{&c.Join}.Set(v)
		case "dns-name":
			c.DNSName = v
		case "dns-port":
			_, err = fmt.Sscan(v, &c.DNSPort)
		case "dns-srv":
			c.DNSSRV = v
		case "profile":
			c.Profile = v
		case "tls-ca":
			c.TLSCA = v
		case "tls-cert":
			c.TLSCert = v
		case "tls-key":
			c.TLSKey = v
		case "gossip-key-file":
			c.GossipKeyFile = v
		case "data-dir":
			c.DataDir = v
		case "http":
			c.HTTP = v
		case "token":
			c.Tokens = strings.Split(v, ";")
		case "environments":
			c.Environments = nil
			err = stringList{&c.Environments}.Set(v)
		case "insecure":
			c.Insecure, err = parseBool(v)
		case "log-level":
			c.LogLevel = v
		}
		if err != nil {
			return c, fmt.Errorf("%s: %w", name, err)
		}
	}
	// Flags given several times win over the environment as a whole.
	if len(flagJoin) > 0 {
		c.Join = flagJoin
	}
	if len(flagTokens) > 0 {
		c.Tokens = flagTokens
	}
	if len(flagEnvs) > 0 {
		c.Environments = flagEnvs
	}
	if c.HTTP == "" {
		c.HTTP = "127.0.0.1:7070"
	}
	return c, nil
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "t", "true", "yes":
		return true, nil
	case "0", "f", "false", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean", v)
}

// parseToken reads "SECRET:ENV[,ENV...]:read|write".
func parseToken(s string) (httpapi.Token, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return httpapi.Token{}, errors.New("want SECRET:ENV[,ENV...]:read|write")
	}
	t := httpapi.Token{Secret: parts[0]}
	for _, e := range strings.Split(parts[1], ",") {
		if e == "default" {
			e = ""
		}
		t.Envs = append(t.Envs, e)
	}
	switch parts[2] {
	case "read":
	case "write":
		t.Write = true
	default:
		return httpapi.Token{}, fmt.Errorf("access %q: read or write", parts[2])
	}
	if len(t.Secret) < 16 {
		return httpapi.Token{}, errors.New("the secret must be at least 16 characters")
	}
	return t, nil
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// build turns the configuration into a node configuration and the API's,
// or says clearly what is wrong.
func (c *agentConfig) build(log *slog.Logger) (herd.Config, httpapi.Config, error) {
	hc := herd.Config{
		Name: c.Name, Bind: c.Bind, Advertise: c.Advertise, GossipBind: c.GossipBind, GossipAdvertise: c.GossipAdvertise,
		Join: c.Join, DNSName: c.DNSName, DNSPort: c.DNSPort, DNSSRV: c.DNSSRV, Profile: c.Profile,
		DataDir: c.DataDir, Insecure: c.Insecure, Logger: log,
	}
	var ac httpapi.Config
	switch c.Profile {
	case "", "lan", "local":
	default:
		return hc, ac, fmt.Errorf("profile %q: lan or local", c.Profile)
	}
	if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
		return hc, ac, fmt.Errorf("http address %q: %w", c.HTTP, err)
	}
	if c.Bind == "" && (len(c.Join) > 0 || c.DNSName != "" || c.DNSSRV != "") {
		return hc, ac, errors.New("join or DNS discovery without -bind: a node joins a cluster only with a bind address")
	}
	switch n := btoi(c.TLSCA != "") + btoi(c.TLSCert != "") + btoi(c.TLSKey != ""); n {
	case 0:
	case 3:
		for _, f := range []string{c.TLSCA, c.TLSCert, c.TLSKey} {
			if _, err := os.Stat(f); err != nil {
				return hc, ac, fmt.Errorf("TLS: %w", err)
			}
		}
		hc.TLS = &herd.TLS{CAFile: c.TLSCA, CertFile: c.TLSCert, KeyFile: c.TLSKey}
	default:
		return hc, ac, errors.New("TLS needs all three of -tls-ca, -tls-cert and -tls-key")
	}
	if c.GossipKeyFile != "" {
		raw, err := os.ReadFile(c.GossipKeyFile)
		if err != nil {
			return hc, ac, fmt.Errorf("gossip key: %w", err)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
		if err != nil {
			return hc, ac, fmt.Errorf("gossip key %s: not base64: %w", c.GossipKeyFile, err)
		}
		if l := len(key); l != 16 && l != 24 && l != 32 {
			return hc, ac, fmt.Errorf("gossip key %s: %d bytes, want 16, 24 or 32", c.GossipKeyFile, l)
		}
		hc.GossipKeys = [][]byte{key}
	}
	for i, s := range c.Tokens {
		t, err := parseToken(s)
		if err != nil {
			return hc, ac, fmt.Errorf("token %d: %w", i+1, err)
		}
		ac.Tokens = append(ac.Tokens, t)
	}
	for _, e := range c.Environments {
		if e == "default" {
			e = ""
		}
		ac.Environments = append(ac.Environments, e)
	}
	if len(ac.Tokens) == 0 && !loopback(c.HTTP) && !c.Insecure {
		return hc, ac, fmt.Errorf("http address %s is not loopback: give API tokens (-token), or -insecure to serve it open", c.HTTP)
	}
	ac.DurableRegistry = c.DataDir != ""
	ac.Logger = log
	return hc, ac, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func agentLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if level != "" {
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return nil, fmt.Errorf("log level %q: debug, info, warn or error", level)
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// runAgent runs a node and its API until ctx ends, then stops both
// gracefully: the API first, then the node, which hands its children over.
func runAgent(ctx context.Context, c agentConfig, stdout, stderr io.Writer) error {
	log, err := agentLogger(c.LogLevel, stderr)
	if err != nil {
		return err
	}
	hc, ac, err := c.build(log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.HTTP)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	defer ln.Close()
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	node, err := herd.Start(startCtx, hc)
	cancel()
	if err != nil {
		return err
	}
	stopNode := func() error {
		stop, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return node.Stop(stop)
	}
	if err := registerAgentKinds(node); err != nil {
		_ = stopNode()
		return err
	}
	ac.Node = node
	api, err := httpapi.New(ac)
	if err != nil {
		_ = stopNode()
		return err
	}
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "herd agent %s: api http://%s", node.ID(), ln.Addr())
	if node.Clustered() {
		fmt.Fprintf(stdout, ", node %s, gossip %s", node.Addr(), node.GossipAddr())
	}
	fmt.Fprintln(stdout)
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("http: %w", err)
	}
	shut, cancelShut := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(shut)
	cancelShut()
	api.Close()
	if stopErr := stopNode(); stopErr != nil && err == nil {
		err = fmt.Errorf("stop: %w", stopErr)
	}
	fmt.Fprintf(stdout, "herd agent %s: stopped\n", node.ID())
	return err
}

// registerAgentKinds gives the agent the kinds its API may start as
// children. Every agent of a cluster registers the same ones.
func registerAgentKinds(n *herd.Node) error {
	return herd.RegisterKind(n, "counter", func() herd.Process { return &counter{} })
}

// counter is the agent's built-in child kind: a count that a call of
// "inc" adds one to and "get" reads, kept across moves (Stash) and
// crashes (a checkpoint on every increment).
type counter struct {
	herd.Base
	n int
}

func (c *counter) HandleCall(ctx *herd.Context, msg any) (any, error) {
	switch msg {
	case "inc":
		c.n++
		if err := ctx.Checkpoint([]byte(strconv.Itoa(c.n))); err != nil {
			c.n--
			return nil, err
		}
	case "get":
	default:
		return c.Base.HandleCall(ctx, msg)
	}
	return c.n, nil
}

func (c *counter) Stash() ([]byte, error) { return []byte(strconv.Itoa(c.n)), nil }

func (c *counter) Restore(b []byte) error {
	n, err := strconv.Atoi(string(b))
	c.n = n
	return err
}
