// The page in a real browser: Debian's chromium, driven by playwright-core, against
// the real threadchat binary on free loopback ports.
//
// Run through `make e2e` (part of `make test`). Screenshots go to target/e2e/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import {
  ROOT, BINARY, SHOTS, CERT, CHROMIUM, CHROMIUM_ARGS, PATIENCE_MS,
  accepts, freePort, startServer, logged, stopServer,
} from './support.mjs';

// --- the browser -------------------------------------------------------------

let browser;
let server;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  // launch() starts chromium with a fresh, empty profile of its own each time.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  if (browser) await browser.close();
  if (server) await stopServer(server);
});

/** A person: their own browser context (own storage), the page, open and online. */
async function person(name, {
  viewport, at = server, fragment = '', waitOnline = true, scheme = 'http', via = browser,
  beforeOpen = () => {},
} = {}) {
  const context = await via.newContext(viewport ? { viewport } : {});
  const page = await context.newPage();
  page.setDefaultTimeout(PATIENCE_MS);
  beforeOpen(page);
  const dialogs = [];
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  await page.goto(`${scheme}://127.0.0.1:${at.httpPort}/${fragment}`);
  await page.fill('#name', name);
  if (waitOnline) await online(page);
  return { context, page, dialogs };
}

async function online(page) {
  await page.waitForSelector('#status[data-state="online"]');
}

async function say(page, text) {
  await page.fill('#msg', text);
  await page.press('#msg', 'Enter');
}

/** The last log entry whose text contains `text`, once it exists. */
async function entry(page, text) {
  const found = page.locator('#chat li', { hasText: text }).last();
  await found.waitFor();
  return found;
}

// --- the tests ---------------------------------------------------------------

test('two people chat both ways, and their own messages look different', async () => {
  const alice = await person('alice');
  const bob = await person('bob');
  await say(alice.page, 'hello bob');
  const atBob = await entry(bob.page, 'hello bob');
  const atAlice = await entry(alice.page, 'hello bob');
  assert.equal(await atBob.locator('.who').textContent(), 'alice');
  assert.match(await atAlice.getAttribute('class'), /\bmine\b/);
  assert.doesNotMatch(await atBob.getAttribute('class'), /\bmine\b/);
  assert.ok(await atBob.locator('time').textContent(), 'each entry shows its time');

  await say(bob.page, 'hi alice');
  await entry(alice.page, 'hi alice');
  assert.equal(await alice.page.inputValue('#msg'), '', 'the input is cleared after sending');
  await say(bob.page, '   '); // an empty message is not sent
  await say(bob.page, 'still one');
  await entry(alice.page, 'still one');
  assert.equal(await alice.page.locator('#chat li.message').count(), 3);

  const status = await alice.page.textContent('#status');
  assert.match(status, /online/);
  assert.match(status, /2/);
  await alice.page.screenshot({ path: join(SHOTS, 'two-people-alice.png') });
  await bob.page.screenshot({ path: join(SHOTS, 'two-people-bob.png') });
  await alice.context.close();
  await bob.context.close();
});

test('markup in a message or a name is shown as text and runs nothing', async () => {
  const mallory = await person('<b onclick=alert(2)>m</b>');
  const victim = await person('victim');
  const payload = '<img src=x onerror=alert(1)><script>alert(3)</script>';
  await say(mallory.page, payload);
  const shown = await entry(victim.page, 'onerror');
  assert.equal(await shown.locator('.text').textContent(), payload);
  assert.equal(await shown.locator('.who').textContent(), '<b onclick=alert(2)>m</b>');
  assert.equal(await victim.page.locator('#chat img, #chat script, #chat b').count(), 0);
  await shown.locator('.who').click();
  assert.deepEqual(victim.dialogs, []);
  assert.deepEqual(mallory.dialogs, []);
  await victim.page.screenshot({ path: join(SHOTS, 'markup-as-text.png') });
  await mallory.context.close();
  await victim.context.close();
});

test('Korean and emoji arrive intact', async () => {
  const minji = await person('민지');
  const joe = await person('joe');
  const text = '안녕하세요! 반가워요 👋🏽🎉 — naïve café';
  await say(minji.page, text);
  const shown = await entry(joe.page, '안녕하세요');
  assert.equal(await shown.locator('.text').textContent(), text);
  assert.equal(await shown.locator('.who').textContent(), '민지');
  await joe.page.screenshot({ path: join(SHOTS, 'korean-emoji.png') });
  await minji.context.close();
  await joe.context.close();
});

test("the other person's leave shows as a notification", async () => {
  const stay = await person('stays');
  const go = await person('goes');
  // Both agree on how many are here once the second join has reached the first.
  const here = Number((await go.page.textContent('#status')).match(/(\d+) here/)[1]);
  await statusCount(stay.page, here);
  const leavesBefore = await stay.page.locator('#chat li.notification', { hasText: 'left' }).count();
  await go.context.close();
  const left = stay.page.locator('#chat li.notification', { hasText: 'left' }).nth(leavesBefore);
  await left.waitFor();
  assert.match(await left.textContent(), new RegExp(`online: ${here - 1}`));
  await statusCount(stay.page, here - 1);
  await stay.page.screenshot({ path: join(SHOTS, 'leave.png') });
  await stay.context.close();
});

/** Waits until the status line says `count` people are here. */
async function statusCount(page, count) {
  await page.waitForFunction(
    (n) => document.getElementById('status').textContent.includes(`${n} here`), count);
}

test('the name survives a reload', async () => {
  const carol = await person('carol');
  await carol.page.reload();
  await online(carol.page);
  assert.equal(await carol.page.inputValue('#name'), 'carol');
  await carol.context.close();
});

test('on a phone-sized screen everything is reachable by keyboard', async () => {
  const phone = await person('phone', { viewport: { width: 375, height: 667 } });
  await phone.page.focus('#name');
  await phone.page.keyboard.press('Tab');
  assert.equal(await phone.page.evaluate(() => document.activeElement.id), 'msg');
  await phone.page.keyboard.type('typed on a phone');
  await phone.page.keyboard.press('Enter');
  await entry(phone.page, 'typed on a phone');
  const box = await phone.page.locator('#send').boundingBox();
  assert.ok(box.x + box.width <= 375, 'the send button fits the screen');
  await phone.page.screenshot({ path: join(SHOTS, 'phone.png') });
  await phone.context.close();
});

test('the log follows new messages unless the reader has scrolled up', async () => {
  const reader = await person('reader', { viewport: { width: 800, height: 400 } });
  const writer = await person('writer');
  // Fewer than the server's burst of 20 frames (the page's own hello, join and
  // `who` count too): more would be refused by flood control, which is not what
  // this test is about. Twelve entries of three lines each fill the log twice over.
  for (let i = 0; i < 12; i++) await say(writer.page, `line ${i}`);
  await entry(reader.page, 'line 11');
  const atBottom = () => reader.page.$eval('#chat',
    (log) => log.scrollHeight - log.scrollTop - log.clientHeight < 5);
  assert.ok(await reader.page.$eval('#chat', (log) => log.scrollHeight > 2 * log.clientHeight),
    'the log holds more than two screens, so scrolled up is far from the bottom');
  await reader.page.waitForFunction(() => {
    const log = document.getElementById('chat');
    return log.scrollHeight - log.scrollTop - log.clientHeight < 5;
  });
  // Scrolled up to read: a new message must not yank the view down.
  await reader.page.$eval('#chat', (log) => { log.scrollTop = 0; });
  await say(writer.page, 'while reading');
  await entry(reader.page, 'while reading');
  assert.equal(await reader.page.$eval('#chat', (log) => log.scrollTop), 0);
  assert.equal(await atBottom(), false);
  await reader.context.close();
  await writer.context.close();
});

test('disconnect and connect again with the button', async () => {
  const dana = await person('dana');
  await dana.page.click('#toggle');
  await dana.page.waitForSelector('#status[data-state="offline"]');
  await dana.page.click('#toggle');
  await online(dana.page);
  await say(dana.page, 'back again');
  await entry(dana.page, 'back again');
  await dana.context.close();
});

test('a page that has shown no message yet hears what was said while it was away', async () => {
  // Its own server, so that the lobby has no message before this one.
  const quiet = await startServer();
  try {
    const erin = await person('erin', { at: quiet });
    await erin.page.click('#toggle');
    await erin.page.waitForSelector('#status[data-state="offline"]');
    await sayFromOutside('lobby', 'said while erin was away', quiet);
    await erin.page.click('#toggle');
    await online(erin.page);
    const away = await entry(erin.page, 'said while erin was away');
    assert.match(await away.getAttribute('class'), /\bhistory\b/);
    await erin.context.close();
  } finally {
    await stopServer(quiet);
  }
});

test('after a server restart the page reconnects by itself and nothing typed is lost', async () => {
  const alice = await person('alice');
  const bob = await person('bob');
  await say(alice.page, 'before the restart');
  await entry(bob.page, 'before the restart');

  const { httpPort, wsPort } = server;
  await stopServer(server);
  await alice.page.waitForSelector('#status[data-state="reconnecting"]');
  await alice.page.screenshot({ path: join(SHOTS, 'reconnecting.png') });
  // Typed while the server is down: kept, and sent once the page is back.
  await say(alice.page, 'typed while offline');
  assert.match(await alice.page.textContent('#status'), /1 waiting to send/);

  server = await startServer({ httpPort, wsPort });
  await online(alice.page);
  // Relayed: it comes back to Alice as her own message.
  const queued = await entry(alice.page, 'typed while offline');
  assert.match(await queued.getAttribute('class'), /\bmine\b/);
  await online(bob.page);
  await say(bob.page, 'after the restart');
  await entry(alice.page, 'after the restart');
  await alice.page.screenshot({ path: join(SHOTS, 'after-restart.png') });
  await alice.context.close();
  await bob.context.close();
});

// --- rooms, people, direct messages, history (protocol v2) --------------------

/** Joins `room` with the room field and waits until the server has said `joined`. */
async function joinRoom(page, room) {
  await page.fill('#room', room);
  await page.press('#room', 'Enter');
  await roomIs(page, room);
}

async function roomIs(page, room) {
  await page.waitForFunction(
    (r) => document.getElementById('room-now').textContent === `in ${r}`, room);
  assert.equal(await page.inputValue('#room'), room);
}

/** How many log entries on screen contain `text` (now: call it after a later entry). */
function shown(page, text) {
  return page.locator('#chat li', { hasText: text }).count();
}

/** The member button called exactly `name`, once the list shows it. */
async function member(page, name) {
  const button = page.locator('#members button.member').filter({ hasText: new RegExp(`^${name}$`) });
  await button.waitFor();
  return button;
}

/**
 * Another client, not the page: a bare WebSocket (from a blank page of the server's
 * origin, since Node 20 has no WebSocket without a flag) that joins `room`, says
 * `msg` and leaves once the server has relayed it.
 */
async function sayFromOutside(room, msg, at = server) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${at.httpPort}/healthz`);
  await page.evaluate(({ port, room, msg }) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, 'threadchat.v2');
    ws.onerror = () => reject(new Error('socket failed'));
    ws.onopen = () => ws.send(JSON.stringify({ type: 'join', room }));
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'joined') ws.send(JSON.stringify({ name: 'outsider', msg }));
      if (frame.type === 'message' && frame.msg === msg && !frame.history) {
        ws.close();
        resolve();
      }
      if (frame.type === 'error') reject(new Error(frame.msg));
    };
  }), { port: at.wsPort, room, msg });
  await context.close();
}

test("people in different rooms don't see each other, and both see the lobby again on return", async () => {
  const alice = await person('alice');
  const bob = await person('bob');
  const carol = await person('carol'); // stays in the lobby
  await joinRoom(alice.page, 'attic');
  await joinRoom(bob.page, 'cellar');
  // Carol's list of the lobby follows them out.
  await carol.page.waitForFunction(() => {
    const names = [...document.querySelectorAll('#members li')].map((li) => li.textContent);
    return names.includes('carol (you)') && !names.includes('alice') && !names.includes('bob');
  });

  await say(alice.page, 'up in the attic');
  await entry(alice.page, 'up in the attic');
  await say(bob.page, 'down in the cellar');
  await entry(bob.page, 'down in the cellar');
  // Bob's own message was relayed after Alice's: had hers reached him, it would be here.
  assert.equal(await shown(bob.page, 'up in the attic'), 0);
  await say(alice.page, 'still up here');
  await entry(alice.page, 'still up here');
  assert.equal(await shown(alice.page, 'down in the cellar'), 0);
  await say(carol.page, 'meanwhile in the lobby');
  await entry(carol.page, 'meanwhile in the lobby');
  assert.equal(await shown(carol.page, 'attic'), 0);
  assert.equal(await shown(carol.page, 'cellar'), 0);
  await alice.page.screenshot({ path: join(SHOTS, 'room-attic.png') });

  // The room survives a reload; what was said there comes back marked as history.
  await alice.page.reload();
  await online(alice.page);
  await roomIs(alice.page, 'attic');
  const earlier = await entry(alice.page, 'up in the attic');
  assert.match(await earlier.getAttribute('class'), /\bhistory\b/);
  await entry(alice.page, 'still up here');
  assert.equal(await shown(alice.page, 'meanwhile in the lobby'), 0);

  // Back in the lobby, both see what was said there while they were away, once.
  await joinRoom(alice.page, 'lobby');
  await joinRoom(bob.page, 'lobby');
  await entry(alice.page, 'meanwhile in the lobby');
  await entry(bob.page, 'meanwhile in the lobby');
  await say(carol.page, 'welcome back');
  await entry(alice.page, 'welcome back');
  await entry(bob.page, 'welcome back');
  assert.equal(await shown(bob.page, 'meanwhile in the lobby'), 1);
  assert.equal(await shown(bob.page, 'down in the cellar'), 0);
  assert.equal(await shown(alice.page, 'up in the attic'), 0);
  await bob.page.screenshot({ path: join(SHOTS, 'room-back-in-lobby.png') });
  await alice.context.close();
  await bob.context.close();
  await carol.context.close();
});

test('a direct message reaches only its target', async () => {
  const bob = await person('bob');
  await joinRoom(bob.page, 'den');
  await bob.page.locator('#members li.me', { hasText: 'bob (you)' }).waitFor();
  const alice = await person('alice');
  await joinRoom(alice.page, 'den');
  const nameless = await person('');
  await joinRoom(nameless.page, 'den');
  // Alice's list follows the room: the nameless one shows as #id.
  await alice.page.locator('#members button.member').filter({ hasText: /^#\d+$/ }).waitFor();

  await (await member(alice.page, 'bob')).click();
  assert.equal(await alice.page.textContent('#direct-to'), 'to bob');
  assert.equal(await alice.page.evaluate(() => document.activeElement.id), 'msg');
  await say(alice.page, 'psst, bob');
  const got = await entry(bob.page, 'psst, bob');
  assert.match(await got.getAttribute('class'), /\bdirect\b/);
  assert.match(await got.locator('.who').textContent(), /alice/);
  const sent = await entry(alice.page, 'psst, bob'); // her `delivered` copy
  assert.match(await sent.getAttribute('class'), /\bdirect\b.*\bmine\b|\bmine\b.*\bdirect\b/);
  assert.match(await sent.locator('.who').textContent(), /bob/);
  await alice.page.screenshot({ path: join(SHOTS, 'direct.png') });

  await alice.page.click('#direct-cancel');
  assert.equal(await alice.page.isHidden('#direct'), true);
  await say(alice.page, 'hello, den');
  const publicly = await entry(bob.page, 'hello, den');
  assert.doesNotMatch(await publicly.getAttribute('class'), /\bdirect\b/);
  // Relayed after the direct one: had that reached the third person, it would be here.
  await entry(nameless.page, 'hello, den');
  assert.equal(await shown(nameless.page, 'psst'), 0);
  await alice.context.close();
  await bob.context.close();
  await nameless.context.close();
});

test('after a server restart the page rejoins its room and says what it may have missed', async () => {
  const alice = await person('alice');
  await joinRoom(alice.page, 'porch');
  await say(alice.page, 'before the restart');
  await entry(alice.page, 'before the restart');

  const { httpPort, wsPort } = server;
  await stopServer(server);
  await alice.page.waitForSelector('#status[data-state="reconnecting"]');
  // Kept away (offline) until someone else has spoken in the new server's porch.
  await alice.context.setOffline(true);
  server = await startServer({ httpPort, wsPort });
  await sayFromOutside('porch', 'said while you were away');
  await alice.context.setOffline(false);

  await online(alice.page);
  await roomIs(alice.page, 'porch');
  // A new server run (another epoch): the protocol promises `gap`, then what it has.
  const gap = await entry(alice.page, 'Some messages may have been missed');
  const away = await entry(alice.page, 'said while you were away');
  assert.match(await away.getAttribute('class'), /\bhistory\b/);
  const order = await alice.page.$$eval('#chat li', (items) => items.map((li) => li.textContent));
  const at = (text) => order.findIndex((t) => t.includes(text));
  assert.ok(at('before the restart') < at('may have been missed'), order.join('\n'));
  assert.ok(at('may have been missed') < at('said while you were away'), order.join('\n'));
  assert.match(await gap.getAttribute('class'), /\bnotice\b/);
  assert.equal(await shown(alice.page, 'before the restart'), 1);

  await sayFromOutside('porch', 'and now live');
  const live = await entry(alice.page, 'and now live');
  assert.doesNotMatch(await live.getAttribute('class'), /\bhistory\b/);
  assert.equal(await shown(alice.page, 'said while you were away'), 1);
  await alice.page.screenshot({ path: join(SHOTS, 'restart-gap.png') });
  await alice.context.close();
});

test('sending faster than the server takes is answered politely, not as an alarm', async () => {
  const hasty = await person('hasty');
  await joinRoom(hasty.page, 'hurry');
  // More than the burst at once, in one go, from the form itself.
  await hasty.page.evaluate(() => {
    const msg = document.getElementById('msg');
    const form = document.getElementById('composer');
    for (let i = 0; i < 30; i++) {
      msg.value = `hurry ${i}`;
      form.requestSubmit();
    }
  });
  const notice = hasty.page.locator('#chat li.notice.slow').first();
  await notice.waitFor();
  assert.match(await notice.textContent(), /not sent/);
  await entry(hasty.page, 'hurry 0');
  assert.equal(await hasty.page.locator('#chat li.error').count(), 0);
  // About ten were over the burst (the page's own hello and who count too): one
  // notice counts them, it does not repeat itself.
  await hasty.page.waitForFunction(() => /\d+ messages were not sent/.test(
    document.querySelector('#chat li.notice.slow').textContent));
  assert.equal(await hasty.page.locator('#chat li.notice.slow').count(), 1);
  await hasty.page.screenshot({ path: join(SHOTS, 'slow-down.png') });
  await hasty.context.close();
});

/**
 * Another client that sends `count` messages `${prefix} 0`, `${prefix} 1`, … into
 * the lobby of `at` at once, and resolves once the last has come back to it. Its
 * socket stays open (in a blank page of the server's origin) until `context` closes.
 */
async function floodFromOutside(at, prefix, count) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${at.httpPort}/healthz`);
  await page.evaluate(({ port, prefix, count }) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, 'threadchat.v2');
    ws.onerror = () => reject(new Error('socket failed'));
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'welcome') {
        for (let i = 0; i < count; i++) ws.send(JSON.stringify({ name: 'flood', msg: `${prefix} ${i}` }));
      }
      if (frame.type === 'message' && frame.msg === `${prefix} ${count - 1}` && !frame.history) resolve();
      if (frame.type === 'error') reject(new Error(frame.msg));
    };
  }), { port: at.wsPort, prefix, count });
  return context;
}

/** The largest size of any Set and of any Map in `page`'s heap (its own world, not
 *  playwright's): what the page remembers, measured without a hook in the page. */
async function largestCollections(page) {
  const cdp = await page.context().newCDPSession(page);
  const largest = async (type) => {
    const { result: prototype } = await cdp.send('Runtime.evaluate', { expression: `${type}.prototype` });
    const { objects } = await cdp.send('Runtime.queryObjects', { prototypeObjectId: prototype.objectId });
    const { result } = await cdp.send('Runtime.callFunctionOn', {
      objectId: objects.objectId,
      functionDeclaration: 'function () { return Math.max(0, ...this.map((c) => c.size)); }',
      returnByValue: true,
    });
    return result.value;
  };
  const sizes = { set: await largest('Set'), map: await largest('Map') };
  await cdp.detach();
  return sizes;
}

test('the log keeps the newest thousand entries, remembers no more, and resumes after them', async () => {
  const CAP = 1000; // LOG_CAP in www/app.js
  const SENT = CAP + 200;
  // Flood control would drop most of one client's burst, and the address's budgets
  // most of the rest: this test is about the page.
  const busy = await startServer({
    args: ['--rate', '10000', '--burst', String(2 * SENT), '--host-frames', '0', '--host-bytes-in', '0'],
  });
  try {
    const reader = await person('reader', { at: busy });
    const sent = [];
    reader.page.on('websocket', (ws) => ws.on('framesent', ({ payload }) => sent.push(String(payload))));
    const flooder = await floodFromOutside(busy, 'flood', SENT);
    const newest = await entry(reader.page, `flood ${SENT - 1}`);
    const texts = await reader.page.$$eval('#chat li .text', (items) => items.map((t) => t.textContent));
    assert.equal(await reader.page.locator('#chat li').count(), CAP);
    assert.equal(texts.length, CAP);
    assert.deepEqual(texts, Array.from({ length: CAP }, (_, i) => `flood ${SENT - CAP + i}`));
    // The largest Set is the log's known messages, one per entry; no Map holds more.
    const largest = await largestCollections(reader.page);
    assert.equal(largest.set, CAP, JSON.stringify(largest));
    assert.ok(largest.map <= CAP, JSON.stringify(largest));

    // Away and back: the join resumes after the newest message, which was kept.
    await reader.page.click('#toggle');
    await reader.page.waitForSelector('#status[data-state="offline"]');
    await sayFromOutside('lobby', 'said while away', busy);
    await reader.page.click('#toggle');
    const away = await entry(reader.page, 'said while away');
    assert.match(await away.getAttribute('class'), /\bhistory\b/);
    const joins = sent.map((p) => JSON.parse(p)).filter((f) => f.type === 'join');
    assert.equal(joins.at(-1).since, Number(await newest.getAttribute('data-id')), JSON.stringify(joins));
    assert.equal(await shown(reader.page, `flood ${SENT - 1}`), 1);
    assert.equal(await reader.page.locator('#chat li').count(), CAP);
    await reader.page.screenshot({ path: join(SHOTS, 'log-cap.png') });
    await reader.context.close();
    await flooder.close();
  } finally {
    await stopServer(busy);
  }
});

test('with --token, the link with #token= lets a person in and other links do not', async () => {
  const guarded = await startServer({ args: ['--token', 'pi-chat-7'] });
  try {
    const ann = await person('ann', { at: guarded, fragment: '#token=pi-chat-7' });
    // The token leaves the address bar at once, and stays for the tab's reloads.
    assert.equal(await ann.page.evaluate(() => location.hash), '');
    await ann.page.reload();
    await online(ann.page);
    await say(ann.page, 'only for those with the link');
    await entry(ann.page, 'only for those with the link');

    const bare = await person('bare', { at: guarded, waitOnline: false });
    await entry(bare.page, 'needs an access token');
    assert.equal(await bare.page.getAttribute('#status', 'data-state'), 'offline');

    const wrong = await person('wrong', { at: guarded, fragment: '#token=pi-chat-8', waitOnline: false });
    await entry(wrong.page, 'access token was refused');
    assert.notEqual(await wrong.page.getAttribute('#status', 'data-state'), 'online');
    // Neither ever reached the chat: ann is still alone in it.
    await ann.page.waitForSelector('#status:has-text("1 here")');
    assert.equal(await shown(bare.page, 'only for those with the link'), 0);
    await wrong.page.screenshot({ path: join(SHOTS, 'token-refused.png') });
    for (const p of [ann, bare, wrong]) await p.context.close();
    await logged(guarded, 'refused with 401');
  } finally {
    await stopServer(guarded);
  }
});

test("over https and wss, with make cert's certificate, the page chats", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'threadchat-e2e-tls-'));
  execFileSync(CERT, ['--out', dir]);
  const secure = await startServer({
    args: ['--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem')],
  });
  // A browser of its own that takes the self-signed certificate without a click.
  const trusting = await chromium.launch({
    executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, '--ignore-certificate-errors'],
  });
  try {
    const sockets = [];
    const ann = await person('ann', { at: secure, scheme: 'https', via: trusting, waitOnline: false });
    ann.page.on('websocket', (ws) => sockets.push(ws.url()));
    await ann.page.reload();
    await online(ann.page);
    const bob = await person('bob', { at: secure, scheme: 'https', via: trusting });
    await say(ann.page, 'sealed on the way');
    await entry(bob.page, 'sealed on the way');
    await say(bob.page, 'and back');
    await entry(ann.page, 'and back');
    assert.ok(sockets.length > 0 && sockets.every((url) => url.startsWith('wss://')), String(sockets));
    await bob.page.screenshot({ path: join(SHOTS, 'https.png') });
    for (const p of [ann, bob]) await p.context.close();
    await logged(secure, 'listening: chat wss://');
  } finally {
    await trusting.close();
    await stopServer(secure);
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A redis-server of this test's own on `port` (no persistence); resolves once it listens. */
async function startRedis(port) {
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
    '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const deadline = Date.now() + PATIENCE_MS;
  while (!(await accepts(port))) {
    if (Date.now() > deadline) throw new Error('redis-server did not start');
    await new Promise((r) => setTimeout(r, 20)); // polling for the port: no event to wait for
  }
  return proc;
}

function stopRedis(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill('SIGKILL');
  });
}

test('two nodes are one chat; cut off from Redis, a node chats on alone, then joins again', async () => {
  const redisPort = await freePort();
  let redis = await startRedis(redisPort);
  const url = `redis://127.0.0.1:${redisPort}/`;
  const [a, b] = [await startServer({ args: ['--redis', url] }),
    await startServer({ args: ['--redis', url] })];
  try {
    const alice = await person('alice', { at: a });
    const carol = await person('carol', { at: a });
    const bob = await person('bob', { at: b });
    await say(alice.page, 'before the cut');
    await entry(bob.page, 'before the cut');

    await stopRedis(redis);
    for (const p of [alice, carol, bob]) await entry(p.page, 'lost the rest of the chat');
    // Alone on node a: alice and carol still hear each other.
    await say(alice.page, 'alone on a');
    await entry(carol.page, 'alone on a');
    await entry(alice.page, 'alone on a');

    // Redis comes back empty: the cluster numbers on from the last id it gave,
    // which a had also given to 'alone on a' in its own epoch.
    redis = await startRedis(redisPort);
    for (const p of [alice, carol, bob]) await entry(p.page, 'Connected to the whole chat again');
    await say(bob.page, 'together again');
    for (const p of [alice, carol, bob]) await entry(p.page, 'together again');
    await say(carol.page, 'and on');
    await entry(bob.page, 'and on');
    for (const p of [alice, carol]) {
      await entry(p.page, 'and on');
      for (const text of ['before the cut', 'alone on a', 'together again']) {
        assert.equal(await shown(p.page, text), 1, text);
      }
    }
    assert.equal(await shown(bob.page, 'alone on a'), 0, 'b never heard a alone');
    await alice.page.screenshot({ path: join(SHOTS, 'cluster-cut.png') });
    for (const p of [alice, carol, bob]) await p.context.close();
  } finally {
    await stopServer(a);
    await stopServer(b);
    await stopRedis(redis);
  }
});

/**
 * An attacker on 127.0.0.2 flooding `at` for `seconds` (`reconnect-flood.mjs`, in a
 * process of its own); resolves with the number of messages it sent.
 */
function reconnectFlood(at, connections, seconds) {
  const attacker = spawn(process.execPath, [
    join(ROOT, 'tests/e2e/reconnect-flood.mjs'), String(at.wsPort), String(connections), String(seconds),
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  attacker.stdout.setEncoding('utf8');
  attacker.stdout.on('data', (chunk) => { out += chunk; });
  return new Promise((resolve, reject) => {
    attacker.on('exit', (code) => (code === 0 ? resolve(Number(out)) : reject(new Error(`attacker: ${code}`))));
  });
}

test('during a reconnect flood from another address the page shows every honest message', async () => {
  // Its own server with the default budgets, so that the flood does not touch the
  // other tests' server.
  const flooded = await startServer();
  try {
    const alice = await person('alice', { at: flooded });
    // Every attack message that reaches bob's page, on the wire: the log shows a
    // thousand entries at most, the socket shows them all.
    let reached = 0;
    const countAttacks = (page) => page.on('websocket', (ws) => ws.on('framereceived', ({ payload }) => {
      if (typeof payload === 'string' && payload.includes('"name":"attack"')) reached += 1;
    }));
    const bob = await person('bob', { at: flooded, beforeOpen: countAttacks });
    const started = Date.now();
    const attack = reconnectFlood(flooded, 32, 6);
    // The flood is on before anyone speaks.
    await bob.page.locator('#chat li .text', { hasText: /^attack \d+$/ }).first().waitFor();
    const said = [];
    for (let k = 0; k < 12; k++) {
      said.push(`honest ${k} of 12`); // no text another's contains
      await say(alice.page, said.at(-1));
      // One at a time, as a person types: each must reach bob before the next.
      await entry(bob.page, said.at(-1));
    }
    const sent = await attack;
    for (const [who, page] of [['alice', alice.page], ['bob', bob.page]]) {
      await page.screenshot({ path: join(SHOTS, `reconnect-flood-${who}.png`) });
      const log = await page.$$eval('#chat li', (items) => items.map((li) => `${li.className}|${li.textContent}`));
      for (const text of said) assert.equal(await shown(page, text), 1, `${who}: ${text}\n${log.filter((l) => !/attack/.test(l)).join('\n')}`);
      assert.equal(await page.locator('#status').getAttribute('data-state'), 'online', who);
    }
    // What got through of the attacker's is its address's budget, not its burst
    // times its reconnections.
    // 50 frames a second with four seconds at once; each connection's own frame
    // is one of them.
    const seconds = (Date.now() - started) / 1000;
    assert.ok(reached <= 50 * (4 + seconds), `${reached} of ${sent} attack messages reached bob in ${seconds} s`);
    assert.ok(sent > 5 * reached, `${reached} of ${sent} attack messages reached bob`);
    await alice.context.close();
    await bob.context.close();
  } finally {
    await stopServer(flooded);
  }
});
