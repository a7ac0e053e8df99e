'use strict';
// A small NATS client for the sma-light runtime, on Node built-ins only: core publish,
// subscribe and request (with headers and "no responders"), PING/PONG keepalive and
// reconnect with the subscriptions re-sent; and the few JetStream calls the runtime makes
// (KV get/put/delete/watch, object store get) as plain requests to the JetStream API.

const net = require('net');
const tls = require('tls');
const nkey = require('./nkey.js');
const crypto = require('crypto');
const { EventEmitter } = require('events');

const CRLF = Buffer.from('\r\n');
const PING = Buffer.from('PING\r\n');
const PONG = Buffer.from('PONG\r\n');
// The longest control line accepted (INFO of a big cluster is a few KB).
const MAX_CONTROL_LINE = 1024 * 1024;
// How much a publisher may queue while the connection is down.
const MAX_PENDING = 8 * 1024 * 1024;
const DEFAULT_PORT = 4222;

// --- servers and protocol details -------------------------------------------------------

// `nats://[user:pass@|token@]host[:port]` (or `tls://`, or a bare `host:port`), comma-separated.
function parseServers(servers) {
  const list = (Array.isArray(servers) ? servers : String(servers || '').split(','))
    .map((s) => String(s).trim())
    .filter(Boolean);
  if (list.length === 0) list.push(`nats://127.0.0.1:${DEFAULT_PORT}`);
  return list.map((raw) => {
    const text = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `nats://${raw}`;
    let url;
    try {
      url = new URL(text);
    } catch {
      throw new Error(`nats: invalid server URL ${JSON.stringify(raw.replace(/\/\/[^@/]*@/, '//'))}`);
    }
    const scheme = url.protocol.slice(0, -1).toLowerCase();
    if (scheme !== 'nats' && scheme !== 'tls') {
      throw new Error(`nats: unsupported scheme ${scheme}:// in a server URL`);
    }
    const port = url.port ? Number(url.port) : DEFAULT_PORT;
    return {
      // What errors show: never the credentials.
      url: `${scheme}://${url.hostname}:${port}`,
      host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
      port,
      tls: scheme === 'tls',
      user: url.username ? decodeURIComponent(url.username) : '',
      pass: url.password ? decodeURIComponent(url.password) : '',
    };
  });
}

function checkSubject(subject, what = 'subject') {
  if (typeof subject !== 'string' || subject.length === 0 || /[\s]/.test(subject)) {
    throw new Error(`nats: invalid ${what} ${JSON.stringify(subject)}`);
  }
}

function toBuffer(data) {
  if (data === undefined || data === null) return Buffer.alloc(0);
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.from(String(data));
}

// `NATS/1.0\r\nKey: Value\r\n\r\n` from an object or a Map.
function encodeHeaders(headers) {
  const entries = headers instanceof Map ? [...headers] : Object.entries(headers);
  let text = 'NATS/1.0\r\n';
  for (const [key, value] of entries) {
    const k = String(key);
    const v = String(value);
    if (!/^[!-9;-~]+$/.test(k) || /[\r\n]/.test(v)) {
      throw new Error(`nats: invalid header ${JSON.stringify(k)}`);
    }
    text += `${k}: ${v}\r\n`;
  }
  return Buffer.from(`${text}\r\n`);
}

// The header block of an HMSG: a Map with lower-case keys, and the inline status if any
// (`NATS/1.0 503` is "no responders").
function parseHeaders(buf) {
  const lines = buf.toString('utf8').split('\r\n');
  if (!lines[0].startsWith('NATS/')) throw new Error('nats: protocol error: bad header block');
  const result = { headers: new Map(), status: undefined, description: undefined };
  const status = /^NATS\/\d\.\d\s+(\d{3})\s*(.*)$/.exec(lines[0]);
  if (status) {
    result.status = Number(status[1]);
    result.description = status[2] || undefined;
  }
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const key = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const seen = result.headers.get(key);
    result.headers.set(key, seen === undefined ? value : `${seen}, ${value}`);
  }
  return result;
}

// Splits the server's byte stream into frames, whatever the TCP chunking: a frame may span
// chunks, a chunk may hold many frames, payloads are binary and may contain CRLF.
class Parser {
  constructor() {
    this.pending = []; // unparsed chunks
    this.size = 0; // their total length
    this.need = 0; // bytes needed before parsing can go on (a payload in flight)
    this.onFrame = () => {};
  }

  push(chunk) {
    this.pending.push(chunk);
    this.size += chunk.length;
    if (this.size < this.need) return;
    const buf = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.size);
    this.pending = [];
    this.size = 0;
    this.need = 0;
    let pos = 0;
    while (pos < buf.length) {
      const eol = buf.indexOf(CRLF, pos);
      if (eol < 0) {
        if (buf.length - pos > MAX_CONTROL_LINE) throw new Error('nats: protocol error: control line too long');
        break;
      }
      const line = buf.toString('utf8', pos, eol);
      const op = line.slice(0, line.search(/[\s]|$/)).toUpperCase();
      if (op === 'MSG' || op === 'HMSG') {
        const args = line.split(/[ \t]+/);
        const headered = op === 'HMSG';
        const n = args.length - (headered ? 5 : 4); // 0 without a reply subject, 1 with
        if (n !== 0 && n !== 1) throw new Error(`nats: protocol error: ${JSON.stringify(line.slice(0, 80))}`);
        const total = Number(args[args.length - 1]);
        const hsize = headered ? Number(args[args.length - 2]) : 0;
        if (!Number.isInteger(total) || !Number.isInteger(hsize) || hsize > total || total < 0) {
          throw new Error(`nats: protocol error: ${JSON.stringify(line.slice(0, 80))}`);
        }
        const start = eol + 2;
        const end = start + total;
        if (end + 2 > buf.length) {
          // Incomplete: keep the frame from its control line and wait for the rest.
          this.need = end + 2 - pos;
          break;
        }
        if (buf[end] !== 13 || buf[end + 1] !== 10) throw new Error('nats: protocol error: payload not followed by CRLF');
        const frame = {
          op: 'MSG',
          subject: args[1],
          sid: Number(args[2]),
          reply: n === 1 ? args[3] : undefined,
          headers: null,
          status: undefined,
          description: undefined,
          // A copy: the caller may keep it while the read buffer goes.
          data: Buffer.from(buf.subarray(start + hsize, end)),
        };
        if (headered) Object.assign(frame, parseHeaders(buf.subarray(start, start + hsize)));
        pos = end + 2;
        this.onFrame(frame);
      } else {
        pos = eol + 2;
        if (op === 'PING' || op === 'PONG') this.onFrame({ op });
        else if (op === '+OK') this.onFrame({ op: 'OK' });
        else if (op === '-ERR') this.onFrame({ op: 'ERR', message: line.slice(4).trim().replace(/^'(.*)'$/, '$1') });
        else if (op === 'INFO') {
          let info;
          try {
            info = JSON.parse(line.slice(4));
          } catch {
            throw new Error('nats: protocol error: bad INFO');
          }
          this.onFrame({ op: 'INFO', info });
        } else throw new Error(`nats: protocol error: unexpected ${JSON.stringify(line.slice(0, 40))}`);
      }
    }
    if (pos < buf.length) {
      this.pending.push(buf.subarray(pos));
      this.size = buf.length - pos;
    }
  }
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- the connection ---------------------------------------------------------------------

// A subscription: `unsubscribe()` ends it.
class Subscription {
  constructor(nc, sid, subject, queue, callback) {
    this.nc = nc;
    this.sid = sid;
    this.subject = subject;
    this.queue = queue;
    this.callback = callback;
  }

  unsubscribe() {
    this.nc._unsubscribe(this);
  }
}

// One logical connection to a set of servers; events 'disconnect', 'reconnect', 'error'
// (only emitted when someone listens) and 'close'.
class Connection extends EventEmitter {
  constructor(opts = {}) {
    super();
    this.opts = opts;
    this.servers = parseServers(opts.servers);
    this.timeoutMs = opts.timeoutMs ?? 5000;
    // A seed that is no seed fails here, at once.
    this.nkeyUser = opts.nkeySeed ? nkey.fromSeed(opts.nkeySeed) : null;
    this.reconnectWaitMs = opts.reconnectWaitMs ?? 250;
    this.pingIntervalMs = opts.pingIntervalMs ?? 20000;
    this.maxPingsOut = opts.maxPingsOut ?? 2;
    this.info = null; // the server's INFO
    this.server = null; // the server connected to
    this.socket = null;
    this.connected = false;
    this.closed = false;
    this.subs = new Map(); // sid -> Subscription
    this.nextSid = 1;
    this.out = []; // buffers not yet written (kept while disconnected)
    this.outBytes = 0;
    this.transient = new WeakSet(); // of them, those dropped on a disconnect (PING, SUB...)
    this.writeScheduled = false;
    this.pongs = []; // callbacks of the PINGs in flight, in order
    this.pingsOut = 0;
    this.pingTimer = null;
    this.waiters = []; // flushes waiting for a connection
    this.inbox = null; // `_INBOX.<random>` of request replies
    this.requests = new Map(); // token -> pending request
    this.nextToken = 1;
    this.abortAttempt = null;
    this.lastError = null;
  }

  // The first connection: every server in turn until one answers or timeoutMs is over.
  async _connectFirst() {
    const deadline = Date.now() + this.timeoutMs;
    const urls = this.servers.map((s) => s.url).join(', ');
    for (;;) {
      for (const server of this.servers) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        try {
          await this._attempt(server, left);
          return;
        } catch (err) {
          if (err.fatal) throw new Error(`nats: ${server.url} ${err.message}`);
          this.lastError = err;
        }
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const why = this.lastError ? ` (${this.lastError.message})` : '';
        throw new Error(`nats: could not connect to any of ${urls} within ${this.timeoutMs} ms${why}`);
      }
      await delay(Math.min(this.reconnectWaitMs, left));
    }
  }

  // After a lost connection: every server in turn, forever, until close().
  async _reconnect() {
    let last = this.server;
    while (!this.closed) {
      // Start with the server after the one lost, so a dead server is not retried first.
      const i = this.servers.indexOf(last);
      const order = this.servers.slice(i + 1).concat(this.servers.slice(0, i + 1));
      for (const server of order) {
        if (this.closed) return;
        try {
          await this._attempt(server, Math.max(this.timeoutMs, 1000));
          this.emit('reconnect');
          return;
        } catch (err) {
          this.lastError = err;
          if (err.fatal) this._error(new Error(`nats: ${server.url} ${err.message}`));
        }
        last = server;
      }
      await delay(this.reconnectWaitMs * (0.5 + Math.random()));
    }
  }

  // Opens a connection to one server: reads INFO, upgrades to TLS when asked, sends
  // CONNECT, the subscriptions and a PING, and on the PONG (the subscriptions are in place)
  // makes it the current connection; rejects on close, socket error or timeout, and with
  // err.fatal on -ERR (e.g. auth) or a TLS failure (e.g. an unknown CA): no use retrying.
  _attempt(server, timeoutMs) {
    return new Promise((resolve, reject) => {
      let socket = net.connect({ host: server.host, port: server.port });
      socket.setNoDelay(true);
      const parser = new Parser();
      let info = null;
      let done = false;
      const finish = (err) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.abortAttempt = null;
        socket.removeListener('data', onData);
        socket.removeListener('error', onError);
        socket.removeListener('close', onClose);
        if (!err && this.closed) err = new Error('connection closed');
        if (err) {
          socket.on('error', () => {});
          socket.destroy();
          reject(err);
          return;
        }
        // Adopted at once, so frames after the PONG in the same chunk go to the connection.
        this._adopt({ socket, parser, server, info });
        resolve();
      };
      const timer = setTimeout(() => finish(new Error(`${server.url}: timed out after ${timeoutMs} ms`)), timeoutMs);
      this.abortAttempt = () => finish(new Error('connection closed'));
      const onData = (chunk) => {
        try {
          parser.push(chunk);
        } catch (err) {
          finish(err);
        }
      };
      const onError = (err) => {
        // A TLS failure (certificate, protocol) is not a transient network error (E...).
        if (socket.encrypted !== undefined && !/^E[A-Z]+$/.test(err.code || '')) {
          finish(Object.assign(new Error(`TLS failed: ${err.message}`), { fatal: true }));
        } else finish(new Error(`${server.url}: ${err.message}`));
      };
      const onClose = () => finish(new Error(`${server.url}: connection closed by the server`));
      const listen = (s) => {
        s.on('data', onData);
        s.on('error', onError);
        s.on('close', onClose);
      };
      const sendConnect = () => {
        const connect = {
          verbose: false,
          pedantic: false,
          tls_required: Boolean(socket.encrypted),
          name: this.opts.name,
          lang: 'node-sma-light',
          version: '1.0.0',
          protocol: 1,
          headers: true,
          no_responders: true,
          echo: true,
        };
        // Credentials in the URL win over the options: `user:pass@` or `token@`.
        if (server.user && server.pass) Object.assign(connect, { user: server.user, pass: server.pass });
        else if (server.user) connect.auth_token = server.user;
        else {
          if (this.opts.user) Object.assign(connect, { user: this.opts.user, pass: this.opts.pass || '' });
          if (this.opts.token) connect.auth_token = this.opts.token;
          if (this.nkeyUser) {
            // An NKey user signs the server's nonce.
            connect.nkey = this.nkeyUser.publicKey;
            if (info && info.nonce) connect.sig = this.nkeyUser.sign(info.nonce);
          }
        }
        let text = `CONNECT ${JSON.stringify(connect)}\r\n`;
        for (const sub of this.subs.values()) text += subLine(sub);
        socket.write(`${text}PING\r\n`);
      };
      parser.onFrame = (frame) => {
        if (frame.op === 'INFO') {
          if (info) return;
          info = frame.info;
          const wantTls = server.tls || info.tls_required || this.opts.tls;
          if (!wantTls) return sendConnect();
          if (!info.tls_available && !info.tls_required) {
            return finish(Object.assign(new Error('does not offer TLS'), { fatal: true }));
          }
          const raw = socket;
          raw.removeListener('data', onData);
          raw.removeListener('error', onError);
          raw.removeListener('close', onClose);
          const options = typeof this.opts.tls === 'object' ? this.opts.tls : {};
          const servername = net.isIP(server.host) ? undefined : server.host;
          socket = tls.connect({ host: server.host, servername, ...options, socket: raw });
          listen(socket);
          socket.once('secureConnect', sendConnect);
        } else if (frame.op === 'PONG') finish(null);
        else if (frame.op === 'PING') socket.write(PONG);
        else if (frame.op === 'ERR') {
          finish(Object.assign(new Error(`refused the connection: ${frame.message}`), { fatal: true }));
        }
        else if (frame.op === 'MSG') this._deliver(frame); // before the PONG, for a re-sent SUB
      };
      listen(socket);
    });
  }

  // Makes an opened connection the current one and writes what was queued meanwhile.
  _adopt({ socket, parser, server, info }) {
    this.socket = socket;
    this.server = server;
    this.info = info;
    this.connected = true;
    this.pingsOut = 0;
    parser.onFrame = (frame) => this._onFrame(frame);
    socket.on('data', (chunk) => {
      try {
        parser.push(chunk);
      } catch (err) {
        this._error(err);
        socket.destroy();
      }
    });
    socket.on('error', (err) => {
      this.lastError = err;
    });
    socket.on('close', () => this._onClose(socket));
    this.pingTimer = setInterval(() => this._keepalive(), this.pingIntervalMs);
    this.pingTimer.unref();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
    this._scheduleWrite();
  }

  _onFrame(frame) {
    switch (frame.op) {
      case 'MSG':
        return this._deliver(frame);
      case 'PING':
        return this._send(PONG, true);
      case 'PONG': {
        this.pingsOut = 0;
        const cb = this.pongs.shift();
        if (cb) cb(null);
        return undefined;
      }
      case 'INFO':
        this.info = { ...this.info, ...frame.info };
        return undefined;
      case 'ERR':
        // Permission errors leave the connection open; the others are followed by a close.
        return this._error(new Error(`nats: server error: ${frame.message}`));
      default:
        return undefined;
    }
  }

  _deliver(frame) {
    const sub = this.subs.get(frame.sid);
    if (!sub) return;
    const msg = {
      subject: frame.subject,
      reply: frame.reply,
      headers: frame.headers,
      data: frame.data,
      status: frame.status,
      description: frame.description,
    };
    try {
      sub.callback(msg);
    } catch (err) {
      this._error(err);
    }
  }

  _onClose(socket) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.connected = false;
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    // What went to the lost socket is gone; queued control lines are rebuilt on reconnect.
    this.out = this.out.filter((b) => !this.transient.has(b));
    this.outBytes = this.out.reduce((n, b) => n + b.length, 0);
    const pongs = this.pongs;
    this.pongs = [];
    for (const cb of pongs) cb(new Error('nats: connection lost'));
    if (this.closed) return;
    this.emit('disconnect');
    this._reconnect();
  }

  _keepalive() {
    if (!this.connected) return;
    if (this.pingsOut >= this.maxPingsOut) {
      // Stale: the server stopped answering; drop the socket and reconnect.
      this._error(new Error(`nats: ${this.server.url}: no PONG to ${this.pingsOut} PINGs, reconnecting`));
      this.socket.destroy();
      return;
    }
    this.pingsOut += 1;
    this._ping(() => {});
  }

  _error(err) {
    this.lastError = err;
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  // Queues bytes for the socket; while disconnected they wait for the next connection.
  _send(buf, transient = false) {
    if (!this.connected && this.outBytes + buf.length > MAX_PENDING) {
      throw new Error('nats: disconnected and too much data is already queued');
    }
    if (transient) this.transient.add(buf);
    this.out.push(buf);
    this.outBytes += buf.length;
    this._scheduleWrite();
  }

  // Writes the queue in one go at the end of the current tick.
  _scheduleWrite() {
    if (this.writeScheduled || !this.connected || this.out.length === 0) return;
    this.writeScheduled = true;
    process.nextTick(() => {
      this.writeScheduled = false;
      if (!this.connected || this.out.length === 0) return;
      const data = this.out.length === 1 ? this.out[0] : Buffer.concat(this.out, this.outBytes);
      this.out = [];
      this.outBytes = 0;
      this.socket.write(data);
    });
  }

  _ping(cb) {
    this.pongs.push(cb);
    this._send(PING, true);
  }

  // --- public API ---

  // Publishes `data` (Buffer or string) on `subject`; opts.reply, opts.headers (HPUB).
  publish(subject, data, opts = {}) {
    if (this.closed) throw new Error('nats: connection closed');
    checkSubject(subject);
    if (opts.reply) checkSubject(opts.reply, 'reply subject');
    const payload = toBuffer(data);
    const reply = opts.reply ? ` ${opts.reply}` : '';
    const hdr = opts.headers ? encodeHeaders(opts.headers) : null;
    const size = payload.length + (hdr ? hdr.length : 0);
    const max = this.info && this.info.max_payload;
    if (max && size > max) throw new Error(`nats: message to ${subject} is ${size} bytes, over the server's max_payload ${max}`);
    const line = hdr ? `HPUB ${subject}${reply} ${hdr.length} ${size}\r\n` : `PUB ${subject}${reply} ${size}\r\n`;
    const parts = [Buffer.from(line)];
    if (hdr) parts.push(hdr);
    parts.push(payload, CRLF);
    this._send(Buffer.concat(parts));
  }

  // Calls `callback(msg)` for each message on `subject` (wildcards allowed); opts.queue.
  subscribe(subject, callback, opts = {}) {
    if (this.closed) throw new Error('nats: connection closed');
    checkSubject(subject);
    if (opts.queue) checkSubject(opts.queue, 'queue group');
    if (typeof callback !== 'function') throw new Error('nats: subscribe needs a callback');
    const sub = new Subscription(this, this.nextSid++, subject, opts.queue, callback);
    this.subs.set(sub.sid, sub);
    // While disconnected, the next handshake sends it with the others.
    if (this.connected) this._send(Buffer.from(subLine(sub)), true);
    return sub;
  }

  _unsubscribe(sub) {
    if (!this.subs.delete(sub.sid)) return;
    if (this.connected) this._send(Buffer.from(`UNSUB ${sub.sid}\r\n`), true);
  }

  // Publishes with a reply inbox and resolves with the first reply; rejects after
  // opts.timeoutMs (err.code 'TIMEOUT') or when nobody listens (err.code 'NO_RESPONDERS').
  request(subject, data, opts = {}) {
    if (this.closed) return Promise.reject(new Error('nats: connection closed'));
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    if (!this.inbox) {
      this.inbox = `_INBOX.${crypto.randomBytes(12).toString('hex')}`;
      this.subscribe(`${this.inbox}.*`, (msg) => this._onReply(msg));
    }
    const token = String(this.nextToken++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(token);
        reject(Object.assign(new Error(`nats: request to ${subject} timed out after ${timeoutMs} ms`), { code: 'TIMEOUT' }));
      }, timeoutMs);
      this.requests.set(token, { subject, resolve, reject, timer });
      try {
        this.publish(subject, data, { reply: `${this.inbox}.${token}`, headers: opts.headers });
      } catch (err) {
        clearTimeout(timer);
        this.requests.delete(token);
        reject(err);
      }
    });
  }

  _onReply(msg) {
    const token = msg.subject.slice(this.inbox.length + 1);
    const pending = this.requests.get(token);
    if (!pending) return;
    this.requests.delete(token);
    clearTimeout(pending.timer);
    if (msg.status === 503 && msg.data.length === 0) {
      pending.reject(Object.assign(new Error(`nats: no responders for ${pending.subject}`), { code: 'NO_RESPONDERS' }));
    } else pending.resolve(msg);
  }

  // Resolves once the server has processed everything sent before (PING/PONG); waits for
  // a reconnect first when disconnected.
  flush() {
    if (this.closed) return Promise.reject(new Error('nats: connection closed'));
    if (!this.connected) {
      return new Promise((resolve, reject) => this.waiters.push({ resolve, reject })).then(() => this.flush());
    }
    return new Promise((resolve, reject) => this._ping((err) => (err ? reject(err) : resolve())));
  }

  // Flushes (for at most a second), closes the socket and fails what is still pending.
  async close() {
    if (this.closed) return;
    if (this.connected) {
      let timer;
      await Promise.race([
        this.flush().catch(() => {}),
        new Promise((resolve) => {
          timer = setTimeout(resolve, 1000);
        }),
      ]);
      clearTimeout(timer);
    }
    this.closed = true;
    clearInterval(this.pingTimer);
    if (this.abortAttempt) this.abortAttempt();
    const closed = new Error('nats: connection closed');
    for (const r of this.requests.values()) {
      clearTimeout(r.timer);
      r.reject(closed);
    }
    this.requests.clear();
    for (const w of this.waiters) w.reject(closed);
    this.waiters = [];
    this.subs.clear();
    const socket = this.socket;
    if (socket) {
      await new Promise((resolve) => {
        socket.once('close', resolve);
        socket.end();
        setTimeout(() => socket.destroy(), 1000).unref();
      });
    }
    this.connected = false;
    this.emit('close');
  }
}

function subLine(sub) {
  return sub.queue ? `SUB ${sub.subject} ${sub.queue} ${sub.sid}\r\n` : `SUB ${sub.subject} ${sub.sid}\r\n`;
}

// Connects to the first server of opts.servers that answers. opts: servers, name, token,
// user + pass, nkeySeed (an NKey user seed `SU…`, which signs the server's nonce), tls
// (true, or tls.connect options such as { ca }), timeoutMs.
async function connect(opts = {}) {
  const nc = new Connection(opts);
  await nc._connectFirst();
  return nc;
}

// --- JetStream: KV and object store -------------------------------------------------------

const JS_NOT_FOUND = 10037; // no message found
const JS_STREAM_NOT_FOUND = 10059;

function checkBucket(bucket) {
  if (typeof bucket !== 'string' || !/^[a-zA-Z0-9_-]+$/.test(bucket)) {
    throw new Error(`nats: invalid bucket name ${JSON.stringify(bucket)}`);
  }
}

// A KV key (dot-separated tokens of [-/_=a-zA-Z0-9]); a watch may use `*` and a final `>`.
function checkKey(key, wildcards) {
  const tokens = typeof key === 'string' ? key.split('.') : [''];
  const ok = tokens.every(
    (t, i) => /^[-/_=a-zA-Z0-9]+$/.test(t) || (wildcards && (t === '*' || (t === '>' && i === tokens.length - 1))),
  );
  if (!ok) throw new Error(`nats: invalid key ${JSON.stringify(key)}`);
}

function jsError(what, error) {
  const err = new Error(`${what}: ${error.description || 'JetStream error'} (${error.code}/${error.err_code})`);
  err.code = error.code;
  err.errCode = error.err_code;
  return err;
}

// A JetStream API (or JetStream publish) request whose reply is JSON.
async function jsRequest(nc, subject, data, headers, what, timeoutMs) {
  let msg;
  try {
    msg = await nc.request(subject, data, { timeoutMs, headers });
  } catch (err) {
    if (err.code === 'NO_RESPONDERS') {
      throw Object.assign(new Error(`${what}: no JetStream stream or API answers on ${subject}`), { code: err.code });
    }
    throw Object.assign(new Error(`${what}: ${err.message}`), { code: err.code });
  }
  try {
    return JSON.parse(msg.data.toString('utf8'));
  } catch {
    throw new Error(`${what}: invalid JSON reply on ${subject}`);
  }
}

// $JS.API.STREAM.MSG.GET: the message (data and headers decoded), or null when none matches.
async function msgGet(nc, stream, query, what, timeoutMs) {
  const reply = await jsRequest(nc, `$JS.API.STREAM.MSG.GET.${stream}`, JSON.stringify(query), undefined, what, timeoutMs);
  if (reply.error) {
    if (reply.error.err_code === JS_STREAM_NOT_FOUND) throw jsError(`${what}: stream ${stream}`, reply.error);
    if (reply.error.code === 404 || reply.error.err_code === JS_NOT_FOUND) return null;
    throw jsError(what, reply.error);
  }
  const m = reply.message || {};
  return {
    subject: m.subject,
    seq: m.seq,
    data: m.data ? Buffer.from(m.data, 'base64') : Buffer.alloc(0),
    headers: m.hdrs ? parseHeaders(Buffer.from(m.hdrs, 'base64')).headers : null,
  };
}

// A JetStream publish: resolves with the ack's sequence number.
async function jsPublish(nc, subject, data, headers, what, timeoutMs) {
  const ack = await jsRequest(nc, subject, data, headers, what, timeoutMs);
  if (ack.error) throw jsError(what, ack.error);
  if (typeof ack.seq !== 'number') throw new Error(`${what}: not a JetStream ack`);
  return ack.seq;
}

function kvOperation(headers) {
  const op = headers && headers.get('kv-operation');
  return op ? op.toUpperCase() : 'PUT';
}

// The last entry of `key`: { value, revision, operation } (operation 'DEL' or 'PURGE' for a
// deleted key), or null when the key was never set.
async function kvGet(nc, bucket, key, opts = {}) {
  checkBucket(bucket);
  checkKey(key, false);
  const what = `kvGet ${bucket}/${key}`;
  const m = await msgGet(nc, `KV_${bucket}`, { last_by_subj: `$KV.${bucket}.${key}` }, what, opts.timeoutMs);
  if (!m) return null;
  return { value: m.data, revision: m.seq, operation: kvOperation(m.headers) };
}

// Live changes of `key` (wildcards allowed): callback({ key, value, operation }); returns the
// subscription. Nothing is replayed: re-read with kvGet after a 'reconnect'.
function kvWatch(nc, bucket, key, callback) {
  checkBucket(bucket);
  checkKey(key, true);
  const prefix = `$KV.${bucket}.`;
  return nc.subscribe(prefix + key, (msg) => {
    callback({ key: msg.subject.slice(prefix.length), value: msg.data, operation: kvOperation(msg.headers) });
  });
}

// Sets `key` to `value`; resolves with the new revision.
async function kvPut(nc, bucket, key, value, opts = {}) {
  checkBucket(bucket);
  checkKey(key, false);
  return jsPublish(nc, `$KV.${bucket}.${key}`, value, undefined, `kvPut ${bucket}/${key}`, opts.timeoutMs);
}

// Deletes `key` (a DEL marker); resolves with its revision.
async function kvDelete(nc, bucket, key, opts = {}) {
  checkBucket(bucket);
  checkKey(key, false);
  const headers = { 'KV-Operation': 'DEL' };
  return jsPublish(nc, `$KV.${bucket}.${key}`, null, headers, `kvDelete ${bucket}/${key}`, opts.timeoutMs);
}

// Base64 URL-safe with padding, as async-nats and nats.go encode names and digests.
function base64url(buf) {
  return buf.toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
}

function sameDigest(a, b) {
  const norm = (s) => s.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  return norm(a) === norm(b);
}

// The whole object `name` of the object store `bucket`, its size and SHA-256 checked; null
// when there is no such object (or it was deleted). Links to an object are followed.
async function objectGet(nc, bucket, name, opts = {}) {
  checkBucket(bucket);
  const what = `objectGet ${bucket}/${name}`;
  if (typeof name !== 'string' || name.length === 0) throw new Error(`${what}: invalid object name`);
  const stream = `OBJ_${bucket}`;
  const metaSubject = `$O.${bucket}.M.${base64url(Buffer.from(name, 'utf8'))}`;
  const meta = await msgGet(nc, stream, { last_by_subj: metaSubject }, what, opts.timeoutMs);
  if (!meta) return null;
  let info;
  try {
    info = JSON.parse(meta.data.toString('utf8'));
  } catch {
    throw new Error(`${what}: invalid object info`);
  }
  if (info.deleted) return null;
  const link = info.options && info.options.link;
  if (link) {
    const depth = opts.depth || 0;
    if (!link.name || depth >= 8) throw new Error(`${what}: link does not lead to an object`);
    return objectGet(nc, link.bucket || bucket, link.name, { ...opts, depth: depth + 1 });
  }
  const chunks = Number(info.chunks) || 0;
  const size = Number(info.size) || 0;
  if (opts.maxBytes && size > opts.maxBytes) throw new Error(`${what}: ${size} bytes, over the ${opts.maxBytes} taken`);
  const chunkSubject = `$O.${bucket}.C.${info.nuid}`;
  const hash = crypto.createHash('sha256');
  const parts = [];
  let total = 0;
  let seq = 1;
  for (let i = 0; i < chunks; i++) {
    const chunk = await msgGet(nc, stream, { seq, next_by_subj: chunkSubject }, what, opts.timeoutMs);
    if (!chunk) throw new Error(`${what}: chunk ${i + 1} of ${chunks} is missing`);
    hash.update(chunk.data);
    parts.push(chunk.data);
    total += chunk.data.length;
    if (total > size) break;
    seq = chunk.seq + 1;
  }
  if (total !== size) throw new Error(`${what}: read ${total} bytes, the object info says ${size}`);
  const digest = typeof info.digest === 'string' ? /^SHA-256=(.*)$/i.exec(info.digest) : null;
  if (!digest) throw new Error(`${what}: no SHA-256 digest in the object info`);
  const actual = base64url(hash.digest());
  if (!sameDigest(digest[1], actual)) {
    throw new Error(`${what}: SHA-256 mismatch (object info ${digest[1]}, read ${actual})`);
  }
  return Buffer.concat(parts, total);
}

module.exports = { connect, Connection, kvGet, kvWatch, kvPut, kvDelete, objectGet, parseHeaders };
