package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	stan "github.com/nats-io/stan.go"
)

// Partitioning (issue 16.5, conformance 67): several servers share the cluster ID, each
// serving its own channels. Through one NATS URL the client publishes to and subscribes on
// every channel of STANZA_CHANNELS (wherever its server is), and a publish or a subscription
// on STANZA_UNOWNED (served by nobody) gets no answer.
func init() {
	cases["partition_channels"] = func() {
		sc := connect("part-client", stan.PubAckWait(2*time.Second))
		for _, channel := range strings.Split(os.Getenv("STANZA_CHANNELS"), ",") {
			c := newCollector()
			// New messages only: the case runs against each node of one cluster in turn.
			sub, err := sc.Subscribe(channel, c.cb)
			must(err, "subscribe "+channel)
			for i := 1; i <= 3; i++ {
				must(sc.Publish(channel, []byte(fmt.Sprintf("%s-%d", channel, i))), "publish on "+channel)
			}
			var first uint64
			for i := 1; i <= 3; i++ {
				m := c.next(channel)
				if i == 1 {
					first = m.Sequence
				}
				if want := fmt.Sprintf("%s-%d", channel, i); string(m.Data) != want || m.Sequence != first+uint64(i-1) {
					fail("%s: got seq %d %q, want %d %q", channel, m.Sequence, m.Data, first+uint64(i-1), want)
				}
			}
			must(sub.Unsubscribe(), "unsubscribe "+channel)
		}
		unowned := os.Getenv("STANZA_UNOWNED")
		expectErr(sc.Publish(unowned, []byte("x")), stan.ErrTimeout.Error())
		_, err := sc.Subscribe(unowned, func(*stan.Msg) {})
		expectErr(err, stan.ErrSubReqTimeout.Error())
		must(sc.Close(), "close")
		// Every server closed the client: its ID connects again at once.
		connect("part-client").Close()
	}
}
