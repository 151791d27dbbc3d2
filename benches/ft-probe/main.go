// ft-probe: the client side of benches/compare-ft. It connects to a streaming server (through
// NATS), publishes synchronously until told "go" on standard input (the harness has just killed
// the active server), then publishes again and again with a 20 ms ack wait and prints how long
// it took from "go" to the first PubAck of a publish sent after it, in milliseconds.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	nats "github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: ft-probe <nats url> <cluster id> [messages to store first]")
		os.Exit(2)
	}
	prefill := 0
	if len(os.Args) > 3 {
		prefill, _ = strconv.Atoi(os.Args[3])
	}
	// A store to recover: the take-over costs one recovery of it.
	if prefill > 0 {
		// On a connection of its own with the default ack wait: a million in flight take longer
		// than the probe's 20 ms.
		filler, err := stan.Connect(os.Args[2], "ft-prefill", stan.NatsURL(os.Args[1]))
		if err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(1)
		}
		payload := make([]byte, 128)
		var wg sync.WaitGroup
		wg.Add(prefill)
		var failed atomic.Int64
		for i := 0; i < prefill; i++ {
			if _, err := filler.PublishAsync("fill", payload, func(_ string, err error) {
				if err != nil {
					failed.Add(1)
				}
				wg.Done()
			}); err != nil {
				fmt.Fprintln(os.Stderr, "prefill:", err)
				os.Exit(1)
			}
		}
		wg.Wait()
		if failed.Load() > 0 {
			fmt.Fprintln(os.Stderr, "prefill: publishes failed:", failed.Load())
			os.Exit(1)
		}
		filler.Close()
	}
	sc, err := stan.Connect(os.Args[2], "ft-probe", stan.NatsURL(os.Args[1]),
		stan.PubAckWait(20*time.Millisecond),
		stan.NatsOptions(nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	if err := sc.Publish("probe", []byte("before")); err != nil {
		fmt.Fprintln(os.Stderr, "publish before the kill:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		os.Exit(1)
	}
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if err := sc.Publish("probe", []byte("after")); err == nil {
			fmt.Printf("%.1f\n", float64(time.Since(start).Microseconds())/1000)
			return
		}
	}
	fmt.Fprintln(os.Stderr, "no PubAck within 60 s")
	os.Exit(1)
}
