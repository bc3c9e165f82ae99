// threadchat page: connects to the chat socket and shows what arrives.
// Everything that came from the network or an input is rendered with textContent,
// never innerHTML, so a message like <img onerror=...> shows up as text.
'use strict';

const chat = document.getElementById('chat');
const nameInput = document.getElementById('name');
const msgInput = document.getElementById('msg');
const statusLine = document.getElementById('status');
let socket = null;

function show(kind, text, time) {
  const entry = document.createElement('li');
  entry.className = kind;
  const stamp = document.createElement('time');
  stamp.textContent = new Date(time || Date.now()).toLocaleTimeString();
  const body = document.createElement('span');
  body.textContent = text;
  entry.append(stamp, body);
  chat.append(entry);
  entry.scrollIntoView({ block: 'end' });
}

async function connect() {
  // The socket is on the same host name as this page, on the port the server
  // reports (so --ws-port works), over wss: when the page came over https.
  let port = '8001';
  try {
    const config = await (await fetch('config.json')).json();
    port = String(config.wsPort);
  } catch (e) { /* keep the default port */ }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  socket = new WebSocket(`${scheme}//${location.hostname}:${port}/`, 'threadchat.v1');
  statusLine.textContent = 'connecting…';
  socket.onopen = () => { statusLine.textContent = 'online'; };
  socket.onclose = () => { statusLine.textContent = 'offline'; };
  socket.onmessage = (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch (e) { return; }
    if (data.type === 'message') {
      show('message', `${data.name}: ${data.msg}`, data.ts);
    } else if (data.type === 'notification') {
      show('notification', data.msg);
      statusLine.textContent = `online (${data.count})`;
    } else if (data.type === 'error') {
      show('error', data.msg);
    }
  };
}

document.getElementById('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const msg = msgInput.value;
  if (!msg.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ name: nameInput.value, msg }));
  msgInput.value = '';
});

connect();
