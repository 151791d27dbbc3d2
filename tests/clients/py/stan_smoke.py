"""asyncio-nats-streaming (PyPI, Python 3.9) against stanza: connect, publish, subscribe,
durable, queue; and the two halves of a cross-language test. Usage:
  stan_smoke.py smoke <url> | publish <url> <channel> <count> | consume <url> <channel> <count>
Exits non-zero with a reason on failure; every wait is bounded."""

import asyncio
import sys

from nats.aio.client import Client as NATS
from stan.aio.client import Client as STAN

WAIT = 5.0


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


async def connect(url, client_id):
    nc = NATS()
    await nc.connect(servers=[url], connect_timeout=WAIT)
    sc = STAN()
    await sc.connect("test-cluster", client_id, nats=nc, connect_timeout=WAIT)
    return nc, sc


async def close(nc, sc):
    await sc.close()
    await nc.close()


class Inbox:
    def __init__(self):
        self.msgs = []
        self.event = asyncio.Event()

    async def cb(self, msg):
        self.msgs.append(msg)
        self.event.set()

    async def take(self, n, what):
        deadline = asyncio.get_event_loop().time() + WAIT
        while len(self.msgs) < n:
            left = deadline - asyncio.get_event_loop().time()
            if left <= 0:
                fail("timed out waiting for %s (%d/%d)" % (what, len(self.msgs), n))
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except asyncio.TimeoutError:
                pass
        taken, self.msgs = self.msgs[:n], self.msgs[n:]
        return taken


def seqs(msgs):
    return [m.seq for m in msgs]


async def smoke(url):
    nc, sc = await connect(url, "py-smoke")
    for i in range(1, 4):
        await sc.publish("py.ch", ("m%d" % i).encode())
    everything = Inbox()
    await sc.subscribe("py.ch", start_at="first", cb=everything.cb)
    got = await everything.take(3, "replay")
    if seqs(got) != [1, 2, 3] or got[0].data != b"m1":
        fail("replay: %s" % seqs(got))
    durable = Inbox()
    sub = await sc.subscribe("py.ch", start_at="first", durable_name="dur", cb=durable.cb)
    await durable.take(3, "durable first run")
    await asyncio.sleep(0.1)
    await sub.close()
    await sc.publish("py.ch", b"m4")
    resumed = Inbox()
    await sc.subscribe("py.ch", durable_name="dur", cb=resumed.cb)
    got = await resumed.take(1, "durable resume")
    if seqs(got) != [4]:
        fail("durable resumed at %s" % seqs(got))
    a, b = Inbox(), Inbox()
    await sc.subscribe("py.q", queue="workers", cb=a.cb)
    await sc.subscribe("py.q", queue="workers", cb=b.cb)
    for i in range(20):
        await sc.publish("py.q", b"q")
    deadline = asyncio.get_event_loop().time() + WAIT
    while len(a.msgs) + len(b.msgs) < 20 and asyncio.get_event_loop().time() < deadline:
        await asyncio.sleep(0.02)
    distinct = set(seqs(a.msgs) + seqs(b.msgs))
    if len(a.msgs) + len(b.msgs) != 20 or len(distinct) != 20:
        fail("queue: %d+%d deliveries, %d distinct" % (len(a.msgs), len(b.msgs), len(distinct)))
    await close(nc, sc)


async def publish(url, channel, count):
    nc, sc = await connect(url, "py-publisher")
    for i in range(1, count + 1):
        await sc.publish(channel, ("py-%d" % i).encode())
    await close(nc, sc)


async def consume(url, channel, count):
    nc, sc = await connect(url, "py-consumer")
    inbox = Inbox()
    await sc.subscribe(channel, start_at="first", cb=inbox.cb)
    got = await inbox.take(count, "messages from the other language")
    if seqs(got) != list(range(1, count + 1)):
        fail("sequences %s" % seqs(got))
    print("DATA " + ",".join(m.data.decode() for m in got))
    await close(nc, sc)


async def main():
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "smoke":
        await smoke(url)
    elif mode == "publish":
        await publish(url, sys.argv[3], int(sys.argv[4]))
    elif mode == "consume":
        await consume(url, sys.argv[3], int(sys.argv[4]))
    else:
        fail("unknown mode " + mode)
    print("OK " + mode)


if __name__ == "__main__":
    try:
        asyncio.get_event_loop().run_until_complete(asyncio.wait_for(main(), 60))
    except asyncio.TimeoutError:
        fail("did not finish in 60 s")
