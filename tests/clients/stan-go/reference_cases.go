package main

// Issue 22: behaviours where stanza differed from the reference server.

import (
	"github.com/nats-io/nats.go"
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
