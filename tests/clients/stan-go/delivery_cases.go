package main

import (
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 22. The window: exactly N without acks; one ack releases one more.
	cases["item22_max_inflight"] = func() {
		sc := connect("c22")
		defer sc.Close()
		publishN(sc, "ch22", 10)
		c := newCollector()
		_, err := sc.Subscribe("ch22", c.cb, stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.MaxInflight(3), stan.AckWait(30*time.Second))
		must(err, "subscribe")
		got := []*stan.Msg{c.next("1"), c.next("2"), c.next("3")}
		c.none(400*time.Millisecond, "stalled at 3")
		must(got[0].Ack(), "ack")
		m := c.next("released")
		if m.Sequence != 4 {
			fail("released seq %d", m.Sequence)
		}
		c.none(300*time.Millisecond, "one ack, one message")
	}
	// 23. Bad acks are ignored and everything stays healthy.
	cases["item23_bad_acks_ignored"] = func() {
		r := rawConnect("c23", true)
		inbox := nats.NewInbox()
		ch := make(chan *nats.Msg, 100)
		_, err := r.nc.ChanSubscribe(inbox, ch)
		must(err, "inbox")
		req := subReq("c23", "ch23", inbox)
		req.MaxInFlight = 1
		resp := r.sub(req)
		r.pub("ch23", "g1", []byte("a"))
		r.pub("ch23", "g2", []byte("b"))
		decodeMsg(nextRaw(ch, "first"))
		ack := func(subject, channel string, seq uint64) {
			must(r.nc.Publish(subject, marshal(&pb.Ack{Subject: channel, Sequence: seq})), "ack")
		}
		ack(resp.AckInbox, "ch23", 99)
		ack(resp.AckInbox, "nochannel", 1)
		ack("_INBOX.unknown", "ch23", 1)
		ack(resp.AckInbox+"x", "ch23", 1)
		must(r.nc.Publish(resp.AckInbox, []byte("dummy")), "garbage ack")
		select {
		case m := <-ch:
			fail("a bad ack released seq %d", decodeMsg(m).Sequence)
		case <-time.After(300 * time.Millisecond):
		}
		ack(resp.AckInbox, "ch23", 1)
		if mp := decodeMsg(nextRaw(ch, "second")); mp.Sequence != 2 {
			fail("after the good ack: seq %d", mp.Sequence)
		}
	}
	// 24. Redelivery every ackWait with counts, even while stalled; an ack stops it.
	cases["item24_redelivery"] = func() {
		sc := connect("c24")
		defer sc.Close()
		publishN(sc, "ch24", 2)
		c := newCollector()
		_, err := sc.Subscribe("ch24", c.cb, stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.MaxInflight(1), stan.AckWait(time.Second))
		must(err, "subscribe")
		first := c.next("first")
		if first.Sequence != 1 || first.Redelivered {
			fail("first: %d %v", first.Sequence, first.Redelivered)
		}
		start := time.Now()
		for n := uint32(1); n <= 2; n++ {
			m := c.next("redelivery")
			if m.Sequence != 1 || !m.Redelivered || m.RedeliveryCount != n {
				fail("redelivery %d: seq %d redelivered %v count %d", n, m.Sequence, m.Redelivered, m.RedeliveryCount)
			}
		}
		if took := time.Since(start); took < 1500*time.Millisecond || took > 3500*time.Millisecond {
			fail("two redeliveries took %v, expected about 2 s", took)
		}
		must(first.Ack(), "ack")
		m := c.next("next after ack")
		if m.Sequence != 2 {
			fail("after ack: seq %d", m.Sequence)
		}
		must(m.Ack(), "ack 2")
		c.none(1500*time.Millisecond, "no more redelivery of acked messages")
	}
	// 25. A pending message dropped by a limit is not redelivered (run with -mm 1).
	cases["item25_dropped_not_redelivered"] = func() {
		sc := connect("c25")
		defer sc.Close()
		c := newCollector()
		_, err := sc.Subscribe("ch25", c.cb, stan.SetManualAckMode(), stan.MaxInflight(1), stan.AckWait(time.Second))
		must(err, "subscribe")
		publishN(sc, "ch25", 1)
		if m := c.next("first"); m.Sequence != 1 {
			fail("first %d", m.Sequence)
		}
		publishN(sc, "ch25", 1) // drops seq 1 (max_msgs 1)
		m := c.next("after ack wait")
		if m.Sequence != 2 || m.Redelivered {
			fail("expected seq 2 first delivery, got seq %d redelivered %v", m.Sequence, m.Redelivered)
		}
	}
}
