package main

import (
	"bufio"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
)

// Conformance 48, the client part: a client registered before a restart of a FILE-store
// server is still registered after it, with the same connection ID and heartbeat inbox.
// The harness restarts the server on the same port when this prints "ready", then writes a
// line to stdin.
func init() {
	cases["client_survives_restart"] = func() {
		sc := connect("survivor", stan.NatsOptions(nats.Timeout(wait), nats.MaxReconnects(-1),
			nats.ReconnectWait(100*time.Millisecond)))
		must(sc.Publish("kept", []byte("before")), "publish before the restart")
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fail("waiting for the restart: %v", err)
		}
		// nats.go reconnects by itself; the STAN session, and the connection ID each publish
		// carries, are those of before the restart.
		var err error
		for deadline := time.Now().Add(2 * wait); time.Now().Before(deadline); {
			if err = sc.Publish("kept", []byte("after")); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		must(err, "publish after the restart on the same STAN connection")
		// The heartbeat inbox came back too: the ID is still taken by a live client.
		_, err = stan.Connect(clusterID, "survivor", stan.NatsURL(url), stan.ConnectWait(wait),
			stan.NatsOptions(nats.Timeout(wait)))
		expectErr(err, "stan: clientID already registered")
		must(sc.Close(), "close")
		again := connect("survivor")
		must(again.Close(), "close the new client")
		fmt.Println("done")
	}
}
