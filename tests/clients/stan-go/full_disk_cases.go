package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	stan "github.com/nats-io/stan.go"
)

// The FILE store on a full disk: publishes get error PubAcks, what was acknowledged is all
// there and still readable, and nothing unacknowledged shows up.
func init() {
	payload := func(i int) []byte {
		b := make([]byte, 2048)
		copy(b, fmt.Sprintf("msg-%d-", i))
		return b
	}
	// expectExactly subscribes from the start and checks sequences 1..n with their payloads,
	// then that nothing else comes.
	expectExactly := func(sc stan.Conn, n int) {
		col := newCollector()
		sub, err := sc.Subscribe("disk", col.cb, stan.DeliverAllAvailable(), stan.MaxInflight(4096))
		must(err, "subscribe")
		defer sub.Unsubscribe()
		for i := 1; i <= n; i++ {
			m := col.next(fmt.Sprintf("message %d of %d", i, n))
			if m.Sequence != uint64(i) || string(m.Data[:len(fmt.Sprintf("msg-%d-", i))]) != fmt.Sprintf("msg-%d-", i) {
				fail("message %d: sequence %d data %q", i, m.Sequence, m.Data[:16])
			}
		}
		col.none(500*time.Millisecond, "after the acknowledged messages")
	}
	cases["full_disk_publish"] = func() {
		sc := connect("filler")
		defer sc.Close()
		// A reader subscribed while there is room: it keeps being served on the full disk.
		reader := newCollector()
		rsub, err := sc.Subscribe("disk", reader.cb, stan.DeliverAllAvailable(), stan.MaxInflight(8192))
		must(err, "reader")
		acked := 0
		var refused error
		for i := 1; i <= 5000; i++ {
			if err := sc.Publish("disk", payload(i)); err != nil {
				refused = err
				break
			}
			acked++
		}
		if refused == nil {
			fail("5000 publishes of 2 KiB fitted: the disk is not small enough")
		}
		// Still full: every further publish fails too.
		for i := 0; i < 3; i++ {
			if err := sc.Publish("disk", payload(acked+1)); err == nil {
				fail("a publish succeeded on a full disk")
			}
		}
		// The reader got exactly the acknowledged messages.
		for i := 1; i <= acked; i++ {
			if m := reader.next(fmt.Sprintf("message %d of %d", i, acked)); m.Sequence != uint64(i) {
				fail("reader: message %d has sequence %d", i, m.Sequence)
			}
		}
		reader.none(500*time.Millisecond, "after the acknowledged messages")
		// Issue 21.4: a subscription that cannot be stored is refused, not confirmed and lost.
		// Its record (8 KiB of durable name) needs pages the full disk does not have.
		late := "late-" + strings.Repeat("x", 8192)
		_, err = sc.Subscribe("disk", func(*stan.Msg) {}, stan.DeliverAllAvailable(), stan.DurableName(late))
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "no space left on device") {
			fail("a durable on a full disk: got %v, want the no-space error", err)
		}
		must(rsub.Close(), "close the reader")
		fmt.Printf("acked %d refused %q\n", acked, refused.Error())
	}
	cases["full_disk_verify"] = func() {
		n, err := strconv.Atoi(os.Getenv("STANZA_COUNT"))
		must(err, "STANZA_COUNT")
		sc := connect("verifier")
		defer sc.Close()
		expectExactly(sc, n)
		// With room again, publishing goes on right after the acknowledged ones.
		must(sc.Publish("disk", payload(n+1)), "publish after making room")
		expectExactly(sc, n+1)
	}
}
