"""Core NATS cases driven by nats-py against a running stanza.

Usage: python3 core_nats.py <case> <url>. Exits non-zero (with a traceback) on failure.
Every wait is bounded; the whole script is also killed by the Rust harness after a timeout.
"""

import asyncio
import sys

import nats
from nats.errors import NoRespondersError

TIMEOUT = 5


async def collect(nc, subject, queue="", expected=0):
    got = []
    done = asyncio.Event()

    async def cb(msg):
        got.append(msg)
        if expected and len(got) >= expected:
            done.set()

    sub = await nc.subscribe(subject, queue=queue, cb=cb)
    return sub, got, done


async def case_pubsub(url):
    nc = await nats.connect(url)
    pub = await nats.connect(url)
    sub, got, done = await collect(nc, "orders.created", expected=100)
    await nc.flush()
    for i in range(100):
        await pub.publish("orders.created", b"order-%d" % i)
    await pub.flush()
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert [m.data for m in got] == [b"order-%d" % i for i in range(100)], "in order, none lost"
    await nc.close()
    await pub.close()


async def case_wildcards(url):
    nc = await nats.connect(url)
    pub = await nats.connect(url)
    _, star, _ = await collect(nc, "metrics.*.cpu")
    _, tail, _ = await collect(nc, "metrics.>")
    await nc.flush()
    for subject in ["metrics.a.cpu", "metrics.b.cpu", "metrics.a.mem", "metrics.a.cpu.x", "other.a.cpu"]:
        await pub.publish(subject, b"x")
    await pub.flush()
    await asyncio.sleep(0.5)
    assert sorted(m.subject for m in star) == ["metrics.a.cpu", "metrics.b.cpu"], star
    assert sorted(m.subject for m in tail) == [
        "metrics.a.cpu", "metrics.a.cpu.x", "metrics.a.mem", "metrics.b.cpu"], tail
    await nc.close()
    await pub.close()


async def connections_on_every_core(url, cores=2, limit=64):
    """Opens connections until every core owns at least one; returns {core: [conn]}."""
    by_core = {}
    opened = []
    while len(by_core) < cores and len(opened) < limit:
        nc = await nats.connect(url)
        opened.append(nc)
        by_core.setdefault(nc._server_info["stanza_core"], []).append(nc)
    assert len(by_core) == cores, "connections never reached every core: %r" % list(by_core)
    return by_core, opened


async def case_queue_cross_core(url):
    by_core, opened = await connections_on_every_core(url)
    members = {core: conns[0] for core, conns in by_core.items()}
    counts = {}
    seen = []
    done = asyncio.Event()
    total = 400

    def make_cb(core):
        async def cb(msg):
            counts[core] = counts.get(core, 0) + 1
            seen.append(msg.data)
            if len(seen) >= total:
                done.set()
        return cb

    for core, nc in members.items():
        await nc.subscribe("jobs", queue="workers", cb=make_cb(core))
        # Two members on the same connection's core, to exercise local choice too.
        await nc.subscribe("jobs", queue="workers", cb=make_cb(core))
    plain_conn = members[0]
    _, plain, _ = await collect(plain_conn, "jobs")
    for nc in members.values():
        await nc.flush()
    publisher = by_core[1][-1]
    for i in range(total):
        await publisher.publish("jobs", b"%d" % i)
    await publisher.flush()
    await asyncio.wait_for(done.wait(), TIMEOUT)
    await asyncio.sleep(0.3)
    assert sorted(int(x) for x in seen) == list(range(total)), "each job exactly once"
    assert all(counts.get(core, 0) > 0 for core in members), "members on every core served: %r" % counts
    assert len(plain) == total, "plain subscriber gets everything"
    for nc in opened:
        await nc.close()


async def case_request_reply(url):
    by_core, opened = await connections_on_every_core(url)
    responder, requester = by_core[0][0], by_core[1][0]

    async def handler(msg):
        await msg.respond(b"re:" + msg.data)

    await responder.subscribe("svc.echo", cb=handler)
    await responder.flush()
    for i in range(20):
        rep = await requester.request("svc.echo", b"q%d" % i, timeout=TIMEOUT)
        assert rep.data == b"re:q%d" % i, rep.data
    try:
        await requester.request("svc.nobody", b"x", timeout=TIMEOUT)
        raise AssertionError("request without responders must fail")
    except NoRespondersError:
        pass
    for nc in opened:
        await nc.close()


async def case_headers(url):
    nc = await nats.connect(url)
    pub = await nats.connect(url)
    _, got, done = await collect(nc, "with.headers", expected=1)
    await nc.flush()
    await pub.publish("with.headers", b"body", headers={"X-Trace": "abc", "Nats-Msg-Id": "1"})
    await pub.flush()
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert got[0].data == b"body"
    assert got[0].headers["X-Trace"] == "abc", got[0].headers
    await nc.close()
    await pub.close()


async def case_echo_off(url):
    quiet = await nats.connect(url, no_echo=True)
    other = await nats.connect(url)
    _, own, _ = await collect(quiet, "chat")
    _, theirs, _ = await collect(other, "chat")
    await quiet.flush()
    await other.flush()
    await quiet.publish("chat", b"from-quiet")
    await quiet.flush()
    await asyncio.sleep(0.5)
    assert [m.data for m in theirs] == [b"from-quiet"]
    assert own == [], "echo off: no copy of one's own message"
    await quiet.close()
    await other.close()


async def case_auth(url):
    good, bad = url.split(" ")
    nc = await nats.connect(good, allow_reconnect=False)
    await nc.publish("x", b"y")
    await nc.flush()
    await nc.close()
    errors = []

    async def on_error(e):
        errors.append(str(e))

    try:
        nc = await nats.connect(bad, allow_reconnect=False, max_reconnect_attempts=0,
                                connect_timeout=2, error_cb=on_error)
        await nc.close()
        raise AssertionError("wrong credentials must be refused")
    except AssertionError:
        raise
    except Exception as e:  # nats-py raises its own error types
        text = (str(e) + " ".join(errors)).lower()
        assert "authorization violation" in text, text


async def case_cluster(urls):
    """Two nodes of a routed cluster (urls "a,b"): pub/sub and wildcards across the route,
    request/reply across it, and a queue group with members on both nodes getting each
    message exactly once."""
    url_a, url_b = urls.split(",")
    na = await nats.connect(url_a)
    nb = await nats.connect(url_b)
    sub, got, done = await collect(na, "cluster.*.created", expected=50)
    await na.flush()

    async def until_interest():
        # Interest crosses the route asynchronously: probe until it arrives.
        probe_sub, probe_got, probe_done = await collect(na, "cluster.probe", expected=1)
        await na.flush()
        for _ in range(100):
            await nb.publish("cluster.probe", b"p")
            await nb.flush()
            try:
                await asyncio.wait_for(probe_done.wait(), 0.1)
                break
            except asyncio.TimeoutError:
                pass
        await probe_sub.unsubscribe()

    await until_interest()
    for i in range(50):
        await nb.publish("cluster.%d.created" % i, b"c-%d" % i)
    await nb.flush()
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert sorted(m.data for m in got) == sorted(b"c-%d" % i for i in range(50))

    async def responder(msg):
        await msg.respond(b"pong:" + msg.data)

    await na.subscribe("cluster.svc", cb=responder)
    await na.flush()
    await until_interest()
    reply = await nb.request("cluster.svc", b"ping", timeout=TIMEOUT)
    assert reply.data == b"pong:ping", reply.data

    qa, got_a, _ = await collect(na, "cluster.jobs", queue="workers")
    qb, got_b, _ = await collect(nb, "cluster.jobs", queue="workers")
    await na.flush()
    await nb.flush()
    await until_interest()
    await asyncio.sleep(0.3)
    for i in range(100):
        await na.publish("cluster.jobs", b"j-%d" % i)
    await na.flush()
    for _ in range(50):
        if len(got_a) + len(got_b) >= 100:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    seen = [m.data for m in got_a + got_b]
    assert len(seen) == 100 and len(set(seen)) == 100, (len(got_a), len(got_b))
    await na.close()
    await nb.close()


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    case, url = sys.argv[1], sys.argv[2]
    asyncio.run(asyncio.wait_for(CASES[case](url), 30))
    print("ok", case)
