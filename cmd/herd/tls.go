package main

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/herdkit/herd/internal/pki"
)

const tlsUsage = `Usage:
  herd tls init -dir DIR              create a cluster CA (ca.pem, ca-key.pem) and a gossip key (gossip.key)
  herd tls cert -dir DIR -name NODE   issue NODE.pem and NODE-key.pem, signed by DIR's CA

Flags:
`

var certName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// runTLS runs "herd tls init" and "herd tls cert".
func runTLS(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "init" && args[0] != "cert") {
		fmt.Fprint(stderr, tlsUsage)
		return 2
	}
	fs := flag.NewFlagSet("herd tls "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".", "directory of the CA and the files written")
	name := fs.String("name", "", "node name (cert), the certificate's common and DNS name; default CA name for init: herd-ca")
	hosts := fs.String("host", "127.0.0.1,localhost", "cert: more DNS names and IP addresses, comma-separated")
	days := fs.Int("days", 0, "validity in days (default 3650 for the CA, 825 for a node)")
	fs.Usage = func() { fmt.Fprint(stderr, tlsUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var err error
	if args[0] == "init" {
		err = tlsInit(*dir, *name, *days, stdout)
	} else {
		err = tlsCert(*dir, *name, *hosts, *days, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "herd tls %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func tlsInit(dir, name string, days int, stdout io.Writer) error {
	if name == "" {
		name = "herd-ca"
	}
	if days <= 0 {
		days = 3650
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "gossip.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("%s exists: not overwriting a cluster's CA", filepath.Join(dir, f))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := pki.NewCA(name, time.Duration(days)*24*time.Hour)
	if err != nil {
		return err
	}
	key, err := pki.KeyPEM(ca.Key)
	if err != nil {
		return err
	}
	gossip := make([]byte, 32)
	if _, err := rand.Read(gossip); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.pem", pki.CertPEM(ca.Cert), 0o644},
		{"ca-key.pem", key, 0o600},
		{"gossip.key", []byte(base64.StdEncoding.EncodeToString(gossip) + "\n"), 0o600},
	} {
		if err := writeNew(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote %s, %s (keep it secret) and %s (every node's -gossip-key-file)\n",
		filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"), filepath.Join(dir, "gossip.key"))
	return nil
}

func tlsCert(dir, name, hosts string, days int, stdout io.Writer) error {
	if !certName.MatchString(name) {
		return fmt.Errorf("-name %q: a node name (letters, digits, '.', '_', '-')", name)
	}
	if days <= 0 {
		days = 825
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return fmt.Errorf("the CA: %w (run herd tls init first)", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return fmt.Errorf("the CA's key: %w", err)
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		return err
	}
	var hs []string
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	cert, err := ca.Issue(name, hs, time.Duration(days)*24*time.Hour)
	if err != nil {
		return err
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("the issued key cannot sign")
	}
	key, err := pki.KeyPEM(signer)
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := writeNew(certFile, pki.CertPEM(cert.Leaf), 0o644); err != nil {
		return err
	}
	if err := writeNew(keyFile, key, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s: herd agent -name %s -tls-ca %s -tls-cert %s -tls-key %s\n",
		certFile, keyFile, name, filepath.Join(dir, "ca.pem"), certFile, keyFile)
	return nil
}
