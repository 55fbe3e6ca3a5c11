// Reference imaging center upload endpoint: the official tus server (@tus/server) with its file
// store, served over HTTPS on loopback. For ctagent demos and tests only; not a diagnostic product.
//
// Usage: node server.mjs --port N --dir DIR --cert server.pem --key server.key [--host 127.0.0.1]
//                        [--ready-file FILE]
//   test and measurement options (defaults keep the plain behaviour):
//   --max-size BYTES       largest upload accepted (Tus-Max-Size; default 1 GiB): larger -> 413
//   --expiration-ms MS     uploads expire MS after creation (Upload-Expires; expired -> 410)
//   --client-ca FILE       require a client certificate signed by this CA (mTLS)
//   --http2                offer HTTP/2 by ALPN (HTTP/1.1 still allowed), with the server's
//                          receive windows sized for --h2-window BYTES (default 10 MB,
//                          1 Gbit/s x 80 ms)
//   --workers N            N server processes sharing the port (node:cluster; default 1). For
//                          throughput measurements only (bench/upload): one node process holds
//                          ~1 Gbit/s of TLS uploads on a core, so at that rate it, not the client,
//                          sets the figure. Each process has its own upload locks (@tus/server's
//                          MemoryLocker), so two requests for one upload on different
//                          connections are not serialised: not for tests that reset requests.
//                          Stop the first process (the one started): it stops the others.
// Prints "tus-server listening on https://HOST:PORT/files/" once ready and, with --ready-file,
// writes the port there (so a test can start it on port 0 and learn the port).
import cluster from 'node:cluster';
import fs from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import http2 from 'node:http2';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

function parseArgs(argv) {
  const args = {
    host: '127.0.0.1', port: 0, dir: '', cert: '', key: '', readyFile: '', plain: false,
    maxSize: 1024 * 1024 * 1024, expirationMs: 0, clientCa: '', http2: false, h2Window: 10 * 1000 * 1000,
    workers: 1,
  };
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
    else if (a === '--expiration-ms') args.expirationMs = Number(next());
    else if (a === '--client-ca') args.clientCa = next();
    else if (a === '--http2') args.http2 = true;
    else if (a === '--h2-window') args.h2Window = Number(next());
    else if (a === '--workers') args.workers = Number(next());
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.dir) throw new Error('--dir is required');
  if (!args.plain && (!args.cert || !args.key)) throw new Error('--cert and --key are required (HTTPS)');
  if (!Number.isInteger(args.workers) || args.workers < 1 || args.workers > 64) {
    throw new Error('--workers must be a whole number from 1 to 64');
  }
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

function announce(port) {
  const scheme = args.plain ? 'http' : 'https';
  console.log(`tus-server listening on ${scheme}://${args.host}:${port}/files/ storing in ${args.dir}`);
  if (args.readyFile) fs.writeFileSync(args.readyFile, String(port));
}

if (args.workers > 1 && cluster.isPrimary) {
  // The primary only starts the workers, says when all of them listen (they share one port,
  // port 0 included), and stops them: a worker that ends on its own ends the server.
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < args.workers; i++) cluster.fork();
  cluster.on('listening', (worker, address) => {
    if (++listening === args.workers) announce(address.port);
  });
  const stop = (code) => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
    const done = () => Object.keys(cluster.workers).length === 0 && process.exit(code);
    cluster.on('exit', done);
    done();
  };
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    console.error(`tus-server: worker ${worker.process.pid} ended (${signal || code}); stopping`);
    stop(1);
  });
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => stop(0));
} else {
  serve();
}

function serve() {
  const tus = new Server({
    path: '/files',
    // Relative Location headers: the client resolves them against its own https:// URL.
    relativeLocation: true,
    datastore: new FileStore({ directory: args.dir, expirationPeriodInMilliseconds: args.expirationMs }),
    // Largest single upload we accept: a chunk or a manifest is far smaller.
    maxSize: args.maxSize,
  });

  const handler = (req, res) => tus.handle(req, res);
  const tlsOptions = { minVersion: 'TLSv1.2' };
  let server;
  if (args.plain) {
    server = http.createServer(handler);
  } else {
    tlsOptions.cert = fs.readFileSync(args.cert);
    tlsOptions.key = fs.readFileSync(args.key);
    if (args.clientCa) {
      tlsOptions.ca = fs.readFileSync(args.clientCa);
      tlsOptions.requestCert = true;
      tlsOptions.rejectUnauthorized = true;
    }
    if (args.http2) {
      // The upload direction's flow-control window is the server's receive window: size the
      // stream and connection windows for bandwidth x delay.
      server = http2.createSecureServer(
        { ...tlsOptions, allowHTTP1: true, settings: { initialWindowSize: Math.min(args.h2Window, 2 ** 31 - 1) } },
        handler,
      );
      server.on('session', (session) => {
        try {
          session.setLocalWindowSize(Math.min(args.h2Window, 2 ** 31 - 1));
        } catch (e) {
          console.error(`tus-server: cannot set the connection window: ${e.message}`);
        }
      });
    } else {
      server = https.createServer(tlsOptions, handler);
    }
  }

  server.listen(args.port, args.host, () => {
    if (cluster.isPrimary) announce(server.address().port);
  });

  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => server.close(() => process.exit(0)));
  }
}
