// The operator's page "Today" in headless Chromium (Debian's chromium, driven by puppeteer-core),
// against a running `ctagent run` whose page is at --url. Run by tests/ui/browser_test.cpp, which
// starts the daemon, the reference imaging center and the console; this script only watches.
//
// With --ready-file, the file is written once the page is live: the harness starts its scan then.
// Passes (exit 0) when, within --timeout-s:
//   - the page loads with no console error (a CSP violation is one) and no page error,
//   - it updates live (no reload): the scan appears, its state is seen to advance (at least three
//     different states or progress texts, "acquiring" among them) and it reaches "delivered",
//   - the day's totals agree with the status the daemon serves at /api/status,
//   - every request the page made went to 127.0.0.1 (request interception: any other host is
//     aborted and fails the test).
// Saves a screenshot at --screenshot and prints a JSON summary line ("today-page: {...}").
import fs from 'node:fs';
import {arg, failures as failures_, guard, launch} from './harness.mjs';

const url = arg('url');
const screenshot = arg('screenshot');
const chromium = arg('chromium', '/usr/bin/chromium');
const timeoutMs = Number(arg('timeout-s', '150')) * 1000;
const expectScans = Number(arg('expect-scans', '1'));
// Written once the page is loaded and live, so the harness starts the scan only then.
const readyFile = arg('ready-file', '');
const deadline = Date.now() + timeoutMs;

const {list: failures, fail} = failures_('today-page');

const browser = await launch({chromium});
const summary = {requests: 0, states: [], updates: 0};
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30000);
  await guard(page, {fail, summary});

  await page.goto(url, {waitUntil: 'load'});
  await page.waitForFunction(() => document.getElementById('live').textContent === 'live', {timeout: 30000});
  if (readyFile) fs.writeFileSync(readyFile, 'live\n');
  const navigations = [];
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) navigations.push(frame.url());
  });

  // Watch the rows: every distinct (state, text) of each scan, until all expected scans are
  // delivered (or failed: that ends the wait and the test).
  const seen = new Map();  // scan uid -> [{state, text}]
  let done = false;
  for (let i = 0; !done && Date.now() < deadline && i < 100000; ++i) {
    const rows = await page.$$eval('#scans tbody tr', (trs) =>
        trs.map((tr) => ({uid: tr.dataset.scanUid, state: tr.dataset.state,
                          text: tr.querySelector('td.state').textContent})));
    for (const row of rows) {
      const list = seen.get(row.uid) || [];
      const last = list[list.length - 1];
      if (!last || last.state !== row.state || last.text !== row.text) list.push({state: row.state, text: row.text});
      seen.set(row.uid, list);
    }
    const finished = rows.filter((r) => r.state === 'delivered' || r.state === 'failed');
    done = rows.length >= expectScans && finished.length === rows.length;
    if (!done) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  summary.updates = Number(await page.$eval('body', (b) => b.dataset.updates || 0));
  for (const [uid, list] of seen) summary.states.push({uid, states: list});
  if (!done) fail('the page did not show ' + expectScans + ' scan(s) finished within ' + timeoutMs / 1000 + ' s');
  if (navigations.length > 0) fail('the page navigated (a reload?): ' + navigations.join(', '));
  if (seen.size !== expectScans) fail('expected ' + expectScans + ' scan(s) on the page, saw ' + seen.size);
  for (const [uid, list] of seen) {
    const states = list.map((s) => s.state);
    if (states[states.length - 1] !== 'delivered') fail('scan ' + uid + ' ended ' + states[states.length - 1]);
    if (!states.includes('acquiring')) fail('scan ' + uid + ' was never seen acquiring: ' + states.join(' > '));
    if (list.length < 3) fail('scan ' + uid + ' was not seen advancing: ' + JSON.stringify(list));
  }

  // The totals against the status the daemon serves.
  const status = await page.evaluate(async () => (await fetch('/api/status')).json());
  const today = (status.scans || []).filter((s) => s.created_utc &&
      new Date(s.created_utc).toDateString() === new Date().toDateString());
  const category = (s) => (s.findings && s.findings.category) || '';
  const want = {
    scanned: today.length,
    normal: today.filter((s) => category(s) === 'NORMAL').length,
    'high-risk': today.filter((s) => category(s) === 'HIGH-RISK').length,
    failed: today.filter((s) => s.state === 'failed' || category(s) === 'FAILED').length,
  };
  const got = {};
  for (const key of Object.keys(want)) got[key] = Number(await page.$eval('#total-' + key, (e) => e.textContent));
  summary.totals = got;
  summary.categories = today.map(category);
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    fail('totals on the page ' + JSON.stringify(got) + ' differ from the status ' + JSON.stringify(want));
  }
  if (got.scanned !== expectScans) fail('scanned today: ' + got.scanned + ', expected ' + expectScans);
  // Every delivered scan has its report's category: normal, high risk, or the analysis failed
  // (counted as failed: the operator must know the AI did not read it).
  const known = today.filter((s) => ['NORMAL', 'HIGH-RISK', 'FAILED'].includes(category(s))).length;
  if (known !== expectScans) fail('scans with a report category: ' + known + ', expected ' + expectScans);
  if ((await page.$eval('#live', (e) => e.textContent)) !== 'live') fail('the page does not say it is live');

  await page.screenshot({path: screenshot, fullPage: true});
  summary.screenshot = screenshot;
  summary.screenshot_bytes = fs.statSync(screenshot).size;
} catch (error) {
  fail('error: ' + (error && error.stack ? error.stack : error));
} finally {
  await browser.close();
}
summary.failures = failures;
console.log('today-page: ' + JSON.stringify(summary));
process.exit(failures.length === 0 ? 0 : 1);
