package main

import (
	"fmt"
	"time"

	stan "github.com/nats-io/stan.go"
)

func init() {
	// External NATS mode: publishes keep being acknowledged across a restart of the NATS
	// server (the harness restarts it about 1 s in), and every acknowledged message is then
	// delivered (duplicates allowed, loss not).
	cases["external_publish_through_restart"] = func() {
		sc := connect("ext-pub", stan.PubAckWait(2*time.Second), stan.Pings(1, 30))
		const n = 400
		acked := map[string]bool{}
		deadline := time.Now().Add(40 * time.Second)
		for i := 1; i <= n; i++ {
			data := fmt.Sprintf("m-%d", i)
			for {
				if err := sc.Publish("restart", []byte(data)); err == nil {
					acked[data] = true
					break
				}
				if time.Now().After(deadline) {
					fail("publish %d never acknowledged", i)
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(8 * time.Millisecond)
		}
		c := newCollector()
		_, err := sc.Subscribe("restart", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe")
		seen := map[string]bool{}
		for len(seen) < len(acked) {
			m := c.next(fmt.Sprintf("replay (%d of %d acknowledged seen)", len(seen), len(acked)))
			seen[string(m.Data)] = true
		}
		sc.Close()
	}
}
