'use strict';
// One loaded sma-light version: its folder, its worker thread (worker.js) and the calls in
// flight to it.
//
// The worker loads every module at start and answers one health call before the version
// counts as started. A worker that dies later (a crash outside any handler, out of memory)
// is started again after a pause that doubles with each crash in a row (100 ms up to 30 s);
// calls made meanwhile wait for it. A retired version takes no new requests and ends its
// worker once the last one in flight is done.

const fs = require('fs');
const path = require('path');
const { Worker } = require('worker_threads');
const common = require('../common/http.js');

const LOAD_TIMEOUT_MS = 15000;
const CALL_TIMEOUT_MS = Number(process.env.KILN_LIGHT_TIMEOUT_MS || 60000);
const FIRST_PAUSE_MS = 100;
const MAX_PAUSE_MS = 30000;
// A worker that lived this long clears its crash count.
const STABLE_MS = 60000;
// The id of the health call a new worker answers before it is taken on (calls count from 1).
const HEALTH_ID = 0;

// Resolves after `ms`; `unref` lets the process end meanwhile (a timer that only bounds a
// wait).
function sleep(ms, unref = false) {
  return new Promise((r) => {
    const timer = setTimeout(r, ms);
    if (unref) timer.unref();
  });
}

// The environment handlers see: the instance's own, without its NATS credentials.
function handlerEnv() {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('KILN_NATS')) env[key] = value;
  }
  return env;
}

class Version {
  // `onEvent(fields)` hears of restarts.
  constructor(number, digest, dir, onEvent = () => {}) {
    this.number = number;
    this.digest = digest;
    this.dir = dir;
    this.onEvent = onEvent;
    this.publicReal = null;
    this.routes = null;
    this.inflight = 0;
    this.retired = false;
    this.released = false;
    this.pending = new Map();
    this.nextId = 0;
    this.worker = null;
    this.ready = null; // a promise while the worker (re)starts
    this.crashes = 0;
  }

  // Starts the worker; resolves with this version once every module loaded and a health
  // call came back; rejects (and releases) when it does not load.
  async start() {
    try {
      await this.spawn();
    } catch (err) {
      this.release();
      throw err;
    }
    const publicDir = path.join(this.dir, 'public');
    this.publicReal = fs.existsSync(publicDir) ? fs.realpathSync(publicDir) : null;
    return this;
  }

  // Starts a worker and takes it on once it loaded every module and answered a health
  // call; a worker that fails, or dies before that, is ended and never taken on.
  async spawn() {
    const worker = new Worker(path.join(__dirname, 'worker.js'), {
      workerData: { dir: this.dir, version: this.number },
      env: handlerEnv(),
    });
    const started = Date.now();
    let alive = true;
    let routes;
    try {
      routes = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`did not load within ${LOAD_TIMEOUT_MS} ms`)), LOAD_TIMEOUT_MS);
        let loaded = null;
        worker.on('message', (msg) => {
          if (msg.type === 'loaded') {
            loaded = msg.routes;
            worker.postMessage({ id: HEALTH_ID, kind: 'health' });
          } else if (msg.type === 'failed') {
            clearTimeout(timer);
            reject(new Error(msg.error));
          } else if (msg.id === HEALTH_ID) {
            clearTimeout(timer);
            if (msg.ok && loaded) resolve(loaded);
            else reject(new Error(`the health call failed: ${msg.error ? msg.error.message : 'no routes'}`));
          } else {
            this.answer(msg);
          }
        });
        worker.on('error', (err) => { clearTimeout(timer); reject(err); });
        worker.on('exit', (code) => {
          alive = false;
          clearTimeout(timer);
          reject(new Error(`worker exited with code ${code}`));
          if (this.worker === worker) this.exited(code, started);
        });
      });
    } catch (err) {
      worker.removeAllListeners('exit');
      worker.terminate().catch(() => {});
      throw err;
    }
    if (!alive || this.released) {
      worker.removeAllListeners('exit');
      worker.terminate().catch(() => {});
      if (this.released) return;
      throw new Error('worker exited as it started');
    }
    this.routes = { pages: new Set(routes.pages), api: new Set(routes.api), middleware: routes.middleware, statics: routes.statics };
    this.worker = worker;
  }

  // The worker ended by itself: calls in flight fail; a version still in use gets a new
  // worker, and calls meanwhile wait for it (a retired one is released instead).
  exited(code, started) {
    this.worker = null;
    this.fail(new Error(`version ${this.number} stopped (worker exit ${code})`));
    if (this.released) return;
    if (this.retired) return this.release();
    this.crashes = Date.now() - started > STABLE_MS ? 1 : this.crashes + 1;
    this.onEvent({ kind: 'light.restarted', version: this.number, digest: this.digest, code, crashes: this.crashes });
    if (!this.ready) this.ready = this.restart().finally(() => { this.ready = null; });
  }

  // Starts the worker again after a pause that grows with the crashes in a row; stops when
  // the version is retired or released.
  async restart() {
    while (!this.released && !this.retired) {
      await sleep(Math.min(MAX_PAUSE_MS, FIRST_PAUSE_MS * 2 ** (this.crashes - 1)));
      if (this.released || this.retired) return;
      try {
        await this.spawn();
        return;
      } catch (err) {
        this.onEvent({ kind: 'light.restart-failed', version: this.number, digest: this.digest, error: err.message });
        this.crashes += 1;
      }
    }
  }

  // Calls into the worker, waiting while it restarts. A call not answered within
  // `timeoutMs` (the wait included) fails with 504, so nothing holds a version for ever.
  async call(kind, name, params, request, timeoutMs = CALL_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    if (!this.worker && this.ready && !this.released) await Promise.race([this.ready, sleep(timeoutMs, true)]);
    if (!this.worker) throw new common.HttpError(503, `version ${this.number} is not running`);
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new common.HttpError(504, `${kind} ${name || ''} did not answer within ${timeoutMs} ms`));
      }, Math.max(0, deadline - Date.now()));
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

  // No new requests come; the worker ends when the last one in flight is done (a restart
  // under way stops).
  retire() {
    this.retired = true;
    if (this.inflight === 0) this.release();
  }

  release() {
    if (this.released) return;
    this.released = true;
    const worker = this.worker;
    this.worker = null;
    if (worker) {
      worker.removeAllListeners('exit');
      worker.terminate().catch(() => {});
    }
    this.fail(new Error(`version ${this.number} was released`));
  }

  summary() {
    return { version: this.number, digest: this.digest };
  }
}

module.exports = { Version };
