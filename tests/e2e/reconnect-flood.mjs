// An attacker on 127.0.0.2, in a process of its own (so that its loops do not
// slow the test's own event loop, which drives the browser): CONNECTIONS loops
// that each connect with the official `ws` client bound to that address, send
// their burst of 20 chat messages, close and connect again at once, until
// SECONDS have passed. Prints how many messages it sent.
//
//   node reconnect-flood.mjs <ws port> <connections> <seconds>

import WebSocket from 'ws';

const [port, connections, seconds] = process.argv.slice(2).map(Number);
const until = Date.now() + seconds * 1000;
let sent = 0;

function loop() {
  return new Promise((resolve) => {
    if (Date.now() >= until) return resolve();
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { localAddress: '127.0.0.2' });
    ws.on('open', () => {
      for (let i = 0; i < 20; i++) ws.send(JSON.stringify({ name: 'attack', msg: `attack ${sent++}` }));
      ws.close();
    });
    // Refused (the address's places) or closed: the next round at once.
    ws.on('error', () => {});
    ws.on('close', () => resolve(loop()));
  });
}

await Promise.all(Array.from({ length: connections }, loop));
console.log(sent);
