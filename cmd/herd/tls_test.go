package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/herdkit/herd/herdtest"
	"github.com/herdkit/herd/httpapi"
	"github.com/herdkit/herd/internal/pki"
)

// TestTLSFilesMakeACluster: the files herd tls writes are what two agents
// need to form a cluster over mutual TLS with an encrypted gossip.
func TestTLSFilesMakeACluster(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := runTLS([]string{"init", "-dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("init: %d %s", code, errb.String())
	}
	if code := runTLS([]string{"init", "-dir", dir}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "not overwriting") {
		t.Fatalf("init twice: %d %s", code, errb.String())
	}
	for _, n := range []string{"tls-a", "tls-b"} {
		if code := runTLS([]string{"cert", "-dir", dir, "-name", n}, &out, &errb); code != 0 {
			t.Fatalf("cert %s: %d %s", n, code, errb.String())
		}
	}
	if info, err := os.Stat(filepath.Join(dir, "tls-a-key.pem")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("node key file: %v %v", info, err)
	}
	if code := runTLS([]string{"cert", "-dir", t.TempDir(), "-name", "x"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "herd tls init first") {
		t.Errorf("cert without a CA: %d %s", code, errb.String())
	}
	if code := runTLS([]string{"cert", "-dir", dir, "-name", "bad name"}, &out, &errb); code != 1 {
		t.Errorf("cert with a bad name: %d", code)
	}
	// A CA key that is not the certificate's is refused.
	other, _ := pki.NewCA("other", time.Hour)
	otherKey, _ := pki.KeyPEM(other.Key)
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if _, err := pki.LoadCA(caPEM, otherKey); err == nil {
		t.Error("LoadCA took a key that is not the CA's")
	}

	token := "tls-test-token-0123456789"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	line := regexp.MustCompile(`api (http://\S+), node \S+, gossip (\S+)`)
	start := func(name string, join string) (api string, done chan error) {
		args := []string{"-name", name, "-bind", "127.0.0.1:0", "-http", "127.0.0.1:0", "-profile", "local", "-log-level", "error",
			"-tls-ca", filepath.Join(dir, "ca.pem"), "-tls-cert", filepath.Join(dir, name+".pem"), "-tls-key", filepath.Join(dir, name+"-key.pem"),
			"-gossip-key-file", filepath.Join(dir, "gossip.key"), "-token", token + ":*:write"}
		if join != "" {
			args = append(args, "-join", join)
		}
		c, err := parseAgent(args, env(nil), &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		stdout := &syncBuffer{}
		done = make(chan error, 1)
		go func() { done <- runAgent(ctx, c, stdout, &syncBuffer{}) }()
		var m []string
		herdtest.Eventually(t, func() bool { m = line.FindStringSubmatch(stdout.String()); return m != nil }, herdtest.DefaultTimeout, name+" starting")
		return m[1] + " " + m[2], done
	}
	a, doneA := start("tls-a", "")
	apiA, gossipA, _ := strings.Cut(a, " ")
	_, doneB := start("tls-b", gossipA)
	client := httpapi.NewClient(apiA, token, nil)
	herdtest.Eventually(t, func() bool {
		nodes, err := client.Nodes(context.Background())
		alive := 0
		for _, n := range nodes {
			if n.Status == "alive" {
				alive++
			}
		}
		return err == nil && alive == 2
	}, herdtest.DefaultTimeout, "the two TLS agents seeing each other")
	cancel()
	for _, d := range []chan error{doneA, doneB} {
		if err := <-d; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
}
