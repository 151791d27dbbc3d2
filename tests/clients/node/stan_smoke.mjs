// node-nats-streaming (npm) against stanza: connect, publish, subscribe, durable, queue; and
// the two halves of a cross-language test. Usage:
//   node stan_smoke.mjs smoke <url>
//   node stan_smoke.mjs publish <url> <channel> <count>
//   node stan_smoke.mjs consume <url> <channel> <count>
// Exits non-zero with a reason on failure; every wait is bounded.
import { createRequire } from 'module';
const require = createRequire(import.meta.url);
const stan = require('node-nats-streaming');

const [,, mode, url, channel, countText] = process.argv;
const WAIT = 5000;

function fail(msg) {
  console.error('FAIL: ' + msg);
  process.exit(1);
}

setTimeout(() => fail('did not finish in 60 s'), 60000).unref();

function connect(id) {
  return new Promise((resolve, reject) => {
    const sc = stan.connect('test-cluster', id, { url, connectTimeout: WAIT });
    sc.on('connect', () => resolve(sc));
    sc.on('error', reject);
  });
}

function publish(sc, subject, data) {
  return new Promise((resolve, reject) => {
    sc.publish(subject, data, (err, guid) => (err ? reject(err) : resolve(guid)));
  });
}

// Subscribes and returns a function that waits for the next n messages.
function subscribe(sc, subject, group, opts) {
  return new Promise((resolve, reject) => {
    const sub = group ? sc.subscribe(subject, group, opts) : sc.subscribe(subject, opts);
    const queue = [];
    let waiter = null;
    sub.on('message', (m) => {
      queue.push(m);
      if (waiter) waiter();
    });
    sub.on('error', reject);
    sub.on('ready', () => {
      const take = async (n, what) => {
        const deadline = Date.now() + WAIT;
        while (queue.length < n) {
          if (Date.now() > deadline) fail(`timed out waiting for ${what} (${queue.length}/${n})`);
          await new Promise((r) => { waiter = r; setTimeout(r, 50); });
        }
        return queue.splice(0, n);
      };
      resolve({ sub, take, queue });
    });
  });
}

function closeSub(sub, how) {
  return new Promise((resolve) => {
    sub.on(how === 'close' ? 'closed' : 'unsubscribed', resolve);
    if (how === 'close') sub.close(); else sub.unsubscribe();
  });
}

const seqs = (msgs) => msgs.map((m) => m.getSequence()).join(',');

async function smoke() {
  const sc = await connect('node-smoke');
  for (let i = 1; i <= 3; i++) await publish(sc, 'node.ch', `m${i}`);
  // Subscribe from the first message.
  const all = await subscribe(sc, 'node.ch', null, sc.subscriptionOptions().setDeliverAllAvailable());
  const got = await all.take(3, 'replay');
  if (seqs(got) !== '1,2,3' || got[0].getData() !== 'm1') fail(`replay: ${seqs(got)}`);
  // Durable: close, publish, resume.
  const dopts = () => sc.subscriptionOptions().setDeliverAllAvailable().setDurableName('dur');
  const d = await subscribe(sc, 'node.ch', null, dopts());
  await d.take(3, 'durable first run');
  await new Promise((r) => setTimeout(r, 100));
  await closeSub(d.sub, 'close');
  await publish(sc, 'node.ch', 'm4');
  const d2 = await subscribe(sc, 'node.ch', null, dopts());
  const resumed = await d2.take(1, 'durable resume');
  if (seqs(resumed) !== '4') fail(`durable resumed at ${seqs(resumed)}`);
  // Queue group: each message once across two members.
  const qa = await subscribe(sc, 'node.q', 'workers', sc.subscriptionOptions());
  const qb = await subscribe(sc, 'node.q', 'workers', sc.subscriptionOptions());
  for (let i = 0; i < 20; i++) await publish(sc, 'node.q', `q${i}`);
  const deadline = Date.now() + WAIT;
  while (qa.queue.length + qb.queue.length < 20 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const ids = new Set([...qa.queue, ...qb.queue].map((m) => m.getSequence()));
  if (ids.size !== 20 || qa.queue.length + qb.queue.length !== 20) {
    fail(`queue: ${qa.queue.length}+${qb.queue.length} deliveries, ${ids.size} distinct`);
  }
  await new Promise((resolve) => { sc.on('close', resolve); sc.close(); });
}

async function publisher() {
  const sc = await connect('node-publisher');
  for (let i = 1; i <= Number(countText); i++) await publish(sc, channel, `node-${i}`);
  await new Promise((resolve) => { sc.on('close', resolve); sc.close(); });
}

async function consumer() {
  const sc = await connect('node-consumer');
  const n = Number(countText);
  const s = await subscribe(sc, channel, null, sc.subscriptionOptions().setDeliverAllAvailable());
  const got = await s.take(n, 'messages from the other language');
  got.forEach((m, i) => {
    if (m.getSequence() !== i + 1) fail(`message ${i}: seq ${m.getSequence()}`);
  });
  console.log('DATA ' + got.map((m) => m.getData()).join(','));
  await new Promise((resolve) => { sc.on('close', resolve); sc.close(); });
}

const run = { smoke, publish: publisher, consume: consumer }[mode];
if (!run) fail(`unknown mode ${mode}`);
run().then(() => { console.log('OK ' + mode); process.exit(0); }, (e) => fail(String(e && e.stack || e)));
