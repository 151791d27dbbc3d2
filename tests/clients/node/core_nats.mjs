// Core NATS cases driven by the `nats` npm client against a running stanza.
// Usage: node core_nats.mjs <case> <url>. Exits non-zero on failure; every wait is bounded.
import { connect, headers, StringCodec, ErrorCode } from "nats";
import assert from "node:assert/strict";

const sc = StringCodec();
const TIMEOUT = 5000;

function withTimeout(promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT)),
  ]);
}

async function gather(sub, n) {
  const out = [];
  for await (const m of sub) {
    out.push(m);
    if (out.length >= n) break;
  }
  return out;
}

const cases = {
  async pubsub(servers) {
    const nc = await connect({ servers });
    const pub = await connect({ servers });
    const sub = nc.subscribe("node.>");
    const got = gather(sub, 50);
    await nc.flush();
    for (let i = 0; i < 50; i++) pub.publish(`node.${i % 2 ? "a" : "b"}`, sc.encode(`m${i}`));
    await pub.flush();
    const msgs = await withTimeout(got, "50 messages");
    assert.deepEqual(msgs.map((m) => sc.decode(m.data)), [...Array(50).keys()].map((i) => `m${i}`));
    await nc.close();
    await pub.close();
  },

  async queue(servers) {
    const conns = [];
    const cores = new Set();
    while (cores.size < 2 && conns.length < 64) {
      const nc = await connect({ servers });
      conns.push(nc);
      cores.add(nc.info.stanza_core);
    }
    assert.equal(cores.size, 2, "connections on both cores");
    const members = [conns[0], conns[conns.length - 1]];
    const seen = [];
    const perMember = [0, 0];
    members.forEach((nc, idx) =>
      nc.subscribe("work", {
        queue: "g",
        callback: (_err, m) => {
          perMember[idx]++;
          seen.push(sc.decode(m.data));
        },
      })
    );
    for (const nc of members) await nc.flush();
    const pub = conns[1] ?? conns[0];
    for (let i = 0; i < 300; i++) pub.publish("work", sc.encode(String(i)));
    await pub.flush();
    const deadline = Date.now() + TIMEOUT;
    while (seen.length < 300 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(seen.length, 300, "each message once");
    assert.equal(new Set(seen).size, 300);
    assert.ok(perMember.every((n) => n > 0), `both members served: ${perMember}`);
    for (const nc of conns) await nc.close();
  },

  // Two nodes of a routed cluster ("urlA,urlB"): pub/sub with a wildcard, request/reply and
  // a queue group with a member on each node, all across the route.
  async cluster(urls) {
    const [ua, ub] = urls.split(",");
    const a = await connect({ servers: ua });
    const b = await connect({ servers: ub });
    const probe = async () => {
      // Interest crosses the route asynchronously.
      const s = a.subscribe("cluster.probe", { max: 1 });
      await a.flush();
      const got = (async () => { for await (const _ of s) return true; })();
      for (let i = 0; i < 100; i++) {
        b.publish("cluster.probe");
        await b.flush();
        const done = await Promise.race([got, new Promise((r) => setTimeout(() => r(false), 100))]);
        if (done) return;
      }
      throw new Error("interest never crossed the route");
    };
    const sub = a.subscribe("cluster.*.x");
    const gathered = gather(sub, 20);
    await probe();
    for (let i = 0; i < 20; i++) b.publish(`cluster.${i}.x`, sc.encode(String(i)));
    await b.flush();
    const msgs = await withTimeout(gathered, "messages across the route");
    assert.equal(new Set(msgs.map((m) => sc.decode(m.data))).size, 20);
    a.subscribe("cluster.svc", { callback: (_e, m) => m.respond(sc.encode("pong")) });
    await probe();
    const reply = await b.request("cluster.svc", sc.encode("ping"), { timeout: TIMEOUT });
    assert.equal(sc.decode(reply.data), "pong");
    const seen = [];
    for (const nc of [a, b]) {
      nc.subscribe("cluster.jobs", { queue: "w", callback: (_e, m) => seen.push(sc.decode(m.data)) });
      await nc.flush();
    }
    await probe();
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 100; i++) b.publish("cluster.jobs", sc.encode(String(i)));
    await b.flush();
    const deadline = Date.now() + TIMEOUT;
    while (seen.length < 100 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(seen.length, 100, "each job once");
    assert.equal(new Set(seen).size, 100);
    await a.close();
    await b.close();
  },

  async request(servers) {
    const a = await connect({ servers });
    const b = await connect({ servers });
    a.subscribe("svc.upper", { callback: (_e, m) => m.respond(sc.encode(sc.decode(m.data).toUpperCase())) });
    await a.flush();
    const r = await b.request("svc.upper", sc.encode("hello"), { timeout: TIMEOUT });
    assert.equal(sc.decode(r.data), "HELLO");
    await assert.rejects(b.request("svc.none", sc.encode("x"), { timeout: TIMEOUT }), (e) => e.code === ErrorCode.NoResponders);
    await a.close();
    await b.close();
  },

  async headers(servers) {
    const a = await connect({ servers });
    const b = await connect({ servers });
    const sub = a.subscribe("h");
    const got = gather(sub, 1);
    await a.flush();
    const h = headers();
    h.set("X-Id", "42");
    b.publish("h", sc.encode("with-headers"), { headers: h });
    await b.flush();
    const [m] = await withTimeout(got, "header message");
    assert.equal(m.headers.get("X-Id"), "42");
    assert.equal(sc.decode(m.data), "with-headers");
    await a.close();
    await b.close();
  },

  async echo(servers) {
    const quiet = await connect({ servers, noEcho: true });
    const other = await connect({ servers });
    let own = 0;
    quiet.subscribe("e", { callback: () => own++ });
    const theirs = gather(other.subscribe("e"), 1);
    await quiet.flush();
    await other.flush();
    quiet.publish("e", sc.encode("x"));
    await quiet.flush();
    await withTimeout(theirs, "other receives");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(own, 0);
    await quiet.close();
    await other.close();
  },

  // servers is "<url> <token> <wrong token>"
  async auth(servers) {
    const [url, token, wrong] = servers.split(" ");
    const nc = await connect({ servers: url, token });
    await nc.flush();
    await nc.close();
    await assert.rejects(connect({ servers: url, token: wrong, reconnect: false }), (e) =>
      /authorization violation/i.test(String(e.message)) || e.code === ErrorCode.AuthorizationViolation
    );
  },
};

const [, , name, url] = process.argv;
const timer = setTimeout(() => {
  console.error("case timed out");
  process.exit(2);
}, 30000);
try {
  await cases[name](url);
  console.log("ok", name);
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
