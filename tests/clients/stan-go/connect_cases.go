package main

import (
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 1. ConnectResponse subjects; ping fields echo the request for protocol 1 only.
	cases["item01_connect_response"] = func() {
		nc := natsConn()
		for _, proto := range []int32{1, 0} {
			req := &pb.ConnectRequest{ClientID: "c1-" + string(rune('a'+proto)), HeartbeatInbox: nats.NewInbox(), Protocol: proto, ConnID: []byte(nats.NewInbox()), PingInterval: 7, PingMaxOut: 9}
			m := request(nc, "_STAN.discover."+clusterID, marshal(req))
			r := &pb.ConnectResponse{}
			must(r.Unmarshal(m.Data), "decode")
			cid := clusterID
			if r.PubPrefix != "_STAN.pub."+cid || r.SubRequests != "_STAN.sub."+cid || r.UnsubRequests != "_STAN.unsub."+cid ||
				r.SubCloseRequests != "_STAN.subclose."+cid || r.CloseRequests != "_STAN.close."+cid || r.Protocol != 1 || r.Error != "" {
				fail("protocol %d: bad response %+v", proto, r)
			}
			if proto == 1 && (r.PingRequests != "_STAN.discover."+cid+".pings" || r.PingInterval != 7 || r.PingMaxOut != 9) {
				fail("protocol 1 ping fields: %+v", r)
			}
			if proto == 0 && (r.PingRequests != "" || r.PingInterval != 0 || r.PingMaxOut != 0) {
				fail("protocol 0 must not carry ping fields: %+v", r)
			}
		}
	}
	// 2. Another cluster ID gets no reply (the client fails); run against a server whose
	// discover_prefix is _X.disc, the moved subject answers.
	cases["item02_other_cluster_no_reply"] = func() {
		_, err := stan.Connect("not-"+clusterID, "c2", stan.NatsURL(url), stan.ConnectWait(500*time.Millisecond))
		if err == nil {
			fail("connect to another cluster ID succeeded")
		}
	}
	cases["item02_discover_prefix"] = func() {
		nc := natsConn()
		req := &pb.ConnectRequest{ClientID: "c2b", HeartbeatInbox: nats.NewInbox(), Protocol: 1}
		if _, err := nc.Request("_STAN.discover."+clusterID, marshal(req), 500*time.Millisecond); err == nil {
			fail("the default discover subject answered")
		}
		m := request(nc, "_X.disc."+clusterID, marshal(req))
		r := &pb.ConnectResponse{}
		must(r.Unmarshal(m.Data), "decode")
		if r.Error != "" || r.PubPrefix == "" {
			fail("moved discover subject: %+v", r)
		}
	}
	// 3. Undecodable payload or empty heartbeat inbox.
	cases["item03_invalid_connect"] = func() {
		nc := natsConn()
		for _, data := range [][]byte{[]byte("dummy"), marshal(&pb.ConnectRequest{ClientID: "c3"})} {
			m := request(nc, "_STAN.discover."+clusterID, data)
			r := &pb.ConnectResponse{}
			must(r.Unmarshal(m.Data), "decode")
			if r.Error != "stan: invalid connection request" || r.PubPrefix != "" {
				fail("got %+v", r)
			}
		}
	}
	// 4. Client ID characters.
	cases["item04_invalid_client_id"] = func() {
		_, err := stan.Connect(clusterID, "bad id!", stan.NatsURL(url), stan.ConnectWait(wait))
		expectErr(err, "stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed")
	}
	// 5. A live owner keeps its ID.
	cases["item05_duplicate_client_id"] = func() {
		sc := connect("c5")
		defer sc.Close()
		_, err := stan.Connect(clusterID, "c5", stan.NatsURL(url), stan.ConnectWait(wait))
		expectErr(err, "stan: clientID already registered")
	}
	// 6. A silent owner is replaced after ~0.5 s; its durable can be resumed by the new one.
	cases["item06_replace_dead_client"] = func() {
		old := rawConnect("c6", false)
		pubber := connect("c6-pub")
		defer pubber.Close()
		inbox := nats.NewInbox()
		sr := subReq("c6", "ch6", inbox)
		sr.DurableName = "dur"
		sr.MaxInFlight = 1
		if r := old.sub(sr); r.Error != "" {
			fail("raw durable: %s", r.Error)
		}
		publishN(pubber, "ch6", 3)
		start := time.Now()
		c := newCollector()
		sc := connect("c6")
		defer sc.Close()
		took := time.Since(start)
		// Nobody subscribes to the old heartbeat inbox: no responders, replaced at once
		// (issue 22.8; the reference does not wait the 500 ms probe either).
		if took > 300*time.Millisecond {
			fail("replaced after %v, expected no wait: nobody can answer the probe", took)
		}
		_, err := sc.Subscribe("ch6", c.cb, stan.DurableName("dur"))
		must(err, "resume durable")
		m := c.next("pending message of the old client")
		if m.Sequence != 1 || !m.Redelivered {
			fail("first resumed message: seq=%d redelivered=%v", m.Sequence, m.Redelivered)
		}
		expectSeqs(c.seqs(2, "rest"), 2, 3)
	}
	// 7. Heartbeats: a client that never answers is removed; then its publishes and pings fail.
	// Run with -hbi 200ms -hbt 100ms -hbf 1.
	cases["item07_heartbeat_removal"] = func() {
		r := rawConnect("c7", false)
		if ack := r.pub("ch7", "g1", []byte("x")); ack.Error != "" {
			fail("publish while registered: %s", ack.Error)
		}
		// Count the heartbeats on the (unanswered) inbox while waiting for removal.
		hbs := 0
		_, err := r.nc.Subscribe(r.hb, func(m *nats.Msg) { hbs++ })
		must(err, "watch hb")
		deadline := time.Now().Add(4 * time.Second)
		for {
			ack := r.pub("ch7", "g2", []byte("x"))
			if ack.Error == "stan: invalid publish request" {
				break
			}
			if time.Now().After(deadline) {
				fail("client not removed after heartbeats failed (saw %d heartbeats)", hbs)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if hbs < 2 {
			fail("expected at least 2 heartbeats before removal, saw %d", hbs)
		}
		m := request(r.nc, r.resp.PingRequests, marshal(&pb.Ping{ConnID: r.connID}))
		pr := &pb.PingResponse{}
		must(pr.Unmarshal(m.Data), "ping response")
		if pr.Error != "client has been replaced or is no longer registered" {
			fail("ping after removal: %q", pr.Error)
		}
	}
	// 7b. A client that answers stays.
	cases["item07_heartbeat_kept"] = func() {
		r := rawConnect("c7b", true)
		time.Sleep(1500 * time.Millisecond)
		if ack := r.pub("ch7b", "g1", []byte("x")); ack.Error != "" {
			fail("answering client was removed: %s", ack.Error)
		}
	}
	// 8. PINGs.
	cases["item08_pings"] = func() {
		r := rawConnect("c8", true)
		m := request(r.nc, r.resp.PingRequests, marshal(&pb.Ping{ConnID: r.connID}))
		if len(m.Data) != 0 {
			fail("ping of a known connection: %d bytes", len(m.Data))
		}
		m = request(r.nc, r.resp.PingRequests, marshal(&pb.Ping{ConnID: []byte("unknown")}))
		pr := &pb.PingResponse{}
		must(pr.Unmarshal(m.Data), "decode")
		if pr.Error != "client has been replaced or is no longer registered" {
			fail("unknown connID: %q", pr.Error)
		}
		if _, err := r.nc.Request(r.resp.PingRequests, nil, 500*time.Millisecond); err == nil {
			fail("an empty PING got a reply")
		}
	}
	// 9. Close.
	cases["item09_close"] = func() {
		r := rawConnect("c9", true)
		closeOnce := func(data []byte) string {
			m := request(r.nc, r.resp.CloseRequests, data)
			cr := &pb.CloseResponse{}
			must(cr.Unmarshal(m.Data), "decode")
			return cr.Error
		}
		if e := closeOnce(marshal(&pb.CloseRequest{ClientID: "c9"})); e != "" {
			fail("close: %q", e)
		}
		if e := closeOnce(marshal(&pb.CloseRequest{ClientID: "c9"})); e != "stan: unknown clientID" {
			fail("second close: %q", e)
		}
		if e := closeOnce([]byte("dummy")); e != "stan: invalid close request" {
			fail("garbage close: %q", e)
		}
		// stan.go's own Close works too.
		sc := connect("c9b")
		must(sc.Close(), "stan close")
	}
}
