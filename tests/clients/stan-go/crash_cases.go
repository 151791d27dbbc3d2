package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	stan "github.com/nats-io/stan.go"
)

func init() {
	// Item 13, first half: publish as fast as acks allow and record every acknowledged index
	// in the file STANZA_ACK_FILE, until the server dies (the harness kill -9s it).
	cases["crash_publisher"] = func() {
		f, err := os.Create(os.Getenv("STANZA_ACK_FILE"))
		must(err, "ack file")
		defer f.Close()
		var mu sync.Mutex
		w := bufio.NewWriter(f)
		sc := connect("crash-pub", stan.MaxPubAcksInflight(256), stan.PubAckWait(2*time.Second))
		failed := make(chan struct{})
		var once sync.Once
		deadline := time.Now().Add(30 * time.Second)
		for i := 1; time.Now().Before(deadline); i++ {
			idx := i
			_, err := sc.PublishAsync("crash", []byte(fmt.Sprintf("m-%d", idx)), func(_ string, err error) {
				if err != nil {
					once.Do(func() { close(failed) })
					return
				}
				mu.Lock()
				fmt.Fprintln(w, idx)
				w.Flush()
				mu.Unlock()
			})
			if err != nil {
				break
			}
			select {
			case <-failed:
				return
			default:
			}
		}
	}
	// Item 13, second half: after the restart, the channel holds m-1 .. m-K in order, each
	// once, and K covers every index the publisher saw acknowledged (STANZA_ACK_FILE).
	cases["crash_verify"] = func() {
		f, err := os.Open(os.Getenv("STANZA_ACK_FILE"))
		must(err, "ack file")
		acked := map[int]bool{}
		maxAcked := 0
		s := bufio.NewScanner(f)
		for s.Scan() {
			n, err := strconv.Atoi(s.Text())
			if err != nil {
				continue // a line cut by the kill
			}
			acked[n] = true
			if n > maxAcked {
				maxAcked = n
			}
		}
		f.Close()
		sc := connect("crash-verify")
		defer sc.Close()
		c := newCollector()
		_, err = sc.Subscribe("crash", c.cb, stan.DeliverAllAvailable(), stan.MaxInflight(10000))
		must(err, "subscribe")
		got := 0
		for {
			select {
			case m := <-c.ch:
				got++
				if string(m.Data) != fmt.Sprintf("m-%d", got) || m.Sequence != uint64(got) {
					fail("message %d: seq %d data %q (gap, duplicate or reorder)", got, m.Sequence, m.Data)
				}
				continue
			case <-time.After(1500 * time.Millisecond):
			}
			break
		}
		if got < maxAcked {
			fail("only %d messages recovered, but %d was acknowledged (%d acks recorded)", got, maxAcked, len(acked))
		}
		fmt.Printf("recovered %d messages, highest acknowledged %d\n", got, maxAcked)
	}
}

func init() {
	// Publishes STANZA_COUNT messages to channel "fill" and waits for every PubAck.
	cases["fill_channel"] = func() {
		n, err := strconv.Atoi(os.Getenv("STANZA_COUNT"))
		must(err, "STANZA_COUNT")
		sc := connect("filler")
		defer sc.Close()
		publishN(sc, "fill", n)
	}
}
