package main

import (
	"fmt"
	"os"
	"strconv"
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
		// Still full: every further publish fails too, and the server keeps serving reads.
		for i := 0; i < 3; i++ {
			if err := sc.Publish("disk", payload(acked+1)); err == nil {
				fail("a publish succeeded on a full disk")
			}
		}
		expectExactly(sc, acked)
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
