'use strict';
// One sma-light version, in a worker thread of its own: its own module cache and globals,
// so versions never share state and a released version's memory goes with its thread.
//
// workerData: { dir, version }. It loads every page, API handler and the
// middleware at once and answers { type: 'loaded', routes } or { type: 'failed', error };
// then each { id, kind: 'page'|'api'|'middleware'|'health', name, params, request } with
// { id, ok: true, result } or { id, ok: false, error }.

const path = require('path');
const { pathToFileURL } = require('url');
const { parentPort, workerData } = require('worker_threads');
const common = require('../common/http.js');
const bundle = require('./bundle.js');

const { dir, version } = workerData;
const log = common.createLogger({ version });
// A promise a handler left behind that fails is logged; it does not take the version down.
process.on('unhandledRejection', (err) => log.error('unhandled rejection', { error: (err && err.stack) || String(err) }));
// Loads a page, handler or middleware, CommonJS or ES module alike (import() takes both):
// its function is module.exports, the default export, or a transpiled exports.default.
async function loadFunction(rel) {
  let mod;
  try {
    mod = await import(pathToFileURL(path.join(dir, ...rel.split('/'))).href);
  } catch (err) {
    // The error and where in the app it happened (a syntax error's stack starts there).
    const where = String((err && err.stack) || '').split('\n').find((l) => l.includes(dir));
    const what = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    throw new Error(`${rel} failed to load: ${what}${where ? ` (${where.trim().replace(/^at /, '')})` : ''}`);
  }
  let fn = mod && mod.default;
  if (fn && typeof fn === 'object' && typeof fn.default === 'function') fn = fn.default;
  if (typeof fn !== 'function') {
    throw new Error(`${rel} must export a function (module.exports = async (params, context) => ...)`);
  }
  return fn;
}

async function load() {
  const found = bundle.routes(dir);
  const pages = new Map();
  const api = new Map();
  for (const [url, rel] of found.pages) pages.set(url, await loadFunction(rel));
  for (const [name, rel] of found.api) api.set(name, await loadFunction(rel));
  const middleware = found.middleware ? await loadFunction(found.middleware) : null;
  if (pages.size === 0 && api.size === 0 && found.statics === 0) {
    throw new Error('nothing to serve: no public/, pages/*.js or api/*.js');
  }
  return { pages, api, middleware, statics: found.statics };
}

function errorOf(err) {
  if (err instanceof Error) return { message: err.message, name: err.name, stack: err.stack };
  return { message: String(err), name: 'Error' };
}

function serve(app) {
  parentPort.on('message', async (msg) => {
    const { id, kind, name, params, request } = msg;
    try {
      let result;
      if (kind === 'health') {
        result = { ok: true, version };
      } else {
        const context = {
          request,
          log: common.createLogger({ requestId: request.id, version }),
          env: process.env,
        };
        const fn = kind === 'middleware' ? app.middleware : (kind === 'page' ? app.pages : app.api).get(name);
        if (!fn) throw new common.HttpError(404, `no ${kind} ${name}`);
        result = kind === 'middleware' ? await fn(context) : await fn(params, context);
      }
      parentPort.postMessage({ id, ok: true, result });
    } catch (err) {
      parentPort.postMessage({ id, ok: false, error: { ...errorOf(err), status: err && err.status } });
    }
  });
  parentPort.postMessage({
    type: 'loaded',
    routes: {
      pages: [...app.pages.keys()],
      api: [...app.api.keys()],
      middleware: Boolean(app.middleware),
      statics: app.statics,
    },
  });
}

load().then(serve, (err) => parentPort.postMessage({ type: 'failed', error: errorOf(err).message }));
