// threadchat's page: one WebSocket, a message log, a form.
//
// Rules this file keeps:
// - Everything that came from the network or an input is shown with textContent,
//   never innerHTML, so a message such as <img src=x onerror=alert(1)> is just text.
// - The socket is on this page's own host name, on the port the server reports in
//   /config.json, over wss: when the page itself came over https.
// - A dropped connection is retried with backoff (1 s doubling to 10 s, with
//   jitter); messages typed meanwhile wait in a queue and go out on reconnect.
'use strict';

const els = {
  chat: document.getElementById('chat'),
  name: document.getElementById('name'),
  msg: document.getElementById('msg'),
  send: document.getElementById('send'),
  form: document.getElementById('composer'),
  status: document.getElementById('status'),
  toggle: document.getElementById('toggle'),
};

const NAME_KEY = 'threadchat.name';
const BACKOFF_START_MS = 1000;
const BACKOFF_MAX_MS = 10000;

let socket = null;
let myId = null;          // from the welcome frame: marks our own messages
let online = null;        // count from the last notification
let wanted = true;        // false after the user pressed Disconnect
let backoff = BACKOFF_START_MS;
let retryTimer = null;
let retryAt = 0;
const outbox = [];        // messages typed while offline, sent on reconnect

// --- the log ---------------------------------------------------------------

function nearBottom() {
  const log = els.chat;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

function addEntry(kind, parts, time) {
  const follow = nearBottom();
  const entry = document.createElement('li');
  entry.className = kind;
  const stamp = document.createElement('time');
  const when = new Date(time || Date.now());
  stamp.dateTime = when.toISOString();
  stamp.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  entry.append(stamp);
  for (const [cls, text] of parts) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    entry.append(span);
  }
  els.chat.append(entry);
  // Follow the conversation unless the reader has scrolled up to read.
  if (follow) els.chat.scrollTop = els.chat.scrollHeight;
  return entry;
}

// --- status ----------------------------------------------------------------

function setStatus(state, detail) {
  els.status.dataset.state = state;
  let text = state;
  if (state === 'online' && online !== null) text = `online · ${online} here`;
  if (detail) text += ` · ${detail}`;
  if (outbox.length) text += ` · ${outbox.length} waiting to send`;
  els.status.textContent = text;
  els.toggle.textContent = wanted ? 'Disconnect' : 'Connect';
}

function tickCountdown() {
  if (!retryTimer) return;
  const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
  setStatus('reconnecting', `retry in ${seconds} s`);
  setTimeout(tickCountdown, 500);
}

// --- the connection --------------------------------------------------------

async function socketUrl() {
  let port = '8001';
  let path = '/';
  try {
    const response = await fetch('config.json', { cache: 'no-store' });
    const config = await response.json();
    port = String(config.wsPort);
    path = config.wsPath || '/';
  } catch (e) {
    // Keep the defaults: the server may be restarting.
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  return `${scheme}//${host}:${port}${path}`;
}

async function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (!wanted) return;
  setStatus('connecting');
  const url = await socketUrl();
  if (!wanted) return;
  const ws = new WebSocket(url, 'threadchat.v1');
  socket = ws;

  ws.onopen = () => {
    backoff = BACKOFF_START_MS;
    setStatus('online');
    while (outbox.length && ws.readyState === WebSocket.OPEN) {
      ws.send(outbox.shift());
    }
    setStatus('online');
  };

  ws.onmessage = (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (data.type === 'welcome') {
      myId = data.id;
      online = data.count;
      setStatus('online');
    } else if (data.type === 'message') {
      const mine = data.from === myId;
      const entry = addEntry(mine ? 'message mine' : 'message',
        [['who', data.name || 'anonymous'], ['text', data.msg]], data.ts);
      entry.dataset.id = data.id;
    } else if (data.type === 'notification') {
      online = data.count;
      addEntry('notification', [['text', data.msg]]);
      setStatus('online');
    } else if (data.type === 'error') {
      addEntry('error', [['text', data.msg]]);
    }
  };

  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    online = null;
    if (!wanted) {
      setStatus('offline');
      return;
    }
    // 1 s doubling to 10 s, each wait between half and all of it, so that a
    // restarted server is not hit by every page at the same instant.
    const wait = backoff / 2 + Math.random() * backoff / 2;
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    retryAt = Date.now() + wait;
    retryTimer = setTimeout(connect, wait);
    tickCountdown();
  };
}

// --- the form --------------------------------------------------------------

els.name.value = localStorage.getItem(NAME_KEY) || '';
els.name.addEventListener('input', () => localStorage.setItem(NAME_KEY, els.name.value));

els.form.addEventListener('submit', (event) => {
  event.preventDefault();
  const msg = els.msg.value;
  if (!msg.trim()) return;
  const frame = JSON.stringify({ name: els.name.value.trim(), msg });
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(frame);
  } else {
    outbox.push(frame);
    setStatus(socket ? 'connecting' : (wanted ? 'reconnecting' : 'offline'));
  }
  els.msg.value = '';
  els.msg.focus();
});

els.toggle.addEventListener('click', () => {
  wanted = !wanted;
  if (wanted) {
    backoff = BACKOFF_START_MS;
    connect();
  } else {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) socket.close(1000, 'bye');
    else setStatus('offline');
  }
});

connect();
