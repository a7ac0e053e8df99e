'use strict';
// kiln "sma-light" runtime: pages and API handlers published onto running instances.
//
// The image holds the app as built (/app, the working directory): that is version 0. Later
// versions are bundles published by `kiln publish` (see bundle.js for the layout):
//   - the bundle's bytes sit in the NATS object store `kiln-bundles`, named
//     `sha256-<hex>` after their digest;
//   - the KV `kiln-light` key `<app>` points at the live version (and a canary with a
//     percent), and every instance watches it;
//   - each instance fetches a new bundle (or takes it from its own cache: rollback needs no
//     fetch), checks its digest, unpacks it, loads it in a worker thread of its own, checks
//     that it answers, then switches: requests in flight finish on the version they started
//     on, new ones go to the new version, and the old worker ends once drained;
//   - a version that fails to load is reported (event `kiln.events.light.<app>`, and the
//     instance's presence record) and the instance keeps serving what it served;
//   - each instance keeps a presence record in the KV `kiln-light-instances`
//     (`<app>.<instance>`, refreshed every few seconds, expiring when it stops) saying what
//     it serves, which `kiln publish --wait` watches.
// It loads the current version before it listens, so it is ready only once it serves it.
//
// Environment: PORT; KILN_NATS (servers, comma-separated; without it the image's version is
// served alone), KILN_NATS_TOKEN or KILN_NATS_USER + KILN_NATS_PASSWORD, KILN_APP (the app's
// name; default K_SERVICE, which Knative sets), KILN_INSTANCE (default: host name and pid), KILN_LIGHT_CACHE (bundle cache folder),
// KILN_LIGHT_KEEP (bundles kept in it, default 20).
//
// Canary: a request carries a sticky key (header x-kiln-key, else cookie kiln-key, else a
// new key set as that cookie); the same key lands on the same version on every instance.
// Every answer says which version served it in x-kiln-version.
//
// `node server.js --check DIR` loads DIR as a version would be and prints its routes (what
// `kiln publish` runs before it publishes).

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const { Worker } = require('worker_threads');
const common = require('../common/http.js');
const bundle = require('./bundle.js');
// The NATS client is loaded only when an instance connects (--check and a lone instance
// need none).
const nats = process.env.KILN_NATS ? require('./nats.js') : null;

const POINTERS_BUCKET = 'kiln-light';
const INSTANCES_BUCKET = 'kiln-light-instances';
const BUNDLES_BUCKET = 'kiln-bundles';
const LOAD_TIMEOUT_MS = 15000;
const CALL_TIMEOUT_MS = Number(process.env.KILN_LIGHT_TIMEOUT_MS || 60000);
const HEARTBEAT_MS = Number(process.env.KILN_LIGHT_HEARTBEAT_MS || 3000);
const KEY_COOKIE = 'kiln-key';
const KEY_RE = /^[A-Za-z0-9_.=-]{1,128}$/;

const log = common.createLogger({ runtime: 'sma-light' });


// One loaded version: its folder, its worker thread and its requests in flight.
class Version {
  constructor(number, digest, dir) {
    this.number = number;
    this.digest = digest;
    this.dir = dir;
    this.publicReal = null;
    this.routes = null;
    this.inflight = 0;
    this.retired = false;
    this.pending = new Map();
    this.nextId = 0;
    this.worker = null;
  }

  // Starts the worker; resolves once every module loaded and a health call came back.
  async start() {
    this.worker = new Worker(path.join(__dirname, 'worker.js'), {
      workerData: { dir: this.dir, version: this.number },
    });
    const loaded = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`did not load within ${LOAD_TIMEOUT_MS} ms`)), LOAD_TIMEOUT_MS);
      this.worker.on('message', (msg) => {
        if (msg.type === 'loaded') { clearTimeout(timer); resolve(msg.routes); }
        else if (msg.type === 'failed') { clearTimeout(timer); reject(new Error(msg.error)); }
        else this.answer(msg);
      });
      this.worker.on('error', (err) => { clearTimeout(timer); reject(err); this.fail(err); });
      this.worker.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`worker exited with code ${code}`));
        this.worker = null;
        this.fail(new Error(`version ${this.number} stopped (worker exit ${code})`));
        if (this.onExit) this.onExit(code);
      });
    });
    try {
      const routes = await loaded;
      this.routes = { pages: new Set(routes.pages), api: new Set(routes.api), middleware: routes.middleware, statics: routes.statics };
      await this.call('health', null, null, null);
    } catch (err) {
      this.release();
      throw err;
    }
    const publicDir = path.join(this.dir, 'public');
    this.publicReal = fs.existsSync(publicDir) ? fs.realpathSync(publicDir) : null;
    return this;
  }

  // Calls into the version's worker; a call not answered within CALL_TIMEOUT_MS fails (504),
  // so that a handler that never answers cannot hold an old version forever.
  call(kind, name, params, request) {
    if (!this.worker) return Promise.reject(new Error(`version ${this.number} is not running`));
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new common.HttpError(504, `${kind} ${name || ''} did not answer within ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      const done = (f) => (value) => { clearTimeout(timer); f(value); };
      this.pending.set(id, { resolve: done(resolve), reject: done(reject) });
      this.worker.postMessage({ id, kind, name, params, request });
    });
  }

  answer(msg) {
    const waiter = this.pending.get(msg.id);
    if (!waiter) return;
    this.pending.delete(msg.id);
    if (msg.ok) return waiter.resolve(msg.result);
    const err = new Error(msg.error.message);
    err.name = msg.error.name;
    err.status = msg.error.status;
    err.stack = msg.error.stack;
    waiter.reject(err);
  }

  fail(err) {
    for (const waiter of this.pending.values()) waiter.reject(err);
    this.pending.clear();
  }

  // No new requests come; the worker ends when the last one in flight is done.
  retire() {
    this.retired = true;
    if (this.inflight === 0) this.release();
  }

  release() {
    if (!this.worker) return;
    const worker = this.worker;
    this.worker = null;
    worker.removeAllListeners('exit');
    worker.terminate().catch(() => {});
    this.fail(new Error(`version ${this.number} was released`));
    this.onExit = null;
  }

  summary() {
    return { version: this.number, digest: this.digest };
  }
}

// What this instance serves, swapped as a whole.
let state = { live: null, canary: null, percent: 0 };
let failed = null; // { version, digest, error } of the last version that failed to load
let switched = null; // { version, fetched, ms } of the last switch
let nc = null;
// On Knative the Service is named after the app, and K_SERVICE carries it.
const app = process.env.KILN_APP || process.env.K_SERVICE || path.basename(process.cwd());
const instance = (process.env.KILN_INSTANCE || `${os.hostname()}-${process.pid}`).replace(/[^A-Za-z0-9_=-]/g, '-');
const cacheDir = process.env.KILN_LIGHT_CACHE || path.join(os.tmpdir(), 'kiln-light', instance);
const keep = Math.max(2, Number(process.env.KILN_LIGHT_KEEP || 20));
const dev = process.env.KILN_DEV === '1';

// --- bundles: from the cache, else from the object store ---

async function bundleDir(digest) {
  const hex = digest.slice('sha256:'.length);
  const dir = path.join(cacheDir, 'v', hex);
  const file = path.join(cacheDir, 'bundles', `${hex}.bundle`);
  let bytes = null;
  let fetched = false;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    if (!nc) throw new Error(`bundle ${digest} is not cached and NATS is not connected`);
    bytes = await nats.objectGet(nc, BUNDLES_BUCKET, `sha256-${hex}`);
    if (!bytes) throw new Error(`bundle ${digest} is not in object store ${BUNDLES_BUCKET}`);
    fetched = true;
  }
  const files = bundle.decode(bytes, digest); // checks the digest, also of a cached copy
  if (fetched) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(`${file}.part`, bytes);
    fs.renameSync(`${file}.part`, file);
  } else {
    const now = new Date();
    fs.utimesSync(file, now, now); // most recently used
  }
  bundle.extract(files, dir, path.join(process.cwd(), 'node_modules'));
  return { dir, fetched };
}

// Drops cached bundles beyond the newest `keep` (never one in use).
function pruneCache() {
  const bundlesDir = path.join(cacheDir, 'bundles');
  let names;
  try {
    names = fs.readdirSync(bundlesDir).filter((n) => n.endsWith('.bundle'));
  } catch (err) {
    return;
  }
  const inUse = new Set([state.live, state.canary].filter(Boolean).map((v) => v.digest.slice(7)));
  const byAge = names
    .map((n) => ({ hex: n.slice(0, -'.bundle'.length), at: fs.statSync(path.join(bundlesDir, n)).mtimeMs }))
    .sort((a, b) => b.at - a.at);
  for (const { hex } of byAge.slice(keep)) {
    if (inUse.has(hex)) continue;
    fs.rmSync(path.join(bundlesDir, `${hex}.bundle`), { force: true });
    fs.rmSync(path.join(cacheDir, 'v', hex), { recursive: true, force: true });
  }
}

async function loadVersion(number, digest) {
  const started = Date.now();
  const { dir, fetched } = await bundleDir(digest);
  const version = await startVersion(number, digest, dir);
  return { version, fetched, ms: Date.now() - started };
}

// Starts a version whose worker, should it die (a crash outside any handler, out of
// memory), is started again in its place.
async function startVersion(number, digest, dir) {
  const version = await new Version(number, digest, dir).start();
  version.onExit = (code) => {
    log.error(`version ${number}'s worker stopped (exit ${code}); starting it again`);
    event({ kind: 'light.restarted', version: number, digest, code });
    startVersion(number, digest, dir).then((fresh) => {
      if (state.live === version) state = { ...state, live: fresh };
      else if (state.canary === version) state = { ...state, canary: fresh };
      else fresh.release();
    }).catch((err) => log.error(`version ${number} did not start again`, { error: err.message }));
  };
  return version;
}

// --- switching ---

let wanted = null;
let applying = Promise.resolve();

// Asks for the pointer `pointer` to be applied; pointers that arrive while one is loading
// are coalesced to the newest.
function want(pointer) {
  wanted = pointer;
  // A failed apply must not stop the ones after it.
  applying = applying.catch((err) => log.error('switch failed', { error: err.stack || String(err) })).then(() => {
    const next = wanted;
    wanted = null;
    return next ? apply(next) : undefined;
  });
  return applying;
}

function sameVersion(have, want) {
  return have && want && have.digest === want.digest && have.number === want.version;
}

// Loads what `pointer` names (reusing what is loaded already), then swaps it in whole.
async function apply(pointer) {
  const started = Date.now();
  if (!pointer || !pointer.live || !bundle.DIGEST_RE.test(pointer.live.digest)) {
    log.warn('ignoring a pointer without a live version', { pointer });
    return;
  }
  const loaded = [];
  const load = async (target) => {
    for (const have of [state.live, state.canary]) if (sameVersion(have, target)) return { version: have, fetched: false };
    const got = await loadVersion(target.version, target.digest);
    loaded.push(got.version);
    return got;
  };
  let live;
  let canary = null;
  try {
    live = await load(pointer.live);
    if (pointer.canary && bundle.DIGEST_RE.test(pointer.canary.digest)) canary = await load(pointer.canary);
  } catch (err) {
    for (const v of loaded) v.release();
    const target = pointer.canary && live ? pointer.canary : pointer.live;
    failed = { version: target.version, digest: target.digest, error: err.message };
    log.error(`version ${target.version} failed to load; still serving version ${state.live && state.live.number}`, { error: err.message });
    event({ kind: 'light.failed', version: target.version, digest: target.digest, error: err.message });
    await presence();
    return;
  }
  const before = state;
  state = {
    live: live.version,
    canary: canary ? canary.version : null,
    percent: canary ? Math.min(100, Math.max(0, Number(pointer.canary.percent) || 0)) : 0,
  };
  failed = null;
  switched = { version: state.live.number, fetched: live.fetched || Boolean(canary && canary.fetched), ms: Date.now() - started };
  for (const old of [before.live, before.canary]) {
    if (old && old !== state.live && old !== state.canary) old.retire();
  }
  log.info(`serving version ${state.live.number}${state.canary ? `, canary ${state.canary.number} at ${state.percent}%` : ''}`, switched);
  event({ kind: 'light.live', ...switched, digest: state.live.digest, canary: state.canary && state.canary.summary(), percent: state.percent });
  await presence();
  pruneCache();
}

// --- NATS: pointer watch, presence, events ---

function presenceRecord() {
  return {
    instance,
    app,
    pid: process.pid,
    live: state.live && state.live.summary(),
    canary: state.canary && { ...state.canary.summary(), percent: state.percent },
    failed,
    switched,
    at: new Date().toISOString(),
  };
}

async function presence() {
  if (!nc) return;
  try {
    await nats.kvPut(nc, INSTANCES_BUCKET, `${app}.${instance}`, JSON.stringify(presenceRecord()));
  } catch (err) {
    log.warn('could not write the presence record', { error: err.message });
  }
}

function event(fields) {
  if (!nc) return;
  try {
    nc.publish(`kiln.events.light.${app}`, JSON.stringify({ ...fields, app, instance, at: new Date().toISOString() }));
  } catch (err) {
    log.warn('could not publish an event', { error: err.message });
  }
}

async function readPointer() {
  const entry = await nats.kvGet(nc, POINTERS_BUCKET, app);
  if (!entry || entry.operation !== 'PUT') return null;
  return JSON.parse(entry.value.toString('utf8'));
}

function natsOptions() {
  return {
    servers: process.env.KILN_NATS,
    name: `sma-light ${app} ${instance}`,
    token: process.env.KILN_NATS_TOKEN,
    user: process.env.KILN_NATS_USER,
    pass: process.env.KILN_NATS_PASSWORD,
    timeoutMs: Number(process.env.KILN_NATS_TIMEOUT || 10) * 1000,
  };
}

async function connectNats() {
  nc = await nats.connect(natsOptions());
  nats.kvWatch(nc, POINTERS_BUCKET, app, (entry) => {
    if (entry.operation !== 'PUT') return;
    let pointer;
    try {
      pointer = JSON.parse(entry.value.toString('utf8'));
    } catch (err) {
      return log.warn('ignoring a pointer that is not JSON', { error: err.message });
    }
    want(pointer).catch((err) => log.error('switch failed', { error: err.stack || String(err) }));
  });
  nc.on('disconnect', () => log.warn('NATS connection lost; reconnecting'));
  nc.on('reconnect', () => {
    log.info('NATS reconnected; reading the pointer again');
    // Updates made while disconnected were missed: read the pointer again.
    readPointer().then((p) => p && want(p)).catch((err) => log.warn('pointer re-read failed', { error: err.message }));
    presence();
  });
  await nc.flush();
}

// --- HTTP ---

function stickyKey(req, res) {
  const given = req.headers['x-kiln-key'];
  if (typeof given === 'string' && KEY_RE.test(given)) return given;
  for (const part of String(req.headers.cookie || '').split(';')) {
    const [name, value] = part.trim().split('=');
    if (name === KEY_COOKIE && KEY_RE.test(value || '')) return value;
  }
  const key = crypto.randomBytes(12).toString('base64url');
  res.setHeader('set-cookie', `${KEY_COOKIE}=${key}; Path=/; SameSite=Lax`);
  return key;
}

// The version a request goes to: the canary for keys whose bucket (0-9999, the same on every
// instance) is under percent x 100.
function choose(req, res) {
  const { live, canary, percent } = state;
  if (!canary || percent <= 0) return live;
  const key = stickyKey(req, res);
  const bucket = crypto.createHash('sha256').update(key).digest().readUInt32BE(0) % 10000;
  return bucket < percent * 100 ? canary : live;
}

// A page's or middleware's answer: a string is HTML; { status, headers, body } is sent as
// given (an object body as JSON).
function sendAnswer(res, answer) {
  if (typeof answer === 'string') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(answer) });
    return res.end(answer);
  }
  const { status = 200, headers = {}, body = '' } = answer || {};
  const json = typeof body !== 'string';
  const text = json ? JSON.stringify(body) : body;
  res.writeHead(status, {
    'content-type': json ? 'application/json; charset=utf-8' : 'text/html; charset=utf-8',
    ...headers,
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function params(req, res, url) {
  if (req.method === 'GET' || req.method === 'HEAD') return common.queryParams(url.searchParams);
  if (req.method !== 'POST') {
    res.setHeader('allow', 'GET, POST');
    throw new common.HttpError(405, `method ${req.method} not allowed`);
  }
  if (String(req.headers['content-type'] || '').startsWith('application/x-www-form-urlencoded')) {
    return common.queryParams(new URLSearchParams(await common.readBody(req)));
  }
  return common.readJson(req);
}

async function serve(version, req, res, url, ctx) {
  const { pathname } = url;
  const request = { method: req.method, path: pathname, headers: req.headers, id: ctx.request.id, query: common.queryParams(url.searchParams) };
  if (version.routes.middleware) {
    const answer = await version.call('middleware', null, null, request);
    if (answer !== undefined && answer !== null) return sendAnswer(res, answer);
  }
  if (pathname.startsWith('/api/')) {
    const name = pathname.slice('/api/'.length);
    if (!version.routes.api.has(name)) return common.sendError(res, 404, `no API handler at ${pathname}`);
    const given = await params(req, res, url);
    try {
      return common.sendJson(res, 200, await version.call('api', name, given, request));
    } catch (err) {
      ctx.log.error(`api/${name} threw`, { error: err.stack || err.message, version: version.number });
      return common.sendJson(res, err.status === 404 || err.status === 504 ? err.status : 500, common.errorBody(err));
    }
  }
  if (version.routes.pages.has(pathname)) {
    const given = await params(req, res, url);
    try {
      return sendAnswer(res, await version.call('page', pathname, given, request));
    } catch (err) {
      ctx.log.error(`page ${pathname} threw`, { error: err.stack || err.message, version: version.number });
      return sendAnswer(res, { status: err.status === 504 ? 504 : 500, body: 'internal error' });
    }
  }
  if (!version.publicReal) return common.sendError(res, 404, `not found: ${pathname}`);
  return common.serveStatic(req, res, version.publicReal, pathname);
}

function status() {
  return { ...presenceRecord(), routes: routesOf(state.live) };
}

function routesOf(version) {
  if (!version || !version.routes) return null;
  return { pages: [...version.routes.pages], api: [...version.routes.api], middleware: version.routes.middleware, statics: version.routes.statics };
}

function devSections() {
  const routes = routesOf(state.live);
  const statics = bundle.walk(path.join(state.live.dir, 'public')).map((rel) => ({ name: rel, url: '/' + rel }));
  return [
    { title: 'Pages', items: routes.pages.map((p) => ({ name: p, url: p, detail: 'dynamic page' })) },
    { title: 'API handlers', items: routes.api.map((n) => ({ name: n, url: `/api/${n}`, detail: '(params, context)' })) },
    { title: 'Static files', items: statics },
  ];
}

const handler = common.createHandler(async (req, res, url, ctx) => {
  const { pathname } = url;
  if (pathname === '/healthz') return common.sendJson(res, 200, { ok: true, version: state.live.number });
  if (pathname === '/kiln/light') return common.sendJson(res, 200, status());
  if (dev && typeof common.devPage === 'function' && (pathname === '/kiln/dev' || pathname === '/kiln/dev.json')) {
    return common.devPage(req, res, { runtime: 'sma-light', sections: devSections() });
  }
  const version = choose(req, res);
  version.inflight += 1;
  res.setHeader('x-kiln-version', String(version.number));
  try {
    await serve(version, req, res, url, ctx);
  } finally {
    version.inflight -= 1;
    if (version.retired && version.inflight === 0) version.release();
  }
});

// --- start ---

async function check(dir) {
  try {
    const version = await new Version(0, 'check', path.resolve(dir)).start();
    process.stdout.write(JSON.stringify(routesOf(version)) + '\n');
    version.release();
    process.exit(0);
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
}

// The pointer, or null when there is none yet (or the bucket is not made yet: any kiln
// command that connects makes it).
async function readPointerOrNull() {
  try {
    return await readPointer();
  } catch (err) {
    log.warn(`cannot read the pointer of ${app}: ${err.message}`);
    return null;
  }
}

async function main() {
  let pointer = null;
  if (process.env.KILN_NATS) {
    try {
      await connectNats();
      pointer = await readPointerOrNull();
    } catch (err) {
      log.error(`NATS: ${err.message}; serving the image's version, and trying again`);
      nc = null;
      setTimeout(function retry() {
        connectNats().then(() => readPointerOrNull()).then((p) => p && want(p)).then(presence)
          .catch((e) => { nc = null; log.warn(`NATS: ${e.message}`); setTimeout(retry, 2000); });
      }, 2000);
    }
  }
  if (pointer) await want(pointer);
  if (!state.live) {
    if (pointer) log.warn('the published version did not load: serving the image\'s version');
    state = { live: await startVersion(0, 'image', process.cwd()), canary: null, percent: 0 };
  }
  const server = http.createServer(handler);
  // Stopping (SIGTERM): the presence record goes first, so that a waiting publish stops
  // counting this instance at once.
  common.listen(server, 'sma-light', async () => {
    if (nc) await nats.kvDelete(nc, INSTANCES_BUCKET, `${app}.${instance}`);
  });
  log.info(`serving version ${state.live.number}`, { app, instance });
  await presence();
  setInterval(presence, HEARTBEAT_MS).unref();
}

if (process.argv[2] === '--check') {
  if (!process.argv[3]) common.fatal('usage: server.js --check DIR');
  check(process.argv[3]);
} else {
  main().catch((err) => common.fatal('sma-light failed to start', err));
}
