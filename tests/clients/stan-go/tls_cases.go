package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
)

func tlsOptions(withCert bool) []nats.Option {
	opts := []nats.Option{nats.RootCAs(os.Getenv("STANZA_TLS_CA")), nats.Timeout(wait)}
	if withCert {
		opts = append(opts, nats.ClientCert(os.Getenv("STANZA_TLS_CERT"), os.Getenv("STANZA_TLS_KEY")))
	}
	return opts
}

func init() {
	// NATS and STAN over TLS with the test CA (and a client certificate when given).
	cases["tls_clients"] = func() {
		nc, err := nats.Connect(url, tlsOptions(os.Getenv("STANZA_TLS_CERT") != "")...)
		must(err, "TLS connect")
		if !nc.TLSRequired() {
			fail("server did not announce tls_required")
		}
		sub, err := nc.SubscribeSync("tls.core")
		must(err, "sub")
		must(nc.Publish("tls.core", []byte("hi")), "pub")
		m, err := sub.NextMsg(wait)
		must(err, "core message over TLS")
		if string(m.Data) != "hi" {
			fail("got %q", m.Data)
		}
		sc, err := stan.Connect(clusterID, "tls-client", stan.NatsConn(nc), stan.ConnectWait(wait))
		must(err, "STAN over TLS")
		publishN(sc, "tls.ch", 3)
		c := newCollector()
		_, err = sc.Subscribe("tls.ch", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe")
		expectSeqs(c.seqs(3, "over TLS"), 1, 2, 3)
		sc.Close()
		nc.Close()
	}
	// With verify on, a client without a certificate is refused.
	cases["tls_no_client_cert_refused"] = func() {
		nc, err := nats.Connect(url, tlsOptions(false)...)
		if err == nil {
			// TLS 1.3 reports the missing certificate after the handshake: the first
			// round trip fails.
			err = nc.FlushTimeout(2 * time.Second)
			nc.Close()
		}
		if err == nil {
			fail("a client without a certificate was accepted")
		}
	}
	// HTTPS monitoring answers with the test CA.
	cases["https_monitoring"] = func() {
		pem, err := os.ReadFile(os.Getenv("STANZA_TLS_CA"))
		must(err, "read CA")
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg := &tls.Config{RootCAs: pool}
		if cert := os.Getenv("STANZA_TLS_CERT"); cert != "" {
			kp, err := tls.LoadX509KeyPair(cert, os.Getenv("STANZA_TLS_KEY"))
			must(err, "client key pair")
			cfg.Certificates = []tls.Certificate{kp}
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: wait}
		resp, err := client.Get(os.Getenv("STANZA_HTTPS") + "/streaming/serverz")
		must(err, "HTTPS GET")
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(body) == 0 {
			fail("HTTPS: %d %q", resp.StatusCode, body)
		}
	}
}
