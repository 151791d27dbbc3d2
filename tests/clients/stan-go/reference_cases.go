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

func init() {
	// 22.1: plain NATS subscribers on _STAN.> (two connections, so likely on both cores) see
	// the requests clients send to the streaming server: connect, publish (with clientID and
	// connID), subscribe, pings, close.
	cases["ref_streaming_subjects_are_visible"] = func() {
		type sniffer struct {
			ch chan *nats.Msg
		}
		var sniffers []sniffer
		for i := 0; i < 2; i++ {
			nc := natsConn()
			defer nc.Close()
			s := sniffer{ch: make(chan *nats.Msg, 1000)}
			_, err := nc.ChanSubscribe("_STAN.>", s.ch)
			must(err, "sniff")
			must(nc.Flush(), "flush")
			sniffers = append(sniffers, s)
		}
		pings := natsConn()
		defer pings.Close()
		pingCh := make(chan *nats.Msg, 100)
		_, err := pings.ChanSubscribe("_STAN.discover."+clusterID+".pings", pingCh)
		must(err, "pings sub")
		must(pings.Flush(), "flush")
		time.Sleep(200 * time.Millisecond)
		sc := connect("r-visible", stan.Pings(1, 5))
		must(sc.Publish("r-visible-ch", []byte("hello")), "publish")
		sub, err := sc.Subscribe("r-visible-ch", func(*stan.Msg) {})
		must(err, "subscribe")
		must(sub.Close(), "close sub")
		nextRaw(pingCh, "a client ping on the pings subject")
		must(sc.Close(), "close")
		for i, s := range sniffers {
			seen := map[string]bool{}
			deadline := time.After(wait)
		collect:
			for {
				select {
				case m := <-s.ch:
					seen[m.Subject] = true
					if m.Subject == "_STAN.pub."+clusterID+".r-visible-ch" {
						pm := &pb.PubMsg{}
						must(pm.Unmarshal(m.Data), "sniffed PubMsg")
						if pm.ClientID != "r-visible" || len(pm.ConnID) == 0 {
							fail("sniffer %d: PubMsg clientID=%q connID=%q", i, pm.ClientID, pm.ConnID)
						}
					}
					if seen["_STAN.close."+clusterID] {
						break collect
					}
				case <-deadline:
					break collect
				}
			}
			for _, want := range []string{
				"_STAN.discover." + clusterID,
				"_STAN.pub." + clusterID + ".r-visible-ch",
				"_STAN.sub." + clusterID,
				"_STAN.subclose." + clusterID,
				"_STAN.discover." + clusterID + ".pings",
				"_STAN.close." + clusterID,
			} {
				if !seen[want] {
					fail("sniffer %d did not see %s (saw %v)", i, want, seen)
				}
			}
		}
	}
}
