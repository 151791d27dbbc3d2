package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	stan "github.com/nats-io/stan.go"
)

// The monitoring base URL (http://host:port), given by the test harness.
func monitorURL() string {
	u := os.Getenv("STANZA_MONITOR")
	if u == "" {
		fail("STANZA_MONITOR is not set")
	}
	return u
}

type subz struct {
	ClientID     string `json:"client_id"`
	Inbox        string `json:"inbox"`
	AckInbox     string `json:"ack_inbox"`
	DurableName  string `json:"durable_name"`
	QueueName    string `json:"queue_name"`
	IsDurable    bool   `json:"is_durable"`
	IsOffline    bool   `json:"is_offline"`
	MaxInflight  int    `json:"max_inflight"`
	AckWait      int    `json:"ack_wait"`
	LastSent     uint64 `json:"last_sent"`
	PendingCount int    `json:"pending_count"`
	IsStalled    bool   `json:"is_stalled"`
}

type chanz struct {
	Name          string `json:"name"`
	Msgs          int    `json:"msgs"`
	Bytes         uint64 `json:"bytes"`
	FirstSeq      uint64 `json:"first_seq"`
	LastSeq       uint64 `json:"last_seq"`
	SubsCount     int    `json:"subs_count"`
	Subscriptions []subz `json:"subscriptions"`
}

type serverzT struct {
	Subscriptions int   `json:"subscriptions"`
	Channels      int   `json:"channels"`
	Clients       int   `json:"clients"`
	InMsgs        int64 `json:"in_msgs"`
	OutMsgs       int64 `json:"out_msgs"`
}

func getJSON(path string, into any) int {
	resp, err := http.Get(monitorURL() + path)
	must(err, "GET "+path)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && into != nil {
		must(json.Unmarshal(body, into), "decode "+path+": "+string(body))
	}
	return resp.StatusCode
}

func channel(name string) chanz {
	var c chanz
	if code := getJSON("/streaming/channelsz?subs=1&channel="+name, &c); code != 200 {
		fail("channel %s: HTTP %d", name, code)
	}
	return c
}

func serverz() serverzT {
	var s serverzT
	getJSON("/streaming/serverz", &s)
	return s
}

// eventually retries a check for up to 3 s (monitoring reads figures asynchronously).
func eventually(what string, check func() error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			fail("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func init() {
	// 22 (monitoring part): a full window shows is_stalled and pending_count.
	cases["item22_stalled_in_monitoring"] = func() {
		sc := connect("c22m")
		defer sc.Close()
		publishN(sc, "ch22m", 5)
		c := newCollector()
		_, err := sc.Subscribe("ch22m", c.cb, stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.MaxInflight(3), stan.AckWait(30*time.Second))
		must(err, "subscribe")
		c.seqs(3, "window")
		eventually("stalled", func() error {
			ch := channel("ch22m")
			if len(ch.Subscriptions) != 1 || !ch.Subscriptions[0].IsStalled || ch.Subscriptions[0].PendingCount != 3 {
				return fmt.Errorf("%+v", ch.Subscriptions)
			}
			return nil
		})
	}
	// 26. out_msgs counts redeliveries, in_msgs counts PubMsgs.
	cases["item26_counters"] = func() {
		sc := connect("c26")
		defer sc.Close()
		publishN(sc, "ch26", 2)
		c := newCollector()
		_, err := sc.Subscribe("ch26", c.cb, stan.DeliverAllAvailable(), stan.SetManualAckMode(), stan.AckWait(time.Second))
		must(err, "subscribe")
		c.seqs(2, "first")
		c.seqs(2, "redelivered")
		eventually("counters", func() error {
			s := serverz()
			if s.InMsgs != 2 || s.OutMsgs < 4 {
				return fmt.Errorf("in_msgs %d (want 2), out_msgs %d (want >= 4)", s.InMsgs, s.OutMsgs)
			}
			return nil
		})
	}
	// 31 (monitoring part): an offline durable keeps its client ID and counts.
	cases["item31_offline_durable_in_monitoring"] = func() {
		sc := connect("c31m")
		_, err := sc.Subscribe("ch31m", func(*stan.Msg) {}, stan.DurableName("d"))
		must(err, "subscribe")
		time.Sleep(100 * time.Millisecond)
		must(sc.Close(), "close connection")
		eventually("offline durable", func() error {
			ch := channel("ch31m")
			if len(ch.Subscriptions) != 1 || !ch.Subscriptions[0].IsOffline || ch.Subscriptions[0].ClientID != "c31m" || ch.Subscriptions[0].DurableName != "d" {
				return fmt.Errorf("%+v", ch.Subscriptions)
			}
			if s := serverz(); s.Subscriptions != 1 || s.Clients != 0 {
				return fmt.Errorf("serverz %+v", s)
			}
			return nil
		})
	}
	// 36 (monitoring part): a durable queue group whose members all closed shows as an
	// offline subscription named "dur:grp".
	cases["item36_durable_queue_shadow_in_monitoring"] = func() {
		sc := connect("c36m")
		_, err := sc.QueueSubscribe("ch36m", "grp", func(*stan.Msg) {}, stan.DurableName("dur"))
		must(err, "subscribe")
		time.Sleep(100 * time.Millisecond)
		must(sc.Close(), "close")
		eventually("shadow", func() error {
			ch := channel("ch36m")
			if len(ch.Subscriptions) != 1 || ch.Subscriptions[0].QueueName != "dur:grp" || !ch.Subscriptions[0].IsOffline || !ch.Subscriptions[0].IsDurable {
				return fmt.Errorf("%+v", ch.Subscriptions)
			}
			return nil
		})
	}
	// 41 (monitoring part): closing the connection drops subs_count.
	cases["item41_subs_count_drops"] = func() {
		sc := connect("c41m")
		_, err := sc.Subscribe("ch41m", func(*stan.Msg) {})
		must(err, "subscribe")
		eventually("one sub", func() error {
			if n := channel("ch41m").SubsCount; n != 1 {
				return fmt.Errorf("subs_count %d", n)
			}
			return nil
		})
		must(sc.Close(), "close")
		eventually("no sub", func() error {
			if n := channel("ch41m").SubsCount; n != 0 {
				return fmt.Errorf("subs_count %d", n)
			}
			return nil
		})
	}
	// 42 (monitoring part, run with -mm 5): msgs=5 and first_seq=k+1 after 5+k publishes.
	cases["item42_channelsz_after_limit"] = func() {
		sc := connect("c42m")
		defer sc.Close()
		publishN(sc, "ch42m", 8)
		ch := channel("ch42m")
		if ch.Msgs != 5 || ch.FirstSeq != 4 || ch.LastSeq != 8 {
			fail("channelsz: %+v", ch)
		}
	}
	// 46 (monitoring part, run with -mi 1s): the idle channel disappears from channelsz.
	cases["item46_channel_disappears"] = func() {
		sc := connect("c46m")
		defer sc.Close()
		publishN(sc, "gone", 1)
		if code := getJSON("/streaming/channelsz?channel=gone", nil); code != 200 {
			fail("channel missing right after publish: %d", code)
		}
		eventually("deleted", func() error {
			if code := getJSON("/streaming/channelsz?channel=gone", nil); code != 404 {
				return fmt.Errorf("HTTP %d", code)
			}
			return nil
		})
		var list struct {
			Names []string `json:"names"`
		}
		getJSON("/streaming/channelsz", &list)
		if strings.Contains(strings.Join(list.Names, ","), "gone") {
			fail("still listed: %v", list.Names)
		}
	}
}
