'use strict';
// Drives runtimes/sma-light/nats.js for tests/light_nats_client.rs and prints what it saw
// as JSON on stdout:
//   node nats-client-check.js <servers> [check]      KV, object store, request, failover
//   node nats-client-check.js - frames               framing and keepalive, on a fake server
//   node nats-client-check.js <servers> reconnect    one JSON event per line (see the test)
//   node nats-client-check.js <servers> auth <token|user> <secret>
//   node nats-client-check.js <servers> nkey <seed> <another user's seed>
//   node nats-client-check.js <servers> tls <ca.pem>

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const path = require('path');
const nats = require(path.join(__dirname, '../../runtimes/sma-light/nats.js'));

const [servers, mode = 'check', ...args] = process.argv.slice(2);

const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');
const text = (buf) => buf.toString('utf8');
const entry = (e) => e && { value: text(e.value), revision: e.revision, operation: e.operation };

// Resolves with the error a promise rejects with (and how long it took); fails if it resolves.
async function rejection(promise) {
  const start = Date.now();
  try {
    await promise;
  } catch (err) {
    return { message: err.message, code: err.code, ms: Date.now() - start };
  }
  throw new Error('expected a rejection');
}

// Resolves when `check()` is true, polling every 5 ms, or rejects after `ms`.
async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// A loopback port nothing listens on.
async function deadPort() {
  const server = net.createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

async function check() {
  const nc = await nats.connect({ servers, name: 'light-check', timeoutMs: 5000 });
  const out = {};
  out.pointer = entry(await nats.kvGet(nc, 'light', 'pointer'));
  out.gone = entry(await nats.kvGet(nc, 'light', 'gone'));
  out.never = await nats.kvGet(nc, 'light', 'never');
  for (const [field, name] of [['big', 'app/bundle-1.tar'], ['empty', 'empty'], ['missing', 'no-such-object']]) {
    const data = await nats.objectGet(nc, 'bundles', name);
    out[field] = data && { size: data.length, sha256: sha256(data) };
  }

  const seq = await nats.kvPut(nc, 'light', 'light-set', 'hello');
  out.put = { seq, got: entry(await nats.kvGet(nc, 'light', 'light-set')) };

  const watched = [];
  const sub = nats.kvWatch(nc, 'light', 'watch.*', (e) => watched.push({ key: e.key, value: text(e.value), operation: e.operation }));
  await nc.flush();
  await nats.kvPut(nc, 'light', 'watch.a', 'w1');
  await nats.kvDelete(nc, 'light', 'watch.a');
  await nats.kvPut(nc, 'light', 'other', 'not watched');
  await until(() => watched.length >= 2, 5000, 'the watched changes');
  await nc.flush();
  sub.unsubscribe();
  out.watch = watched;

  out.noResponders = await rejection(nc.request('light.nobody.here', 'hi', { timeoutMs: 3000 }));
  out.badPut = await rejection(nats.kvPut(nc, 'no_such_bucket', 'k', 'v'));

  // A hand-made object whose info does not match its chunk.
  const ack = async (subject, data, headers) => JSON.parse(text((await nc.request(subject, data, { headers })).data));
  const nuid = crypto.randomBytes(11).toString('hex');
  await ack(`$O.bundles.C.${nuid}`, 'abc');
  const metaName = Buffer.from('bad-object').toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
  const info = { name: 'bad-object', bucket: 'bundles', nuid, size: 3, chunks: 1, digest: `SHA-256=${'A'.repeat(43)}=` };
  await ack(`$O.bundles.M.${metaName}`, JSON.stringify(info), { 'Nats-Rollup': 'sub' });
  out.badDigest = await rejection(nats.objectGet(nc, 'bundles', 'bad-object'));

  // A request-reply between two subscriptions of this client, headers both ways.
  const echo = nc.subscribe('light.echo', (m) => {
    nc.publish(m.reply, Buffer.concat([m.data, Buffer.from('!')]), { headers: { 'X-Seen': m.headers.get('x-in') } });
  });
  const reply = await nc.request('light.echo', Buffer.from([0, 13, 10, 255]), { headers: { 'X-In': 'yes' } });
  out.echo = { data: reply.data.toString('hex'), seen: reply.headers.get('x-seen') };
  echo.unsubscribe();
  await nc.close();

  const dead = `nats://127.0.0.1:${await deadPort()},127.0.0.1:${await deadPort()}`;
  out.unreachable = await rejection(nats.connect({ servers: dead, timeoutMs: 500 }));
  out.unreachable.servers = dead;
  return out;
}

// A fake server that splits frames byte by byte, packs several in one chunk, sends binary
// payloads and a PING, then stops answering PINGs so the client reconnects.
async function frames() {
  const conns = [];
  const server = net.createServer((socket) => {
    const conn = { socket, received: '', pongs: 0, answerPings: true, sid: null };
    conns.push(conn);
    socket.on('data', (chunk) => {
      conn.received += chunk.toString('latin1');
      let eol;
      while ((eol = conn.received.indexOf('\r\n', conn.seen || 0)) >= 0) {
        const line = conn.received.slice(conn.seen || 0, eol);
        conn.seen = eol + 2;
        if (line === 'PING' && conn.answerPings) socket.write('PONG\r\n');
        else if (line === 'PONG') conn.pongs += 1;
        else if (line.startsWith('SUB frames.>')) conn.sid = line.split(' ')[2];
      }
    });
    socket.on('error', () => {});
    socket.write(`INFO ${JSON.stringify({ server_id: 'fake', version: '2.10.0', max_payload: 1048576, headers: true, proto: 1 })}\r\n`);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `nats://127.0.0.1:${server.address().port}`;

  const nc = await nats.connect({ servers: url, pingIntervalMs: 100, maxPingsOut: 2, reconnectWaitMs: 20 });
  const events = [];
  nc.on('disconnect', () => events.push('disconnect'));
  nc.on('reconnect', () => events.push('reconnect'));
  nc.on('error', (err) => console.error(`client error: ${err.message}`));
  const got = [];
  nc.subscribe('frames.>', (m) => got.push(m));
  await nc.flush();
  const first = conns[0];
  const sid = first.sid;

  const binary = Buffer.from([...Array(256).keys()]);
  const big = crypto.randomBytes(300 * 1024);
  const frame = (subject, data, reply = '') => Buffer.concat([Buffer.from(`MSG ${subject} ${sid} ${reply}${reply && ' '}${data.length}\r\n`), data, Buffer.from('\r\n')]);
  const hframe = (subject, hdr, data, reply) => {
    const h = Buffer.from(hdr);
    return Buffer.concat([Buffer.from(`HMSG ${subject} ${sid} ${reply} ${h.length} ${h.length + data.length}\r\n`), h, data, Buffer.from('\r\n')]);
  };
  const send = async (buf, piece) => {
    for (let i = 0; i < buf.length; i += piece) {
      first.socket.write(buf.subarray(i, i + piece));
      await new Promise((r) => setImmediate(r));
    }
  };
  // One byte at a time, binary with CR LF inside.
  await send(frame('frames.bin', binary), 1);
  // Several frames and a PING in one chunk.
  first.socket.write(Buffer.concat([
    frame('frames.a', Buffer.from('a')),
    hframe('frames.h', 'NATS/1.0\r\nX-Key: v1\r\nx-key: v2\r\nOther:  spaced \r\n\r\n', Buffer.from('abc'), 'reply.h'),
    Buffer.from('PING\r\n'),
    frame('frames.empty', Buffer.alloc(0), 'reply.e'),
  ]));
  // A big payload in 1000-byte pieces; a header frame split inside its header.
  await send(frame('frames.big', big), 1000);
  await send(hframe('frames.split', 'NATS/1.0 100 Idle Heartbeat\r\n\r\n', Buffer.alloc(0), 'r'), 17);
  await until(() => got.length >= 6 && first.pongs >= 1, 5000, `the frames (${got.map((m) => m.subject)}; pongs ${first.pongs})`);

  // The client's own HPUB on the wire.
  nc.publish('frames.out', 'hi', { reply: 'r.1', headers: { 'X-Test': 1 } });
  await nc.flush();
  const hpub = 'HPUB frames.out r.1 23 25\r\nNATS/1.0\r\nX-Test: 1\r\n\r\nhi\r\n';

  // Stop answering: after maxPingsOut unanswered PINGs the client drops the connection,
  // reconnects and sends its subscription again.
  first.answerPings = false;
  await until(() => events.includes('reconnect') && conns.length === 2 && conns[1].sid !== null, 5000, 'a reconnect');
  await nc.flush();
  const byName = Object.fromEntries(got.map((m) => [m.subject, m]));
  const result = {
    order: got.map((m) => m.subject),
    binary: byName['frames.bin'].data.equals(binary),
    a: text(byName['frames.a'].data),
    h: { data: text(byName['frames.h'].data), reply: byName['frames.h'].reply, headers: Object.fromEntries(byName['frames.h'].headers) },
    empty: { size: byName['frames.empty'].data.length, reply: byName['frames.empty'].reply, headers: byName['frames.empty'].headers },
    big: byName['frames.big'].data.equals(big),
    split: { status: byName['frames.split'].status, description: byName['frames.split'].description, size: byName['frames.split'].data.length },
    pongToServer: first.pongs,
    hpub: first.received.includes(hpub),
    events,
    resubscribed: conns[1].sid !== null,
  };
  await nc.close();
  server.close();
  for (const c of conns) c.socket.destroy();
  return result;
}

// Prints events for the test to follow: ready, msg, disconnect, reconnect, done.
async function reconnect() {
  const say = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
  const nc = await nats.connect({ servers, reconnectWaitMs: 50, timeoutMs: 5000 });
  nc.on('disconnect', () => say({ event: 'disconnect' }));
  nc.on('reconnect', () => say({ event: 'reconnect' }));
  let finished;
  const done = new Promise((r) => {
    finished = r;
  });
  nc.subscribe('light.reconnect', (m) => {
    say({ event: 'msg', data: text(m.data) });
    if (text(m.data) === 'after') finished();
  });
  await nc.flush();
  say({ event: 'ready' });
  await done;
  // The connection works both ways after the reconnect (JetStream may need a moment).
  let seq;
  for (let tries = 0; seq === undefined; tries++) {
    try {
      seq = await nats.kvPut(nc, 'light', 'after-reconnect', 'yes');
    } catch (err) {
      if (err.code !== 'NO_RESPONDERS' || tries >= 100) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await nc.close();
  say({ event: 'done', seq });
  return null;
}

async function auth() {
  const [kind, secret] = args;
  const creds = (s) => (kind === 'token' ? { token: s } : { user: s.split(':')[0], pass: s.split(':')[1] });
  const out = {};
  out.wrong = await rejection(nats.connect({ servers, ...creds(kind === 'token' ? 'wrong' : 'user:wrong'), timeoutMs: 3000 }));
  out.none = await rejection(nats.connect({ servers, timeoutMs: 3000 }));
  const ok = async (opts) => {
    const nc = await nats.connect({ timeoutMs: 3000, ...opts });
    await nc.flush();
    await nc.close();
    return true;
  };
  out.byOption = await ok({ servers, ...creds(secret) });
  out.inUrl = await ok({ servers: servers.replace('://', `://${secret}@`), ...creds('wrong') });
  return out;
}

async function tlsCheck() {
  const ca = fs.readFileSync(args[0]);
  const nc = await nats.connect({ servers, tls: { ca }, timeoutMs: 3000 });
  nc.subscribe('light.tls', (m) => nc.publish(m.reply, m.data));
  const reply = await nc.request('light.tls', crypto.randomBytes(200 * 1024));
  await nc.close();
  return {
    echoed: reply.data.length,
    noCa: await rejection(nats.connect({ servers, tls: true, timeoutMs: 3000 })),
  };
}

// An NKey user: the right seed connects, another user's is refused.
async function nkeyCheck() {
  const [seed, other] = args;
  const nc = await nats.connect({ servers, nkeySeed: seed, timeoutMs: 3000 });
  await nc.flush();
  await nc.close();
  return {
    connected: true,
    other: await rejection(nats.connect({ servers, nkeySeed: other, timeoutMs: 3000 })),
    badSeed: await rejection(nats.connect({ servers, nkeySeed: 'SUNOTASEED', timeoutMs: 3000 })),
  };
}

const modes = { check, frames, reconnect, auth, tls: tlsCheck, nkey: nkeyCheck };
if (!modes[mode]) {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
modes[mode]().then(
  (out) => {
    if (out !== null) process.stdout.write(`${JSON.stringify(out)}\n`);
    process.exit(0);
  },
  (err) => {
    console.error(err.stack || String(err));
    process.exit(1);
  },
);
