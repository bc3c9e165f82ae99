// Tests a threadchat server that runs in an emulated ARM machine, through the
// ports arm/test.sh forwards to this host's loopback:
//   node guest-check.mjs HTTP_PORT WS_PORT CONTROL_PORT ARCH
// The page is served, /healthz answers ok, two clients chat, what idle clients
// cost is measured (printed), and a stop closes every connected client with 1001.
// The control port is arm/init's: "rss" gets the server's resident KiB, "stop"
// sends it SIGTERM. Figures go to stdout; any failed check exits non-zero.
import assert from 'node:assert/strict';
import net from 'node:net';
import WebSocket from 'ws';

const [httpPort, wsPort, controlPort, arch] = process.argv.slice(2);
const page = `http://127.0.0.1:${httpPort}`;
// Emulated without KVM, a guest answers in 5-20 s here; a slow CI host gets more.
const BOOT_DEADLINE_MS = 300_000;
const ANSWER_DEADLINE_MS = 30_000;
// Below the default per-address cap (32): every host client reaches the guest from
// one address, the emulator's gateway.
const IDLE_CLIENTS = 20;

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Rejects after `ms` unless the process ends first (the timer keeps nothing alive).
function deadline(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} in time`)), ms).unref());
}

async function waitUntilHealthy() {
  const deadline = Date.now() + BOOT_DEADLINE_MS;
  for (;;) {
    try {
      const answer = await fetch(`${page}/healthz`, { signal: AbortSignal.timeout(5_000) });
      if (answer.status === 200) return answer.text();
    } catch {
      // Not listening yet: the emulator accepts, the guest refuses.
    }
    if (Date.now() > deadline) throw new Error(`no /healthz from the ${arch} guest in time`);
    await delay(500);
  }
}

function askOnce(request) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(controlPort), '127.0.0.1');
    let answer = '';
    socket.setTimeout(ANSWER_DEADLINE_MS, () => socket.destroy(new Error(`no answer to ${request}`)));
    socket.on('connect', () => socket.write(`${request}\n`));
    socket.on('data', (data) => { answer += data; });
    socket.on('end', () => resolve(answer.trim()));
    socket.on('error', reject);
  });
}

// The guest listens for one request at a time (busybox nc, started again after
// each): a request that comes in between is reset before it reaches the guest's
// control script, so it is safe to send again.
async function ask(request) {
  const deadline = Date.now() + ANSWER_DEADLINE_MS;
  for (;;) {
    try {
      const answer = await askOnce(request);
      if (answer !== '') return answer;
    } catch (error) {
      if (error.code !== 'ECONNRESET' || Date.now() > deadline) throw error;
    }
    if (Date.now() > deadline) throw new Error(`no answer to ${request} in time`);
    await delay(200);
  }
}

async function residentKiB() {
  const answer = await ask('rss');
  assert.match(answer, /^\d+$/, `rss answered ${JSON.stringify(answer)}`);
  return Number(answer);
}

// A client whose frames queue up until a check asks for the next one it wants.
async function connect() {
  const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/`);
  const frames = [];
  const waiting = [];
  ws.on('message', (data) => {
    frames.push(JSON.parse(data));
    waiting.splice(0).forEach((wake) => wake());
  });
  ws.closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
  ws.next = async (wanted, what) => {
    const deadline = Date.now() + ANSWER_DEADLINE_MS;
    for (;;) {
      const index = frames.findIndex(wanted);
      if (index >= 0) return frames.splice(index, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} in time`);
      await new Promise((resolve) => {
        waiting.push(resolve);
        setTimeout(resolve, left).unref();
      });
    }
  };
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  await ws.next((f) => f.type === 'welcome', 'welcome');
  return ws;
}

async function main() {
  const booting = Date.now();
  assert.equal((await waitUntilHealthy()).trim(), 'ok');
  const bootSeconds = (Date.now() - booting) / 1000;
  const startKiB = await residentKiB();

  const index = await fetch(`${page}/`);
  assert.equal(index.status, 200);
  const html = await index.text();
  assert.match(html, /<title>[^<]+<\/title>/);
  assert.doesNotMatch(html, /src="https?:/, 'the page loads nothing from elsewhere');
  const script = await fetch(`${page}/app.js`);
  assert.equal(script.status, 200);
  assert.match(await script.text(), /WebSocket/);

  const alice = await connect();
  const bob = await connect();
  const sent = Date.now();
  alice.send(JSON.stringify({ type: 'message', name: 'alice', msg: `hello from ${arch}` }));
  const heard = await bob.next((f) => f.type === 'message', 'message for bob');
  assert.equal(heard.name, 'alice');
  assert.equal(heard.msg, `hello from ${arch}`);
  const relayMs = Date.now() - sent;
  bob.send(JSON.stringify({ name: 'bob', msg: 'hi alice' }));
  assert.equal((await alice.next((f) => f.type === 'message' && f.name === 'bob', 'reply')).msg, 'hi alice');

  const beforeKiB = await residentKiB();
  const idle = [];
  for (let i = 0; i < IDLE_CLIENTS; i += 1) idle.push(await connect());
  const afterKiB = await residentKiB();

  assert.equal(await ask('stop'), 'stopping');
  const closed = await Promise.race([
    Promise.all([alice, bob, ...idle].map((ws) => ws.closed)),
    deadline(ANSWER_DEADLINE_MS, 'clients not closed'),
  ]);
  assert.deepEqual(new Set(closed), new Set([1001]), 'a stopping server closes every client with 1001');

  const perClient = (afterKiB - beforeKiB) / IDLE_CLIENTS;
  console.log(`guest-check ${arch}: healthy ${bootSeconds.toFixed(1)} s after boot, ` +
    `RSS at start ${startKiB} KiB, ${perClient.toFixed(1)} KiB per idle client ` +
    `(${IDLE_CLIENTS} clients: ${beforeKiB} -> ${afterKiB} KiB), message relayed in ${relayMs} ms, ` +
    'page served, stopped with 1001');
}

main().catch((error) => {
  console.error(`guest-check ${arch}: ${error.stack || error}`);
  process.exit(1);
});
