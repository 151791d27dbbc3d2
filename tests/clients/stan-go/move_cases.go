package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
)

func init() {
	// A connection moves, once, to the core of the channel of its first publish (about half of
	// these clients land elsewhere on two cores). Each client then has publishes in flight to
	// that channel and a core NATS subscription, and subscribes to another channel which a
	// publisher keeps feeding: every PubAck comes back without error, the subscriber gets
	// every message exactly once and in order, and core NATS works both ways. Half of the
	// clients subscribe first, so that their connection moves for the subscription.
	cases["connections_move_to_their_channel"] = func() {
		const clients = 12
		const stored = 300
		const live = 300
		feeder := connect("mv-feeder")
		defer feeder.Close()
		for i := 0; i < clients; i++ {
			publishN(feeder, fmt.Sprintf("mv.read.%d", i), stored)
		}
		var wg sync.WaitGroup
		errs := make(chan string, clients*4)
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				moveOne(i, stored, live, feeder, errs)
			}(i)
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			fail("%s", e)
		}
	}
}

func moveOne(i, stored, live int, feeder stan.Conn, errs chan<- string) {
	id := fmt.Sprintf("mv-%d", i)
	readCh := fmt.Sprintf("mv.read.%d", i)
	sc := connect(id)
	defer sc.Close()
	nc := sc.NatsConn()
	echoSubject := fmt.Sprintf("mv.echo.%d", i)
	echo, err := nc.Subscribe(echoSubject, func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		errs <- id + ": core subscription: " + err.Error()
		return
	}
	defer echo.Unsubscribe()
	must(nc.Flush(), "flush")

	// Even clients publish first (their connection moves at the first publish, with the rest
	// of the publishes and their PubAcks in flight, and the subscription follows); odd ones
	// subscribe first (the move happens at the subscription, with deliveries starting).
	var acked, ackErrs atomic.Int64
	pubDone := make(chan struct{})
	const inflight = 500
	publish := func() bool {
		for n := 0; n < inflight; n++ {
			_, err := sc.PublishAsync(fmt.Sprintf("mv.write.%d", i), []byte("w"), func(_ string, err error) {
				if err != nil {
					ackErrs.Add(1)
				}
				if acked.Add(1) == inflight {
					close(pubDone)
				}
			})
			if err != nil {
				errs <- id + ": publish: " + err.Error()
				return false
			}
		}
		return true
	}
	if i%2 == 0 && !publish() {
		return
	}
	got := make(chan uint64, stored+live+10)
	_, err = sc.Subscribe(readCh, func(m *stan.Msg) { got <- m.Sequence }, stan.DeliverAllAvailable())
	if err != nil {
		errs <- id + ": subscribe: " + err.Error()
		return
	}
	if i%2 == 1 && !publish() {
		return
	}
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		for n := 0; n < live; n++ {
			if err := feeder.Publish(readCh, []byte("live")); err != nil {
				errs <- id + ": feed: " + err.Error()
				return
			}
		}
	}()
	for want := uint64(1); want <= uint64(stored+live); want++ {
		select {
		case seq := <-got:
			if seq != want {
				errs <- fmt.Sprintf("%s: got sequence %d, want %d", id, seq, want)
				return
			}
		case <-time.After(wait):
			errs <- fmt.Sprintf("%s: timed out waiting for sequence %d", id, want)
			return
		}
	}
	<-feedDone
	select {
	case seq := <-got:
		errs <- fmt.Sprintf("%s: extra delivery of sequence %d", id, seq)
		return
	case <-time.After(200 * time.Millisecond):
	}
	select {
	case <-pubDone:
	case <-time.After(wait):
		errs <- fmt.Sprintf("%s: %d of %d PubAcks", id, acked.Load(), inflight)
		return
	}
	if n := ackErrs.Load(); n > 0 {
		errs <- fmt.Sprintf("%s: %d PubAcks with an error", id, n)
		return
	}
	// Core NATS both ways on the moved connection: another connection requests, this one
	// answers; this one requests, the feeder's connection answers.
	other := natsConn()
	defer other.Close()
	if reply, err := other.Request(echoSubject, []byte("ping"), wait); err != nil || string(reply.Data) != "ping" {
		errs <- fmt.Sprintf("%s: request to the moved connection: %v", id, err)
		return
	}
	answer := fmt.Sprintf("mv.answer.%d", i)
	resp, err := other.Subscribe(answer, func(m *nats.Msg) { _ = m.Respond([]byte("pong")) })
	if err != nil {
		errs <- id + ": answer subscription: " + err.Error()
		return
	}
	defer resp.Unsubscribe()
	must(other.Flush(), "flush")
	if reply, err := nc.Request(answer, []byte("x"), wait); err != nil || string(reply.Data) != "pong" {
		errs <- fmt.Sprintf("%s: request from the moved connection: %v", id, err)
	}
}
