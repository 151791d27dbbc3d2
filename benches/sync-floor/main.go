// sync-floor measures what bounds a synchronous publisher on this machine, against a server
// given by URL: the round trip of a bare NATS PING/PONG (the floor any server's answer pays:
// loopback, both processes' wake-ups, the client library), then synchronous STAN publishes
// (one in flight) with their round trip, and the client's own CPU per operation (getrusage),
// which on a machine shared by client and server bounds what the server can be given.
//
//	sync-floor -s nats://127.0.0.1:4222 -cid test-cluster -n 5000 [-np 64]
//
// With -np N, N publishers (one connection each) publish synchronously at once and the total
// rate and client CPU per message are reported (the 64-publisher row of benches/compare).
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/stan.go"
)

func cpu() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(d []time.Duration) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "FAIL: %s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	url := flag.String("s", nats.DefaultURL, "server URL")
	cid := flag.String("cid", "test-cluster", "cluster ID")
	n := flag.Int("n", 5000, "operations per measurement (per publisher with -np)")
	np := flag.Int("np", 1, "synchronous publishers at once")
	flag.Parse()
	msg := make([]byte, 128)

	nc, err := nats.Connect(*url)
	if err != nil {
		fail("connect", err)
	}
	rtts := make([]time.Duration, 0, *n)
	c0 := cpu()
	for i := 0; i < *n; i++ {
		t := time.Now()
		if err := nc.Flush(); err != nil {
			fail("flush", err)
		}
		rtts = append(rtts, time.Since(t))
	}
	fmt.Printf("ping: median %v, client CPU %.1f us/op\n", median(rtts),
		float64(cpu()-c0)/float64(time.Microsecond)/float64(*n))
	nc.Close()

	conns := make([]stan.Conn, *np)
	for i := range conns {
		sc, err := stan.Connect(*cid, fmt.Sprintf("sync-floor-%d-%d", os.Getpid(), i), stan.NatsURL(*url))
		if err != nil {
			fail("stan connect", err)
		}
		conns[i] = sc
	}
	var wg sync.WaitGroup
	lat := make([][]time.Duration, *np)
	c0 = cpu()
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < *n; j++ {
				t := time.Now()
				if err := conns[i].Publish("sync-floor", msg); err != nil {
					fail("publish", err)
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}(i)
	}
	wg.Wait()
	took := time.Since(start)
	total := *n * *np
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	fmt.Printf("sync publish x%d: %.0f msgs/s, median round trip %v, client CPU %.1f us/msg\n",
		*np, float64(total)/took.Seconds(), median(all),
		float64(cpu()-c0)/float64(time.Microsecond)/float64(total))
	for _, sc := range conns {
		sc.Close()
	}
}
