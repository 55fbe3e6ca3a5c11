// A scan's view (scan.html) in headless Chromium (Debian's chromium, driven by puppeteer-core),
// against a running `ctagent run` whose page is at --url and whose spool holds scans of one
// patient with lesions, delivered. Run by tests/ui/scan_view_browser_test.cpp, which made them
// through the reference imaging center. Passes (exit 0) when:
//   - the newest scan's row on Today links to its view, and the view opens from it,
//   - the view shows its slices, a lesion table, both lungs' involvement, two histograms, the
//     timing, and the earlier scan of the same patient as a follow-up,
//   - scrolling (wheel, arrow keys, slider) changes the slice drawn on the canvas,
//   - the mediastinal window draws other pixels than the lung window,
//   - the lesion overlay, toggled off, changes the canvas exactly where the SEG marks a lesion
//     (red there before, gray after; nothing else changes),
//   - no console error (a CSP violation is one), no page error, and every request went to
//     127.0.0.1 (request interception: any other host is aborted and fails the test).
// Saves screenshots (--screenshot-dir) and prints a JSON summary line ("scan-view: {...}").
import fs from 'node:fs';
import path from 'node:path';
import {arg, failures as failures_, guard, launch} from './harness.mjs';

const url = arg('url');
const screenshotDir = arg('screenshot-dir');
const chromium = arg('chromium', '/usr/bin/chromium');
const timeoutMs = Number(arg('timeout-s', '60')) * 1000;

const {list: failures, fail} = failures_('scan-view');

const browser = await launch({chromium, width: 1400, height: 1000});
const summary = {requests: 0, api: {}};
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeoutMs);
  await guard(page, {
    fail,
    summary,
    onRequest: (request) => {
      const p = new URL(request.url()).pathname;
      const kind = p.startsWith('/api/scans/') ? (p.split('/')[5] || 'scan') : p;
      summary.api[kind] = (summary.api[kind] || 0) + 1;
    },
  });

  // Today: the newest scan's row links to its view.
  await page.goto(url, {waitUntil: 'load'});
  await page.waitForFunction(() => document.querySelectorAll('#scans tbody tr').length >= 2);
  const status = await page.evaluate(async () => (await fetch('/api/status')).json());
  const scans = (status.scans || []).slice().sort((a, b) => a.created_utc.localeCompare(b.created_utc));
  if (scans.length < 2) throw new Error('expected two scans in the status, got ' + scans.length);
  const newest = scans[scans.length - 1].scan_uid;
  const earlier = scans[scans.length - 2].scan_uid;
  const link = 'tr[data-scan-uid="' + newest + '"] a.open-scan';
  // Found and clicked in one step inside the page: the live rows are rebuilt on every status
  // event, so an element handle taken a moment before may already be detached.
  await page.waitForSelector(link);
  await Promise.all([page.waitForNavigation({waitUntil: 'load'}),
                     page.evaluate((selector) => document.querySelector(selector).click(), link)]);
  if (!page.url().endsWith('/scan.html?scan=' + newest)) fail('the row opened ' + page.url());
  await page.waitForFunction(() => document.body.dataset.ready !== undefined);
  const ready = await page.$eval('body', (b) => b.dataset.ready);
  if (ready !== 'images') throw new Error('the view did not show images: ' + ready + ': ' +
                                          (await page.$eval('#message', (m) => m.textContent)));

  // The report.
  const report = await page.evaluate(() => ({
    category: document.getElementById('category').textContent,
    lesions: [...document.querySelectorAll('#lesions tbody tr')].map((tr) => ({
      first: Number(tr.dataset.firstSlice), last: Number(tr.dataset.lastSlice),
      cells: [...tr.children].map((td) => td.textContent)})),
    lungs: [...document.querySelectorAll('#lungs tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent)),
    histograms: document.querySelectorAll('#histograms figure svg rect').length,
    timing: document.getElementById('timing').textContent,
    followup: [...document.querySelectorAll('#followup li')].map((li) => ({uid: li.dataset.scanUid, text: li.textContent})),
    slices: Number(document.getElementById('slider').max) + 1,
  }));
  summary.report = report;
  if (report.lesions.length < 1) fail('no lesion in the table');
  if (report.lungs.length !== 2) fail('expected both lungs\' involvement, got ' + report.lungs.length);
  if (report.histograms !== 44) fail('expected two histograms of 22 bars, got ' + report.histograms + ' bars');
  if (!/later/.test(report.timing)) fail('no timing scan end -> report: ' + report.timing);
  if (report.followup.length !== 1 || report.followup[0].uid !== earlier) {
    fail('the follow-up should list the earlier scan ' + earlier + ': ' + JSON.stringify(report.followup));
  }
  if (report.slices < 10) fail('only ' + report.slices + ' slices');
  await page.screenshot({path: path.join(screenshotDir, 'ui-scan.png')});
  // A smaller copy for docs/images (the operator guide).
  await page.screenshot({path: path.join(screenshotDir, 'ui-scan-small.png'),
                         clip: {x: 0, y: 0, width: 1400, height: 1000, scale: 0.5}});

  // The canvas as the page drew it: its pixels and what the page says it shows.
  const drawn = async () => page.$eval('#slice', (c) => Number(c.dataset.drawn || 0));
  const waitDrawn = async (after) => page.waitForFunction((n) => Number(document.getElementById('slice').dataset.drawn) > n, {}, after);
  const canvas = async () => page.$eval('#slice', (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return {slice: Number(c.dataset.slice), window: c.dataset.window, overlay: c.dataset.overlay,
            width: c.width, pixels: Array.from(d)};
  });
  const red = (px) => {
    let n = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] > px[i + 1] + 40) ++n;
    return n;
  };

  // The view opens on the first lesion's middle slice, overlay on.
  const lesion = report.lesions[0];
  const withOverlay = await canvas();
  summary.start_slice = withOverlay.slice;
  if (withOverlay.slice < lesion.first || withOverlay.slice > lesion.last) {
    fail('the view opened on slice ' + withOverlay.slice + ', not within the first lesion ' + lesion.first + '..' + lesion.last);
  }
  summary.red_pixels_on = red(withOverlay.pixels);
  if (summary.red_pixels_on === 0) fail('the overlay is on but no pixel is red');
  // The overlay's own bytes for this slice: where they mark a lesion is where the canvas may change.
  const mask = await page.evaluate(async (uid, slice) => Array.from(new Uint8Array(await (await fetch(
      '/api/scans/' + uid + '/slices/' + slice + '/overlay')).arrayBuffer())), newest, withOverlay.slice);
  let n = await drawn();
  await page.click('#overlay');
  await waitDrawn(n);
  const withoutOverlay = await canvas();
  if (withoutOverlay.overlay !== 'false') fail('the overlay did not switch off');
  let changedInLesion = 0, changedElsewhere = 0, marked = 0;
  for (let p = 0; p < mask.length; ++p) {
    const changed = withOverlay.pixels[4 * p] !== withoutOverlay.pixels[4 * p] ||
                    withOverlay.pixels[4 * p + 1] !== withoutOverlay.pixels[4 * p + 1];
    if (mask[p] > 0) {
      ++marked;
      if (changed) ++changedInLesion;
    } else if (changed) {
      ++changedElsewhere;
    }
  }
  summary.overlay = {marked, changedInLesion, changedElsewhere, red_after: red(withoutOverlay.pixels)};
  if (marked === 0) fail('the SEG marks no lesion pixel on the lesion\'s middle slice');
  if (changedInLesion !== marked) fail('overlay off changed ' + changedInLesion + ' of the ' + marked + ' lesion pixels');
  if (changedElsewhere !== 0) fail('overlay off changed ' + changedElsewhere + ' pixels outside the lesion');
  if (summary.overlay.red_after !== 0) fail('red pixels with the overlay off: ' + summary.overlay.red_after);
  n = await drawn();
  await page.click('#overlay');
  await waitDrawn(n);

  // The mediastinal window: other pixels; lung is black there.
  n = await drawn();
  await page.click('#window-mediastinal');
  await waitDrawn(n);
  const mediastinal = await canvas();
  if (mediastinal.window !== 'mediastinal') fail('the window did not switch: ' + mediastinal.window);
  let differ = 0;
  for (let i = 0; i < mediastinal.pixels.length; i += 4) if (mediastinal.pixels[i + 1] !== withOverlay.pixels[i + 1]) ++differ;
  summary.window_pixels_changed = differ;
  if (differ < mediastinal.pixels.length / 4 / 10) fail('the mediastinal window changed only ' + differ + ' pixels');
  await page.screenshot({path: path.join(screenshotDir, 'ui-scan-mediastinal.png')});
  n = await drawn();
  await page.keyboard.press('w');  // back to the lung window by key
  await waitDrawn(n);
  if ((await canvas()).window !== 'lung') fail('W did not switch back to the lung window');

  // Scrolling: wheel, keys, slider; each draws another slice.
  const start = (await canvas()).slice;
  n = await drawn();
  await page.hover('#slice');
  await page.mouse.wheel({deltaY: 120});
  await waitDrawn(n);
  const afterWheel = await canvas();
  if (afterWheel.slice !== start + 1 && !(start === report.slices - 1 && afterWheel.slice === start)) {
    fail('the wheel went from slice ' + start + ' to ' + afterWheel.slice);
  }
  n = await drawn();
  await page.keyboard.press('ArrowUp');
  await page.keyboard.press('ArrowUp');
  await page.waitForFunction((s) => Number(document.getElementById('slice').dataset.slice) === s, {}, afterWheel.slice - 2);
  const afterKeys = await canvas();
  let pixelDiff = 0;
  for (let i = 0; i < afterKeys.pixels.length; i += 4) if (afterKeys.pixels[i + 1] !== afterWheel.pixels[i + 1]) ++pixelDiff;
  if (pixelDiff === 0) fail('two slices apart, the canvas did not change');
  n = await drawn();
  await page.$eval('#slider', (s) => {
    s.value = '0';
    s.dispatchEvent(new Event('input'));
  });
  await page.waitForFunction(() => document.getElementById('slice').dataset.slice === '0');
  summary.scrolled = {start, wheel: afterWheel.slice, keys: afterKeys.slice, slider: (await canvas()).slice,
                      pixels_changed: pixelDiff};
} catch (error) {
  fail('error: ' + (error && error.stack ? error.stack : error));
} finally {
  await browser.close();
}
summary.failures = failures;
console.log('scan-view: ' + JSON.stringify(summary));
process.exit(failures.length === 0 ? 0 : 1);
