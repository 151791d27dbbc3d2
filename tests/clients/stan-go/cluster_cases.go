package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
)

// Raft clustering, conformance 65 and 63, the client part. A durable created with the default
// start (new messages only) receives 4 and 5 and acks them; the harness then kills every node
// of the cluster with SIGKILL and restarts them all ("ready", then a line on stdin). The
// durable, resumed on the same STAN connection, gets 6 next: nothing skipped, nothing
// repeated. Then the harness kills two of the three nodes ("ready" again, a line): with no
// quorum, every publish fails (an error or no PubAck), never a success.
func init() {
	cases["cluster_restart_and_no_quorum"] = func() {
		stdin := bufio.NewReader(os.Stdin)
		waitHarness := func() {
			fmt.Println("ready")
			if _, err := stdin.ReadString('\n'); err != nil {
				fail("waiting for the harness: %v", err)
			}
		}
		// No server may serve at the moment (an election): try again.
		retry := func(what string, f func() error) {
			deadline := time.Now().Add(30 * time.Second)
			for {
				err := f()
				if err == nil {
					return
				}
				if time.Now().After(deadline) {
					fail("%s: %v", what, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		var sc stan.Conn
		retry("connect", func() error {
			var err error
			sc, err = stan.Connect(clusterID, "restarted", stan.NatsURL(url), stan.ConnectWait(wait),
				stan.PubAckWait(2*time.Second),
				stan.NatsOptions(nats.Timeout(wait), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond)))
			return err
		})
		for i := 1; i <= 3; i++ {
			retry("publish before the durable", func() error { return sc.Publish("newonly", []byte(fmt.Sprint(i))) })
		}
		got := make(chan *stan.Msg, 100)
		var dur stan.Subscription
		retry("durable subscribe", func() error {
			var err error
			dur, err = sc.Subscribe("newonly", func(m *stan.Msg) { got <- m }, stan.DurableName("dur"),
				stan.SetManualAckMode(), stan.AckWait(2*time.Second))
			return err
		})
		for i := 4; i <= 5; i++ {
			retry("publish", func() error { return sc.Publish("newonly", []byte(fmt.Sprint(i))) })
		}
		for want := uint64(4); want <= 5; want++ {
			select {
			case m := <-got:
				if m.Sequence != want {
					fail("durable before the restart: seq %d, want %d", m.Sequence, want)
				}
				must(m.Ack(), "ack")
			case <-time.After(3 * wait):
				fail("durable before the restart: nothing received")
			}
		}
		time.Sleep(500 * time.Millisecond)
		must(dur.Close(), "close the durable")
		waitHarness()

		retry("publish after the restart", func() error { return sc.Publish("newonly", []byte("6")) })
		retry("resume the durable", func() error {
			var err error
			_, err = sc.Subscribe("newonly", func(m *stan.Msg) { got <- m }, stan.DurableName("dur"),
				stan.SetManualAckMode(), stan.AckWait(2*time.Second))
			return err
		})
		select {
		case m := <-got:
			if m.Sequence != 6 {
				fail("resumed durable after the cluster's restart: seq %d, want 6", m.Sequence)
			}
			must(m.Ack(), "ack 6")
		case <-time.After(3 * wait):
			fail("resumed durable: nothing received")
		}
		waitHarness()

		for i := 0; i < 5; i++ {
			if err := sc.Publish("newonly", []byte("no quorum")); err == nil {
				fail("a publish succeeded without a quorum")
			}
		}
		fmt.Println("done")
	}
}

// Publishes $STANZA_COUNT messages synchronously (each its own raft entry) on
// $STANZA_CHANNEL; with $STANZA_DURABLE set, a durable of that name receives and acks them
// all first, then closes (it stays, with its position, in the subscription log).
func init() {
	cases["publish_sync"] = func() {
		channel := os.Getenv("STANZA_CHANNEL")
		count, err := strconv.Atoi(os.Getenv("STANZA_COUNT"))
		must(err, "STANZA_COUNT")
		sc := connect("sync-publisher")
		got := make(chan *stan.Msg, count)
		var dur stan.Subscription
		if name := os.Getenv("STANZA_DURABLE"); name != "" {
			dur, err = sc.Subscribe(channel, func(m *stan.Msg) { got <- m; _ = m.Ack() },
				stan.DurableName(name), stan.SetManualAckMode(), stan.MaxInflight(count))
			must(err, "durable subscribe")
		}
		for i := 0; i < count; i++ {
			must(sc.Publish(channel, []byte(fmt.Sprint(i))), "publish")
		}
		if dur != nil {
			for i := 0; i < count; i++ {
				select {
				case <-got:
				case <-time.After(3 * wait):
					fail("durable: %d of %d received", i, count)
				}
			}
			time.Sleep(300 * time.Millisecond)
			must(dur.Close(), "close the durable")
		}
		must(sc.Close(), "close")
	}
}

// Connects and closes $STANZA_COUNT clients one after another (each a registration and a
// removal in the metadata group), then leaves one more connected.
func init() {
	cases["connect_many"] = func() {
		count, err := strconv.Atoi(os.Getenv("STANZA_COUNT"))
		must(err, "STANZA_COUNT")
		for i := 0; i < count; i++ {
			sc := connect(fmt.Sprintf("many-%d", i))
			must(sc.Close(), "close")
		}
	}
}
