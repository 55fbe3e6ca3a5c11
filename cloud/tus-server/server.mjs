// Reference imaging center upload endpoint: the official tus server (@tus/server) with its file
// store, served over HTTPS on loopback. For ctagent demos and tests only; not a diagnostic product.
//
// Usage: node server.mjs --port N --dir DIR --cert server.pem --key server.key [--host 127.0.0.1]
//                        [--ready-file FILE]
// Prints "tus-server listening on https://HOST:PORT/files/" once ready and, with --ready-file,
// writes the port there (so a test can start it on port 0 and learn the port).
import fs from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 0, dir: '', cert: '', key: '', readyFile: '', plain: false };
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
  console.error(`tus-server: ${e.message}`);
  process.exit(2);
}

fs.mkdirSync(args.dir, { recursive: true });
const tus = new Server({
  path: '/files',
  // Relative Location headers: the client resolves them against its own https:// URL.
  relativeLocation: true,
  datastore: new FileStore({ directory: args.dir }),
  // Largest single upload we accept: a chunk or a manifest is far smaller.
  maxSize: 1024 * 1024 * 1024,
});

const handler = (req, res) => tus.handle(req, res);
const server = args.plain
  ? http.createServer(handler)
  : https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key), minVersion: 'TLSv1.2' }, handler);

server.listen(args.port, args.host, () => {
  const { port } = server.address();
  const scheme = args.plain ? 'http' : 'https';
  console.log(`tus-server listening on ${scheme}://${args.host}:${port}/files/ storing in ${args.dir}`);
  if (args.readyFile) fs.writeFileSync(args.readyFile, String(port));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
