'use strict';
// kiln "faas" runtime: every functions/<name>.js in the app directory
// (the working directory, /app in an image) is served at /<name>.
//
//   module.exports = async (params, context) => result
//
// GET takes params from the query string, POST from the JSON body.
// The result is sent as JSON (200); a thrown error becomes a 500 JSON error.

const fs = require('fs');
const http = require('http');
const path = require('path');
const common = require('../common/http.js');

const NAME_RE = /^[A-Za-z0-9_-]+$/;
const log = common.createLogger({ runtime: 'faas' });

// Load every function at startup so a broken one stops the server at once.
// Only top-level .js files count; subfolders can hold shared helpers.
function loadFunctions(dir) {
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    common.fatal(`cannot read functions directory ${dir}: ${err.message}`);
  }
  const functions = new Map();
  for (const entry of entries) {
    if (entry.isDirectory() || path.extname(entry.name) !== '.js') continue;
    const name = path.basename(entry.name, '.js');
    if (!NAME_RE.test(name)) {
      log.warn(`skipping functions/${entry.name}: names may only use A-Z a-z 0-9 _ -`);
      continue;
    }
    const file = path.join(dir, entry.name);
    let mod;
    try {
      mod = require(file);
    } catch (err) {
      common.fatal(`failed to load function "${name}" from ${file}`, err);
    }
    const fn = typeof mod === 'function' ? mod : mod && mod.default;
    if (typeof fn !== 'function') {
      common.fatal(`functions/${entry.name} must export a function (module.exports = async (params, context) => ...)`);
    }
    functions.set(name, fn);
  }
  if (functions.size === 0) common.fatal(`no functions found in ${dir}`);
  return functions;
}

const functions = loadFunctions(path.join(process.cwd(), 'functions'));

// What /kiln/dev lists under `kiln dev` (KILN_DEV=1): every function with its URL.
function devListing() {
  return {
    runtime: 'faas',
    sections: [
      {
        title: 'Functions',
        items: [...functions.keys()].map((name) => ({
          name,
          url: `/${name}`,
          detail: `functions/${name}.js: GET with query params, or POST a JSON body`,
        })),
      },
      { title: 'Runtime', items: [{ name: 'healthz', url: '/healthz', detail: 'health check' }] },
    ],
  };
}

const server = http.createServer(common.createHandler(async (req, res, url, ctx) => {
  if (common.serveDev(req, res, url.pathname, devListing)) return;
  const name = url.pathname.slice(1);
  const fn = NAME_RE.test(name) ? functions.get(name) : undefined;

  if (!fn) {
    if (name === 'healthz') return common.sendJson(res, 200, { ok: true });
    return common.sendError(res, 404, `no function at ${url.pathname}`);
  }

  let params;
  if (req.method === 'GET') {
    params = common.queryParams(url.searchParams);
  } else if (req.method === 'POST') {
    params = await common.readJson(req);
  } else {
    res.setHeader('allow', 'GET, POST');
    return common.sendError(res, 405, `method ${req.method} not allowed`);
  }
  await common.invoke(res, ctx, `function ${name}`, fn, params);
}));

common.listen(server, 'faas');
log.info(`loaded ${functions.size} function(s)`, { functions: [...functions.keys()] });
