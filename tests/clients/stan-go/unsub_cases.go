package main

import (
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 38. Unsubscribe / close errors, on both subjects.
	cases["item38_unsubscribe_errors"] = func() {
		r := rawConnect("c38", true)
		other := rawConnect("c38other", true)
		inbox := nats.NewInbox()
		resp := r.sub(subReq("c38", "ch38", inbox))
		for _, subject := range []string{r.resp.UnsubRequests, r.resp.SubCloseRequests} {
			check := func(what string, data []byte, want string) {
				got := subResp(r.nc, subject, data)
				if got.Error != want {
					fail("%s on %s: got %q, want %q", what, subject, got.Error, want)
				}
			}
			check("garbage", []byte("dummy"), "stan: invalid unsubscribe request")
			check("unknown channel", marshal(&pb.UnsubscribeRequest{ClientID: "c38", Subject: "nope", Inbox: resp.AckInbox}), "stan: unknown channel")
			check("wrong inbox", marshal(&pb.UnsubscribeRequest{ClientID: "c38", Subject: "ch38", Inbox: "_INBOX.nope"}), "stan: invalid subscription")
			check("not the owner", marshal(&pb.UnsubscribeRequest{ClientID: other.id, Subject: "ch38", Inbox: resp.AckInbox}), "stan: unknown clientID")
		}
	}
	// 39. Naming the subscription by its delivery inbox works too.
	cases["item39_unsubscribe_by_delivery_inbox"] = func() {
		r := rawConnect("c39", true)
		inbox := nats.NewInbox()
		ch := make(chan *nats.Msg, 10)
		_, err := r.nc.ChanSubscribe(inbox, ch)
		must(err, "inbox")
		r.sub(subReq("c39", "ch39", inbox))
		got := subResp(r.nc, r.resp.UnsubRequests, marshal(&pb.UnsubscribeRequest{ClientID: "c39", Subject: "ch39", Inbox: inbox}))
		if got.Error != "" {
			fail("unsubscribe by delivery inbox: %q", got.Error)
		}
		r.pub("ch39", "g", []byte("x"))
		select {
		case <-ch:
			fail("delivered after unsubscribe")
		case <-time.After(300 * time.Millisecond):
		}
	}
	// 41. Connection close removes plain subscriptions and keeps durables (offline).
	cases["item41_connection_close"] = func() {
		r := rawConnect("c41", true)
		plainInbox, durInbox := nats.NewInbox(), nats.NewInbox()
		plain := make(chan *nats.Msg, 10)
		_, err := r.nc.ChanSubscribe(plainInbox, plain)
		must(err, "sub")
		r.sub(subReq("c41", "ch41", plainInbox))
		dreq := subReq("c41", "ch41", durInbox)
		dreq.DurableName = "d"
		r.sub(dreq)
		request(r.nc, r.resp.CloseRequests, marshal(&pb.CloseRequest{ClientID: "c41"}))
		pub := connect("c41-pub")
		defer pub.Close()
		publishN(pub, "ch41", 2)
		select {
		case <-plain:
			fail("plain subscription still delivered after connection close")
		case <-time.After(300 * time.Millisecond):
		}
		sc := connect("c41")
		defer sc.Close()
		c := newCollector()
		_, err = sc.Subscribe("ch41", c.cb, stan.DurableName("d"))
		must(err, "resume")
		expectSeqs(c.seqs(2, "durable kept"), 1, 2)
		// Plain subscriptions count toward max_subs no more: this channel now holds the
		// durable only (checked with -msu 2 by the caller: one more fits).
		_, err = sc.Subscribe("ch41", func(*stan.Msg) {})
		must(err, "a new plain subscription fits")
	}
}
