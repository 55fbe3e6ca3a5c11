// One upload with the official tus-js-client (the reference uploader), timed.
// Usage: NODE_EXTRA_CA_CERTS=ca.pem node tus_js_upload.mjs URL FILE PATCH_BYTES
// Prints "seconds=<s> bytes=<n>" on success.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [url, file, patchBytes] = process.argv.slice(2);
const data = fs.readFileSync(file);
const t0 = process.hrtime.bigint();
const upload = new tus.Upload(data, {
  endpoint: url,
  chunkSize: Number(patchBytes),
  retryDelays: [],
  storeFingerprintForResuming: false,
  metadata: { filename: 'bench.bin' },
  onError: (e) => {
    console.error(`tus-js-client: ${e.message}`);
    process.exit(1);
  },
  onSuccess: () => {
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`seconds=${seconds.toFixed(4)} bytes=${data.length}`);
  },
});
upload.start();
