package main

import (
	"time"

	stan "github.com/nats-io/stan.go"
)

func init() {
	// 27. Close, publish more, resume: unacked first (redelivered), then unseen; the resume's
	// start position is ignored and its window applies.
	cases["item27_durable_resume"] = func() {
		sc := connect("c27")
		pub := connect("c27-pub")
		defer pub.Close()
		publishN(pub, "ch27", 3)
		c := newCollector()
		sub, err := sc.Subscribe("ch27", c.cb, stan.DurableName("d"), stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.MaxInflight(10))
		must(err, "subscribe")
		m1 := c.next("1")
		c.next("2")
		c.next("3")
		must(m1.Ack(), "ack 1")
		time.Sleep(100 * time.Millisecond)
		must(sub.Close(), "close durable")
		publishN(pub, "ch27", 2)
		c2 := newCollector()
		_, err = sc.Subscribe("ch27", c2.cb, stan.DurableName("d"), stan.StartWithLastReceived(), stan.SetManualAckMode(), stan.MaxInflight(10))
		must(err, "resume")
		for _, want := range []struct {
			seq uint64
			re  bool
		}{{2, true}, {3, true}, {4, false}, {5, false}} {
			m := c2.next("resumed")
			if m.Sequence != want.seq || m.Redelivered != want.re {
				fail("resumed: seq %d redelivered %v, want %d %v", m.Sequence, m.Redelivered, want.seq, want.re)
			}
		}
		sc.Close()
	}
	// 28. Unsubscribe deletes the durable: the next one uses its own start position.
	cases["item28_durable_unsubscribe"] = func() {
		sc := connect("c28")
		defer sc.Close()
		publishN(sc, "ch28", 3)
		c := newCollector()
		sub, err := sc.Subscribe("ch28", c.cb, stan.DurableName("d"), stan.DeliverAllAvailable())
		must(err, "subscribe")
		c.seqs(3, "first run")
		time.Sleep(100 * time.Millisecond)
		must(sub.Unsubscribe(), "unsubscribe")
		c2 := newCollector()
		_, err = sc.Subscribe("ch28", c2.cb, stan.DurableName("d"), stan.DeliverAllAvailable())
		must(err, "again")
		expectSeqs(c2.seqs(3, "fresh start"), 1, 2, 3)
	}
	// 29. Duplicate durable registration (29b runs with --replace_durable).
	cases["item29_duplicate_durable"] = func() {
		sc := connect("c29")
		defer sc.Close()
		_, err := sc.Subscribe("ch29", func(*stan.Msg) {}, stan.DurableName("d"))
		must(err, "first")
		_, err = sc.Subscribe("ch29", func(*stan.Msg) {}, stan.DurableName("d"))
		expectErr(err, "stan: duplicate durable registration")
	}
	cases["item29_replace_durable"] = func() {
		sc := connect("c29b")
		defer sc.Close()
		old, fresh := newCollector(), newCollector()
		_, err := sc.Subscribe("ch29", old.cb, stan.DurableName("d"))
		must(err, "first")
		_, err = sc.Subscribe("ch29", fresh.cb, stan.DurableName("d"))
		must(err, "replacing subscribe")
		publishN(sc, "ch29", 1)
		fresh.next("new inbox")
		old.none(300*time.Millisecond, "old inbox")
	}
	// 30. The same durable name under two client IDs: two durables.
	cases["item30_durable_per_client"] = func() {
		a, b := connect("c30a"), connect("c30b")
		defer a.Close()
		defer b.Close()
		ca, cb := newCollector(), newCollector()
		_, err := a.Subscribe("ch30", ca.cb, stan.DurableName("d"))
		must(err, "a")
		_, err = b.Subscribe("ch30", cb.cb, stan.DurableName("d"))
		must(err, "b")
		publishN(a, "ch30", 2)
		expectSeqs(ca.seqs(2, "a"), 1, 2)
		expectSeqs(cb.seqs(2, "b"), 1, 2)
	}
	// 31. A durable survives its connection's close (offline), and resumes.
	cases["item31_durable_survives_connection_close"] = func() {
		sc := connect("c31")
		c := newCollector()
		_, err := sc.Subscribe("ch31", c.cb, stan.DurableName("d"))
		must(err, "subscribe")
		publishN(sc, "ch31", 1)
		c.next("before close")
		time.Sleep(100 * time.Millisecond)
		must(sc.Close(), "connection close")
		pub := connect("c31-pub")
		defer pub.Close()
		publishN(pub, "ch31", 2)
		sc2 := connect("c31")
		defer sc2.Close()
		c2 := newCollector()
		_, err = sc2.Subscribe("ch31", c2.cb, stan.DurableName("d"))
		must(err, "resume")
		expectSeqs(c2.seqs(2, "missed while offline"), 2, 3)
	}
	// 40. An ack sent right before Close()/Unsubscribe() is applied.
	cases["item40_ack_before_close"] = func() {
		sc := connect("c40")
		defer sc.Close()
		publishN(sc, "ch40", 1)
		for round := 0; round < 20; round++ {
			c := newCollector()
			sub, err := sc.Subscribe("ch40", c.cb, stan.DurableName("d"), stan.DeliverAllAvailable(), stan.SetManualAckMode())
			must(err, "subscribe")
			if round == 0 {
				m := c.next("message")
				must(m.Ack(), "ack")
			}
			must(sub.Close(), "close")
			c.none(0, "")
		}
		c := newCollector()
		_, err := sc.Subscribe("ch40", c.cb, stan.DurableName("d"), stan.SetManualAckMode())
		must(err, "final resume")
		c.none(500*time.Millisecond, "the acked message")
	}
}
