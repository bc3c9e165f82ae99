// Socket.IO clients, unchanged, against the real binary: the official client
// (socket.io-client 4 from npm) in node, and the socket.io tutorial's chat page in
// Debian's chromium. The protocol's own cases are in tests/socketio/ (Rust).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import {
  ROOT, CHROMIUM, CHROMIUM_ARGS, PATIENCE_MS, startServer, stopServer,
} from './support.mjs';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) await stopServer(server);
});

/** The official client, over WebSocket (threadchat serves no long-polling). */
function client(url, options = {}) {
  return io(url, { transports: ['websocket'], reconnectionDelay: 100, ...options });
}

/** Resolves with the first `event` that `socket` emits (its first argument). */
function next(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${PATIENCE_MS} ms`)), PATIENCE_MS);
    socket.once(event, (value) => { clearTimeout(timer); resolve(value); });
  });
}

/** Resolves with the first `event` whose argument passes `wanted`. */
function nextWhere(socket, event, wanted) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no such ${event} within ${PATIENCE_MS} ms`)), PATIENCE_MS);
    const listener = (value) => {
      if (!wanted(value)) return;
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(value);
    };
    socket.on(event, listener);
  });
}

/** A JSON client of the chat port, its welcome read; `frames` collects what follows. */
async function jsonClient(at, room) {
  const ws = new WebSocket(`ws://127.0.0.1:${at.wsPort}/${room ? `?room=${room}` : ''}`);
  const frames = [];
  const waiting = [];
  ws.on('message', (data) => {
    const frame = JSON.parse(data);
    frames.push(frame);
    for (const w of [...waiting]) {
      if (w.wanted(frame)) { waiting.splice(waiting.indexOf(w), 1); w.resolve(frame); }
    }
  });
  const until = (wanted) => new Promise((resolve) => {
    const seen = frames.find(wanted);
    if (seen) resolve(seen); else waiting.push({ wanted, resolve });
  });
  const welcome = await until((f) => f.type === 'welcome');
  return { ws, frames, until, id: welcome.id, send: (frame) => ws.send(JSON.stringify(frame)) };
}

test('the official client connects to both ports and is answered through acks', async () => {
  for (const url of [`http://127.0.0.1:${server.httpPort}`, `ws://127.0.0.1:${server.wsPort}`]) {
    const socket = client(url);
    const welcome = await next(socket, 'welcome');
    assert.equal(socket.id, String(welcome.id), 'socket.id is the chat id');
    const hello = await socket.emitWithAck('hello', { name: 'ann' });
    assert.deepEqual(hello, { type: 'hello', id: welcome.id, name: 'ann' });
    const joined = await socket.emitWithAck('join', { room: 'acks' });
    assert.deepEqual(joined, { type: 'joined', room: 'acks', count: 1 });
    const said = await socket.emitWithAck('message', { msg: 'hi' });
    assert.equal(said.type, 'message');
    assert.equal(said.msg, 'hi');
    const refused = await socket.emitWithAck('join', { room: 'not a room!' });
    assert.equal(refused.type, 'error');
    socket.disconnect();
  }
});

test('a socket.io client and a JSON client share a room, and direct messages reach either', async () => {
  const json = await jsonClient(server, 'games');
  const socket = client(`http://127.0.0.1:${server.httpPort}`);
  const welcome = await next(socket, 'welcome');
  await socket.emitWithAck('hello', { name: 'sio' });
  const joined = await socket.emitWithAck('join', { room: 'games' });
  assert.equal(joined.count, 2);
  const heard = nextWhere(socket, 'message', (m) => m.msg === 'from json');
  json.send({ name: 'jay', msg: 'from json' });
  assert.equal((await heard).name, 'jay');
  socket.emit('message', { msg: 'from socket.io' });
  const got = await json.until((f) => f.type === 'message' && f.msg === 'from socket.io');
  assert.equal(got.name, 'sio');
  assert.equal(got.from, welcome.id);
  const direct = next(socket, 'direct');
  json.send({ type: 'direct', to: welcome.id, msg: 'psst' });
  assert.equal((await direct).msg, 'psst');
  const copy = await socket.emitWithAck('direct', { to: json.id, msg: 'back' });
  assert.equal(copy.delivered, true);
  assert.equal((await json.until((f) => f.type === 'direct' && f.msg === 'back')).from, welcome.id);
  socket.disconnect();
  json.ws.close();
});

test('after a server restart the official client reconnects by itself', async () => {
  const first = await startServer();
  const socket = client(`http://127.0.0.1:${first.httpPort}`);
  const before = await next(socket, 'welcome');
  const reason = next(socket, 'disconnect');
  await stopServer(first);
  assert.equal(await reason, 'transport close');
  const again = await startServer({ httpPort: first.httpPort, wsPort: first.wsPort });
  try {
    const after = await next(socket, 'welcome');
    assert.ok(socket.connected);
    assert.equal(typeof after.id, 'number');
    assert.notEqual(after.epoch, before.epoch, 'a new server run');
  } finally {
    socket.disconnect();
    await stopServer(again);
  }
});

// --- the socket.io tutorial's chat page, unchanged ----------------------------

const CDN = {
  'https://ajax.googleapis.com/ajax/libs/jquery/2.2.4/jquery.min.js':
    join(ROOT, 'tests/e2e/node_modules/jquery/dist/jquery.min.js'),
  'https://maxcdn.bootstrapcdn.com/bootstrap/3.3.7/css/bootstrap.min.css':
    join(ROOT, 'tests/e2e/node_modules/bootstrap/dist/css/bootstrap.min.css'),
};

/** The page in a browser context of its own, its CDN files served from local copies. */
async function openPage(browser, at) {
  const context = await browser.newContext();
  // Anything else from outside fails the test rather than reaching the network.
  await context.route(/^https?:\/\/(?!127\.0\.0\.1)/, (route) => {
    const local = CDN[route.request().url()];
    return local ? route.fulfill({ path: local }) : route.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  await page.goto(`http://127.0.0.1:${at.httpPort}/`);
  // Its own login comes back to it: "xyz has joined".
  const own = page.locator('#chatLogs div', { hasText: 'has joined' }).first();
  const name = (await own.locator('strong').textContent()).trim();
  return { context, page, name };
}

test("the tutorial's chat page: two people log in and chat, and nobody gets their own chat back", async () => {
  const page = join(ROOT, 'tests/e2e/socketio-tutorial/chat');
  const at = await startServer({ args: ['--www', page] });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    const first = await openPage(browser, at);
    // bootstrap came from the local copy: the button is styled.
    const color = await first.page.$eval('button.btn-primary', (b) => getComputedStyle(b).backgroundColor);
    assert.equal(color, 'rgb(51, 122, 183)');
    const second = await openPage(browser, at);
    // The first page hears of the second's login.
    await first.page.locator('#chatLogs div', { hasText: `${second.name} has joined` }).waitFor();
    await first.page.fill('#msgForm', 'hello from the first page');
    await first.page.click('button[type=submit]');
    const line = second.page.locator('#chatLogs div', { hasText: 'hello from the first page' });
    await line.waitFor();
    assert.equal(await line.textContent(), `hello from the first page : from ${first.name}`);
    await second.page.fill('#msgForm', 'and back');
    await second.page.click('button[type=submit]');
    await first.page.locator('#chatLogs div', { hasText: `and back : from ${second.name}` }).waitFor();
    // The sender's own chat never came back to it (the other's reply came after it).
    assert.equal(await first.page.locator('#chatLogs div', { hasText: 'hello from the first page' }).count(), 0);
    assert.equal(await second.page.locator('#chatLogs div', { hasText: 'and back' }).count(), 0);
  } finally {
    await browser.close();
    await stopServer(at);
  }
});

test("the tutorial's rooms page: a message reaches its room, the sender included, and no other", async () => {
  // The page names its server: http://localhost:3000/chat.
  const page = join(ROOT, 'tests/e2e/socketio-tutorial/rooms');
  const at = await startServer({ httpPort: 3000, args: ['--www', page] });
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    const open = async (name, room) => {
      const context = await browser.newContext();
      await context.route(/^https?:\/\/(?!127\.0\.0\.1|localhost)/, (route) => {
        const local = CDN[route.request().url()];
        return local ? route.fulfill({ path: local }) : route.abort();
      });
      const tab = await context.newPage();
      tab.setDefaultTimeout(PATIENCE_MS);
      await tab.goto('http://localhost:3000/');
      await tab.fill('#name', name);
      await tab.fill('#room', room);
      return tab;
    };
    const say = async (tab, msg) => {
      await tab.fill('#msg', msg);
      await tab.click('button[type=submit]');
      await tab.locator('#chat li', { hasText: msg }).waitFor(); // its own comes back
    };
    const ann = await open('ann', 'room1');
    const bob = await open('bob', 'room2');
    const cat = await open('cat', 'room1');
    await say(cat, 'cat joins room1');
    await say(bob, 'bob in room2');
    await say(ann, 'hello room1');
    await cat.locator('#chat li', { hasText: 'hello room1' }).waitFor();
    await say(bob, 'bob again');
    // bob heard his own two, in order, and nothing of room1's.
    assert.deepEqual(await bob.locator('#chat li').allTextContents(), ['bob in room2', 'bob again']);
    assert.deepEqual(await cat.locator('#chat li').allTextContents(), ['cat joins room1', 'hello room1']);
  } finally {
    await browser.close();
    await stopServer(at);
  }
});
