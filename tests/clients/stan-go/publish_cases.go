package main

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 10. PubAcks, gap-free sequences, non-decreasing timestamps.
	cases["item10_publish_sequences"] = func() {
		sc := connect("c10")
		defer sc.Close()
		publishN(sc, "ch10", 200)
		c := newCollector()
		_, err := sc.Subscribe("ch10", c.cb, stan.DeliverAllAvailable())
		must(err, "subscribe")
		var lastTs int64
		for i := 1; i <= 200; i++ {
			m := c.next("replay")
			if m.Sequence != uint64(i) || string(m.Data) != fmt.Sprintf("msg-%d", i) {
				fail("message %d: seq %d data %q", i, m.Sequence, m.Data)
			}
			if m.Timestamp < lastTs {
				fail("timestamp went down at %d", i)
			}
			lastTs = m.Timestamp
		}
	}
	// 11. Invalid publishes.
	cases["item11_invalid_publish"] = func() {
		r := rawConnect("c11", true)
		want := "stan: invalid publish request"
		check := func(what string, ack *pb.PubAck) {
			if ack.Error != want {
				fail("%s: got %q", what, ack.Error)
			}
		}
		check("unknown client", r.pubMsg("ch11", &pb.PubMsg{ClientID: "nobody", Guid: "g", Subject: "ch11"}))
		check("replaced connID", r.pubMsg("ch11", &pb.PubMsg{ClientID: "c11", Guid: "g", Subject: "ch11", ConnID: []byte("old")}))
		check("empty guid", r.pubMsg("ch11", &pb.PubMsg{ClientID: "c11", Subject: "ch11", ConnID: r.connID}))
		for _, bad := range []string{".foo", "foo..bar", "foo.", "a/b", "foo.*", "foo.>"} {
			check("channel "+bad, r.pubMsg(bad, &pb.PubMsg{ClientID: "c11", Guid: "g", Subject: bad, ConnID: r.connID}))
		}
		// stanza routes by the subject suffix: a PubMsg naming another channel is refused.
		check("subject disagrees with suffix", r.pubMsg("ch11", &pb.PubMsg{ClientID: "c11", Guid: "g", Subject: "other", ConnID: r.connID}))
		m := request(r.nc, r.resp.PubPrefix+".ch11", []byte("dummy"))
		ack := &pb.PubAck{}
		must(ack.Unmarshal(m.Data), "decode")
		check("bad payload", ack)
		if ack := r.pub("ch11", "good", []byte("x")); ack.Error != "" || ack.Guid != "good" {
			fail("valid publish: %+v", ack)
		}
	}
	// 12a. max_channels=1 (run with -mc 1).
	cases["item12_max_channels"] = func() {
		sc := connect("c12")
		defer sc.Close()
		must(sc.Publish("first", []byte("x")), "first channel")
		expectErr(sc.Publish("second", []byte("x")), "too many channels")
		_, err := sc.Subscribe("third", func(*stan.Msg) {})
		expectErr(err, "too many channels")
	}
	// 12b. Channels that differ only by case.
	cases["item12_case_conflict"] = func() {
		sc := connect("c12b")
		defer sc.Close()
		must(sc.Publish("foo", []byte("x")), "foo")
		expectErr(sc.Publish("Foo", []byte("x")), `rejecting channel "Foo" because channel "foo" alreay exists (different cases not allowed)`)
	}
	// 14. A rejected publish is never delivered; an accepted one is.
	cases["item14_rejected_never_delivered"] = func() {
		sc := connect("c14")
		defer sc.Close()
		c := newCollector()
		_, err := sc.Subscribe("ch14", c.cb)
		must(err, "subscribe")
		r := rawConnect("c14raw", true)
		if ack := r.pubMsg("ch14", &pb.PubMsg{ClientID: "c14raw", Subject: "ch14", ConnID: r.connID, Data: []byte("no guid")}); ack.Error == "" {
			fail("publish without guid accepted")
		}
		must(sc.Publish("ch14", []byte("good")), "publish")
		m := c.next("good message")
		if string(m.Data) != "good" || m.Sequence != 1 {
			fail("got seq %d %q", m.Sequence, m.Data)
		}
		c.none(300*time.Millisecond, "after the good one")
	}
	// 20. MsgProto fields, reply copied from PubMsg.reply.
	cases["item20_msg_fields"] = func() {
		r := rawConnect("c20", true)
		inbox := nats.NewInbox()
		ch := make(chan *nats.Msg, 10)
		_, err := r.nc.ChanSubscribe(inbox, ch)
		must(err, "inbox")
		if resp := r.sub(subReq("c20", "ch20", inbox)); resp.Error != "" {
			fail("sub: %s", resp.Error)
		}
		before := time.Now().UnixNano()
		if ack := r.pubMsg("ch20", &pb.PubMsg{ClientID: "c20", Guid: "g", Subject: "ch20", Reply: "answer.here", Data: []byte("payload"), ConnID: r.connID}); ack.Error != "" {
			fail("pub: %s", ack.Error)
		}
		mp := decodeMsg(nextRaw(ch, "delivery"))
		if mp.Sequence != 1 || mp.Subject != "ch20" || string(mp.Data) != "payload" || mp.Reply != "answer.here" || mp.Redelivered || mp.RedeliveryCount != 0 {
			fail("MsgProto: %+v", mp)
		}
		if mp.Timestamp < before-int64(time.Second) || mp.Timestamp > time.Now().UnixNano()+int64(time.Second) {
			fail("timestamp %d not near now", mp.Timestamp)
		}
	}
}
