// A scan's view (scan.html?scan=<uid>): the returned CT slices as the agent renders them (one byte
// per pixel, drawn on a canvas), the lesion overlay from the SEG, the report, the timing and the
// earlier scans of the same patient. Only the scan UID is in a URL. Built with textContent and
// DOM calls only: nothing the agent sends is parsed as HTML.
'use strict';

const view = {
  uid: new URLSearchParams(location.search).get('scan') || '',
  info: null,
  slice: 0,
  window: 'lung',
  overlay: true,
  cache: new Map(),  // url -> Uint8Array, the last few slices (bounded)
  drawn: 0,
  wanted: '',        // the last drawing asked for: an older answer arriving late is not drawn
};
const kCachedSlices = 96;

async function bytes(url) {
  if (view.cache.has(url)) return view.cache.get(url);
  const response = await fetch(url);
  if (!response.ok) throw new Error(url + ': ' + response.status + ' ' + (await response.text()));
  const data = new Uint8Array(await response.arrayBuffer());
  view.cache.set(url, data);
  if (view.cache.size > kCachedSlices) view.cache.delete(view.cache.keys().next().value);
  return data;
}

function base() {
  return '/api/scans/' + encodeURIComponent(view.uid);
}

async function draw() {
  const info = view.info;
  const index = view.slice;
  const key = index + '/' + view.window + '/' + view.overlay;
  view.wanted = key;
  const gray = await bytes(base() + '/slices/' + index + '/' + view.window);
  const overlay = view.overlay && info.has_seg ? await bytes(base() + '/slices/' + index + '/overlay') : null;
  if (view.wanted !== key) return;
  const canvas = document.getElementById('slice');
  canvas.width = info.columns;
  canvas.height = info.rows;
  const context = canvas.getContext('2d');
  const image = context.createImageData(info.columns, info.rows);
  const px = image.data;
  for (let i = 0; i < gray.length; ++i) {
    const g = gray[i];
    if (overlay && overlay[i] > 0) {
      // A lesion: tinted red, its gray still visible through it.
      px[4 * i] = (g + 255) >> 1;
      px[4 * i + 1] = g >> 2;
      px[4 * i + 2] = g >> 2;
    } else {
      px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = g;
    }
    px[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  const z = info.slices[index].z_mm;
  document.getElementById('slice-label').textContent =
      'slice ' + (index + 1) + ' of ' + info.slices.length + ', z ' + z.toFixed(1) + ' mm';
  canvas.dataset.slice = String(index);
  canvas.dataset.window = view.window;
  canvas.dataset.overlay = String(Boolean(overlay));
  canvas.dataset.drawn = String(++view.drawn);
}

function redraw() {
  draw().catch((e) => showMessage('The image could not be shown: ' + e.message));
}

function go(index) {
  const n = view.info.slices.length;
  view.slice = Math.max(0, Math.min(n - 1, index));
  document.getElementById('slider').value = String(view.slice);
  redraw();
}

function setWindow(name) {
  view.window = name;
  for (const w of ['lung', 'mediastinal']) {
    const b = document.getElementById('window-' + w);
    b.classList.toggle('on', w === name);
    b.setAttribute('aria-pressed', String(w === name));
  }
  redraw();
}

function setOverlay(on) {
  view.overlay = on;
  document.getElementById('overlay').checked = on;
  redraw();
}

function showMessage(text) {
  const m = document.getElementById('message');
  m.textContent = text;
  m.hidden = !text;
}

function td(row, text) {
  const c = document.createElement('td');
  c.textContent = text;
  row.appendChild(c);
}

function signed(v, unit) {
  return (v > 0 ? '+' : '') + v.toFixed(unit === 'mL' ? 2 : 2) + ' ' + unit;
}

const kSvg = 'http://www.w3.org/2000/svg';
function svgElement(name, attributes) {
  const e = document.createElementNS(kSvg, name);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, String(v));
  return e;
}

// One lung's density histogram as bars (log scale: aerated lung outnumbers lesions a hundredfold).
function histogram(lung, spec) {
  const counts = lung.histogram;
  const width = 260, height = 120, left = 4, bottom = 16;
  const bar = (width - left) / counts.length;
  const max = Math.max(1, ...counts.map((c) => Math.log10(1 + c)));
  const svg = svgElement('svg', {width, height, viewBox: '0 0 ' + width + ' ' + height, role: 'img',
                                 'aria-label': lung.lung + ' lung density histogram'});
  counts.forEach((c, i) => {
    const h = ((height - bottom - 4) * Math.log10(1 + c)) / max;
    const from = spec.min_hu + i * spec.bin_hu;
    const r = svgElement('rect', {x: left + i * bar + 0.5, y: height - bottom - h, width: bar - 1, height: h,
                                  class: from >= -700 ? 'bar lesion-range' : 'bar'});
    const title = svgElement('title', {});
    title.textContent = from + ' .. ' + (from + spec.bin_hu) + ' HU: ' + c + ' voxels';
    r.appendChild(title);
    svg.appendChild(r);
  });
  for (const hu of [-1000, -500, 0]) {
    const i = (hu - spec.min_hu) / spec.bin_hu;
    const t = svgElement('text', {x: left + i * bar, y: height - 4, class: 'axis'});
    t.textContent = hu + ' HU';
    svg.appendChild(t);
  }
  const figure = document.createElement('figure');
  figure.appendChild(svg);
  const caption = document.createElement('figcaption');
  caption.textContent = (lung.lung === 'right' ? 'Right' : 'Left') + ' lung, voxels per 50 HU (log scale; ' +
                        'orange: -700 HU and denser)';
  figure.appendChild(caption);
  figure.dataset.lung = lung.lung;
  return figure;
}

function duration(seconds) {
  if (seconds < 120) return Math.round(seconds) + ' s';
  if (seconds < 7200) return Math.round(seconds / 60) + ' min';
  return (seconds / 3600).toFixed(1) + ' h';
}

function localTime(utc) {
  const t = new Date(utc);
  return isNaN(t) ? utc : t.toLocaleString([], {dateStyle: 'short', timeStyle: 'short'});
}

function renderReport(info) {
  const words = {'NORMAL': 'Normal', 'HIGH-RISK': 'High risk', 'FAILED': 'Analysis failed'};
  const f = info.findings || {};
  const category = document.getElementById('category');
  category.textContent = words[f.category] || (info.findings ? 'No AI report' : 'Waiting for the report');
  category.className = 'category ' + (f.category || '').toLowerCase();
  const report = info.report || {lesions: [], lungs: []};
  const rows = report.lesions.map((l) => {
    const row = document.createElement('tr');
    row.dataset.firstSlice = String(l.first_slice);
    row.dataset.lastSlice = String(l.last_slice);
    td(row, String(l.number));
    td(row, l.type || '');
    td(row, l.lung || '');
    td(row, l.volume_ml.toFixed(2) + ' mL');
    td(row, l.mean_hu !== undefined ? String(l.mean_hu) : '');
    td(row, l.first_slice !== undefined ? (l.first_slice + 1) + '–' + (l.last_slice + 1) : '');
    // A lesion's row shows its middle slice.
    row.addEventListener('click', () => go(Math.round((l.first_slice + l.last_slice) / 2)));
    return row;
  });
  document.querySelector('#lesions tbody').replaceChildren(...rows);
  document.getElementById('no-lesions').hidden = rows.length > 0 || !info.has_seg;
  document.querySelector('#lungs tbody').replaceChildren(...report.lungs.map((l) => {
    const row = document.createElement('tr');
    row.dataset.lung = l.lung;
    td(row, l.lung === 'right' ? 'Right' : 'Left');
    td(row, l.volume_ml.toFixed(0) + ' mL');
    td(row, l.lesion_volume_ml.toFixed(2) + ' mL');
    td(row, l.involvement_percent.toFixed(2) + ' %');
    return row;
  }));
  document.getElementById('histograms').replaceChildren(...report.lungs.map((l) => histogram(l, report.histogram)));

  const t = info.timing || {};
  let timing = 'Report not here yet.';
  if (t.scan_end_to_report_s !== undefined) {
    timing = 'Scan ended ' + localTime(t.scan_end_utc) + '; report ' + duration(t.scan_end_to_report_s) + ' later.';
  } else if (t.report_utc) {
    timing = 'Report at ' + localTime(t.report_utc) + '.';
  }
  document.getElementById('timing').textContent = timing;

  const items = (info.followup || []).map((e) => {
    const li = document.createElement('li');
    li.dataset.scanUid = e.scan_uid;
    const a = document.createElement('a');
    a.href = '/scan.html?scan=' + encodeURIComponent(e.scan_uid);
    a.textContent = localTime(e.created_utc);
    li.appendChild(a);
    li.appendChild(document.createTextNode(' ' + (words[e.category] || '') + ': lesions ' +
                                           (e.total_lesion_volume_ml || 0).toFixed(2) + ' mL then, '));
    const change = document.createElement('span');
    const dv = e.change_lesion_volume_ml || 0;
    change.className = dv > 0.05 ? 'worse' : dv < -0.05 ? 'better' : '';
    change.textContent = signed(dv, 'mL') + ' since';
    li.appendChild(change);
    const points = e.change_involvement_points || {};
    li.appendChild(document.createTextNode('; involvement right ' + signed(points.right || 0, 'points') + ', left ' +
                                           signed(points.left || 0, 'points')));
    return li;
  });
  document.getElementById('followup').replaceChildren(...items);
  document.getElementById('no-followup').hidden = items.length > 0;
}

async function start() {
  document.getElementById('scan-uid').textContent = '…' + view.uid.slice(-12);
  const response = await fetch(base());
  if (!response.ok) {
    showMessage(await response.text());
    return;
  }
  const info = await response.json();
  view.info = info;
  renderReport(info);
  if (!info.results) {
    showMessage(info.message || 'No images yet.');
    document.body.dataset.ready = 'no-results';
    return;
  }
  document.getElementById('view').hidden = false;
  const slider = document.getElementById('slider');
  slider.max = String(info.slices.length - 1);
  slider.addEventListener('input', () => go(Number(slider.value)));
  document.getElementById('window-lung').addEventListener('click', () => setWindow('lung'));
  document.getElementById('window-mediastinal').addEventListener('click', () => setWindow('mediastinal'));
  document.getElementById('overlay').addEventListener('change', (e) => setOverlay(e.target.checked));
  const canvas = document.getElementById('slice');
  canvas.addEventListener('wheel', (e) => {
    e.preventDefault();
    go(view.slice + (e.deltaY > 0 ? 1 : -1));
  }, {passive: false});
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type === 'range') return;  // the slider has its own keys
    const steps = {ArrowDown: 1, ArrowRight: 1, PageDown: 5, ArrowUp: -1, ArrowLeft: -1, PageUp: -5};
    if (e.key in steps) {
      e.preventDefault();
      go(view.slice + steps[e.key]);
    } else if (e.key === 'w' || e.key === 'W') {
      setWindow(view.window === 'lung' ? 'mediastinal' : 'lung');
    } else if (e.key === 'o' || e.key === 'O') {
      setOverlay(!view.overlay);
    }
  });
  // The first lesion's middle slice, else the middle of the scan.
  const first = (info.report && info.report.lesions || []).find((l) => l.first_slice !== undefined);
  go(first ? Math.round((first.first_slice + first.last_slice) / 2) : Math.floor(info.slices.length / 2));
  document.body.dataset.ready = 'images';
}

document.addEventListener('DOMContentLoaded', () => {
  start().catch((e) => showMessage('The scan could not be loaded: ' + e.message));
});
