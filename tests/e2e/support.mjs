// What the node tests share: the real threadchat binary on loopback ports, and
// Debian's chromium's flags.

import { spawn } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BINARY = process.env.THREADCHAT_BIN || join(ROOT, 'target/debug/threadchat');
export const SHOTS = join(ROOT, 'target/e2e');
// `make cert`'s program (built by `make e2e`).
export const CERT = process.env.THREADCHAT_CERT_BIN || join(ROOT, 'target/debug/examples/cert');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const PATIENCE_MS = 15000;

// --- the server --------------------------------------------------------------

/** A free port on 127.0.0.1: bound, read, released. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Resolves once a TCP connection to 127.0.0.1:`port` succeeds. */
export function accepts(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts the binary, serving the page compiled into it (what ships), on the given
 * ports or free ones; resolves once both ports take connections (the log is kept
 * only to show when it fails).
 */
export async function startServer({ httpPort, wsPort, args = [] } = {}) {
  httpPort ??= await freePort();
  wsPort ??= await freePort();
  const proc = spawn(BINARY, [
    '--bind', '127.0.0.1',
    '--http-port', String(httpPort),
    '--ws-port', String(wsPort),
    ...args,
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'info' } });
  const server = { proc, log: '', httpPort, wsPort, exited: false };
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk) => { server.log += chunk; });
  proc.on('exit', () => { server.exited = true; });
  const deadline = Date.now() + PATIENCE_MS;
  while (!((await accepts(httpPort)) && (await accepts(wsPort)))) {
    if (server.exited) throw new Error(`server exited:\n${server.log}`);
    if (Date.now() > deadline) throw new Error(`server did not start:\n${server.log}`);
    await new Promise((r) => setTimeout(r, 20)); // polling for the ports: no event to wait for
  }
  return server;
}

/** Resolves once the server's log holds `text`; rejects after the patience. */
export function logged(server, text) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!server.log.includes(text)) return false;
      server.proc.stderr.off('data', check);
      clearTimeout(timer);
      resolve();
      return true;
    };
    const timer = setTimeout(() => {
      server.proc.stderr.off('data', check);
      reject(new Error(`the log never said ${JSON.stringify(text)}:\n${server.log}`));
    }, PATIENCE_MS);
    if (!check()) server.proc.stderr.on('data', check);
  });
}

export function stopServer(server) {
  return new Promise((resolve) => {
    if (server.exited) return resolve();
    server.proc.once('exit', () => resolve());
    server.proc.kill('SIGTERM');
  });
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

