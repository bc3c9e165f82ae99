// The bench's anchor for the (socket.io) rows: socket.io 4 on Node, the server the
// socket.io tutorial used, answering the load generator's clients as threadchat's
// lobby does (welcome and join notifications with the count, every message to
// everyone, the sender included). Started by the load generator like any server:
//
//   node server.mjs --ws-port <port> [other flags, ignored]
//
// WebSocket only, as the clients connect (`transports: ["websocket"]`).

import { Server } from 'socket.io';

const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--ws-port') + 1]);
const io = new Server(port, { transports: ['websocket'], serveClient: false });

let clients = 0;
let nextClient = 1;
let nextMessage = 1;

io.on('connection', (socket) => {
  const me = nextClient++;
  clients += 1;
  socket.emit('welcome', { type: 'welcome', id: me, count: clients, room: 'lobby' });
  io.emit('notification', { type: 'notification', event: 'join', count: clients, room: 'lobby' });
  socket.on('message', (m) => {
    const frame = {
      type: 'message', id: nextMessage++, ts: Date.now(), from: me,
      name: m.name, msg: m.msg, room: 'lobby',
    };
    io.emit('message', frame);
  });
  socket.on('disconnect', () => {
    clients -= 1;
    io.emit('notification', { type: 'notification', event: 'leave', count: clients, room: 'lobby' });
  });
});
