package main

import (
	"os/exec"
	"strings"
	"time"

	stan "github.com/nats-io/stan.go"
)

func init() {
	// 42. max_msgs (run with -mm 5): after 5+3 publishes, First starts at 4.
	cases["item42_max_msgs"] = func() {
		sc := connect("c42")
		defer sc.Close()
		publishN(sc, "ch42", 8)
		c := newCollector()
		_, err := sc.Subscribe("ch42", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe")
		expectSeqs(c.seqs(5, "kept"), 4, 5, 6, 7, 8)
		c.none(200*time.Millisecond, "nothing older")
	}
	// 43. max_bytes keeps at least the newest message (run with -mb 100).
	cases["item43_max_bytes_keeps_newest"] = func() {
		sc := connect("c43")
		defer sc.Close()
		big := make([]byte, 500)
		for i := 0; i < 3; i++ {
			must(sc.Publish("ch43", big), "publish")
		}
		c := newCollector()
		_, err := sc.Subscribe("ch43", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe")
		expectSeqs(c.seqs(1, "newest"), 3)
		c.none(200*time.Millisecond, "older ones")
	}
	// 44. max_age (run with -ma 1s): messages expire, sequences continue.
	cases["item44_max_age"] = func() {
		sc := connect("c44")
		defer sc.Close()
		publishN(sc, "ch44", 3)
		time.Sleep(2200 * time.Millisecond)
		c := newCollector()
		_, err := sc.Subscribe("ch44", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe")
		c.none(300*time.Millisecond, "expired messages")
		publishN(sc, "ch44", 1)
		expectSeqs(c.seqs(1, "new"), 4)
	}
	// 45. Per-channel limits with wildcards (config: max_msgs 10; "foo.>": max_msgs 2;
	// "foo.bar.>": max_age 0 (unlimited), inherits 2).
	cases["item45_per_channel_limits"] = func() {
		sc := connect("c45")
		defer sc.Close()
		for _, ch := range []string{"foo", "foo.bar", "foo.bar.baz"} {
			publishN(sc, ch, 5)
		}
		count := func(ch string) int {
			c := newCollector()
			sub, err := sc.Subscribe(ch, c.cb, stan.DeliverAllAvailable())
			must(err, "subscribe")
			defer sub.Unsubscribe()
			n := 0
			for {
				select {
				case <-c.ch:
					n++
				case <-time.After(300 * time.Millisecond):
					return n
				}
			}
		}
		if n := count("foo"); n != 5 {
			fail("foo (global limit 10) kept %d", n)
		}
		if n := count("foo.bar"); n != 2 {
			fail("foo.bar (foo.>: 2) kept %d", n)
		}
		if n := count("foo.bar.baz"); n != 2 {
			fail("foo.bar.baz (inherits 2) kept %d", n)
		}
	}
	// 46. max_inactivity (run with -mi 1s): an idle channel is deleted and starts again at 1;
	// an active subscription keeps it.
	cases["item46_max_inactivity"] = func() {
		sc := connect("c46")
		defer sc.Close()
		publishN(sc, "idle", 2)
		publishN(sc, "busy", 2)
		_, err := sc.Subscribe("busy", func(*stan.Msg) {})
		must(err, "subscribe")
		time.Sleep(2500 * time.Millisecond)
		c := newCollector()
		_, err = sc.Subscribe("idle", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe idle")
		c.none(300*time.Millisecond, "a deleted channel has no messages")
		publishN(sc, "idle", 1)
		expectSeqs(c.seqs(1, "recreated"), 1)
		b := newCollector()
		_, err = sc.Subscribe("busy", b.cb, stan.DeliverAllAvailable())
		must(err, "subscribe busy")
		expectSeqs(b.seqs(2, "kept by its subscription"), 1, 2)
	}
	// 60. The Go reference server, pointed at stanza's NATS with the same cluster ID, finds
	// stanza answering its standalone probe and refuses to start.
	cases["item60_go_server_sees_stanza"] = func() {
		out, err := exec.Command("nats-streaming-server", "-ns", url, "-cid", clusterID, "-m", "0").CombinedOutput()
		if err == nil {
			fail("the Go server started next to stanza:\n%s", out)
		}
		if !strings.Contains(string(out), `discovered another streaming server with cluster ID "`+clusterID+`"`) {
			fail("unexpected Go server output:\n%s", out)
		}
	}
}
