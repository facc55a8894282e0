package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// credentials lives in the state directory as PEM files plus a token file.
// A restart in the same directory reuses them, so a client keeps trusting
// the server and keeps its token.
type credentials struct {
	caPEM      []byte // the CA that signed the serving and the client certificate
	clientCert []byte // CN=admin, O=system:masters
	clientKey  []byte // PKCS#8
	token      string // static bearer token of user "admin"
}

var credentialFiles = []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "token"}

func loadOrCreateCredentials(dir string) (*credentials, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for _, name := range credentialFiles {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			if err := createCredentials(dir); err != nil {
				return nil, err
			}
			break
		}
	}
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	c := &credentials{}
	var err error
	if c.caPEM, err = read("ca.crt"); err != nil {
		return nil, err
	}
	if c.clientCert, err = read("client.crt"); err != nil {
		return nil, err
	}
	if c.clientKey, err = read("client.key"); err != nil {
		return nil, err
	}
	tok, err := read("token")
	if err != nil {
		return nil, err
	}
	c.token = strings.TrimSpace(string(tok))
	return c, nil
}

// certSpec describes one certificate to issue.
type certSpec struct {
	commonName string
	orgs       []string
	usage      x509.ExtKeyUsage
	dnsNames   []string
	ips        []net.IP
}

func createCredentials(dir string) error {
	notBefore := time.Now().Add(-1 * time.Hour) // tolerate a little clock skew
	notAfter := notBefore.Add(10 * 365 * 24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTemplate := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "cloudpods-testenv-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}

	issue := func(spec certSpec) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          randomSerial(),
			Subject:               pkix.Name{CommonName: spec.commonName, Organization: spec.orgs},
			NotBefore:             notBefore,
			NotAfter:              notAfter,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:           []x509.ExtKeyUsage{spec.usage},
			DNSNames:              spec.dnsNames,
			IPAddresses:           spec.ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return encodePEM("CERTIFICATE", der), encodePEM("PRIVATE KEY", keyDER), nil
	}

	serverCert, serverKey, err := issue(certSpec{
		commonName: "cloudpods-testenv-apiserver",
		usage:      x509.ExtKeyUsageServerAuth,
		dnsNames:   []string{"localhost"},
		ips:        []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
	if err != nil {
		return err
	}
	clientCert, clientKey, err := issue(certSpec{
		commonName: "admin",
		orgs:       []string{"system:masters"},
		usage:      x509.ExtKeyUsageClientAuth,
	})
	if err != nil {
		return err
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	if err != nil {
		return err
	}
	token := make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return err
	}

	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"ca.crt", encodePEM("CERTIFICATE", caDER), 0o644},
		{"ca.key", encodePEM("PRIVATE KEY", caKeyDER), 0o600},
		{"server.crt", serverCert, 0o644},
		{"server.key", serverKey, 0o600},
		{"client.crt", clientCert, 0o644},
		{"client.key", clientKey, 0o600},
		{"token", []byte(hex.EncodeToString(token)), 0o600},
	}
	for _, f := range files {
		if err := replaceFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func encodePEM(blockType string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
}

// replaceFile writes through a temporary file and a rename, so a reader
// never sees a half-written file.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp := fmt.Sprintf("%s.tmp.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeKubeconfig writes DIR/kubeconfig, then DIR/server-url (wait-ready
// takes the latter as the sign that the kubeconfig is complete).
//
// Contexts: "cloudpods-testenv" (current; bearer token; namespace default)
// and "cloudpods-testenv-cert" (client certificate).
func writeKubeconfig(dir, serverURL string, c *credentials) error {
	enc := base64.StdEncoding.EncodeToString
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\n")
	fmt.Fprintf(&b, "clusters:\n- name: cloudpods-testenv\n  cluster:\n")
	fmt.Fprintf(&b, "    server: %s\n    certificate-authority-data: %s\n", serverURL, enc(c.caPEM))
	fmt.Fprintf(&b, "users:\n- name: admin\n  user:\n    token: %s\n", c.token)
	fmt.Fprintf(&b, "- name: admin-cert\n  user:\n    client-certificate-data: %s\n    client-key-data: %s\n",
		enc(c.clientCert), enc(c.clientKey))
	fmt.Fprintf(&b, "contexts:\n")
	for _, ctx := range []struct{ name, user string }{
		{"cloudpods-testenv", "admin"},
		{"cloudpods-testenv-cert", "admin-cert"},
	} {
		fmt.Fprintf(&b, "- name: %s\n  context:\n    cluster: cloudpods-testenv\n    user: %s\n    namespace: default\n",
			ctx.name, ctx.user)
	}
	fmt.Fprintf(&b, "current-context: cloudpods-testenv\npreferences: {}\n")
	if err := replaceFile(filepath.Join(dir, "kubeconfig"), []byte(b.String()), 0o600); err != nil {
		return err
	}
	return replaceFile(filepath.Join(dir, "server-url"), []byte(serverURL+"\n"), 0o644)
}
