'use strict';
// kiln "app" runtime: starts a plain Node server app in the working directory
// (/app in an image) the way `npm start` would, without npm or a shell in the
// image. The app listens on $PORT.
//
// The command, first match wins:
//   1. $KILN_START (set by kiln from --start, the project config, or the
//      production script it chose at build time, e.g. "start:prod")
//   2. scripts.start
//   3. "main", then index.js, server.js, app.js (as `node FILE`)
//
// A command is `[VAR=value ...] PROGRAM [args]`:
//   - `node FILE [args]` runs FILE in this process (it is PID 1);
//   - `node --flag ... FILE` and any other program run as a child process,
//     with node_modules/.bin first on PATH, signals (SIGTERM, SIGINT, SIGHUP)
//     forwarded and its exit status passed on. A program from node_modules/.bin
//     whose file is a Node script is run with this node (no /usr/bin/env needed);
//   - shell syntax (&&, |, $VAR, ...) runs under /bin/sh when the image has one.
// `egg-scripts start --daemon` would detach and leave the container with no
// process: --daemon is dropped, with a warning.

const fs = require('fs');
const os = require('os');
const path = require('path');
const Module = require('module');
const { spawn } = require('child_process');

const appDir = process.cwd();
// node_modules of the app and of every directory above it (a monorepo's root), nearest
// first, as `npm run` puts their .bin on PATH.
const moduleDirs = [];
for (let dir = appDir; ; dir = path.dirname(dir)) {
  moduleDirs.push(path.join(dir, 'node_modules'));
  if (dir === path.dirname(dir)) break;
}
const binDirs = moduleDirs.map((dir) => path.join(dir, '.bin'));

function fail(message) {
  process.stderr.write(`kiln: ${message}\n`);
  process.exit(1);
}

function warn(message) {
  process.stderr.write(`kiln: warning: ${message}\n`);
}

function readPackageJson() {
  const file = path.join(appDir, 'package.json');
  if (!fs.existsSync(file)) return {};
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    fail(`cannot parse ${file}: ${err.message}`);
  }
}

// Split a command line into words; handles simple '...' and "..." quoting.
// Returns null when it uses shell features (&&, |, ;, $VAR, redirects...).
function splitWords(command) {
  if (/[;&|<>`$()*?]/.test(command.replace(/'[^']*'|"[^"]*"/g, ''))) return null;
  const words = [];
  const re = /'([^']*)'|"([^"]*)"|(\S+)/g;
  let m;
  while ((m = re.exec(command))) words.push(m[1] ?? m[2] ?? m[3]);
  return words;
}

function exists(rel) {
  try {
    require.resolve(path.resolve(appDir, rel));
    return true;
  } catch (err) {
    return false;
  }
}

// The command to run and where it came from.
function chooseCommand(pkg) {
  if (process.env.KILN_START) return { command: process.env.KILN_START, from: '$KILN_START' };
  const start = pkg.scripts && pkg.scripts.start;
  if (typeof start === 'string' && start.trim()) return { command: start, from: 'scripts.start' };
  if (typeof pkg.main === 'string' && pkg.main) {
    if (exists(pkg.main)) return { command: `node ${pkg.main}`, from: '"main"' };
    warn(`"main" names ${pkg.main}, which does not exist; trying the usual file names`);
  }
  for (const file of ['index.js', 'server.js', 'app.js']) {
    if (fs.existsSync(path.join(appDir, file))) return { command: `node ${file}`, from: file };
  }
  return null;
}

// A file that starts with a `#!` line naming node.
function isNodeScript(file) {
  try {
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(128);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    fs.closeSync(fd);
    const first = buf.subarray(0, n).toString('utf8').split('\n')[0];
    return first.startsWith('#!') && /\bnode\b/.test(first);
  } catch (err) {
    return false;
  }
}

// The executable for a program name: node_modules/.bin, then PATH.
function findProgram(name) {
  if (name.includes('/')) {
    const file = path.resolve(appDir, name);
    return fs.existsSync(file) ? file : null;
  }
  for (const dir of [...binDirs, ...(process.env.PATH || '').split(':')]) {
    const file = path.join(dir, name);
    if (dir && fs.existsSync(file)) return file;
  }
  return null;
}

// The file a top-level package of the node_modules above declares as its bin `name`.
function packageBin(name) {
  for (const modules of moduleDirs) {
    const found = packageBinIn(modules, name);
    if (found) return found;
  }
  return null;
}

function packageBinIn(modules, name) {
  const dirs = [];
  let entries = [];
  try {
    entries = fs.readdirSync(modules);
  } catch (err) {
    return null;
  }
  for (const entry of entries) {
    if (entry.startsWith('.')) continue;
    if (entry.startsWith('@')) {
      try {
        for (const sub of fs.readdirSync(path.join(modules, entry))) dirs.push(path.join(modules, entry, sub));
      } catch (err) {
        // not a scope directory
      }
    } else {
      dirs.push(path.join(modules, entry));
    }
  }
  for (const dir of dirs) {
    let pkg;
    try {
      pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    } catch (err) {
      continue;
    }
    const own = (pkg.name || '').split('/').pop();
    const rel = typeof pkg.bin === 'string' ? (own === name ? pkg.bin : null) : pkg.bin && pkg.bin[name];
    if (rel) {
      const file = path.join(dir, rel);
      if (fs.existsSync(file)) return fs.realpathSync(file);
    }
  }
  return null;
}

// Run a child process, passing signals on and its exit status back.
function runChild(file, args, env) {
  const child = spawn(file, args, { stdio: 'inherit', env });
  child.on('error', (err) => fail(`cannot start ${file}: ${err.message}`));
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
    process.on(signal, () => child.kill(signal));
  }
  child.on('exit', (code, signal) =>
    process.exit(code ?? 128 + (os.constants.signals[signal] || 0)),
  );
}

function start(chosen) {
  const env = { ...process.env, PORT: process.env.PORT || '8080' };
  env.PATH = [...binDirs, env.PATH || '/usr/local/bin:/usr/bin:/bin'].join(':');
  let words = splitWords(chosen.command.trim());
  if (!words) {
    if (fs.existsSync('/bin/sh')) {
      process.stderr.write(`kiln: starting ${chosen.from} under /bin/sh: ${chosen.command}\n`);
      return runChild('/bin/sh', ['-c', chosen.command], env);
    }
    fail(
      `${chosen.from} "${chosen.command}" uses shell syntax and this image has no /bin/sh: ` +
        `make it "[VAR=value] program args", or set --start`,
    );
  }
  while (words.length && /^[A-Za-z_][A-Za-z0-9_]*=/.test(words[0])) {
    const [key, ...value] = words.shift().split('=');
    env[key] = value.join('=');
  }
  if (!words.length) fail(`${chosen.from} "${chosen.command}" names no program`);
  const [program, ...args] = words;
  if (/(^|\/)egg-scripts$/.test(program) && args.includes('--daemon')) {
    warn(`dropping --daemon from ${chosen.from}: in a container the server must stay in the foreground`);
    args.splice(args.indexOf('--daemon'), 1);
  }
  process.stderr.write(`kiln: starting ${chosen.from}: ${[program, ...args].join(' ')}\n`);

  if (program === 'node') {
    const [first, ...rest] = args;
    if (first && !first.startsWith('-')) {
      const file = path.resolve(appDir, first);
      if (!exists(first)) fail(`entry file ${file} (from ${chosen.from}) does not exist`);
      Object.assign(process.env, env);
      // runMain makes the app the main module (require.main === module holds)
      // and also handles ES module entry files.
      process.argv = [process.argv[0], file, ...rest];
      return Module.runMain(file);
    }
    return runChild(process.execPath, args, env);
  }
  const file = findProgram(program);
  if (!file) {
    fail(
      `${chosen.from} runs "${program}", which is neither in node_modules/.bin nor on PATH ` +
        `(a devDependency is not in the image: move it to dependencies, or set --start)`,
    );
  }
  if (isNodeScript(file)) return runChild(process.execPath, [fs.realpathSync(file), ...args], env);
  // pnpm's node_modules/.bin entries are shell shims: run the package's bin with node.
  const bin = binDirs.includes(path.dirname(file)) ? packageBin(program) : null;
  if (bin) return runChild(process.execPath, [bin, ...args], env);
  return runChild(file, args, env);
}

// Under `kiln dev` (KILN_DEV=1) the app's own server owns $PORT, so this launcher
// serves the listing (/kiln/dev and /kiln/dev.json: the start command and the app's
// URL) on a port of its own, $KILN_DEV_PORT on 127.0.0.1, which kiln dev picks and
// prints. The listing server never keeps the process alive; images (no KILN_DEV) never
// open it.
function serveDevListing(chosen) {
  const devPort = Number(process.env.KILN_DEV_PORT);
  if (process.env.KILN_DEV !== '1' || !devPort) return;
  const http = require('http');
  const common = require('../common/http.js');
  const appPort = process.env.PORT || '8080';
  const listing = (req) => {
    let host = '127.0.0.1';
    try {
      host = new URL(`http://${req.headers.host}`).hostname || host;
    } catch (err) {
      // no usable Host header
    }
    const item = {
      name: chosen.command,
      url: `http://${host}:${appPort}/`,
      detail: `start command (from ${chosen.from}); the app serves its own routes on $PORT=${appPort}`,
    };
    return { runtime: 'app', sections: [{ title: 'App', items: [item] }] };
  };
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://localhost');
    if (common.serveDev(req, res, pathname === '/' ? '/kiln/dev' : pathname, listing)) return;
    common.sendError(res, 404, `not found: ${pathname} (the app itself is on port ${appPort})`);
  });
  server.on('error', (err) => warn(`cannot serve the kiln dev listing on port ${devPort}: ${err.message}`));
  server.listen(devPort, '127.0.0.1');
  server.unref();
}

const chosen = chooseCommand(readPackageJson());
if (!chosen) {
  fail(
    `no entry point in ${appDir}: add scripts.start ("node server.js"), "main", or an index.js, server.js or app.js`,
  );
}
serveDevListing(chosen);
start(chosen);
