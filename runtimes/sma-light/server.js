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
const common = require('../common/http.js');
const bundle = require('./bundle.js');
const { BundleCache } = require('./cache.js');
const { Version } = require('./version.js');
// The NATS client is loaded only when an instance connects (--check and a lone instance
// need none).
const nats = process.env.KILN_NATS ? require('./nats.js') : null;

const POINTERS_BUCKET = 'kiln-light';
const INSTANCES_BUCKET = 'kiln-light-instances';
const BUNDLES_BUCKET = 'kiln-bundles';
const HEARTBEAT_MS = Number(process.env.KILN_LIGHT_HEARTBEAT_MS || 3000);
// A fetch that failed is tried again after 1 s, doubling up to this.
const RETRY_MAX_MS = 5 * 60 * 1000;
const KEY_COOKIE = 'kiln-key';
const KEY_RE = /^[A-Za-z0-9_.=-]{1,128}$/;

const log = common.createLogger({ runtime: 'sma-light' });

// On Knative the Service is named after the app, and K_SERVICE carries it.
const app = process.env.KILN_APP || process.env.K_SERVICE || path.basename(process.cwd());
const instance = (process.env.KILN_INSTANCE || `${os.hostname()}-${process.pid}`).replace(/[^A-Za-z0-9_=-]/g, '-');
const dev = process.env.KILN_DEV === '1';

// What this instance serves, swapped as a whole.
let state = { live: null, canary: null, percent: 0 };
let applied = 0; // the KV revision of the pointer `state` comes from (0: none)
let failed = null; // { version, digest, error, revision, retry } of the last version that did not load
let switched = null; // { version, fetched, ms } of the last switch
const draining = new Set(); // retired versions with requests still in flight
let nc = null;
let stopping = false;

const cache = new BundleCache(
  process.env.KILN_LIGHT_CACHE || path.join(os.tmpdir(), 'kiln-light', instance),
  Math.max(2, Number(process.env.KILN_LIGHT_KEEP || 20)),
  path.join(process.cwd(), 'node_modules'),
  async (digest) => {
    // A fetch that did not reach the store (NATS away, a timeout) is tried again later,
    // backing off; a bundle that is not there or does not load is not.
    try {
      if (!nc) throw Object.assign(new Error('NATS is not connected'), { code: 'DISCONNECTED' });
      return await nats.objectGet(nc, BUNDLES_BUCKET, `sha256-${digest.slice('sha256:'.length)}`, { maxBytes: bundle.MAX_BUNDLE_BYTES });
    } catch (err) {
      // Only a fetch that did not reach the store is worth another try.
      err.retry = ['DISCONNECTED', 'TIMEOUT', 'NO_RESPONDERS'].includes(err.code);
      throw err;
    }
  },
);

// --- switching ---

function newVersion(number, digest, dir) {
  const heard = (fields) => {
    if (fields.kind === 'light.restarted') {
      log.error(`version ${number}'s worker stopped (exit ${fields.code}); starting it again`, { crashes: fields.crashes });
    } else if (fields.kind === 'light.restart-failed') {
      log.error(`version ${number} did not start again`, { error: fields.error });
    }
    event(fields);
  };
  return new Version(number, digest, dir, heard).start();
}

async function loadVersion(target) {
  const started = Date.now();
  const { dir, fetched } = await cache.open(target.digest);
  const version = await newVersion(target.version, target.digest, dir);
  return { version, fetched, ms: Date.now() - started };
}

let offered = null; // the newest pointer entry waiting to be applied
let applying = Promise.resolve();

// Takes a pointer entry ({ pointer, revision }, as read from the KV) to apply; one newer
// than what is served and than what waits replaces what waits, so switches never go back.
function offer(entry) {
  if (entry.revision <= applied || (offered && entry.revision <= offered.revision)) return applying;
  offered = entry;
  applying = applying.then(async () => {
    const next = offered;
    offered = null;
    if (next && next.revision > applied && !held(next.revision)) await apply(next);
  }).catch((err) => log.error('switch failed', { error: err.stack || String(err) }));
  return applying;
}

// True when the pointer at `revision` failed to load and is not to be tried (again) yet.
function held(revision) {
  return Boolean(failed && failed.revision === revision && (!failed.retry || Date.now() < failed.retryAt));
}

function sameVersion(have, want) {
  return have && want && have.digest === want.digest && have.number === want.version;
}

// Loads what the pointer names (reusing what is loaded already), then swaps it in whole.
async function apply({ pointer, revision }) {
  const started = Date.now();
  if (!pointer || !pointer.live || !bundle.DIGEST_RE.test(pointer.live.digest)) {
    log.warn('ignoring a pointer without a live version', { pointer });
    applied = revision;
    return;
  }
  const loaded = [];
  const load = async (target) => {
    for (const have of [state.live, state.canary]) if (sameVersion(have, target)) return { version: have, fetched: false };
    const got = await loadVersion(target);
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
    const tries = failed && failed.revision === revision ? failed.tries + 1 : 1;
    const retryAt = Date.now() + Math.min(RETRY_MAX_MS, 1000 * 2 ** (tries - 1));
    failed = { version: target.version, digest: target.digest, error: err.message, revision, retry: Boolean(err.retry), tries, retryAt };
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
  applied = revision;
  failed = null;
  switched = { version: state.live.number, fetched: live.fetched || Boolean(canary && canary.fetched), ms: Date.now() - started };
  for (const old of [before.live, before.canary]) {
    if (old && old !== state.live && old !== state.canary) {
      old.retire();
      if (!old.released) draining.add(old);
    }
  }
  log.info(`serving version ${state.live.number}${state.canary ? `, canary ${state.canary.number} at ${state.percent}%` : ''}`, switched);
  event({ kind: 'light.live', ...switched, digest: state.live.digest, canary: state.canary && state.canary.summary(), percent: state.percent });
  await presence();
  for (const v of draining) if (v.released) draining.delete(v);
  cache.prune(new Set([state.live, state.canary, ...draining].filter(Boolean).map((v) => v.digest)));
}

// --- NATS: pointer, presence, events ---

function presenceRecord() {
  return {
    instance,
    app,
    pid: process.pid,
    live: state.live && state.live.summary(),
    canary: state.canary && { ...state.canary.summary(), percent: state.percent },
    revision: applied,
    failed: failed && { version: failed.version, digest: failed.digest, error: failed.error, retry: failed.retry },
    switched,
    at: new Date().toISOString(),
  };
}

async function presence() {
  if (!nc || stopping) return;
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

// The app's pointer as the KV holds it ({ pointer, revision }), or null when there is none
// (or no bucket yet: any kiln command that connects makes it).
async function readPointer() {
  let entry;
  try {
    entry = await nats.kvGet(nc, POINTERS_BUCKET, app);
  } catch (err) {
    if (/stream not found/i.test(err.message)) return null;
    throw err;
  }
  if (!entry || entry.operation !== 'PUT') return null;
  try {
    return { pointer: JSON.parse(entry.value.toString('utf8')), revision: entry.revision };
  } catch (err) {
    log.warn('ignoring a pointer that is not JSON', { error: err.message });
    return null;
  }
}

// Reads the pointer and applies it when it is newer than what is served; a version that
// did not load is tried again only when its fetch failed. After a hint (a change seen on
// the key) the stored pointer may lag the hint by a moment: it is read again a few times
// (10 ms, doubling, about 300 ms in all) before the hint counts as refused.
async function reconcile(hint = false) {
  if (!nc || stopping) return;
  for (let tries = 0, pause = 10; ; tries += 1, pause *= 2) {
    try {
      const entry = await readPointer();
      if (entry && entry.revision > applied) {
        if (!held(entry.revision)) await offer(entry);
        return;
      }
    } catch (err) {
      log.warn(`cannot read the pointer of ${app}: ${err.message}`);
    }
    if (!hint || tries >= 5) return;
    await new Promise((r) => setTimeout(r, pause));
  }
}

// The NATS settings, from the same variables as kiln's own flags: KILN_NATS,
// KILN_NATS_TOKEN or KILN_NATS_USER + KILN_NATS_PASSWORD or KILN_NATS_NKEY (a seed file),
// KILN_NATS_CA (+ KILN_NATS_CERT, KILN_NATS_KEY) for TLS, KILN_NATS_TIMEOUT.
function natsOptions() {
  const env = process.env;
  const file = (name) => (env[name] ? fs.readFileSync(env[name]) : undefined);
  const ca = file('KILN_NATS_CA');
  return {
    servers: env.KILN_NATS,
    name: `sma-light ${app} ${instance}`,
    token: env.KILN_NATS_TOKEN,
    user: env.KILN_NATS_USER,
    pass: env.KILN_NATS_PASSWORD,
    nkeySeed: env.KILN_NATS_NKEY ? file('KILN_NATS_NKEY').toString('utf8').trim() : undefined,
    tls: ca ? { ca, cert: file('KILN_NATS_CERT'), key: file('KILN_NATS_KEY') } : undefined,
    timeoutMs: Number(env.KILN_NATS_TIMEOUT || 10) * 1000,
  };
}

async function connectNats() {
  nc = await nats.connect(natsOptions());
  // A change published on the key is only a hint: the KV may have refused it (a
  // compare-and-set that lost), so the pointer is read back before it is applied.
  nats.kvWatch(nc, POINTERS_BUCKET, app, () => { reconcile(true); });
  nc.on('error', (err) => log.warn(`NATS: ${err.message}`));
  nc.on('disconnect', () => log.warn('NATS connection lost; reconnecting'));
  nc.on('reconnect', () => {
    log.info('NATS reconnected; reading the pointer again');
    // Changes made while disconnected were missed.
    reconcile();
    presence();
  });
  // A connection lost right after connecting must not hold the start up.
  const timeoutMs = natsOptions().timeoutMs;
  await Promise.race([
    nc.flush(),
    new Promise((_, reject) => setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs).unref()),
  ]);
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
      return common.sendJson(res, [404, 503, 504].includes(err.status) ? err.status : 500, common.errorBody(err));
    }
  }
  if (version.routes.pages.has(pathname)) {
    const given = await params(req, res, url);
    try {
      return sendAnswer(res, await version.call('page', pathname, given, request));
    } catch (err) {
      ctx.log.error(`page ${pathname} threw`, { error: err.stack || err.message, version: version.number });
      return sendAnswer(res, { status: [503, 504].includes(err.status) ? err.status : 500, body: 'internal error' });
    }
  }
  if (!version.publicReal) return common.sendError(res, 404, `not found: ${pathname}`);
  return common.serveStatic(req, res, version.publicReal, pathname);
}

// What /kiln/light shows on the app's port: the presence record without a load error's
// text (which may hold configuration; the record in NATS keeps it).
function status() {
  const record = presenceRecord();
  if (record.failed) record.failed = { version: record.failed.version, digest: record.failed.digest };
  return { ...record, routes: routesOf(state.live) };
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

// Reads the pointer at start, trying again while NATS answers with errors (a leader
// election) for up to the NATS timeout.
async function firstPointer() {
  const deadline = Date.now() + natsOptions().timeoutMs;
  for (;;) {
    try {
      return await readPointer();
    } catch (err) {
      if (Date.now() > deadline) {
        log.warn(`cannot read the pointer of ${app}: ${err.message}; serving the image's version, and trying again`);
        return null;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function main() {
  let entry = null;
  if (process.env.KILN_NATS) {
    try {
      await connectNats();
      entry = await firstPointer();
    } catch (err) {
      log.error(`NATS: ${err.message}; serving the image's version, and trying again`);
      nc = null;
      setTimeout(function retry() {
        connectNats().then(reconcile).then(presence)
          .catch((e) => { nc = null; log.warn(`NATS: ${e.message}`); setTimeout(retry, 2000); });
      }, 2000);
    }
  }
  if (entry) await offer(entry);
  if (!state.live) {
    if (entry) log.warn('the published version did not load: serving the image\'s version');
    const image = await newVersion(0, 'image', process.cwd());
    // A pointer may have been applied while the image's version loaded.
    if (state.live) image.release();
    else state = { live: image, canary: null, percent: 0 };
  }
  const server = http.createServer(handler);
  // Stopping (SIGTERM): the presence record goes first, so that a waiting publish stops
  // counting this instance at once, and is not written again.
  common.listen(server, 'sma-light', async () => {
    stopping = true;
    if (nc) await nats.kvDelete(nc, INSTANCES_BUCKET, `${app}.${instance}`);
  });
  log.info(`serving version ${state.live.number}`, { app, instance });
  await presence();
  // The heartbeat refreshes the presence record and catches a pointer change missed.
  setInterval(() => { presence(); reconcile(); }, HEARTBEAT_MS).unref();
}

if (process.argv[2] === '--check') {
  if (!process.argv[3]) common.fatal('usage: server.js --check DIR');
  check(process.argv[3]);
} else {
  main().catch((err) => common.fatal('sma-light failed to start', err));
}
