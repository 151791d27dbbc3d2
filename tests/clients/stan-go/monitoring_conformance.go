package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"time"

	stan "github.com/nats-io/stan.go"
)

// Field names as stan-reference.md §3 lists them (taken from the reference, not from stanza).
var (
	serverzFields   = []string{"cluster_id", "server_id", "version", "go", "state", "now", "start_time", "uptime", "clients", "subscriptions", "channels", "total_msgs", "total_bytes", "in_msgs", "in_bytes", "out_msgs", "out_bytes"}
	serverzOptional = []string{"role", "node_id", "open_fds", "max_fds"}
	storezFields    = []string{"cluster_id", "server_id", "now", "type", "limits", "total_msgs", "total_bytes"}
	limitsFields    = []string{"max_channels", "max_msgs", "max_bytes", "max_age", "max_subscriptions", "max_inactivity"}
	listFields      = []string{"cluster_id", "server_id", "now", "offset", "limit", "count", "total"}
	channelzFields  = []string{"name", "msgs", "bytes", "first_seq", "last_seq", "subs_count"}
	subzFields      = []string{"client_id", "inbox", "ack_inbox", "is_durable", "is_offline", "max_inflight", "ack_wait", "last_sent", "pending_count", "is_stalled"}
	subzOptional    = []string{"durable_name", "queue_name"}
	clientzFields   = []string{"id", "hb_inbox", "subs_count"}
	varzFields      = []string{"server_id", "server_name", "version", "proto", "go", "host", "port", "auth_required", "tls_required", "tls_verify", "max_connections", "max_subscriptions", "ping_interval", "ping_max", "http_host", "http_port", "https_port", "auth_timeout", "max_control_line", "max_payload", "max_pending", "write_deadline", "start", "now", "uptime", "mem", "cores", "connections", "total_connections", "routes", "in_msgs", "out_msgs", "in_bytes", "out_bytes", "slow_consumers", "subscriptions", "http_req_stats"}
	connzFields     = []string{"server_id", "now", "num_connections", "total", "offset", "limit", "connections"}
	connInfoFields  = []string{"cid", "ip", "port", "start", "last_activity", "uptime", "idle", "pending_bytes", "in_msgs", "out_msgs", "in_bytes", "out_bytes", "subscriptions", "name", "lang", "version"}
	routezFields    = []string{"server_id", "now", "num_routes", "routes"}
	subszFields     = []string{"server_id", "now", "num_subscriptions", "num_cache", "num_inserts", "num_removes", "num_matches", "cache_hit_rate", "max_fanout", "avg_fanout"}
)

func get(path string) (int, http.Header, []byte) {
	resp, err := http.Get(monitorURL() + path)
	must(err, "GET "+path)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

func object(path string) map[string]any {
	code, _, body := get(path)
	if code != 200 {
		fail("%s: HTTP %d %s", path, code, body)
	}
	var m map[string]any
	must(json.Unmarshal(body, &m), path+": "+string(body))
	return m
}

// exactFields checks that obj has every required field, no field outside required+optional.
func exactFields(what string, obj map[string]any, required, optional []string) {
	allowed := map[string]bool{}
	for _, f := range append(append([]string{}, required...), optional...) {
		allowed[f] = true
	}
	for _, f := range required {
		if _, ok := obj[f]; !ok {
			fail("%s: missing field %q in %v", what, f, keys(obj))
		}
	}
	for k := range obj {
		if !allowed[k] {
			fail("%s: unexpected field %q", what, k)
		}
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func isTime(what string, v any) {
	s, ok := v.(string)
	if !ok {
		fail("%s: not a string: %v", what, v)
	}
	if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
		fail("%s: not RFC 3339: %q", what, s)
	}
}

func monitorFixture() stan.Conn {
	sc := connect("mon-client")
	publishN(sc, "mon.a", 3)
	publishN(sc, "mon.b", 2)
	_, err := sc.Subscribe("mon.a", func(*stan.Msg) {}, stan.DurableName("dur"), stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.MaxInflight(1), stan.AckWait(7*time.Second))
	must(err, "durable")
	_, err = sc.QueueSubscribe("mon.b", "grp", func(*stan.Msg) {}, stan.DurableName("qd"))
	must(err, "durable queue")
	time.Sleep(200 * time.Millisecond)
	return sc
}

func init() {
	// 52. Exact field names, ns durations, RFC 3339 times, no role/node_id when standalone.
	cases["item52_field_names"] = func() {
		sc := monitorFixture()
		defer sc.Close()
		s := object("/streaming/serverz")
		exactFields("serverz", s, serverzFields, serverzOptional)
		if _, ok := s["role"]; ok {
			fail("role present on a standalone server")
		}
		isTime("serverz.now", s["now"])
		isTime("serverz.start_time", s["start_time"])
		st := object("/streaming/storez")
		exactFields("storez", st, storezFields, nil)
		limits := st["limits"].(map[string]any)
		exactFields("storez.limits", limits, limitsFields, []string{"channels"})
		if limits["max_age"].(float64) != 0 || limits["max_bytes"].(float64) != 1024000000 {
			fail("limits: %v", limits)
		}
		chs := object("/streaming/channelsz?subs=1")
		exactFields("channelsz", chs, listFields, []string{"channels"})
		for _, c := range chs["channels"].([]any) {
			ch := c.(map[string]any)
			exactFields("channelz", ch, channelzFields, []string{"subscriptions"})
			for _, sub := range ch["subscriptions"].([]any) {
				exactFields("subscriptionz", sub.(map[string]any), subzFields, subzOptional)
			}
		}
		a := object("/streaming/channelsz?channel=mon.a&subs=1")
		sub := a["subscriptions"].([]any)[0].(map[string]any)
		if sub["ack_wait"].(float64) != 7 || sub["durable_name"] != "dur" || sub["is_stalled"] != true {
			fail("subscription: %v", sub)
		}
		cl := object("/streaming/clientsz?subs=1")
		exactFields("clientsz", cl, listFields, []string{"clients"})
		for _, c := range cl["clients"].([]any) {
			exactFields("clientz", c.(map[string]any), clientzFields, []string{"subscriptions"})
		}
		v := object("/varz")
		for _, f := range varzFields {
			if _, ok := v[f]; !ok {
				fail("varz: missing %q", f)
			}
		}
		if v["ping_interval"].(float64) != float64(2*time.Minute) {
			fail("varz ping_interval is not in ns: %v", v["ping_interval"])
		}
	}
	// 53. Paging, subs=1, channel=, client=, 404 texts.
	cases["item53_paging"] = func() {
		sc := monitorFixture()
		defer sc.Close()
		for i := 0; i < 5; i++ {
			publishN(sc, fmt.Sprintf("page.%d", i), 1)
		}
		p := object("/streaming/channelsz?offset=2&limit=3")
		names := p["names"].([]any)
		if p["count"].(float64) != 3 || p["total"].(float64) != 7 || len(names) != 3 || names[0] != "page.0" {
			fail("page: %v", p)
		}
		all := object("/streaming/channelsz?offset=-5&limit=0")
		if all["offset"].(float64) != 0 || all["limit"].(float64) != 1024 || all["count"].(float64) != 7 {
			fail("defaults: %v", all)
		}
		one := object("/streaming/channelsz?channel=mon.b&subs=1")
		q := one["subscriptions"].([]any)[0].(map[string]any)
		if q["queue_name"] != "qd:grp" || q["is_durable"] != true {
			fail("queue subscription: %v", q)
		}
		c := object("/streaming/clientsz?client=mon-client&subs=1")
		if c["subs_count"].(float64) != 2 || c["subscriptions"] == nil {
			fail("client: %v", c)
		}
		for path, want := range map[string]string{
			"/streaming/channelsz?channel=nope": "Channel nope not found",
			"/streaming/clientsz?client=nope":   "Client nope not found",
		} {
			code, _, body := get(path)
			if code != 404 || strings.TrimSpace(string(body)) != want {
				fail("%s: %d %q", path, code, body)
			}
		}
	}
	// 54. JSONP and headers.
	cases["item54_jsonp_and_headers"] = func() {
		code, h, body := get("/streaming/serverz")
		if code != 200 || h.Get("Content-Type") != "application/json" || h.Get("Access-Control-Allow-Origin") != "*" {
			fail("headers: %d %v", code, h)
		}
		code, h, body = get("/streaming/serverz?callback=myfn")
		if code != 200 || !strings.HasPrefix(string(body), "myfn({") || !strings.HasSuffix(strings.TrimSpace(string(body)), "})") {
			fail("jsonp: %d %q", code, body)
		}
		if h.Get("Content-Type") != "application/javascript" {
			fail("jsonp content type %q", h.Get("Content-Type"))
		}
	}
	// 55. isFTActive: 204 on a standalone server.
	cases["item55_is_ft_active"] = func() {
		if code, _, _ := get("/streaming/isFTActive"); code != 204 {
			fail("isFTActive: %d", code)
		}
	}
	// 56. What prometheus-nats-exporter v0.16.0 decodes (its typed structs), and the exporter
	// itself when it is installed.
	cases["item56_exporter_view"] = func() {
		sc := monitorFixture()
		defer sc.Close()
		var sz struct {
			TotalBytes    uint64 `json:"total_bytes"`
			InBytes       uint64 `json:"in_bytes"`
			OutBytes      uint64 `json:"out_bytes"`
			TotalMsgs     uint64 `json:"total_msgs"`
			InMsgs        uint64 `json:"in_msgs"`
			OutMsgs       uint64 `json:"out_msgs"`
			Channels      uint64 `json:"channels"`
			Subscriptions uint64 `json:"subscriptions"`
			Clients       uint64 `json:"clients"`
			ClusterID     string `json:"cluster_id"`
			ServerID      string `json:"server_id"`
			Version       string `json:"version"`
			GoVersion     string `json:"go"`
			State         string `json:"state"`
			Role          string `json:"role"`
			StartTime     string `json:"start_time"`
		}
		_, _, body := get("/streaming/serverz")
		must(json.Unmarshal(body, &sz), "serverz as the exporter reads it")
		if sz.Channels != 2 || sz.Clients != 1 || sz.Subscriptions != 2 || sz.TotalMsgs != 5 {
			fail("serverz: %+v", sz)
		}
		var cz struct {
			Channels []struct {
				Name          string `json:"name"`
				Msgs          uint64 `json:"msgs"`
				Bytes         uint64 `json:"bytes"`
				LastSeq       uint64 `json:"last_seq"`
				Subscriptions []struct {
					ClientID     string `json:"client_id"`
					Inbox        string `json:"inbox"`
					QueueName    string `json:"queue_name"`
					IsDurable    bool   `json:"is_durable"`
					IsOffline    bool   `json:"is_offline"`
					DurableName  string `json:"durable_name"`
					LastSent     uint64 `json:"last_sent"`
					PendingCount uint64 `json:"pending_count"`
					MaxInflight  uint64 `json:"max_inflight"`
				} `json:"subscriptions"`
			} `json:"channels"`
		}
		_, _, body = get("/streaming/channelsz?subs=1")
		must(json.Unmarshal(body, &cz), "channelsz as the exporter reads it")
		for _, c := range cz.Channels {
			for _, s := range c.Subscriptions {
				if s.IsDurable && s.QueueName != "" && len(strings.Split(s.QueueName, ":")) < 2 {
					fail("durable queue name without ':' would crash the exporter: %q", s.QueueName)
				}
			}
		}
		exporter, err := exec.LookPath("prometheus-nats-exporter")
		if err != nil {
			fmt.Println("SKIPPED: prometheus-nats-exporter is not installed (v0.16.0 is not served by this machine's Go proxy); checked its decoding instead")
			return
		}
		port := "17777"
		cmd := exec.Command(exporter, "-serverz", "-channelz", "-varz", "-connz", "-p", port, monitorURL())
		must(cmd.Start(), "start exporter")
		defer cmd.Process.Kill()
		var metrics string
		for i := 0; i < 50; i++ {
			time.Sleep(200 * time.Millisecond)
			resp, err := http.Get("http://127.0.0.1:" + port + "/metrics")
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			metrics = string(b)
			if strings.Contains(metrics, "nss_chan_msgs_total") {
				break
			}
		}
		for _, want := range []string{"nss_server_msgs_total", "nss_chan_msgs_total", "gnatsd_varz_connections"} {
			if !strings.Contains(metrics, want) {
				fail("exporter output lacks %s", want)
			}
		}
	}
	// 57. Core NATS endpoints.
	cases["item57_nats_endpoints"] = func() {
		sc := monitorFixture()
		defer sc.Close()
		v := object("/varz")
		if v["connections"].(float64) < 1 || v["in_msgs"].(float64) < 1 {
			fail("varz: %v", v)
		}
		c := object("/connz?subs=1")
		exactFields("connz", c, connzFields, nil)
		conns := c["connections"].([]any)
		if len(conns) < 1 {
			fail("no connections")
		}
		ci := conns[0].(map[string]any)
		for _, f := range connInfoFields {
			if _, ok := ci[f]; !ok {
				fail("connz connection lacks %q: %v", f, keys(ci))
			}
		}
		r := object("/routez")
		for _, f := range routezFields {
			if _, ok := r[f]; !ok {
				fail("routez lacks %q", f)
			}
		}
		s := object("/subsz")
		for _, f := range subszFields {
			if _, ok := s[f]; !ok {
				fail("subsz lacks %q", f)
			}
		}
		if s["num_subscriptions"].(float64) < 1 {
			fail("subsz: %v", s)
		}
		h := object("/healthz")
		if h["status"] != "ok" {
			fail("healthz: %v", h)
		}
	}
}
