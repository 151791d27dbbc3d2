package main

// Issue 22: behaviours where stanza differed from the reference server.

import (
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 22.4: closing an already-closed durable, or the last member of a durable queue group a
	// second time, answers "stan: invalid subscription".
	cases["ref_close_closed_durable"] = func() {
		r := rawConnect("r-close", true)
		dur := subReq("r-close", "r-close-ch", nats.NewInbox())
		dur.DurableName = "d"
		dresp := r.sub(dur)
		qdur := subReq("r-close", "r-close-ch", nats.NewInbox())
		qdur.DurableName = "qd"
		qdur.QGroup = "grp"
		qresp := r.sub(qdur)
		if dresp.Error != "" || qresp.Error != "" {
			fail("subscribe: %q %q", dresp.Error, qresp.Error)
		}
		for _, ack := range []string{dresp.AckInbox, qresp.AckInbox} {
			req := marshal(&pb.UnsubscribeRequest{ClientID: "r-close", Subject: "r-close-ch", Inbox: ack})
			if got := subResp(r.nc, r.resp.SubCloseRequests, req); got.Error != "" {
				fail("first close: %q", got.Error)
			}
			if got := subResp(r.nc, r.resp.SubCloseRequests, req); got.Error != "stan: invalid subscription" {
				fail("second close: got %q, want %q", got.Error, "stan: invalid subscription")
			}
			if got := subResp(r.nc, r.resp.UnsubRequests, req); got.Error != "stan: invalid subscription" {
				fail("unsubscribe after close: got %q, want %q", got.Error, "stan: invalid subscription")
			}
		}
	}
}

func init() {
	// 22.8: a connect with the ID of a client whose heartbeat inbox has a subscriber that does
	// not answer waits the 500 ms probe; with no subscriber at all it is answered at once.
	cases["ref_duplicate_probe_waits_only_for_a_listener"] = func() {
		silent := rawConnect("r-probe-silent", false)
		_, err := silent.nc.Subscribe(silent.hb, func(*nats.Msg) {})
		must(err, "silent hb subscription")
		must(silent.nc.Flush(), "flush")
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		sc := connect("r-probe-silent")
		took := time.Since(start)
		sc.Close()
		if took < 400*time.Millisecond {
			fail("a listener that does not answer: replaced after %v, expected the 500 ms probe", took)
		}
		rawConnect("r-probe-gone", false).nc.Close()
		time.Sleep(100 * time.Millisecond)
		start = time.Now()
		sc = connect("r-probe-gone")
		took = time.Since(start)
		sc.Close()
		if took > 300*time.Millisecond {
			fail("no listener: replaced after %v, expected no wait", took)
		}
	}
}

func init() {
	// 22.6: a small session whose server-side log lines the harness checks: connect, publish,
	// subscribe, deliver, ack, redeliver, unsubscribe, close.
	cases["ref_logged_session"] = func() {
		sc := connect("r-logged")
		publishN(sc, "r-logged-ch", 2)
		c := newCollector()
		sub, err := sc.Subscribe("r-logged-ch", func(m *stan.Msg) {
			if m.Sequence == 2 && !m.Redelivered {
				c.cb(m) // not acked: redelivered after the ack wait
				return
			}
			must(m.Ack(), "ack")
			c.cb(m)
		}, stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.AckWait(time.Second))
		must(err, "subscribe")
		c.seqs(3, "two deliveries and a redelivery")
		must(sub.Unsubscribe(), "unsubscribe")
		must(sc.Close(), "close")
	}
}
