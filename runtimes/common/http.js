'use strict';
// Helpers shared by the kiln runtimes: request ids, JSON-line logging, the
// per-request context, JSON responses, body parsing, the listen/shutdown
// boilerplate and the `kiln dev` listing page. Node built-ins only.
//
// In an image this file lives at /kiln/runtime/common/http.js and each runtime
// requires it as '../common/http.js', which also works from the source tree.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { pipeline } = require('stream');

const MAX_BODY_BYTES = 1024 * 1024; // 1 MiB is plenty for JSON params

// An error that carries the HTTP status to answer with (400, 404, 413...).
class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
  }
}

// Write one JSON log line: info to stdout, warn/error to stderr.
// Extra fields never override time, level or msg.
function writeLog(level, msg, fields) {
  const entry = { time: new Date().toISOString(), level, msg };
  for (const [key, value] of Object.entries(fields)) if (!(key in entry)) entry[key] = value;
  (level === 'info' ? process.stdout : process.stderr).write(JSON.stringify(entry) + '\n');
}

// A logger whose lines all carry the given fields (e.g. the request id).
// log.info(msg, extra): extra is an object of fields, or any value (as "data").
function createLogger(base = {}) {
  const at = (level) => (msg, extra) => {
    const more = extra && typeof extra === 'object' && !Array.isArray(extra) ? extra
      : extra === undefined ? {} : { data: extra };
    writeLog(level, String(msg), { ...more, ...base });
  };
  return { info: at('info'), warn: at('warn'), error: at('error') };
}

// Use the caller's x-request-id when it looks sane, else make a new one.
function requestId(req) {
  const given = req.headers['x-request-id'];
  if (typeof given === 'string' && /^[\x21-\x7e]{1,200}$/.test(given)) return given;
  return crypto.randomUUID();
}

// The `context` handed to functions and service methods.
function createContext(req, id, path) {
  return {
    request: { method: req.method, path, headers: req.headers, id },
    log: createLogger({ requestId: id }),
    env: process.env,
  };
}

function sendJson(res, status, body) {
  // `undefined` (a function that returns nothing) is sent as null.
  const text = JSON.stringify(body === undefined ? null : body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

// The JSON shape of an error; never includes the stack.
function errorBody(err) {
  if (err instanceof Error) return { error: { message: err.message, name: err.name } };
  return { error: { message: String(err), name: 'Error' } };
}

function sendError(res, status, message) {
  sendJson(res, status, { error: { message, name: 'HttpError' } });
}

// Read the whole request body as a string, refusing bodies over the limit.
function readBody(req, limit = MAX_BODY_BYTES) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    const onData = (chunk) => {
      size += chunk.length;
      if (size > limit) {
        // Stop collecting and discard the rest, so the 413 answer can be sent.
        req.removeListener('data', onData);
        req.resume();
        reject(new HttpError(413, `request body larger than ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// Parse a JSON request body; an empty body means no params ({}).
async function readJson(req) {
  const text = await readBody(req);
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `invalid JSON body: ${err.message}`);
  }
}

// Query string to params; a key given more than once becomes an array.
function queryParams(searchParams) {
  const params = {};
  for (const key of new Set(searchParams.keys())) {
    const all = searchParams.getAll(key);
    params[key] = all.length === 1 ? all[0] : all;
  }
  return params;
}

// Run a user function and answer with its result (200) or its error (500).
async function invoke(res, ctx, label, fn, params) {
  try {
    sendJson(res, 200, await fn(params, ctx));
  } catch (err) {
    ctx.log.error(`${label} threw`, {
      error: err instanceof Error ? err.stack || err.message : String(err),
    });
    if (!res.headersSent) sendJson(res, 500, errorBody(err));
  }
}

// Wrap a request handler: set the request id, log the request, turn
// HttpErrors into JSON answers and anything unexpected into a 500.
function createHandler(handle) {
  return async (req, res) => {
    const started = process.hrtime.bigint();
    const id = requestId(req);
    res.setHeader('x-request-id', id);
    const url = new URL(req.url, 'http://localhost');
    const ctx = createContext(req, id, url.pathname);
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      ctx.log.info('request', { method: req.method, path: url.pathname, status: res.statusCode, ms });
    });
    try {
      await handle(req, res, url, ctx);
    } catch (err) {
      if (res.headersSent) return res.destroy();
      if (err instanceof HttpError) return sendError(res, err.status, err.message);
      ctx.log.error('internal error', { error: err.stack || String(err) });
      sendError(res, 500, 'internal error');
    }
  };
}

const CONTENT_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.wasm': 'application/wasm',
};

// The content type a static file is served with.
function contentType(file) {
  return CONTENT_TYPES[path.extname(file).toLowerCase()] || 'application/octet-stream';
}

// Map a URL path to a file inside `root` (a real path: public/ after symlinks), or null
// when there is none. The resolved path, and its real path, must stay inside `root`.
function resolveStatic(root, pathname) {
  let rel;
  try {
    rel = decodeURIComponent(pathname);
  } catch (err) {
    throw new HttpError(400, 'malformed URL');
  }
  if (rel.includes('\0')) throw new HttpError(400, 'malformed URL');
  const inside = (p, dir) => p === dir || p.startsWith(dir + path.sep);
  let file = path.resolve(root, '.' + rel);
  if (!inside(file, root)) return null;
  try {
    if (fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    const real = fs.realpathSync(file);
    if (!inside(real, root) || !fs.statSync(real).isFile()) return null;
    return real;
  } catch (err) {
    return null; // missing file
  }
}

// Answer GET or HEAD of `pathname` with the static file it names under `root`.
function serveStatic(req, res, root, pathname) {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    return sendError(res, 405, `method ${req.method} not allowed`);
  }
  const file = resolveStatic(root, pathname);
  if (!file) return sendError(res, 404, `not found: ${pathname}`);
  res.writeHead(200, {
    'content-type': contentType(file),
    'content-length': fs.statSync(file).size,
    'x-content-type-options': 'nosniff',
  });
  if (req.method === 'HEAD') return res.end();
  // pipeline closes the file when the client goes away mid-download.
  pipeline(fs.createReadStream(file), res, () => {});
}

// Listen on $PORT (default 8080) on all interfaces; stop cleanly on signals, after
// `beforeStop()` (a promise, given at most a second) when one is given.
function listen(server, name, beforeStop) {
  const port = Number(process.env.PORT || 8080);
  const log = createLogger({ runtime: name });
  server.listen(port, () => log.info(`listening on port ${port}`, { cwd: process.cwd() }));
  const stop = async (signal) => {
    log.info(`${signal} received, shutting down`);
    if (beforeStop) {
      await Promise.race([beforeStop().catch(() => {}), new Promise((r) => setTimeout(r, 1000))]);
    }
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

// Print a startup problem clearly and stop with exit code 1.
function fatal(message, err) {
  process.stderr.write(`kiln: ${message}\n`);
  if (err) process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
}

// --- kiln dev: the page listing what an app serves ---------------------------
//
// Only under `kiln dev`, which sets KILN_DEV=1; production images never set it, so
// they never serve /kiln/dev. A listing is
//   { runtime, sections: [{ title, items: [{ name, url, detail }] }] }
// where url is a path on this server ("/hello") or an http(s) URL, or empty.

const DEV_PATHS = new Set(['/kiln/dev', '/kiln/dev.json']);

// True when the runtime runs under `kiln dev`.
function devMode() {
  return process.env.KILN_DEV === '1';
}

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function escapeHtml(value) {
  return String(value === undefined || value === null ? '' : value).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

// The listing with every field a string (or absent), whatever the runtime passed.
function devListing(page) {
  const text = (v) => (v === undefined || v === null ? '' : String(v));
  return {
    runtime: text(page && page.runtime),
    sections: ((page && page.sections) || []).map((section) => ({
      title: text(section.title),
      items: (section.items || []).map((item) => ({
        name: text(item.name),
        url: text(item.url),
        detail: text(item.detail),
      })),
    })),
  };
}

// Only same-server paths and http(s) URLs become links ("//host" and "javascript:" do not).
function linkable(url) {
  return /^(\/(?![\/\\])|https?:\/\/)/i.test(url);
}

function devHtml(listing) {
  const item = ({ name, url, detail }) => {
    const label = `<code>${escapeHtml(name || url)}</code>`;
    const link = url && linkable(url) ? `<a href="${escapeHtml(url)}">${label}</a>` : label;
    return `<li>${link}${detail ? ` <span>${escapeHtml(detail)}</span>` : ''}</li>`;
  };
  const section = ({ title, items }) =>
    `<section><h2>${escapeHtml(title)}</h2>` +
    (items.length ? `<ul>${items.map(item).join('')}</ul>` : '<p>none</p>') +
    '</section>';
  const title = `kiln dev: ${listing.runtime} app`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em}
h2{font-size:1.1em;margin-top:1.5em}ul{padding-left:1.2em}span{color:#666}code{font-size:.95em}</style>
</head><body><h1>${escapeHtml(title)}</h1>
${listing.sections.map(section).join('\n')}
<p><small>Served by <code>kiln dev</code> only (KILN_DEV=1), never by an image. As JSON: <a href="/kiln/dev.json">/kiln/dev.json</a></small></p>
</body></html>
`;
}

// Answer with the listing as an HTML page: devPage(res, page). The form
// devPage(req, res, page) also works and answers /kiln/dev.json with the JSON variant.
function devPage(...args) {
  if (args.length >= 3) {
    const [req, res, page] = args;
    const { pathname } = new URL(req.url, 'http://localhost');
    return pathname.endsWith('.json') ? devJson(res, page) : devPage(res, page);
  }
  const [res, page] = args;
  const html = devHtml(devListing(page));
  res.writeHead(200, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(html),
    'cache-control': 'no-store',
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'",
    'x-content-type-options': 'nosniff',
  });
  res.end(html);
}

// Answer with the listing as JSON ({ runtime, sections }).
function devJson(res, page) {
  res.setHeader('cache-control', 'no-store');
  sendJson(res, 200, devListing(page));
}

// Serve GET /kiln/dev (HTML) and /kiln/dev.json under kiln dev; returns whether it
// answered. `page` is the listing, or a function of the request returning it.
function serveDev(req, res, pathname, page) {
  if (!devMode() || !DEV_PATHS.has(pathname)) return false;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    sendError(res, 405, `method ${req.method} not allowed`);
    return true;
  }
  const listing = typeof page === 'function' ? page(req) : page;
  if (pathname === '/kiln/dev.json') devJson(res, listing);
  else devPage(res, listing);
  return true;
}

module.exports = {
  contentType,
  resolveStatic,
  serveStatic,
  HttpError,
  createLogger,
  createHandler,
  createContext,
  requestId,
  sendJson,
  sendError,
  errorBody,
  readBody,
  readJson,
  queryParams,
  invoke,
  listen,
  fatal,
  devMode,
  escapeHtml,
  devPage,
  devJson,
  serveDev,
};
