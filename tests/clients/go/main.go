// Core NATS cases driven by nats.go against a running stanza.
// Usage: clients <case> <url>. Exits non-zero on failure; every wait is bounded.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

const timeout = 5 * time.Second

func must(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func connect(url string, opts ...nats.Option) *nats.Conn {
	nc, err := nats.Connect(url, opts...)
	must(err)
	return nc
}

func pubsub(url string) {
	a, b := connect(url), connect(url)
	defer a.Close()
	defer b.Close()
	ch := make(chan *nats.Msg, 100)
	_, err := a.ChanSubscribe("go.*.x", ch)
	must(err)
	must(a.Flush())
	for i := 0; i < 100; i++ {
		must(b.Publish(fmt.Sprintf("go.%d.x", i), []byte(fmt.Sprint(i))))
	}
	must(b.Flush())
	for i := 0; i < 100; i++ {
		select {
		case m := <-ch:
			if string(m.Data) != fmt.Sprint(i) {
				fail("message %d out of order: %s", i, m.Data)
			}
		case <-time.After(timeout):
			fail("timed out at %d", i)
		}
	}
}

func queue(url string) {
	var conns []*nats.Conn
	byCore := map[int][]*nats.Conn{}
	for len(byCore) < 2 && len(conns) < 64 {
		nc := connect(url)
		conns = append(conns, nc)
		// nats.go keeps the INFO fields it knows; the core is shown by the client id's
		// owning core: (cid - 1) % cores.
		cid, err := nc.GetClientID()
		must(err)
		core := int((cid - 1) % 2)
		byCore[core] = append(byCore[core], nc)
	}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	if len(byCore) < 2 {
		fail("connections never reached both cores")
	}
	var mu sync.Mutex
	seen := map[string]int{}
	served := map[int]int{}
	for core, list := range byCore {
		core := core
		_, err := list[0].QueueSubscribe("gq", "grp", func(m *nats.Msg) {
			mu.Lock()
			seen[string(m.Data)]++
			served[core]++
			mu.Unlock()
		})
		must(err)
		must(list[0].Flush())
	}
	pub := conns[len(conns)-1]
	for i := 0; i < 300; i++ {
		must(pub.Publish("gq", []byte(fmt.Sprint(i))))
	}
	must(pub.Flush())
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == 300 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 300 {
		fail("got %d distinct of 300", len(seen))
	}
	for k, v := range seen {
		if v != 1 {
			fail("message %s delivered %d times", k, v)
		}
	}
	if served[0] == 0 || served[1] == 0 {
		fail("members on both cores must serve: %v", served)
	}
}

func request(url string) {
	a, b := connect(url), connect(url)
	defer a.Close()
	defer b.Close()
	_, err := a.Subscribe("go.svc", func(m *nats.Msg) { must(m.Respond(append([]byte("re:"), m.Data...))) })
	must(err)
	must(a.Flush())
	for i := 0; i < 20; i++ {
		r, err := b.Request("go.svc", []byte(fmt.Sprint(i)), timeout)
		must(err)
		if string(r.Data) != "re:"+fmt.Sprint(i) {
			fail("bad reply %s", r.Data)
		}
	}
	_, err = b.Request("go.none", []byte("x"), timeout)
	if !errors.Is(err, nats.ErrNoResponders) {
		fail("want no responders, got %v", err)
	}
}

func headers(url string) {
	a, b := connect(url), connect(url)
	defer a.Close()
	defer b.Close()
	sub, err := a.SubscribeSync("go.h")
	must(err)
	must(a.Flush())
	msg := nats.NewMsg("go.h")
	msg.Header.Set("X-Id", "7")
	msg.Data = []byte("body")
	must(b.PublishMsg(msg))
	m, err := sub.NextMsg(timeout)
	must(err)
	if m.Header.Get("X-Id") != "7" || string(m.Data) != "body" {
		fail("headers lost: %v %s", m.Header, m.Data)
	}
}

func echo(url string) {
	quiet := connect(url, nats.NoEcho())
	other := connect(url)
	defer quiet.Close()
	defer other.Close()
	own, err := quiet.SubscribeSync("go.e")
	must(err)
	theirs, err := other.SubscribeSync("go.e")
	must(err)
	must(quiet.Flush())
	must(other.Flush())
	must(quiet.Publish("go.e", []byte("x")))
	must(quiet.Flush())
	if _, err := theirs.NextMsg(timeout); err != nil {
		fail("other connection must receive: %v", err)
	}
	if _, err := own.NextMsg(300 * time.Millisecond); err == nil {
		fail("echo off: own message delivered")
	}
}

func auth(url string) {
	urls := strings.Split(url, " ")
	nc := connect(urls[0])
	must(nc.Flush())
	nc.Close()
	_, err := nats.Connect(urls[1], nats.NoReconnect())
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		fail("want authorization violation, got %v", err)
	}
}

func main() {
	cases := map[string]func(string){
		"pubsub": pubsub, "queue": queue, "request": request,
		"headers": headers, "echo": echo, "auth": auth,
	}
	if len(os.Args) != 3 || cases[os.Args[1]] == nil {
		fail("usage: clients <case> <url>")
	}
	done := make(chan struct{})
	go func() {
		cases[os.Args[1]](os.Args[2])
		close(done)
	}()
	select {
	case <-done:
		fmt.Println("ok", os.Args[1])
	case <-time.After(30 * time.Second):
		fail("case timed out")
	}
}
