package main

import (
	"time"

	stan "github.com/nats-io/stan.go"
)

func init() {
	// 32. One member per message, balanced by pending count.
	cases["item32_queue_one_member"] = func() {
		sc := connect("c32")
		defer sc.Close()
		a, b := newCollector(), newCollector()
		_, err := sc.QueueSubscribe("ch32", "g", a.cb)
		must(err, "a")
		_, err = sc.QueueSubscribe("ch32", "g", b.cb)
		must(err, "b")
		publishN(sc, "ch32", 100)
		seen := map[uint64]int{}
		for i := 0; i < 100; i++ {
			select {
			case m := <-a.ch:
				seen[m.Sequence]++
			case m := <-b.ch:
				seen[m.Sequence]++
			case <-time.After(wait):
				fail("only %d messages", i)
			}
		}
		if len(seen) != 100 {
			fail("duplicates or gaps: %d distinct", len(seen))
		}
		a.mu.Lock()
		na := len(a.msgs)
		a.mu.Unlock()
		if na < 20 || na > 80 {
			fail("unbalanced: member a got %d of 100", na)
		}
	}
	// 33. A joining member ignores its own start position.
	cases["item33_queue_join_ignores_start"] = func() {
		sc := connect("c33")
		defer sc.Close()
		publishN(sc, "ch33", 3)
		a, b := newCollector(), newCollector()
		_, err := sc.QueueSubscribe("ch33", "g", a.cb)
		must(err, "a (new only)")
		_, err = sc.QueueSubscribe("ch33", "g", b.cb, stan.DeliverAllAvailable())
		must(err, "b (first)")
		a.none(200*time.Millisecond, "old messages to a")
		b.none(0, "old messages to b")
		publishN(sc, "ch33", 1)
		select {
		case m := <-a.ch:
			expectSeqs([]uint64{m.Sequence}, 4)
		case m := <-b.ch:
			expectSeqs([]uint64{m.Sequence}, 4)
		case <-time.After(wait):
			fail("no delivery")
		}
	}
	// 34. A leaving member's unacked messages go to the others quickly, redelivered.
	cases["item34_queue_leave_redistributes"] = func() {
		sc := connect("c34")
		defer sc.Close()
		a, b := newCollector(), newCollector()
		subA, err := sc.QueueSubscribe("ch34", "g", a.cb, stan.SetManualAckMode(), stan.AckWait(30*time.Second), stan.MaxInflight(5))
		must(err, "a")
		publishN(sc, "ch34", 5)
		got := a.seqs(5, "a holds all")
		_, err = sc.QueueSubscribe("ch34", "g", b.cb, stan.SetManualAckMode(), stan.AckWait(30*time.Second))
		must(err, "b")
		start := time.Now()
		must(subA.Close(), "a leaves")
		for range got {
			m := b.next("reassigned")
			if !m.Redelivered {
				fail("reassigned seq %d not flagged redelivered", m.Sequence)
			}
		}
		if took := time.Since(start); took > 5*time.Second {
			fail("reassignment took %v", took)
		}
	}
	// 35. All members of a plain group leave: the group is gone.
	cases["item35_queue_gone"] = func() {
		sc := connect("c35")
		defer sc.Close()
		publishN(sc, "ch35", 3)
		a := newCollector()
		sub, err := sc.QueueSubscribe("ch35", "g", a.cb, stan.DeliverAllAvailable())
		must(err, "a")
		a.seqs(3, "first member")
		time.Sleep(100 * time.Millisecond)
		must(sub.Unsubscribe(), "leave")
		b := newCollector()
		_, err = sc.QueueSubscribe("ch35", "g", b.cb, stan.DeliverAllAvailable())
		must(err, "new group")
		expectSeqs(b.seqs(3, "everything again"), 1, 2, 3)
	}
	// 36. Durable queue group: kept when all members close, resumed by any client; deleted
	// when the last member unsubscribes.
	cases["item36_durable_queue_group"] = func() {
		pub := connect("c36-pub")
		defer pub.Close()
		sc := connect("c36a")
		a := newCollector()
		sub, err := sc.QueueSubscribe("ch36", "g", a.cb, stan.DurableName("dur"), stan.DeliverAllAvailable())
		must(err, "a")
		publishN(pub, "ch36", 2)
		a.seqs(2, "a")
		time.Sleep(100 * time.Millisecond)
		must(sub.Close(), "last member closes")
		sc.Close()
		publishN(pub, "ch36", 2)
		other := connect("c36b")
		defer other.Close()
		b := newCollector()
		sub2, err := other.QueueSubscribe("ch36", "g", b.cb, stan.DurableName("dur"), stan.DeliverAllAvailable())
		must(err, "b resumes the group")
		expectSeqs(b.seqs(2, "resumed at the group position"), 3, 4)
		time.Sleep(100 * time.Millisecond)
		must(sub2.Unsubscribe(), "last member unsubscribes")
		c := newCollector()
		_, err = other.QueueSubscribe("ch36", "g", c.cb, stan.DurableName("dur"), stan.DeliverAllAvailable())
		must(err, "new group")
		expectSeqs(c.seqs(4, "group deleted, fresh start"), 1, 2, 3, 4)
	}
	// 37. ':' in a durable queue subscriber's name.
	cases["item37_durable_queue_colon"] = func() {
		sc := connect("c37")
		defer sc.Close()
		_, err := sc.QueueSubscribe("ch37", "g", func(*stan.Msg) {}, stan.DurableName("a:b"))
		expectErr(err, "stan: durable name of a durable queue subscriber can't contain the character ':'")
	}
}
