'use strict';
// One sma-light version, in a worker thread of its own: its own module cache and globals,
// so versions never share state and a released version's memory goes with its thread.
//
// workerData: { dir, version, nodeModules }. It loads every page, API handler and the
// middleware at once and answers { type: 'loaded', routes } or { type: 'failed', error };
// then each { id, kind: 'page'|'api'|'middleware'|'health', name, params, request } with
// { id, ok: true, result } or { id, ok: false, error }.

const Module = require('module');
const path = require('path');
const { parentPort, workerData } = require('worker_threads');
const common = require('../common/http.js');
const bundle = require('./bundle.js');

const { dir, version } = workerData;
const log = common.createLogger({ version });
// A promise a handler left behind that fails is logged; it does not take the version down.
process.on('unhandledRejection', (err) => log.error('unhandled rejection', { error: (err && err.stack) || String(err) }));
// Handlers require their dependencies from the image's /app/node_modules, whatever folder
// the version was unpacked into.
if (workerData.nodeModules) Module.globalPaths.push(workerData.nodeModules);

function loadFunction(rel) {
  let mod;
  try {
    mod = require(path.join(dir, ...rel.split('/')));
  } catch (err) {
    // The error and where in the app it happened (a syntax error's stack starts there).
    const where = String((err && err.stack) || '').split('\n').find((l) => l.includes(dir));
    const what = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    throw new Error(`${rel} failed to load: ${what}${where ? ` (${where.trim().replace(/^at /, '')})` : ''}`);
  }
  const fn = typeof mod === 'function' ? mod : mod && mod.default;
  if (typeof fn !== 'function') {
    throw new Error(`${rel} must export a function (module.exports = async (params, context) => ...)`);
  }
  return fn;
}

function load() {
  const found = bundle.routes(dir);
  const pages = new Map();
  const api = new Map();
  for (const [url, rel] of found.pages) pages.set(url, loadFunction(rel));
  for (const [name, rel] of found.api) api.set(name, loadFunction(rel));
  const middleware = found.middleware ? loadFunction(found.middleware) : null;
  if (pages.size === 0 && api.size === 0 && found.statics === 0) {
    throw new Error('nothing to serve: no public/, pages/*.js or api/*.js');
  }
  return { pages, api, middleware, statics: found.statics };
}

function errorOf(err) {
  if (err instanceof Error) return { message: err.message, name: err.name, stack: err.stack };
  return { message: String(err), name: 'Error' };
}

let app;
try {
  app = load();
} catch (err) {
  parentPort.postMessage({ type: 'failed', error: errorOf(err).message });
  app = null;
}

if (app) {
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
