// The operator's page's high-risk alert in headless Chromium (Debian's chromium, driven by
// puppeteer-core), against a running `ctagent run` whose page is at --url. Run by
// tests/ui/alert_browser_test.cpp, which starts the daemon, the reference imaging center, the
// console and a worklist, asks the daemon for the scans, and restarts the daemon when told to.
//
// The files it shares with the harness, each written once:
//   --ready-file      written by this script once the page is live and its sound is on
//   --expect-file     written by the harness once both scans are taken: {"high_risk": {"uid",
//                     "name", "id"}, "normal": {...}} (the names as the page shows them)
//   --confirmed-file  written by this script once the page showed the confirmation
//   --restarted-file  written by the harness once the daemon was killed and started again
// Passes (exit 0) when, within --timeout-s:
//   - both scans reach "delivered"; the one with lesions is HIGH-RISK: its line is red, it says
//     "awaiting confirmation" with a Confirm button, the banner says one scan awaits, and the
//     alert tone sounded (Web Audio); the clean one is normal: no red, no button, no banner of its own;
//   - each line shows its patient's name and ID (from the agent's mapping records), and no
//     request the page made carries a name or an ID in its URL;
//   - pressing Confirm records it: the line says "Confirmed at HH:MM by <console user>" and the
//     banner goes; after the daemon's restart the page reconnects by itself, and after a reload
//     the confirmation is still there;
//   - the totals (scanned, normal, high risk, failed) agree with /api/status, before and after;
//   - no console error (a CSP violation is one), and every request went to 127.0.0.1.
// Saves screenshots (--screenshot-dir: ui-alert.png, ui-confirmed.png, ui-after-restart.png) and
// prints a JSON summary line ("alert-page: {...}").
import fs from 'node:fs';
import path from 'node:path';
import {arg, failures as failures_, guard, launch} from './harness.mjs';

const url = arg('url');
const screenshotDir = arg('screenshot-dir');
const chromium = arg('chromium', '/usr/bin/chromium');
const timeoutMs = Number(arg('timeout-s', '300')) * 1000;
const consoleUser = arg('console-user');
const readyFile = arg('ready-file');
const expectFile = arg('expect-file');
const confirmedFile = arg('confirmed-file');
const restartedFile = arg('restarted-file');
const deadline = Date.now() + timeoutMs;

const {list: failures, fail} = failures_('alert-page');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The page down to its footer (not the empty window below): small enough for the docs.
async function shoot(page, name) {
  const height = await page.$eval('footer', (f) => Math.ceil(f.getBoundingClientRect().bottom) + 8);
  await page.screenshot({path: path.join(screenshotDir, name), clip: {x: 0, y: 0, width: 1280, height: Math.min(height, 800)}});
}

// Waits (bounded by the deadline) until `test` is true; false if it never was.
async function until(test, what) {
  for (let i = 0; Date.now() < deadline && i < 100000; ++i) {
    if (await test()) return true;
    await sleep(100);
  }
  fail('timed out waiting for ' + what);
  return false;
}

const browser = await launch({chromium});
const summary = {requests: 0, urls: []};
let restarting = false;  // while the daemon is down, the page's failed requests are expected
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30000);
  await guard(page, {
    fail,
    summary,
    onRequest: (request) => {
      if (!summary.urls.includes(request.url())) summary.urls.push(request.url());
    },
    // After the daemon is killed the event stream and a fetch fail until it is back: the
    // browser reports those as console errors; they are expected only then.
    consoleErrorsExpected: () => restarting,
  });

  await page.goto(url, {waitUntil: 'load'});
  await page.waitForFunction(() => document.getElementById('live').textContent === 'live', {timeout: 30000});
  // Sound on, as the operator does once (a click: the browser's autoplay policy lets the page
  // play sound only after one).
  if ((await page.$eval('#sound', (b) => b.getAttribute('aria-pressed'))) !== 'false') fail('the sound was on before a click');
  await page.click('#sound');
  await until(async () => (await page.$eval('#sound', (b) => b.getAttribute('aria-pressed'))) === 'true',
              'the sound to be on after the click');
  fs.writeFileSync(readyFile, 'live\n');

  await until(() => fs.existsSync(expectFile), 'the harness to take both scans');
  const expect = JSON.parse(fs.readFileSync(expectFile, 'utf8'));
  const rowOf = async (uid) => page.evaluate((u) => {
    const tr = document.querySelector('#scans tbody tr[data-scan-uid="' + u + '"]');
    if (!tr) return null;
    return {
      className: tr.className,
      state: tr.dataset.state,
      background: getComputedStyle(tr).backgroundColor,
      patient: tr.querySelector('td.patient').textContent,
      findings: tr.querySelector('td.findings').textContent,
      hasConfirm: tr.querySelector('button.confirm') !== null,
    };
  }, uid);

  // Both delivered, with their reports: the page follows them live (no reload).
  const delivered = await until(async () => {
    const a = await rowOf(expect.high_risk.uid);
    const b = await rowOf(expect.normal.uid);
    return a && b && a.state === 'delivered' && b.state === 'delivered' && a.findings !== '' && b.findings !== '';
  }, 'both scans delivered with their findings');
  if (!delivered) throw new Error('the scans did not arrive');

  const totals = async () => {
    const got = {};
    for (const key of ['scanned', 'normal', 'high-risk', 'failed']) {
      got[key] = Number(await page.$eval('#total-' + key, (e) => e.textContent));
    }
    const status = await page.evaluate(async () => (await fetch('/api/status')).json());
    const category = (s) => (s.findings && s.findings.category) || '';
    const today = (status.scans || []).filter((s) => s.created_utc &&
        new Date(s.created_utc).toDateString() === new Date().toDateString());
    const want = {
      scanned: today.length,
      normal: today.filter((s) => category(s) === 'NORMAL').length,
      'high-risk': today.filter((s) => category(s) === 'HIGH-RISK').length,
      failed: today.filter((s) => s.state === 'failed' || category(s) === 'FAILED').length,
    };
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      fail('totals on the page ' + JSON.stringify(got) + ' differ from the status ' + JSON.stringify(want));
    }
    const expected = {scanned: 2, normal: 1, 'high-risk': 1, failed: 0};
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      fail('totals ' + JSON.stringify(got) + ', expected ' + JSON.stringify(expected));
    }
    return got;
  };

  // The names arrive from /api/patients once the token is there.
  await until(async () => {
    const a = await rowOf(expect.high_risk.uid);
    const b = await rowOf(expect.normal.uid);
    return a.patient.includes(expect.high_risk.name) && b.patient.includes(expect.normal.name);
  }, 'the patients\' names on their lines');
  await until(async () => Number(await page.$eval('body', (b) => b.dataset.tones || 0)) > 0, 'the alert tone');

  const high = await rowOf(expect.high_risk.uid);
  const normal = await rowOf(expect.normal.uid);
  summary.before = {high, normal};
  if (!high.className.split(' ').includes('high-risk') || !high.className.split(' ').includes('awaiting')) {
    fail('the high-risk line is not marked awaiting: ' + high.className);
  }
  if (high.background !== 'rgb(249, 201, 197)') fail('the high-risk line is not red: ' + high.background);
  if (!high.findings.includes('HIGH RISK — awaiting confirmation') || !high.hasConfirm) {
    fail('the high-risk line does not await confirmation with a button: ' + high.findings);
  }
  if (!high.patient.includes('ID ' + expect.high_risk.id)) fail('the high-risk line lacks its patient ID: ' + high.patient);
  if (normal.className.includes('high-risk') || normal.hasConfirm || normal.findings.includes('HIGH RISK')) {
    fail('the normal scan is marked high risk: ' + JSON.stringify(normal));
  }
  if (normal.background === high.background) fail('the normal line is red too');
  if (!normal.findings.startsWith('Normal')) fail('the normal scan does not say Normal: ' + normal.findings);
  const banner = await page.$eval('#alert', (e) => ({hidden: e.hidden, text: e.textContent, visible: e.offsetHeight > 0}));
  summary.banner = banner;
  if (banner.hidden || !banner.visible || !banner.text.includes('High risk: 1 scan awaits confirmation')) {
    fail('the banner does not show the alert: ' + JSON.stringify(banner));
  }
  summary.totals_before = await totals();
  summary.tones = Number(await page.$eval('body', (b) => b.dataset.tones || 0));
  await shoot(page, 'ui-alert.png');

  // Confirm.
  // Clicked in one step inside the page: the rows are rebuilt on every status event, so a handle
  // taken a moment before can be detached when it is clicked (it was, under ASan, 2 runs of 3).
  await until(() => page.evaluate((u) => {
    const button = document.querySelector('#scans tbody tr[data-scan-uid="' + u + '"] button.confirm');
    if (!button) return false;
    button.click();
    return true;
  }, expect.high_risk.uid), 'the Confirm button to click');
  const confirmedText = 'Confirmed at ';
  await until(async () => (await rowOf(expect.high_risk.uid)).findings.includes(confirmedText),
              'the confirmation on the line');
  const confirmed = await rowOf(expect.high_risk.uid);
  summary.confirmed = confirmed;
  if (!confirmed.findings.includes(' by ' + consoleUser)) fail('the confirmation does not name the console user: ' + confirmed.findings);
  if (confirmed.hasConfirm || !confirmed.className.includes('confirmed')) fail('still awaiting after Confirm: ' + confirmed.className);
  if (!(await page.$eval('#alert', (e) => e.hidden))) fail('the banner stayed after the confirmation');
  await shoot(page, 'ui-confirmed.png');
  fs.writeFileSync(confirmedFile, 'confirmed\n');

  // The harness kills the daemon and starts it again; the page notices and reconnects by itself.
  restarting = true;
  await until(async () => (await page.$eval('#live', (e) => e.textContent)) !== 'live' || fs.existsSync(restartedFile),
              'the page to notice the daemon went away');
  await until(() => fs.existsSync(restartedFile), 'the harness to restart the daemon');
  await until(async () => (await page.$eval('#live', (e) => e.textContent)) === 'live', 'the page to reconnect');
  restarting = false;
  await page.reload({waitUntil: 'load'});
  await page.waitForFunction(() => document.getElementById('live').textContent === 'live', {timeout: 30000});
  await until(async () => {
    const row = await rowOf(expect.high_risk.uid);
    return row && row.patient.includes(expect.high_risk.name);
  }, 'the lines after the reload');
  const after = await rowOf(expect.high_risk.uid);
  summary.after = after;
  if (after.findings !== confirmed.findings) {
    fail('the confirmation changed across the restart: "' + confirmed.findings + '" then "' + after.findings + '"');
  }
  if (after.hasConfirm || !after.className.includes('confirmed')) fail('awaiting again after the restart: ' + after.className);
  if (!(await page.$eval('#alert', (e) => e.hidden))) fail('the banner came back after the restart');
  summary.totals_after = await totals();
  // After a reload the browser may hold the sound back until a click (autoplay policy): the
  // button says so. Recorded, not asserted: it depends on the browser's policy.
  summary.sound_after_reload = await page.$eval('#sound', (b) => b.textContent);
  await sleep(1500);  // an alert tick or two: none may sound now
  // The reload started a new page, with a count of its own: a confirmed finding never sounds.
  if (Number(await page.$eval('body', (b) => b.dataset.tones || 0)) > 0) {
    fail('the page sounded the alert after the restart, for a confirmed finding');
  }
  await shoot(page, 'ui-after-restart.png');

  // No name or ID ever in a URL the page asked for.
  for (const u of summary.urls) {
    for (const who of [expect.high_risk, expect.normal]) {
      for (const value of [who.id, ...who.name.split(/[ ,]+/).filter((p) => p.length > 2)]) {
        if (decodeURIComponent(u).includes(value)) fail('a URL carries patient data (' + value + '): ' + u);
      }
    }
  }
} catch (error) {
  fail('error: ' + (error && error.stack ? error.stack : error));
} finally {
  await browser.close();
}
summary.failures = failures;
console.log('alert-page: ' + JSON.stringify(summary));
process.exit(failures.length === 0 ? 0 : 1);
