// STAN conformance cases (shared/conformance.md items) driven by the reference client stan.go
// and, where a client cannot express a case, by raw NATS requests with stan.go's protobufs.
// Usage: stan-cases <case> <nats-url> [cluster-id]. Exits non-zero with a reason on failure;
// every wait is bounded.
package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	stan "github.com/nats-io/stan.go"
	"github.com/nats-io/stan.go/pb"
)

const wait = 5 * time.Second

var (
	url       string
	clusterID = "test-cluster"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func natsConn() *nats.Conn {
	nc, err := nats.Connect(url, nats.Timeout(wait))
	must(err, "nats connect")
	return nc
}

func connect(id string, opts ...stan.Option) stan.Conn {
	// The NATS handshake gets the same bound as every other wait: nats.go's 2 s default has timed
	// out once on a loaded 2-core CI machine running a debug build.
	opts = append([]stan.Option{stan.NatsURL(url), stan.ConnectWait(wait), stan.NatsOptions(nats.Timeout(wait))}, opts...)
	sc, err := stan.Connect(clusterID, id, opts...)
	must(err, "stan connect "+id)
	return sc
}

// collector gathers delivered messages.
type collector struct {
	mu   sync.Mutex
	msgs []*stan.Msg
	ch   chan *stan.Msg
}

func newCollector() *collector { return &collector{ch: make(chan *stan.Msg, 100000)} }

func (c *collector) cb(m *stan.Msg) {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	c.ch <- m
}

func (c *collector) next(what string) *stan.Msg {
	select {
	case m := <-c.ch:
		return m
	case <-time.After(wait):
		fail("timed out waiting for %s", what)
	}
	return nil
}

// none checks that nothing arrives for d.
func (c *collector) none(d time.Duration, what string) {
	select {
	case m := <-c.ch:
		fail("%s: unexpected message seq=%d redelivered=%v", what, m.Sequence, m.Redelivered)
	case <-time.After(d):
	}
}

func (c *collector) seqs(n int, what string) []uint64 {
	var out []uint64
	for i := 0; i < n; i++ {
		out = append(out, c.next(what).Sequence)
	}
	return out
}

func expectSeqs(got []uint64, want ...uint64) {
	if fmt.Sprint(got) != fmt.Sprint(want) {
		fail("sequences: got %v, want %v", got, want)
	}
}

func publishN(sc stan.Conn, channel string, n int) {
	for i := 0; i < n; i++ {
		must(sc.Publish(channel, []byte(fmt.Sprintf("msg-%d", i+1))), "publish")
	}
}

func expectErr(err error, want string) {
	if err == nil || err.Error() != want {
		fail("error: got %v, want %q", err, want)
	}
}

// ---- raw protocol helpers ----

type raw struct {
	nc     *nats.Conn
	hb     string
	connID []byte
	resp   pb.ConnectResponse
	id     string
}

func request(nc *nats.Conn, subject string, data []byte) *nats.Msg {
	m, err := nc.Request(subject, data, wait)
	must(err, "request "+subject)
	return m
}

func marshal(m interface{ Marshal() ([]byte, error) }) []byte {
	b, err := m.Marshal()
	must(err, "marshal")
	return b
}

// rawConnect registers a client without a stan.go connection; answerHB says whether its
// heartbeat inbox answers.
func rawConnect(id string, answerHB bool) *raw {
	nc := natsConn()
	r := &raw{nc: nc, hb: nats.NewInbox(), connID: []byte(nats.NewInbox()), id: id}
	if answerHB {
		_, err := nc.Subscribe(r.hb, func(m *nats.Msg) { m.Respond(nil) })
		must(err, "hb sub")
	}
	req := &pb.ConnectRequest{ClientID: id, HeartbeatInbox: r.hb, Protocol: 1, ConnID: r.connID, PingInterval: 5, PingMaxOut: 10}
	m := request(nc, "_STAN.discover."+clusterID, marshal(req))
	must(r.resp.Unmarshal(m.Data), "connect response")
	if r.resp.Error != "" {
		fail("raw connect %s: %s", id, r.resp.Error)
	}
	return r
}

func (r *raw) pub(channel, guid string, data []byte) *pb.PubAck {
	pm := &pb.PubMsg{ClientID: r.id, Guid: guid, Subject: channel, Data: data, ConnID: r.connID}
	return r.pubMsg(channel, pm)
}

func (r *raw) pubMsg(subjectSuffix string, pm *pb.PubMsg) *pb.PubAck {
	m := request(r.nc, r.resp.PubPrefix+"."+subjectSuffix, marshal(pm))
	ack := &pb.PubAck{}
	must(ack.Unmarshal(m.Data), "puback")
	return ack
}

func (r *raw) sub(req *pb.SubscriptionRequest) *pb.SubscriptionResponse {
	m := request(r.nc, r.resp.SubRequests, marshal(req))
	resp := &pb.SubscriptionResponse{}
	must(resp.Unmarshal(m.Data), "sub response")
	return resp
}

func subResp(nc *nats.Conn, subject string, data []byte) *pb.SubscriptionResponse {
	m := request(nc, subject, data)
	resp := &pb.SubscriptionResponse{}
	must(resp.Unmarshal(m.Data), "sub response")
	return resp
}

func subReq(client, channel, inbox string) *pb.SubscriptionRequest {
	return &pb.SubscriptionRequest{ClientID: client, Subject: channel, Inbox: inbox, MaxInFlight: 1024, AckWaitInSecs: 30, StartPosition: pb.StartPosition_First}
}

func decodeMsg(m *nats.Msg) *pb.MsgProto {
	mp := &pb.MsgProto{}
	must(mp.Unmarshal(m.Data), "MsgProto")
	return mp
}

func nextRaw(ch chan *nats.Msg, what string) *nats.Msg {
	select {
	case m := <-ch:
		return m
	case <-time.After(wait):
		fail("timed out waiting for %s", what)
	}
	return nil
}

var cases = map[string]func(){}

func main() {
	if len(os.Args) < 3 {
		names := []string{}
		for k := range cases {
			names = append(names, k)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: stan-cases <case> <url> [cluster-id]\ncases: %s\n", strings.Join(names, " "))
		os.Exit(2)
	}
	url = os.Args[2]
	if len(os.Args) > 3 {
		clusterID = os.Args[3]
	}
	c, ok := cases[os.Args[1]]
	if !ok {
		fail("unknown case %s", os.Args[1])
	}
	done := make(chan struct{})
	go func() { c(); close(done) }()
	select {
	case <-done:
		fmt.Println("OK", os.Args[1])
	case <-time.After(caseTimeout()):
		fail("case %s did not finish in %v", os.Args[1], caseTimeout())
	}
}

// caseTimeout bounds every case: 60 s, or STANZA_CASE_TIMEOUT seconds (long FT kill loops).
func caseTimeout() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("STANZA_CASE_TIMEOUT")); err == nil && v > 0 {
		return time.Duration(v) * time.Second
	}
	return 60 * time.Second
}
