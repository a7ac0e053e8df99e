'use strict';
// sma-light bundles: what `kiln publish` packs and every instance unpacks.
//
// A bundle is gzip(JSON) of {"format": "kiln-light-bundle/1", "files": {"<path>": "<base64>"}}
// with sorted paths, named by the sha256 of its bytes. Paths are relative, '/'-separated and
// never climb out. The app's routes come from its files:
//   public/**           static files (index.html for a directory)
//   pages/<name>.js     dynamic pages at /<name> (pages/index.js at /, pages/a/index.js at /a)
//   api/<name>.js       API handlers at /api/<name>
//   middleware.js       runs before every request
// (.mjs and .cjs too: CommonJS and ES modules alike).
// Other files (lib/, data) go along so that handlers can require them.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { promisify } = require('util');
const zlib = require('zlib');

const gunzip = promisify(zlib.gunzip);

const FORMAT = 'kiln-light-bundle/1';
// Limits, the same as `kiln publish` packs under (builder/src/light_bundle.rs).
const MAX_BUNDLE_BYTES = 64 * 1024 * 1024;
const MAX_UNPACKED_BYTES = 128 * 1024 * 1024;
const MAX_FILES = 20000;
const MAX_PATH_BYTES = 1024;
const MAX_PATH_PARTS = 64;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const SKIP_DIRS = new Set(['node_modules', '.git']);
const MODULE_RE = /\.(js|mjs|cjs)$/;

function digestOf(bytes) {
  return 'sha256:' + crypto.createHash('sha256').update(bytes).digest('hex');
}

// A relative bundle path that stays inside, or an Error.
function checkPath(rel) {
  const parts = rel.split('/');
  if (rel === '' || rel.startsWith('/') || rel.includes('\\') || rel.includes('\0')
    || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new Error(`bundle path ${JSON.stringify(rel)} is not a plain relative path`);
  }
  if (Buffer.byteLength(rel) > MAX_PATH_BYTES || parts.length > MAX_PATH_PARTS) {
    throw new Error(`bundle path ${JSON.stringify(rel.slice(0, 80))}… is longer than ${MAX_PATH_BYTES} bytes or ${MAX_PATH_PARTS} parts`);
  }
  return rel;
}

// The files of a bundle's bytes, checked against `digest` and the limits: Map<path, Buffer>.
// Unzipped off the main thread, so serving goes on meanwhile.
async function decode(bytes, digest) {
  if (!DIGEST_RE.test(digest)) throw new Error(`bad bundle digest ${JSON.stringify(digest)}`);
  if (bytes.length > MAX_BUNDLE_BYTES) throw new Error(`bundle ${digest} is over ${MAX_BUNDLE_BYTES} bytes`);
  const actual = digestOf(bytes);
  if (actual !== digest) throw new Error(`bundle ${digest} does not match its bytes (${actual})`);
  let doc;
  try {
    doc = JSON.parse((await gunzip(bytes, { maxOutputLength: MAX_UNPACKED_BYTES })).toString('utf8'));
  } catch (err) {
    throw new Error(`bundle ${digest} is not a kiln bundle (or unpacks to over ${MAX_UNPACKED_BYTES} bytes): ${err.message}`);
  }
  if (!doc || doc.format !== FORMAT || !doc.files || typeof doc.files !== 'object') {
    throw new Error(`bundle ${digest} is not in format ${FORMAT}`);
  }
  const count = Object.keys(doc.files).length;
  if (count > MAX_FILES) throw new Error(`bundle ${digest} holds ${count} files, over ${MAX_FILES}`);
  const files = new Map();
  for (const [rel, b64] of Object.entries(doc.files)) {
    files.set(checkPath(rel), Buffer.from(String(b64), 'base64'));
  }
  return files;
}

// Writes a bundle's files under `dir` (made whole in a scratch folder, then renamed, so
// that a folder that exists is complete), with `node_modules` a link to `nodeModules` (the
// image's) so that handlers find their dependencies, by require and import alike. Does
// nothing when `dir` exists.
function extract(files, dir, nodeModules) {
  if (fs.existsSync(dir)) return;
  const scratch = `${dir}${PART}${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    for (const [rel, bytes] of files) {
      if (rel === 'node_modules' || rel.startsWith('node_modules/')) continue;
      const file = path.join(scratch, ...rel.split('/'));
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, bytes);
    }
    fs.mkdirSync(scratch, { recursive: true });
    if (nodeModules && fs.existsSync(nodeModules)) fs.symlinkSync(nodeModules, path.join(scratch, 'node_modules'));
    fs.renameSync(scratch, dir);
  } catch (err) {
    if (!fs.existsSync(dir)) throw err;
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

// Marks a folder that extract() was writing (left behind only by a crash).
const PART = '.part-';

// Every file under `dir`, as sorted '/'-separated relative paths (node_modules and .git
// left out).
function walk(dir, prefix = '') {
  const out = [];
  let entries;
  try {
    entries = fs.readdirSync(path.join(dir, prefix), { withFileTypes: true });
  } catch (err) {
    return out;
  }
  for (const entry of entries) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) {
      if (!SKIP_DIRS.has(entry.name)) out.push(...walk(dir, rel));
    } else if (entry.isFile()) {
      out.push(rel);
    }
  }
  return out.sort();
}

// The routes of an app folder: { pages: Map<urlPath, file>, api: Map<name, file>,
// middleware: file|null, statics: number }.
function routes(dir) {
  const pages = new Map();
  const api = new Map();
  let statics = 0;
  for (const rel of walk(dir)) {
    if (rel.startsWith('public/')) statics += 1;
    else if (rel.startsWith('pages/') && MODULE_RE.test(rel)) {
      let url = '/' + rel.slice('pages/'.length).replace(MODULE_RE, '');
      if (url === '/index') url = '/';
      else if (url.endsWith('/index')) url = url.slice(0, -'/index'.length);
      pages.set(url, rel);
    } else if (rel.startsWith('api/') && MODULE_RE.test(rel)) {
      api.set(rel.slice('api/'.length).replace(MODULE_RE, ''), rel);
    }
  }
  const middleware = ['middleware.js', 'middleware.mjs', 'middleware.cjs'].find((f) => fs.existsSync(path.join(dir, f))) || null;
  return { pages, api, middleware, statics };
}

module.exports = { FORMAT, DIGEST_RE, MAX_BUNDLE_BYTES, PART, digestOf, decode, extract, walk, routes };
