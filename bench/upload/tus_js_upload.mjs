// The official tus-js-client uploading what the agent uploads: every chunk file listed in
// DIR/manifest.json as its own upload, PARALLEL at a time, then the manifest, with the
// agent's PATCH size. Usage: NODE_EXTRA_CA_CERTS=ca.pem node tus_js_upload.mjs URL DIR PATCH_BYTES PARALLEL
// Prints "seconds=<s> bytes=<n> uploads=<n>" on success.
import fs from 'node:fs';
import path from 'node:path';
import * as tus from 'tus-js-client';

const [url, dir, patchBytes, parallel] = process.argv.slice(2);
const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json')));
const files = manifest.chunks.map((c) => path.join(dir, `${String(c.index).padStart(6, '0')}.ctc`));
const data = files.map((f) => fs.readFileSync(f));
const manifestBytes = fs.readFileSync(path.join(dir, 'manifest.json'));

function uploadOne(bytes, metadata) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(bytes, {
      endpoint: url,
      chunkSize: Number(patchBytes),
      retryDelays: [],
      storeFingerprintForResuming: false,
      metadata,
      onError: reject,
      onSuccess: resolve,
    });
    upload.start();
  });
}

const t0 = process.hrtime.bigint();
let next = 0;
async function worker() {
  while (next < data.length) {
    const i = next++;
    await uploadOne(data[i], { kind: 'chunk', scan_uid: manifest.scan_uid, chunk_index: String(manifest.chunks[i].index) });
  }
}
try {
  await Promise.all(Array.from({ length: Number(parallel) }, worker));
  await uploadOne(manifestBytes, { kind: 'manifest', scan_uid: manifest.scan_uid });
} catch (e) {
  console.error(`tus-js-client: ${e.message}`);
  process.exit(1);
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
const bytes = data.reduce((n, b) => n + b.length, 0) + manifestBytes.length;
console.log(`seconds=${seconds.toFixed(4)} bytes=${bytes} uploads=${data.length + 1}`);
