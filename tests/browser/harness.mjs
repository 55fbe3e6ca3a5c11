// What the browser tests share: their arguments, their failures, Chromium started the same way,
// and the guard every page runs under (each request must go to 127.0.0.1, no console or page
// error). Used by today_page.mjs, alert_page.mjs and scan_view.mjs.
import puppeteer from 'puppeteer-core';

// The value after --NAME on the command line; `fallback` if absent (required when undefined).
export function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (fallback === undefined) throw new Error('missing --' + name);
  return fallback;
}

// A test's failures: fail(why) records one and says it at once, prefixed with the test's name.
export function failures(prefix) {
  const list = [];
  const fail = (why) => {
    list.push(why);
    console.error(prefix + ': FAIL: ' + why);
  };
  return {list, fail};
}

// Debian's Chromium, headless. --no-sandbox: the tests run as root (CI containers), and Chromium
// refuses its sandbox as root; the page is our own, served on loopback, and nothing else is opened.
// The other switches keep Chromium itself quiet on the network (no component updates, no sync, no
// field trials), so that the only traffic is the page's.
export function launch({chromium, width = 1280, height = 800}) {
  return puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--no-default-browser-check',
           '--disable-background-networking', '--disable-component-update', '--disable-sync',
           '--disable-default-apps', '--disable-domain-reliability', '--disable-breakpad',
           '--disable-features=Translate,OptimizationHints,MediaRouter', `--window-size=${width},${height}`],
    defaultViewport: {width, height},
    timeout: 30000,
  });
}

// Guards `page`: every request is counted in summary.requests and must go to 127.0.0.1 (any other
// host is aborted and fails the test); `onRequest(request)` sees each allowed one. A console error
// (a CSP violation is one) fails the test unless `consoleErrorsExpected()` says they are expected
// just now; a page error always does.
export async function guard(page, {fail, summary, onRequest = () => {}, consoleErrorsExpected = () => false}) {
  await page.setRequestInterception(true);
  page.on('request', (request) => {
    ++summary.requests;
    let host = '';
    try {
      host = new URL(request.url()).hostname;
    } catch {
      host = '(unparsable: ' + request.url() + ')';
    }
    if (host !== '127.0.0.1') {
      fail('a request left 127.0.0.1: ' + request.url());
      request.abort();
      return;
    }
    onRequest(request);
    request.continue();
  });
  page.on('console', (message) => {
    if (message.type() === 'error' && !consoleErrorsExpected()) fail('console error: ' + message.text());
  });
  page.on('pageerror', (error) => fail('page error: ' + error.message));
}
