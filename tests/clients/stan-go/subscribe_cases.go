package main

import (
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 15. Subscription request errors in the reference's order; no channel is created for
	// an unknown client.
	cases["item15_subscription_errors"] = func() {
		r := rawConnect("c15", true)
		check := func(what string, data []byte, want string) {
			resp := subResp(r.nc, r.resp.SubRequests, data)
			if resp.Error != want {
				fail("%s: got %q, want %q", what, resp.Error, want)
			}
		}
		base := func() *pb.SubscriptionRequest { return subReq("c15", "ch15", nats.NewInbox()) }
		check("bad payload", []byte("dummy"), "stan: invalid subscription request")
		req := base()
		req.ClientID = ""
		req.AckWaitInSecs = 0
		check("client missing first", marshal(req), "stan: clientID missing")
		req = base()
		req.AckWaitInSecs = 0
		req.MaxInFlight = 0
		check("ack wait before window", marshal(req), "stan: invalid ack wait time, should be >= 1s")
		req = base()
		req.MaxInFlight = 0
		req.StartPosition = 9
		check("window before start", marshal(req), "stan: invalid MaxInflight, should be >= 1")
		req = base()
		req.StartPosition = 9
		req.Subject = "foo.*"
		check("start before subject", marshal(req), "stan: invalid start position")
		req = base()
		req.Subject = "foo.*"
		check("wildcard subject", marshal(req), "stan: invalid subject")
		req = base()
		req.ClientID = "ghost"
		req.Subject = "never.created"
		check("unknown client", marshal(req), "stan: unknown clientID")
		// The channel was not created: a NewOnly subscribe from a real client then a publish
		// starts at sequence 1 (a created channel would too, so check via first publish seq).
		if ack := r.pub("never.created", "g", []byte("x")); ack.Error != "" {
			fail("publish: %s", ack.Error)
		}
	}
	// 16. The reply carries an ack inbox and comes before any message.
	cases["item16_reply_before_messages"] = func() {
		r := rawConnect("c16", true)
		for i := 0; i < 5; i++ {
			r.pub("ch16", "g", []byte("x"))
		}
		prefix := nats.NewInbox()
		ch := make(chan *nats.Msg, 100)
		_, err := r.nc.ChanSubscribe(prefix+".>", ch)
		must(err, "sub")
		req := subReq("c16", "ch16", prefix+".deliver")
		must(r.nc.PublishRequest(r.resp.SubRequests, prefix+".reply", marshal(req)), "request")
		first := nextRaw(ch, "first")
		if first.Subject != prefix+".reply" {
			fail("a message arrived before the subscription response")
		}
		resp := &pb.SubscriptionResponse{}
		must(resp.Unmarshal(first.Data), "decode")
		if resp.AckInbox == "" || resp.Error != "" {
			fail("response: %+v", resp)
		}
		for i := 0; i < 5; i++ {
			if m := nextRaw(ch, "delivery"); m.Subject != prefix+".deliver" {
				fail("unexpected %s", m.Subject)
			}
		}
	}
	// 17. NewOnly, LastReceived, First.
	cases["item17_start_positions"] = func() {
		sc := connect("c17")
		defer sc.Close()
		publishN(sc, "ch17", 5)
		newOnly, last, first := newCollector(), newCollector(), newCollector()
		_, err := sc.Subscribe("ch17", newOnly.cb)
		must(err, "new only")
		_, err = sc.Subscribe("ch17", last.cb, stan.StartWithLastReceived())
		must(err, "last")
		_, err = sc.Subscribe("ch17", first.cb, stan.DeliverAllAvailable())
		must(err, "first")
		expectSeqs(first.seqs(5, "first"), 1, 2, 3, 4, 5)
		expectSeqs(last.seqs(1, "last"), 5)
		newOnly.none(200*time.Millisecond, "new only before a publish")
		publishN(sc, "ch17", 1)
		expectSeqs(newOnly.seqs(1, "new only"), 6)
		expectSeqs(last.seqs(1, "last, then new"), 6)
	}
	// 18. SequenceStart clamping (run with -mm 5 so that first > 1).
	cases["item18_sequence_start"] = func() {
		sc := connect("c18")
		defer sc.Close()
		publishN(sc, "ch18", 8) // keeps 4..8
		check := func(start uint64, want ...uint64) {
			c := newCollector()
			sub, err := sc.Subscribe("ch18", c.cb, stan.StartAtSequence(start))
			must(err, "subscribe")
			if len(want) == 0 {
				c.none(200*time.Millisecond, "start beyond last")
			} else {
				expectSeqs(c.seqs(len(want), "replay"), want...)
			}
			sub.Unsubscribe()
		}
		check(1, 4, 5, 6, 7, 8)
		check(0, 4, 5, 6, 7, 8)
		check(6, 6, 7, 8)
		check(99)
	}
	// 19. TimeDeltaStart.
	cases["item19_time_delta"] = func() {
		sc := connect("c19")
		defer sc.Close()
		publishN(sc, "ch19", 3)
		time.Sleep(1500 * time.Millisecond)
		publishN(sc, "ch19", 2)
		recent, all, future := newCollector(), newCollector(), newCollector()
		_, err := sc.Subscribe("ch19", recent.cb, stan.StartAtTimeDelta(time.Second))
		must(err, "recent")
		expectSeqs(recent.seqs(2, "recent"), 4, 5)
		recent.none(200*time.Millisecond, "only the recent two")
		_, err = sc.Subscribe("ch19", all.cb, stan.StartAtTimeDelta(time.Hour))
		must(err, "all")
		expectSeqs(all.seqs(5, "all"), 1, 2, 3, 4, 5)
		_, err = sc.Subscribe("ch19", future.cb, stan.StartAtTime(time.Now().Add(time.Hour)))
		must(err, "future")
		future.none(200*time.Millisecond, "start after the last message")
		publishN(sc, "ch19", 1)
		expectSeqs(future.seqs(1, "new"), 6)
	}
	// 21. max_subs (run with -msu 1).
	cases["item21_max_subs"] = func() {
		sc := connect("c21")
		defer sc.Close()
		_, err := sc.Subscribe("ch21", func(*stan.Msg) {})
		must(err, "first")
		_, err = sc.Subscribe("ch21", func(*stan.Msg) {})
		expectErr(err, "too many subscriptions per channel")
	}
}
