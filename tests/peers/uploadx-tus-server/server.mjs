// A second, independent tus 1.0 server for ctagent's interoperability tests: the tus handler of
// @uploadx/core (github.com/kukhariev/node-uploadx), written apart from the official @tus/server
// that cloud/tus-server runs. Served as the package ships it (no hooks that change its answers),
// so the tests meet its own behaviour; docs/tus-conformance.md lists how it differs. Test peer only.
//
// Usage: node server.mjs --dir DIR (--cert server.pem --key server.key | --plain-http-for-tests)
//                        [--host 127.0.0.1] [--port N] [--ready-file FILE] [--max-size BYTES]
// Uploads are stored as DIR/<id> (the last segment of the upload URL) beside DIR/<id>.META.
// Its creation URL is https://HOST:PORT/files, without a trailing slash: @uploadx/core 6.2 appends
// "/<id>" to the request path for the Location, and refuses the "/files//<id>" it would hand out
// for a POST to "/files/" (403).
// Prints "uploadx-tus-server listening on https://HOST:PORT/files" once ready and, with
// --ready-file, writes the port there (so a test can start it on port 0 and learn the port).
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { Tus } from '@uploadx/core';

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 0, dir: '', cert: '', key: '', readyFile: '', plain: false, maxSize: 0 };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--host') args.host = next();
    else if (a === '--port') args.port = Number(next());
    else if (a === '--dir') args.dir = next();
    else if (a === '--cert') args.cert = next();
    else if (a === '--key') args.key = next();
    else if (a === '--ready-file') args.readyFile = next();
    else if (a === '--plain-http-for-tests') args.plain = true;
    else if (a === '--max-size') args.maxSize = Number(next());
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.dir) throw new Error('--dir is required');
  if (!args.plain && (!args.cert || !args.key)) throw new Error('--cert and --key are required (HTTPS)');
  return args;
}

let args;
try {
  args = parseArgs(process.argv);
} catch (e) {
  console.error(`uploadx-tus-server: ${e.message}`);
  process.exit(2);
}

fs.mkdirSync(args.dir, { recursive: true });
const options = { directory: args.dir, path: '/files' };
if (args.maxSize > 0) options.maxUploadSize = args.maxSize;
const tus = new Tus(options);
tus.on('error', (e) => console.error(`uploadx-tus-server: ${e.request?.method} ${e.request?.url}: ${e.message}`));

const server = args.plain
  ? http.createServer(tus.handle)
  : https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key), minVersion: 'TLSv1.2' },
    tus.handle);

server.listen(args.port, args.host, () => {
  const { port } = server.address();
  const scheme = args.plain ? 'http' : 'https';
  console.log(`uploadx-tus-server listening on ${scheme}://${args.host}:${port}/files storing in ${args.dir}`);
  if (args.readyFile) fs.writeFileSync(args.readyFile, String(port));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
