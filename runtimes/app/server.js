'use strict';
// kiln "app" runtime: a launcher for a plain Node server app in the working
// directory (/app in an image). It picks the app's entry file from
// package.json and runs it in this process; the app listens on $PORT.
//
// Entry file, first match wins:
//   1. scripts.start of the form `node <file> [args]`
//      (with node flags, e.g. `node --enable-source-maps x.js`, it runs as a child process)
//   2. "main" (skipped with a warning when that file does not exist)
//   3. index.js, server.js, app.js

const fs = require('fs');
const os = require('os');
const path = require('path');
const Module = require('module');
const { spawn } = require('child_process');

const appDir = process.cwd();

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
  if (/[;&|<>`$()]/.test(command.replace(/'[^']*'|"[^"]*"/g, ''))) return null;
  const words = [];
  const re = /'([^']*)'|"([^"]*)"|(\S+)/g;
  let m;
  while ((m = re.exec(command))) words.push(m[1] ?? m[2] ?? m[3]);
  return words;
}

// The `node ...` arguments of scripts.start, or null when it is something else.
function startArgs(pkg) {
  const start = pkg.scripts && pkg.scripts.start;
  if (typeof start !== 'string') return null;
  const words = splitWords(start.trim());
  if (!words || words[0] !== 'node' || words.length < 2) {
    warn(`scripts.start "${start}" is not of the form "node <file> [args]"; ignoring it`);
    return null;
  }
  return words.slice(1);
}

function exists(rel) {
  try {
    require.resolve(path.resolve(appDir, rel));
    return true;
  } catch (err) {
    return false;
  }
}

function chooseEntry(pkg) {
  const args = startArgs(pkg);
  if (args) return { args };
  if (typeof pkg.main === 'string' && pkg.main) {
    if (exists(pkg.main)) return { args: [pkg.main] };
    warn(`"main" names ${pkg.main}, which does not exist; trying the usual file names`);
  }
  for (const file of ['index.js', 'server.js', 'app.js']) {
    if (fs.existsSync(path.join(appDir, file))) return { args: [file] };
  }
  return null;
}

// Run node with flags as a child process, passing signals and the exit code on.
function runChild(args) {
  const child = spawn(process.execPath, args, { stdio: 'inherit' });
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => process.exit(code ?? 128 + (os.constants.signals[signal] || 0)));
}

const pkg = readPackageJson();
const entry = chooseEntry(pkg);
if (!entry) {
  fail(`no entry point in ${appDir}: add scripts.start ("node server.js"), "main", or an index.js, server.js or app.js`);
}

process.env.PORT = process.env.PORT || '8080';
const [first, ...rest] = entry.args;

if (first.startsWith('-')) {
  runChild(entry.args);
} else {
  const file = path.resolve(appDir, first);
  if (!exists(first)) fail(`entry file ${file} (from scripts.start) does not exist`);
  process.stderr.write(`kiln: starting ${path.relative(appDir, file) || file}\n`);
  // runMain makes the app the main module (require.main === module holds)
  // and also handles ES module entry files.
  process.argv = [process.argv[0], file, ...rest];
  Module.runMain(file);
}
