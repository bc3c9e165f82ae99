// threadchat's page: one WebSocket, a message log per room, a form.
//
// Rules this file keeps:
// - Everything that came from the network or an input is shown with textContent,
//   never innerHTML, so a message such as <img src=x onerror=alert(1)> is just text.
// - The socket is on this page's own host name, on the port the server reports in
//   /config.json, over wss: when the page itself came over https.
// - A dropped connection is retried with backoff (1 s doubling to 10 s, with
//   jitter); messages typed meanwhile wait in a queue and go out on reconnect.
// - Protocol v2 (docs/PROTOCOL.md): the page says `hello` with its name, `join`s the
//   room it remembers on every (re)connect, resuming from the last message id it
//   showed there (`since`, with the server's `epoch`), and drops replayed messages
//   it already shows. Ids are one sequence per epoch (a server run, a cluster, a
//   node cut off from its cluster for a while), so the page keeps where it is in
//   each epoch it has seen, and knows a message by its id, sender and time. Nothing typed goes out before that join, so a message always
//   lands in the room on screen.
// - A room's log keeps its last LOG_CAP entries, and the page remembers no more
//   messages than its logs show: a page open for days holds a thousand entries
//   per room, not everything it was ever sent. Join and leave notifications give
//   way first, so that someone reconnecting in a loop cannot push what people
//   said out of the log.
'use strict';

const els = {
  chat: document.getElementById('chat'),
  name: document.getElementById('name'),
  msg: document.getElementById('msg'),
  send: document.getElementById('send'),
  form: document.getElementById('composer'),
  status: document.getElementById('status'),
  toggle: document.getElementById('toggle'),
  roomForm: document.getElementById('room-form'),
  room: document.getElementById('room'),
  roomNow: document.getElementById('room-now'),
  members: document.getElementById('members'),
  direct: document.getElementById('direct'),
  directTo: document.getElementById('direct-to'),
  directCancel: document.getElementById('direct-cancel'),
};

const NAME_KEY = 'threadchat.name';
const ROOM_KEY = 'threadchat.room';
const LOBBY = 'lobby';
const ROOM_NAME = /^[A-Za-z0-9_-]{1,32}$/;
const BACKOFF_START_MS = 1000;
const BACKOFF_MAX_MS = 10000;
const HELLO_DELAY_MS = 400;  // a name being typed is said once it rests
const WHO_SPACING_MS = 300;  // at most one `who` in flight, and a pause between
const SLOW_RUN_MS = 3000;    // rate-limit errors this close together share a notice

let socket = null;
let ready = false;        // welcome handled and our join sent: frames may go out
let myId = null;          // from the welcome frame: marks our own messages
let epoch = null;         // the epoch of what arrives now: welcome's, or a cluster notification's
let clusterEpoch = null;  // a cluster's own epoch, once a cluster notification has shown it
let online = null;        // count of the current room, from joined/notifications
let wanted = true;        // false after the user pressed Disconnect
let backoff = BACKOFF_START_MS;
let retryTimer = null;
let retryAt = 0;
let config = null;        // the last /config.json that arrived
let refusalShown = false; // the "token refused" notice is said once, not at each retry
let certificateHintShown = false; // so is the certificate hint, under https

// The access token (`--token`) comes in the link's fragment, #token=…, which the
// browser never sends to a server. It is kept for this tab only, and taken out of
// the address bar so that a copied link does not carry it by accident. It is
// offered to the socket as a subprotocol value (`token.…`): a page cannot set
// headers, and a query string is what proxies log.
const TOKEN_KEY = 'threadchat.token';
{
  const found = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (found) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(found[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
}
const accessToken = () => sessionStorage.getItem(TOKEN_KEY);
const outbox = [];        // frames typed while offline, sent on reconnect

let room = storedRoom();  // the room on screen (and the one we want to be in)
let serverRoom = null;    // the room the server has us in on this connection
let syncedRoom = null;    // the room whose log is complete on this connection
let joining = null;       // a room the user asked for, not yet confirmed
let helloName = null;     // the name the server knows on this connection
let helloTimer = null;
let members = [];         // the current room's `who`
let directTarget = null;  // { id, name } while composing a direct message
let whoInFlight = false;
let whoAgain = false;
let whoTimer = null;
let retryFrames = null;   // after a rate-limit error: our own frames sent again
let slow = null;          // the rate-limit notice of the current run of them

// Per room: its log (in #chat when on screen, else parked in a fragment), the
// messages shown (for dropping replays), and the newest id shown in each epoch.
const logs = new Map();
const EPOCHS_KEPT = 4;    // a room remembers its place in this many epochs
// Entries a room's log keeps; past it the oldest go, and with them the keys of the
// messages they showed. A tab left open in a busy room (or one that a flood
// reaches) would otherwise grow for ever, in elements and in `seen`, until the
// browser slows or kills it. Resuming needs only `lastIds`, which is kept apart;
// a replay of a message this old is shown again rather than remembered for ever.
const LOG_CAP = 1000;

function storedRoom() {
  const saved = localStorage.getItem(ROOM_KEY);
  return saved && ROOM_NAME.test(saved) ? saved : LOBBY;
}

function logOf(name) {
  let log = logs.get(name);
  if (!log) {
    log = { parked: document.createDocumentFragment(), seen: new Set(),
            lastIds: new Map(), shown: false };
    logs.set(name, log);
  }
  return log;
}

// --- the log ---------------------------------------------------------------

function nearBottom() {
  const log = els.chat;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}

/** Appends an entry to `where`'s log (the room on screen by default). */
function addEntry(kind, parts, time, where = room) {
  const visible = where === room;
  const follow = visible && nearBottom();
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
  const list = visible ? els.chat : logOf(where).parked;
  list.append(entry);
  trimLog(list, logOf(where));
  // Follow the conversation unless the reader has scrolled up to read.
  if (follow) els.chat.scrollTop = els.chat.scrollHeight;
  return entry;
}

/** Removes `log`'s oldest entries past LOG_CAP from `list` (where they are now),
 *  notifications first, and forgets the messages they showed. */
function trimLog(list, log) {
  while (list.childElementCount > LOG_CAP) {
    // Entries are the list's children (a fragment has no `:scope`); the newest,
    // just added, is never the one to go.
    const notice = list.querySelector('li.notification');
    const oldest = notice && notice !== list.lastElementChild ? notice : list.firstElementChild;
    if (oldest.dataset.key) log.seen.delete(oldest.dataset.key);
    oldest.remove();
  }
}

/** Puts `next`'s log on screen, parking the current one. */
function showRoom(next) {
  if (next === room) return;
  logOf(room).parked.append(...els.chat.childNodes);
  room = next;
  els.chat.append(logOf(room).parked);
  els.chat.scrollTop = els.chat.scrollHeight;
  els.room.value = room;
  members = [];
  online = null;
  renderMembers();
  showRoomNow();
}

function showRoomNow() {
  els.roomNow.textContent = joining ? `joining ${joining}…` : `in ${room}`;
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

// --- people ----------------------------------------------------------------

function label(id, name) {
  return name || `#${id}`;
}

function renderMembers() {
  const items = members.map((m) => {
    const item = document.createElement('li');
    if (m.id === myId) {
      item.className = 'me';
      item.textContent = `${label(m.id, m.name)} (you)`;
    } else {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'member';
      button.dataset.id = m.id;
      button.textContent = label(m.id, m.name);
      button.title = `Send ${label(m.id, m.name)} a direct message`;
      button.setAttribute('aria-pressed', String(directTarget?.id === m.id));
      button.addEventListener('click', () => startDirect(m.id, m.name));
      item.append(button);
    }
    return item;
  });
  els.members.replaceChildren(...items);
}

/** Asks for the room's members: one request at a time, spaced, however many ask. */
function askWho() {
  if (!ready) return;
  if (whoInFlight || whoTimer) {
    whoAgain = true;
    return;
  }
  whoInFlight = true;
  transmit({ type: 'who' });
}

function whoArrived() {
  whoInFlight = false;
  if (whoAgain && !whoTimer) {
    whoAgain = false;
    whoTimer = setTimeout(() => { whoTimer = null; askWho(); }, WHO_SPACING_MS);
  }
}

function startDirect(id, name) {
  directTarget = { id, name };
  els.directTo.textContent = `to ${label(id, name)}`;
  els.direct.hidden = false;
  els.msg.placeholder = `Direct message to ${label(id, name)}`;
  renderMembers();
  els.msg.focus();
}

function cancelDirect() {
  directTarget = null;
  els.direct.hidden = true;
  els.msg.placeholder = 'Message';
  renderMembers();
}

// --- the connection --------------------------------------------------------

async function socketUrl() {
  try {
    const response = await fetch('config.json', { cache: 'no-store' });
    config = await response.json();
  } catch (e) {
    // Keep the last one (or the defaults): the server may be restarting.
  }
  const port = config ? String(config.wsPort) : '8001';
  const path = (config && config.wsPath) || '/';
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  return `${scheme}//${host}:${port}${path}`;
}

/** Sends a frame now (the caller checked that the socket is ready). */
function transmit(frame) {
  socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
}

/** Sends `hello` when the name differs from the one the server knows. */
function sayHello() {
  clearTimeout(helloTimer);
  helloTimer = null;
  const name = els.name.value.trim();
  if (!ready || name === helloName) return;
  helloName = name;
  transmit({ type: 'hello', name });
}

/** The join for `name`: resuming after what this page shows, if it shows any
 *  message: in the server's epoch if we have been in it, else in the cluster's
 *  (which every node of it knows), else in the latest we were in. A room shown
 *  without a message yet asks for everything the server has: a join without
 *  `since` of the room the server already has us in replays nothing. */
function joinFrame(name) {
  const frame = { type: 'join', room: name };
  const log = logs.get(name);
  if (log && log.shown && log.lastIds.size > 0) {
    const resume = [epoch, clusterEpoch].find((e) => e !== null && log.lastIds.has(e))
      ?? [...log.lastIds.keys()].pop();
    frame.since = log.lastIds.get(resume);
    frame.epoch = resume;
  } else if (log && log.shown) {
    frame.since = 0;
  }
  return frame;
}

/** Notes that `log` shows message `id` of the current epoch. */
function shownUpTo(log, id) {
  const last = Math.max(log.lastIds.get(epoch) ?? 0, id);
  log.lastIds.delete(epoch); // re-inserted: the Map's last key is the latest epoch
  log.lastIds.set(epoch, last);
  while (log.lastIds.size > EPOCHS_KEPT) log.lastIds.delete(log.lastIds.keys().next().value);
}

function welcome(data) {
  myId = data.id;
  epoch = data.epoch ?? null;
  serverRoom = data.room || LOBBY;
  syncedRoom = null;
  helloName = '';
  ready = true;
  whoInFlight = false;
  whoAgain = false;
  clearTimeout(whoTimer);
  whoTimer = null;
  sayHello();
  const log = logOf(room);
  if (room === serverRoom && !log.shown) {
    // Nothing shown yet and already where we want to be: the history that
    // follows the welcome is the room's.
    log.shown = true;
    syncedRoom = room;
    online = data.count;
    askWho();
  } else {
    transmit(joinFrame(room));
    joining = room;
  }
  showRoomNow();
  while (outbox.length) transmit(outbox.shift());
  setStatus('online');
}

function joined(data) {
  serverRoom = data.room;
  syncedRoom = data.room;
  if (joining === data.room) joining = null;
  const log = logOf(data.room);
  log.shown = true;
  if (data.gap) {
    addEntry('notice gap', [['text',
      'Some messages may have been missed while you were away.']], null, data.room);
  }
  if (data.room === room) {
    online = data.count;
    localStorage.setItem(ROOM_KEY, room);
    members = [];
    renderMembers();
    askWho();
    setStatus('online');
  }
  showRoomNow();
}

/** Whether a frame of `where` belongs in its log now. */
function belongs(where, replayed) {
  if (where !== serverRoom) return false;
  if (where === syncedRoom) return true;
  // Back in the room we were in, before `joined`: live frames are new (the server
  // may send them before the reply), replays wait for the reply.
  return !replayed && where === room && logOf(where).shown;
}

function message(data) {
  const where = data.room || serverRoom;
  if (!belongs(where, data.history)) return;
  const log = logOf(where);
  // Ids alone repeat across epochs; with the sender and the time they do not.
  const key = `${data.id}/${data.from}/${data.ts}`;
  if (log.seen.has(key)) return; // a replay of one shown already
  log.seen.add(key);
  shownUpTo(log, data.id);
  const mine = data.from === myId;
  let kind = mine ? 'message mine' : 'message';
  if (data.history) kind += ' history';
  const entry = addEntry(kind, [['who', data.name || 'anonymous'], ['text', data.msg]],
    data.ts, where);
  entry.dataset.id = data.id;
  entry.dataset.key = key; // forgotten with the entry (trimLog)
  if (data.history) entry.title = 'sent before you arrived';
}

function notification(data) {
  if (data.event === 'cluster') return cluster(data);
  const where = data.room || serverRoom;
  if (!belongs(where, false)) return;
  addEntry('notification', [['text', data.msg]], null, where);
  if (where === room) {
    online = data.count;
    setStatus('online');
    askWho();
  }
}

function direct(data) {
  const sent = data.delivered === true;
  const other = sent ? members.find((m) => m.id === data.to) : null;
  const who = sent
    ? `you → ${label(data.to, other ? other.name : (directTarget?.id === data.to ? directTarget.name : ''))}`
    : `${label(data.from, data.name)} → you`;
  const entry = addEntry(sent ? 'message direct mine' : 'message direct',
    [['who', `${who} (direct)`], ['text', data.msg]], data.ts);
  entry.dataset.id = data.id;
}

/** Our server lost the chat's other nodes, or has them again (a notification
 *  with `"event":"cluster"`): from now on ids are of the epoch it names. */
function cluster(data) {
  if (data.gap) {
    addEntry('notice gap', [['text',
      'Some messages from the rest of the chat were missed while this server was cut off.']]);
    return;
  }
  // Cut off, the epoch we were in was the cluster's; back, the frame names it.
  clusterEpoch = data.connected ? data.epoch ?? null : epoch;
  if (typeof data.epoch === 'number') epoch = data.epoch;
  addEntry(data.connected ? 'notice' : 'notice gap', [['text',
    data.connected ? 'Connected to the whole chat again.'
      : 'This server lost the rest of the chat: only people on it hear you until it is back.']]);
  if ((data.room || serverRoom) === room && typeof data.count === 'number') {
    online = data.count;
    setStatus('online');
    askWho();
  }
}

function error(data) {
  const msg = String(data.msg || '');
  if (msg.startsWith('slow down')) {
    // One notice for a run of them, counting: a long burst is answered by an
    // error a second, interleaved with the messages that did go through.
    const now = Date.now();
    if (!slow || now - slow.at > SLOW_RUN_MS || !els.chat.contains(slow.entry)) {
      slow = { entry: addEntry('notice slow', [['text', '']]), dropped: 0 };
    }
    slow.at = now;
    // The server tells once a second at most, with how many it dropped since.
    slow.dropped += Number.isInteger(data.dropped) ? data.dropped : 1;
    slow.entry.querySelector('.text').textContent = `Easy there: that was faster than the server takes, so ${
      slow.dropped === 1 ? 'the last message was' : `${slow.dropped} messages were`} not sent. Wait a moment and try again.`;
    // The dropped frame may have been ours rather than the user's: a join or a
    // `who` that will never be answered. Both are safe to send again.
    clearTimeout(retryFrames);
    retryFrames = setTimeout(() => {
      if (!ready) return;
      if (joining === room) transmit(joinFrame(room));
      if (whoInFlight) {
        whoInFlight = false;
        askWho();
      }
    }, 1000);
    return;
  }
  const gone = msg.match(/^there is no connection (\d+)/);
  if (gone && directTarget && directTarget.id === Number(gone[1])) cancelDirect();
  if (joining && /room/.test(msg)) {
    // The join was refused: stay where the server has us.
    joining = null;
    const stay = syncedRoom || serverRoom;
    if (stay && stay !== room) {
      showRoom(stay);
      localStorage.setItem(ROOM_KEY, room);
      if (syncedRoom) {
        askWho();
      } else {
        // Fresh from a reconnect: the log of the room we are in needs its join.
        joining = room;
        transmit(joinFrame(room));
      }
    }
    showRoomNow();
  }
  addEntry('error', [['text', msg]]); // in the room on screen, after any move back
}

async function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (!wanted) return;
  setStatus('connecting');
  const url = await socketUrl();
  if (!wanted || socket) return;
  const token = accessToken();
  if (config && config.token && !token) {
    setStatus('offline', 'no access token');
    if (!refusalShown) {
      refusalShown = true;
      addEntry('error', [['text', 'This chat needs an access token: open it from the link '
        + 'you were given (the one that ends in #token=…).']]);
    }
    return;
  }
  const protocols = ['threadchat.v2', 'threadchat.v1'];
  if (token) protocols.push(`token.${token}`);
  const ws = new WebSocket(url, protocols);
  socket = ws;
  let opened = false;

  ws.onopen = () => {
    opened = true;
    refusalShown = false;
    backoff = BACKOFF_START_MS;
  };

  ws.onmessage = (event) => {
    if (socket !== ws) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    switch (data.type) {
      case 'welcome': return welcome(data);
      case 'joined': return joined(data);
      case 'message': return message(data);
      case 'notification': return notification(data);
      case 'direct': return direct(data);
      case 'hello': return askWho(); // our name, now in `who`
      case 'who':
        whoArrived();
        if (data.room === room && Array.isArray(data.members)) {
          members = data.members;
          renderMembers();
        }
        return undefined;
      case 'error': return error(data);
      default: return undefined;
    }
  };

  ws.onclose = () => {
    if (socket !== ws) return;
    if (!opened && token && config && config.token && !refusalShown) {
      // Browsers hide the handshake's status; a socket that never opened, on a
      // server that wants a token, most likely had its token refused.
      refusalShown = true;
      addEntry('error', [['text', 'The server did not let this page in: its access token '
        + 'was refused (or the server is down). Trying again…']]);
    } else if (!opened && location.protocol === 'https:' && !certificateHintShown) {
      // A certificate accepted for the page's port is not always accepted for the
      // socket's (Firefox asks per port), and the browser does not say so.
      certificateHintShown = true;
      const socketPage = ws.url.replace(/^wss:/, 'https:');
      addEntry('error', [['text', 'The chat socket did not open. If this browser warned about '
        + `the server's certificate, open ${socketPage} once, accept it there (that page stays blank) and come back. Trying again…`]]);
    }
    socket = null;
    ready = false;
    online = null;
    joining = null;
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

// The network is back: no need to wait for the rest of the backoff.
window.addEventListener('online', () => {
  if (wanted && retryTimer) connect();
});

// --- the forms -------------------------------------------------------------

els.name.value = localStorage.getItem(NAME_KEY) || '';
els.name.addEventListener('input', () => {
  localStorage.setItem(NAME_KEY, els.name.value);
  clearTimeout(helloTimer);
  helloTimer = setTimeout(sayHello, HELLO_DELAY_MS);
});
els.name.addEventListener('change', sayHello);

els.room.value = room;
showRoomNow();
els.roomForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const next = els.room.value.trim();
  if (!ROOM_NAME.test(next)) {
    els.room.setCustomValidity('1 to 32 letters, digits, - or _');
    els.room.reportValidity();
    return;
  }
  els.room.setCustomValidity('');
  if (next === room && !joining) return;
  showRoom(next);
  localStorage.setItem(ROOM_KEY, room);
  if (ready) {
    sayHello(); // so the room hears who is joining
    joining = room;
    transmit(joinFrame(room));
  }
  showRoomNow();
  setStatus(ready ? 'online' : els.status.dataset.state);
});
els.room.addEventListener('input', () => els.room.setCustomValidity(''));

els.form.addEventListener('submit', (event) => {
  event.preventDefault();
  const msg = els.msg.value;
  if (!msg.trim()) return;
  const frame = JSON.stringify(directTarget
    ? { type: 'direct', to: directTarget.id, msg }
    : { name: els.name.value.trim(), msg });
  if (ready) {
    sayHello(); // a direct message carries the connection's name
    transmit(frame);
  } else {
    outbox.push(frame);
    setStatus(socket ? 'connecting' : (wanted ? 'reconnecting' : 'offline'));
  }
  els.msg.value = '';
  els.msg.focus();
});

els.directCancel.addEventListener('click', () => {
  cancelDirect();
  els.msg.focus();
});
els.msg.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && directTarget) cancelDirect();
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
