'use strict';
// An instance's own cache of sma-light bundles: `<dir>/bundles/<hex>.bundle` (the bytes, as
// fetched) and `<dir>/v/<hex>/` (unpacked, what a version's worker loads). A rollback to a
// version still here needs no fetch. The newest `keep` bundles stay; a bundle in use never
// goes.

const fs = require('fs');
const path = require('path');
const { Worker } = require('worker_threads');
const bundle = require('./bundle.js');

// Bundles at least this big are decoded and unpacked in a worker thread (unpack.js): up
// to 20,000 files would otherwise hold the main thread for seconds. Smaller ones take a
// few milliseconds here, less than starting a thread.
const OFF_THREAD_BYTES = 1024 * 1024;

class BundleCache {
  // `fetch(digest)` resolves with a bundle's bytes from the store (or null when it has none);
  // `nodeModules` is what unpacked versions link as their node_modules.
  constructor(dir, keep, nodeModules, fetch) {
    this.dir = dir;
    this.keep = keep;
    this.nodeModules = nodeModules;
    this.fetch = fetch;
  }

  // The unpacked folder of `digest`, and whether its bytes had to be fetched.
  async open(digest) {
    const hex = digest.slice('sha256:'.length);
    const dir = path.join(this.dir, 'v', hex);
    const file = path.join(this.dir, 'bundles', `${hex}.bundle`);
    let bytes = null;
    let fetched = false;
    try {
      bytes = fs.readFileSync(file);
    } catch (err) {
      bytes = await this.fetch(digest);
      if (!bytes) throw new Error(`bundle ${digest} is not in the store`);
      fetched = true;
    }
    await this.unpack(bytes, digest, dir); // checks the digest, also of a cached copy
    if (fetched) {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(`${file}.part`, bytes);
      fs.renameSync(`${file}.part`, file);
    } else {
      const now = new Date();
      fs.utimesSync(file, now, now); // most recently used
    }
    return { dir, fetched };
  }

  // Decodes `bytes` (checking `digest` and the limits) and unpacks them into `dir`.
  async unpack(bytes, digest, dir) {
    if (bytes.length < OFF_THREAD_BYTES) {
      bundle.extract(await bundle.decode(bytes, digest), dir, this.nodeModules);
      return;
    }
    await new Promise((resolve, reject) => {
      const worker = new Worker(path.join(__dirname, 'unpack.js'), {
        workerData: { bytes, digest, dir, nodeModules: this.nodeModules },
      });
      worker.once('message', (m) => (m.ok ? resolve() : reject(new Error(m.error))));
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`unpacking stopped (worker exit ${code})`)));
    });
  }

  // Drops bundles beyond the newest `keep`, except those whose digests are in `inUse`, and
  // any folder an interrupted unpack left.
  prune(inUse) {
    const bundlesDir = path.join(this.dir, 'bundles');
    let names;
    try {
      names = fs.readdirSync(bundlesDir).filter((n) => n.endsWith('.bundle'));
    } catch (err) {
      return;
    }
    const held = new Set([...inUse].map((digest) => digest.slice('sha256:'.length)));
    const byAge = names
      .map((n) => ({ hex: n.slice(0, -'.bundle'.length), at: fs.statSync(path.join(bundlesDir, n)).mtimeMs }))
      .sort((a, b) => b.at - a.at);
    for (const { hex } of byAge.slice(this.keep)) {
      if (held.has(hex)) continue;
      fs.rmSync(path.join(bundlesDir, `${hex}.bundle`), { force: true });
      fs.rmSync(path.join(this.dir, 'v', hex), { recursive: true, force: true });
    }
    let unpacked = [];
    try {
      unpacked = fs.readdirSync(path.join(this.dir, 'v'));
    } catch (err) {
      return;
    }
    for (const name of unpacked.filter((n) => n.includes(bundle.PART))) {
      fs.rmSync(path.join(this.dir, 'v', name), { recursive: true, force: true });
    }
  }
}

module.exports = { BundleCache };
