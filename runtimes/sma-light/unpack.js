'use strict';
// Decodes and unpacks one large bundle in a worker thread, so that the instance's main
// thread goes on serving (cache.js uses it above OFF_THREAD_BYTES).
// workerData: { bytes, digest, dir, nodeModules }; answers { ok } or { ok: false, error }.

const { parentPort, workerData } = require('worker_threads');
const bundle = require('./bundle.js');

const { bytes, digest, dir, nodeModules } = workerData;
bundle
  .decode(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), digest)
  .then((files) => bundle.extract(files, dir, nodeModules))
  .then(() => parentPort.postMessage({ ok: true }), (err) => parentPort.postMessage({ ok: false, error: err.message }));
