package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
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

// Conformance 48 and 31 on the FILE store: subscriptions and their pending acks survive a
// kill -9, and an offline durable survives a clean restart. Between the phases the harness
// restarts the server on the same port and writes a line to stdin.
func init() {
	cases["subscriptions_survive_restart"] = func() {
		stdin := bufio.NewReader(os.Stdin)
		restarted := func() {
			if _, err := stdin.ReadString('\n'); err != nil {
				fail("waiting for the restart: %v", err)
			}
		}
		reconnecting := stan.NatsOptions(nats.Timeout(wait), nats.MaxReconnects(-1),
			nats.ReconnectWait(100*time.Millisecond))
		sc := connect("subs-survivor", reconnecting)
		for i := 1; i <= 5; i++ {
			must(sc.Publish("subs48", []byte(fmt.Sprint(i))), "publish")
		}
		durMsgs := make(chan *stan.Msg, 100)
		dur, err := sc.Subscribe("subs48", func(m *stan.Msg) { durMsgs <- m },
			stan.DurableName("dur"), stan.DeliverAllAvailable(), stan.SetManualAckMode(),
			stan.AckWait(time.Second), stan.MaxInflight(10))
		must(err, "durable subscribe")
		plainMsgs := make(chan *stan.Msg, 100)
		_, err = sc.Subscribe("subs48", func(m *stan.Msg) { plainMsgs <- m; _ = m.Ack() },
			stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.AckWait(time.Second))
		must(err, "plain subscribe")
		next := func(ch chan *stan.Msg, what string) *stan.Msg {
			select {
			case m := <-ch:
				return m
			case <-time.After(3 * wait):
				fail("%s: nothing received", what)
			}
			return nil
		}
		for i := 1; i <= 5; i++ {
			m := next(durMsgs, "durable before the restart")
			if m.Sequence <= 2 {
				must(m.Ack(), "ack")
			}
			next(plainMsgs, "plain before the restart")
		}
		// Acks are plain NATS publishes: give them time to reach the server's log.
		time.Sleep(500 * time.Millisecond)
		fmt.Println("ready")
		restarted()

		// 3, 4 and 5 come back flagged (the redelivery at start-up went nowhere while the
		// client was reconnecting; the next one, an ack wait later, arrives).
		seen := map[uint64]bool{}
		for len(seen) < 3 {
			m := next(durMsgs, "durable redelivery after the restart")
			if m.Sequence < 3 || m.Sequence > 5 || !m.Redelivered {
				fail("durable after the restart: seq %d redelivered=%v", m.Sequence, m.Redelivered)
			}
			seen[m.Sequence] = true
			must(m.Ack(), "ack")
		}
		must(sc.Publish("subs48", []byte("6")), "publish after the restart")
		for {
			m := next(durMsgs, "durable: the new message")
			if m.Sequence == 6 {
				must(m.Ack(), "ack 6")
				break
			}
			if m.Sequence < 3 {
				fail("durable: acked message %d came back", m.Sequence)
			}
		}
		if m := next(plainMsgs, "plain: the new message"); m.Sequence != 6 {
			fail("plain subscription after the restart: got seq %d, want 6 (all before were acked)", m.Sequence)
		}
		must(dur.Close(), "close the durable")
		must(sc.Publish("subs48", []byte("7")), "publish while the durable is offline")
		time.Sleep(300 * time.Millisecond)
		fmt.Println("ready")
		restarted()

		// Clean restart: the offline durable resumes at 7 under a new connection of the client.
		for deadline := time.Now().Add(2 * wait); ; {
			if err = sc.Close(); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		must(err, "close the first connection")
		again := connect("subs-survivor")
		resumed := make(chan *stan.Msg, 100)
		_, err = again.Subscribe("subs48", func(m *stan.Msg) { resumed <- m },
			stan.DurableName("dur"), stan.DeliverAllAvailable(), stan.SetManualAckMode(),
			stan.AckWait(time.Second))
		must(err, "resume the durable")
		if m := next(resumed, "resumed durable"); m.Sequence != 7 {
			fail("resumed durable: got seq %d, want 7", m.Sequence)
		}
		must(again.Close(), "close")
		fmt.Println("done")
	}
}

// Reads channel $STANZA_CHANNEL from the start and prints the sequences received, once
// $STANZA_COUNT arrived or nothing came for a second: "seqs 1,2,3".
func init() {
	cases["channel_seqs"] = func() {
		want, err := strconv.Atoi(os.Getenv("STANZA_COUNT"))
		must(err, "STANZA_COUNT")
		sc := connect("channel-reader")
		defer sc.Close()
		got := make(chan uint64, want+16)
		_, err = sc.Subscribe(os.Getenv("STANZA_CHANNEL"), func(m *stan.Msg) { got <- m.Sequence },
			stan.DeliverAllAvailable())
		must(err, "subscribe")
		var seqs []string
		for len(seqs) < want {
			select {
			case s := <-got:
				seqs = append(seqs, strconv.FormatUint(s, 10))
			case <-time.After(time.Second):
				fmt.Println("seqs " + strings.Join(seqs, ","))
				return
			}
		}
		fmt.Println("seqs " + strings.Join(seqs, ","))
	}
}

// Acks after a restart on another number of cores: subscriptions made before it keep the ack
// inboxes they were given (naming the core that owned the channel then, and an ID that may now
// be another subscription's); their acks must still count, so nothing acknowledged comes back.
// The harness restarts the server (with another --cores) when this prints "ready".
func init() {
	cases["acks_survive_a_core_count_change"] = func() {
		stdin := bufio.NewReader(os.Stdin)
		sc := connect("layout", stan.NatsOptions(nats.Timeout(wait), nats.MaxReconnects(-1),
			nats.ReconnectWait(100*time.Millisecond)))
		type seen struct {
			seqs        map[uint64]bool
			redelivered int
		}
		var mu sync.Mutex
		got := map[string]*seen{}
		const channels = 8
		for i := 0; i < channels; i++ {
			name := fmt.Sprintf("layout.%d", i)
			got[name] = &seen{seqs: map[uint64]bool{}}
			_, err := sc.Subscribe(name, func(m *stan.Msg) {
				mu.Lock()
				s := got[m.Subject]
				s.seqs[m.Sequence] = true
				if m.Redelivered {
					s.redelivered++
				}
				mu.Unlock()
				m.Ack()
			}, stan.SetManualAckMode(), stan.AckWait(time.Second))
			must(err, "subscribe "+name)
		}
		// Two restarts (the harness picks the core counts): each time every channel gets five
		// more messages, acknowledged as they come.
		for round := 1; round <= 2; round++ {
			fmt.Println("ready")
			if _, err := stdin.ReadString('\n'); err != nil {
				fail("waiting for the restart: %v", err)
			}
			for i := 0; i < channels; i++ {
				name := fmt.Sprintf("layout.%d", i)
				for n := 0; n < 5; n++ {
					var err error
					for deadline := time.Now().Add(2 * wait); time.Now().Before(deadline); {
						if err = sc.Publish(name, []byte("after")); err == nil {
							break
						}
						time.Sleep(100 * time.Millisecond)
					}
					must(err, "publish on "+name+" after the restart")
				}
			}
			deadline := time.Now().Add(wait)
			for {
				mu.Lock()
				all := true
				for _, s := range got {
					all = all && len(s.seqs) == 5*round
				}
				mu.Unlock()
				if all {
					break
				}
				if time.Now().After(deadline) {
					fail("round %d: not every message arrived", round)
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Two ack waits: an ack that did not count brings its message back by now.
			time.Sleep(2500 * time.Millisecond)
			mu.Lock()
			for name, s := range got {
				if s.redelivered > 0 {
					fail("round %d: %s: %d acknowledged messages were redelivered", round, name, s.redelivered)
				}
			}
			mu.Unlock()
		}
		must(sc.Close(), "close")
		fmt.Println("done")
	}
}
