// TLS front for Orthanc (reference imaging center, demos and tests only).
//
// Why: Debian 12's Orthanc 1.10.1 uses the system libcivetweb1 1.15, which loads OpenSSL at run
// time by 1.1 symbol names; libssl3 no longer exports SSL_get_peer_certificate, so civetweb calls
// a null pointer and Orthanc crashes (SIGSEGV) on the first HTTPS connection. Orthanc therefore
// serves plain HTTP on an internal loopback port and this proxy terminates TLS in front of it,
// passing the bytes through unchanged (HTTP/1.1 keep-alive included).
//
// Usage: node tls-proxy.mjs --port N --target-port M --cert server.pem --key server.key [--host 127.0.0.1]
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

const args = { host: '127.0.0.1', port: 0, targetPort: 0, cert: '', key: '' };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => {
    if (i + 1 >= process.argv.length) { console.error(`tls-proxy: ${a} needs a value`); process.exit(2); }
    return process.argv[++i];
  };
  if (a === '--host') args.host = next();
  else if (a === '--port') args.port = Number(next());
  else if (a === '--target-port') args.targetPort = Number(next());
  else if (a === '--cert') args.cert = next();
  else if (a === '--key') args.key = next();
  else { console.error(`tls-proxy: unknown argument ${a}`); process.exit(2); }
}
if (!args.port || !args.targetPort || !args.cert || !args.key) {
  console.error('tls-proxy: --port, --target-port, --cert and --key are required');
  process.exit(2);
}

const server = tls.createServer(
  { cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key), minVersion: 'TLSv1.2' },
  (client) => {
    const upstream = net.connect(args.targetPort, '127.0.0.1');
    // No Nagle on either side: a response's last small segment would otherwise wait for the
    // peer's delayed ACK (~40 ms per WADO-RS instance or STOW/POST, docs/results.md "Latency").
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const close = () => { client.destroy(); upstream.destroy(); };
    client.on('error', close);
    upstream.on('error', close);
    client.pipe(upstream).pipe(client);
  });
server.on('tlsClientError', () => {});  // a failed handshake concerns that client only
server.listen(args.port, args.host, () => {
  console.log(`tls-proxy listening on ${args.host}:${args.port} -> 127.0.0.1:${args.targetPort}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
