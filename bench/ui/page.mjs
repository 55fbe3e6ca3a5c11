// bench/ui: the operator's page's weight, its time to first render and to a live update, in
// headless Chromium (Debian's chromium, puppeteer-core from tests/browser/node_modules) against the
// real agent/ui server with a made-up status (ui_bench_server: SCANS delivered scans and one
// acquiring scan whose stored parts go up by one each second). Prints figures; asserts nothing.
// The server checks the status every 500 ms (ServerSettings::event_interval), so a live update
// takes 0..500 ms of that wait plus the page's own time.
// Usage: node bench/ui/page.mjs --server build/release/bench/ui/ui_bench_server [--scans 50] [--updates 10]
import {spawn} from 'node:child_process';
import {createRequire} from 'node:module';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../../tests/browser/package.json'));
const puppeteer = (await import(require.resolve('puppeteer-core'))).default;

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const serverPath = arg('server', path.join(here, '../../build/release/bench/ui/ui_bench_server'));
const scans = Number(arg('scans', '50'));
const updates = Number(arg('updates', '10'));

const server = spawn(serverPath, [String(scans), String(updates + 30)], {stdio: ['ignore', 'pipe', 'inherit']});
const first = await new Promise((resolve, reject) => {
  server.stdout.once('data', (d) => resolve(String(d)));
  server.once('exit', (code) => reject(new Error('ui_bench_server exited ' + code)));
});
const [, port, startMs] = first.match(/port (\d+) start_unix_ms (\d+)/).map(Number);
const browser = await puppeteer.launch({
  executablePath: arg('chromium', '/usr/bin/chromium'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
         '--disable-background-networking', '--disable-component-update'],
});
try {
  const page = await browser.newPage();
  const sizes = {};
  page.on('response', async (response) => {
    const url = new URL(response.url());
    if (url.pathname === '/api/events') return;  // a stream, not part of the page's weight
    try {
      sizes[url.pathname] = (await response.buffer()).length;
    } catch {
      // a response without a body
    }
  });
  // Each render: when the acquiring scan's row shows a new count of stored parts.
  await page.evaluateOnNewDocument(() => {
    window.benchRenders = [];
    new MutationObserver(() => {
      const row = document.querySelector('tr[data-scan-uid="2.25.2000"] td.state');
      const m = row && row.textContent.match(/(\d+) parts safe/);
      if (m && (window.benchRenders.length === 0 || window.benchRenders.at(-1).parts !== Number(m[1]))) {
        window.benchRenders.push({parts: Number(m[1]), at: Date.now()});
      }
    }).observe(document, {subtree: true, childList: true, characterData: true});
  });
  const t0 = Date.now();
  await page.goto('http://127.0.0.1:' + port + '/', {waitUntil: 'load'});
  await page.waitForSelector('tr[data-scan-uid="2.25.2000"]', {timeout: 30000});
  const firstRows = Date.now() - t0;
  const paint = await page.evaluate(() =>
      Object.fromEntries(performance.getEntriesByType('paint').map((e) => [e.name, e.startTime])));
  const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON());
  await new Promise((resolve) => setTimeout(resolve, (updates + 1) * 1000));
  const renders = await page.evaluate(() => window.benchRenders);
  // Part count k appears in the status at startMs + k * 1000.
  const lags = renders.slice(1).map((r) => r.at - (startMs + r.parts * 1000)).sort((a, b) => a - b);
  const weight = Object.values(sizes).reduce((a, b) => a + b, 0);
  const assets = Object.entries(sizes).filter(([p]) => !p.startsWith('/api')).reduce((a, [, b]) => a + b, 0);
  console.log(`ui bench: ${scans + 1} scans on the page, chromium ${await browser.version()}`);
  console.log(`  weight         ${weight} bytes transferred, of which page files ${assets} bytes ` +
              `(${Object.entries(sizes).map(([p, s]) => p + ' ' + s).join(', ')})`);
  console.log(`  first render   first-contentful-paint ${Math.round(paint['first-contentful-paint'] ?? -1)} ms ` +
              `after navigation; load event ${Math.round(nav.loadEventEnd)} ms; ` +
              `scans on screen ${firstRows} ms after goto (includes the event stream's first snapshot)`);
  if (lags.length > 0) {
    const median = lags[Math.floor(lags.length / 2)];
    console.log(`  live update    status change -> on screen: median ${median} ms, ` +
                `min ${lags[0]} ms, max ${lags.at(-1)} ms over ${lags.length} changes ` +
                `(includes 0..500 ms of the server's status check interval)`);
  } else {
    console.log('  live update    no change seen');
  }
} finally {
  await browser.close();
  server.kill('SIGTERM');
}
