package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	nats "github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
)

// FT take-overs under load (issue 17): the URL is a comma-separated list of every node's client
// port, so the NATS connection moves to a live node when its own dies. The harness kills the
// active server again and again while this runs and creates STANZA_STOP_FILE when it is done.
func init() {
	cases["ft_failover_load"] = func() {
		stopFile := os.Getenv("STANZA_STOP_FILE")
		natsOpts := func(name string) stan.Option {
			return stan.NatsOptions(
				nats.Name(name),
				nats.Timeout(wait),
				nats.ReconnectWait(50*time.Millisecond),
				nats.MaxReconnects(-1),
			)
		}
		connectFT := func(id string, opts ...stan.Option) stan.Conn {
			opts = append([]stan.Option{stan.NatsURL(url), stan.ConnectWait(wait), natsOpts(id)}, opts...)
			// No server may be active at the moment (a take-over in progress): try again.
			deadline := time.Now().Add(30 * time.Second)
			for {
				sc, err := stan.Connect(clusterID, id, opts...)
				if err == nil {
					return sc
				}
				if time.Now().After(deadline) {
					fail("stan connect %s: %v", id, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		subscribeFT := func(what string, sub func() error) {
			deadline := time.Now().Add(30 * time.Second)
			for {
				err := sub()
				if err == nil {
					return
				}
				if time.Now().After(deadline) {
					fail("%s: %v", what, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		subs := connectFT("ft-subs")
		var mu sync.Mutex
		durable := map[string]int{}
		queued := map[string]int{}
		subscribeFT("durable", func() error {
			_, err := subs.Subscribe("ftload", func(m *stan.Msg) {
				mu.Lock()
				durable[string(m.Data)]++
				mu.Unlock()
				m.Ack()
			}, stan.DurableName("dur"), stan.DeliverAllAvailable(), stan.SetManualAckMode(),
				stan.AckWait(time.Second))
			return err
		})
		for i := 0; i < 2; i++ {
			subscribeFT("queue member", func() error {
				_, err := subs.QueueSubscribe("ftload", "workers", func(m *stan.Msg) {
					mu.Lock()
					queued[string(m.Data)]++
					mu.Unlock()
				}, stan.DurableName("qdur"), stan.DeliverAllAvailable(), stan.AckWait(time.Second))
				return err
			})
		}

		pub := connectFT("ft-pub", stan.MaxPubAcksInflight(64), stan.PubAckWait(2*time.Second))
		acked := map[string]bool{}
		var ackedOrder []string
		failedAcks := 0
		deadline := time.Now().Add(caseTimeout() - 45*time.Second)
		for i := 1; time.Now().Before(deadline); i++ {
			if _, err := os.Stat(stopFile); err == nil {
				break
			}
			data := fmt.Sprintf("m-%06d", i)
			_, err := pub.PublishAsync("ftload", []byte(data), func(_ string, err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failedAcks++
					return
				}
				acked[data] = true
				ackedOrder = append(ackedOrder, data)
			})
			if err != nil {
				// The connection is reconnecting: try the next one a little later.
				time.Sleep(20 * time.Millisecond)
				continue
			}
			time.Sleep(2 * time.Millisecond)
		}
		// Every acknowledgement in (or timed out) before checking.
		time.Sleep(3 * time.Second)
		mu.Lock()
		total := len(acked)
		mu.Unlock()
		if total < 100 {
			fail("only %d messages acknowledged", total)
		}

		// Every acknowledged message reaches the durable and the queue group (at least once:
		// redeliveries after a take-over are allowed, loss is not).
		missing := func(got map[string]int) []string {
			var out []string
			for d := range acked {
				if got[d] == 0 {
					out = append(out, d)
				}
			}
			return out
		}
		waitUntil := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			md, mq := missing(durable), missing(queued)
			mu.Unlock()
			if len(md) == 0 && len(mq) == 0 {
				break
			}
			if time.Now().After(waitUntil) {
				fail("after the take-overs: %d acked messages never reached the durable (e.g. %v), %d never reached the queue group (e.g. %v)",
					len(md), first(md), len(mq), first(mq))
			}
			time.Sleep(100 * time.Millisecond)
		}

		// The channel holds every acknowledged message exactly once, in publish order.
		check := connectFT("ft-check")
		got := make(chan *stan.Msg, 1<<20)
		subscribeFT("check", func() error {
			_, err := check.Subscribe("ftload", func(m *stan.Msg) { got <- m }, stan.DeliverAllAvailable(),
				stan.MaxInflight(10000))
			return err
		})
		seen := map[string]uint64{}
		var last uint64
		lastAcked := ""
		for len(seen) < total || len(got) > 0 {
			select {
			case m := <-got:
				if m.Redelivered {
					continue
				}
				if m.Sequence != last+1 {
					fail("sequence %d after %d", m.Sequence, last)
				}
				last = m.Sequence
				d := string(m.Data)
				if !acked[d] {
					continue // published while no server was active, then stored: allowed
				}
				if s, dup := seen[d]; dup {
					fail("%s stored twice (seq %d and %d)", d, s, m.Sequence)
				}
				if d < lastAcked {
					fail("%s (seq %d) after %s", d, m.Sequence, lastAcked)
				}
				lastAcked = d
				seen[d] = m.Sequence
			case <-time.After(10 * time.Second):
				var lost []string
				for d := range acked {
					if _, ok := seen[d]; !ok {
						lost = append(lost, d)
					}
				}
				fail("%d acknowledged messages are not in the channel (e.g. %v); read up to seq %d", len(lost), first(lost), last)
			}
		}
		fmt.Printf("acked %d, failed acks %d, stored %d\n", total, failedAcks, last)
		check.Close()
		pub.Close()
		subs.Close()
	}
}

func first(s []string) string {
	if len(s) > 5 {
		s = s[:5]
	}
	return strings.Join(s, " ")
}
