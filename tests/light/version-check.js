'use strict';
// Drives runtimes/sma-light/version.js directly (tests/light.rs runs it):
//   node version-check.js <scratch dir>
// A handler crashes its worker 50 ms after each call, and throws on load once
// <dir>/broken exists. Prints one JSON line of what happened.

process.env.KILN_LIGHT_TIMEOUT_MS = '1500';
const fs = require('fs');
const path = require('path');
const { Version } = require('../../runtimes/sma-light/version.js');

const dir = process.argv[2];
const broken = path.join(dir, 'broken');
fs.mkdirSync(path.join(dir, 'api'), { recursive: true });
fs.writeFileSync(path.join(dir, 'api/x.js'), `
if (require('fs').existsSync(${JSON.stringify(broken)})) throw new Error('broken now');
module.exports = async () => { setTimeout(() => { throw new Error('crash'); }, 50); return 'ok'; };
`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const call = (v) => v.call('api', 'x', {}, { id: 'r' });

(async () => {
  const out = { events: [] };
  const heard = (e) => out.events.push(e.kind);
  const v = await new Version(1, 'd', dir, heard).start();
  out.first = await call(v);
  await sleep(100); // the worker crashed: a restart is under way
  out.duringRestart = await call(v);
  await sleep(100);
  v.retire(); // retired while its worker restarts
  await sleep(1500);
  out.retired = { released: v.released, worker: Boolean(v.worker) };
  const w = await new Version(2, 'd', dir, heard).start();
  await call(w);
  fs.writeFileSync(broken, '');
  await sleep(100);
  const started = Date.now();
  try {
    await call(w);
    out.waiting = { ok: true };
  } catch (err) {
    out.waiting = { status: err.status, ms: Date.now() - started };
  }
  w.release();
  out.events = [...new Set(out.events)];
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch((err) => {
  console.error(err.stack);
  process.exit(1);
});
