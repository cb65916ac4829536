package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// TLS is the identity a node presents and the authority it trusts: mutual TLS
// with one cluster CA. A node's certificate must name the node (a DNS name
// or the common name equal to the node name), so a node cannot claim to be
// another.
type TLS struct {
	// CA verifies every peer's certificate.
	CA *x509.CertPool
	// Cert is this node's certificate and key, signed by the CA.
	Cert tls.Certificate
}

// ErrIdentity: a peer's certificate is not from the cluster CA, or does not
// name the node it claims to be.
var ErrIdentity = errors.New("transport: peer identity refused")

func (t *TLS) verify(cs tls.ConnectionState, name string, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: no certificate", ErrIdentity)
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: t.CA, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{usage},
	}); err != nil {
		return fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	if name != "" && !certNames(leaf, name) {
		return fmt.Errorf("%w: certificate is for %q %v, not node %q", ErrIdentity, leaf.Subject.CommonName, leaf.DNSNames, name)
	}
	return nil
}

func certNames(c *x509.Certificate, name string) bool {
	return slices.Contains(c.DNSNames, name) || c.Subject.CommonName == name
}

// server returns the acceptor's configuration: the peer's chain is checked
// here, its name once its hello says who it claims to be.
func (t *TLS) server() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.Cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return t.verify(cs, "", x509.ExtKeyUsageClientAuth)
		},
	}
}

// client returns the dialer's configuration for reaching node name.
func (t *TLS) client(name string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{t.Cert},
		// The chain and the name are checked by VerifyConnection, against
		// the cluster CA and the node name rather than a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return t.verify(cs, name, x509.ExtKeyUsageServerAuth)
		},
	}
}
