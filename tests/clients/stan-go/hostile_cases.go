package main

// Issue 21: what a hostile but fair NATS client can try against the streaming server.

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

func init() {
	// 21.3: another connection acks a subscription's messages by guessing its ack inbox (the
	// handed-out inbox without its secret part: <prefix>.<shard>.<sub id>.<generation>).
	cases["hostile_forged_ack_is_ignored"] = func() {
		r := rawConnect("h-ack", true)
		inbox := nats.NewInbox()
		deliveries := make(chan *nats.Msg, 100)
		_, err := r.nc.ChanSubscribe(inbox, deliveries)
		must(err, "inbox")
		sr := subReq("h-ack", "h-ack-ch", inbox)
		sr.MaxInFlight = 1
		sr.AckWaitInSecs = 1
		resp := r.sub(sr)
		if resp.Error != "" {
			fail("subscribe: %s", resp.Error)
		}
		// _STAN.ack.<cluster>.<shard>.<id>.<generation>[.<tag>]
		parts := strings.Split(resp.AckInbox, ".")
		if len(parts) < 6 {
			fail("unexpected ack inbox %q", resp.AckInbox)
		}
		guessed := strings.Join(parts[:6], ".")
		if guessed == resp.AckInbox {
			fail("the ack inbox %q is guessable from its subscription id", resp.AckInbox)
		}
		if ack := r.pub("h-ack-ch", "g1", []byte("x")); ack.Error != "" {
			fail("publish: %s", ack.Error)
		}
		first := decodeMsg(nextRaw(deliveries, "first delivery"))
		forger := natsConn()
		defer forger.Close()
		for _, candidate := range []string{guessed, guessed + ".0", resp.AckInbox + "x"} {
			must(forger.Publish(candidate, marshal(&pb.Ack{Subject: "h-ack-ch", Sequence: first.Sequence})), "forged ack")
		}
		must(forger.Flush(), "flush")
		again := decodeMsg(nextRaw(deliveries, "redelivery after forged acks"))
		if again.Sequence != first.Sequence || !again.Redelivered {
			fail("expected redelivery of %d, got seq=%d redelivered=%v", first.Sequence, again.Sequence, again.Redelivered)
		}
		must(r.nc.Publish(resp.AckInbox, marshal(&pb.Ack{Subject: "h-ack-ch", Sequence: first.Sequence})), "real ack")
		must(r.nc.Flush(), "flush")
		select {
		case m := <-deliveries:
			fail("redelivered after the real ack: seq=%d", decodeMsg(m).Sequence)
		case <-time.After(2500 * time.Millisecond):
		}
	}
	// 21.3: a connection answers the duplicate-ID probe by spraying the server's reply inboxes
	// (_STAN.reply.<cluster>.<shard>.<n> with small n), so that a dead client's ID could never be
	// taken over. The probe's inbox is random: the take-over succeeds.
	cases["hostile_forged_probe_answer_is_ignored"] = func() {
		dead := rawConnect("h-probe", false)
		_ = dead
		forger := natsConn()
		defer forger.Close()
		var stop atomic.Bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			for !stop.Load() {
				for shard := 0; shard < 4; shard++ {
					for n := 0; n < 300; n++ {
						forger.Publish(fmt.Sprintf("_STAN.reply.%s.%d.%d", clusterID, shard, n), nil)
					}
				}
				forger.Flush()
			}
		}()
		sc, err := stan.Connect(clusterID, "h-probe", stan.NatsURL(url), stan.ConnectWait(wait), stan.NatsOptions(nats.Timeout(wait)))
		stop.Store(true)
		<-done
		if err != nil {
			fail("the dead client's ID could not be taken over while a forger answered guessed inboxes: %v", err)
		}
		sc.Close()
	}
}

// 21.1: fields longer than 65,535 bytes, made of two-byte characters, are stored whole: the
// server restarts (kill -9 in between) and knows the client and the durable. They were cut
// inside a character, and the next start refused the store.
func init() {
	cases["hostile_long_fields_survive_restart"] = func() {
		long := strings.Repeat("é", 35000)
		nc := natsConn()
		hb := "_INBOX." + long
		connID := []byte(nats.NewInbox())
		req := &pb.ConnectRequest{ClientID: "h-long", HeartbeatInbox: hb, Protocol: 1, ConnID: connID, PingInterval: 5, PingMaxOut: 10}
		var resp pb.ConnectResponse
		must(resp.Unmarshal(request(nc, "_STAN.discover."+clusterID, marshal(req)).Data), "connect response")
		if resp.Error != "" {
			fail("connect: %s", resp.Error)
		}
		r := &raw{nc: nc, hb: hb, connID: connID, resp: resp, id: "h-long"}
		sr := subReq("h-long", "h-long-ch", nats.NewInbox())
		sr.DurableName = "d" + long
		if got := r.sub(sr); got.Error != "" {
			fail("durable with a long name: %s", got.Error)
		}
		if ack := r.pub("h-long-ch", "g1", []byte("x")); ack.Error != "" {
			fail("publish: %s", ack.Error)
		}
		nc.Close()
		fmt.Println("ready")
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fail("waiting for the restart: %v", err)
		}
		r.nc = natsConn()
		defer r.nc.Close()
		if ack := r.pub("h-long-ch", "g2", []byte("y")); ack.Error != "" {
			fail("the client with the long heartbeat inbox is gone after the restart: %s", ack.Error)
		}
		if got := r.sub(sr); got.Error != "stan: duplicate durable registration" {
			fail("the durable with the long name after the restart: got %q", got.Error)
		}
		fmt.Println("done")
	}
}

// 21.7: a payload on the publish subject that is no PubMsg but decodes as one of the
// reference's control messages gets its error PubAck (it used to get nothing: the client
// waited for its timeout).
func init() {
	cases["hostile_control_message_on_publish_subject"] = func() {
		r := rawConnect("h-ctrl", true)
		for _, payload := range [][]byte{{0x08, 0x03}, {0x08, 0x01, 0x12, 0x01, 'x'}} {
			m := request(r.nc, r.resp.PubPrefix+".h-ctrl-ch", payload)
			ack := &pb.PubAck{}
			must(ack.Unmarshal(m.Data), "puback")
			if ack.Error != "stan: invalid publish request" {
				fail("payload %v: got %q", payload, ack.Error)
			}
		}
	}
}

// 21.4: on the file store, a channel whose name is too long for a directory name is refused
// (subscription and publish) with the system's error; the subscription was answered OK and
// lost at the next restart.
func init() {
	cases["hostile_channel_name_too_long_for_the_store"] = func() {
		sc := connect("h-longname")
		defer sc.Close()
		long := strings.Repeat("c", 300)
		_, err := sc.Subscribe(long, func(*stan.Msg) {}, stan.DurableName("d"))
		if err == nil || !strings.Contains(err.Error(), "mkdir ") || !strings.Contains(strings.ToLower(err.Error()), "too long") {
			fail("subscribe: got %v, want the mkdir error", err)
		}
		err = sc.Publish(long, []byte("x"))
		if err == nil || !strings.Contains(err.Error(), "mkdir ") {
			fail("publish: got %v, want the mkdir error", err)
		}
	}
}
