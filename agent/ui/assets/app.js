// The operator's page, "Today": every scan with its state in plain words and the day's totals,
// live from the agent's event stream (/api/events; the browser reconnects by itself). Built with
// textContent only: nothing the agent sends is ever parsed as HTML.
'use strict';

// One scan's state, in the words an operator needs: what is happening and, when something is
// wrong, what to do.
function describe(scan, status) {
  const progress = scan.progress || {};
  const paused = status.daemon && status.daemon.uploads_paused;
  const total = Math.max(scan.chunks_total || 0, progress.chunks_stored || 0);
  const uploaded = Math.max(scan.chunks_uploaded || 0, progress.chunks_uploaded || 0);
  if (scan.state === 'failed') {
    const d = {
      key: 'failed',
      word: 'Failed',
      detail: scan.failure_reason || 'no reason recorded',
      todo: 'Check the scanner and the terminal (`ctagent check`), repeat the scan if the patient is still there, ' +
            'and call the field technician if it happens again.',
    };
    if (scan.acknowledged_utc) d.todo = 'Seen by a person at ' + localTime(scan.acknowledged_utc) + '.';
    return d;
  }
  if (scan.state === 'delivered') return {key: 'delivered', word: 'Delivered to the console'};
  if (scan.state === 'results-received') return {key: 'delivering', word: 'Results here; sending them to the console'};
  if (scan.state === 'uploaded') return {key: 'waiting', word: 'Uploaded; waiting for results'};
  if (scan.state === 'acquiring' || progress.phase === 'acquiring') {
    const views = progress.views_acquired || scan.views_acquired || 0;
    const parts = (progress.chunks_stored || 0) + ' parts safe on disk, ' + uploaded + ' uploaded';
    return {key: 'acquiring', word: 'Acquiring', detail: (views > 0 ? views + ' views, ' : '') + parts};
  }
  // Acquired: every view is safe on disk; the parts go up to the imaging center.
  if (paused) return {key: 'safe', word: 'Safe on disk; uploads are paused'};
  if (total > 0 && uploaded >= total) return {key: 'waiting', word: 'Uploaded; waiting for results'};
  const percent = total > 0 ? Math.floor((100 * uploaded) / total) : 0;
  const d = {key: 'uploading', word: 'Uploading ' + percent + ' %', percent: percent};
  const rate = status.backlog && status.backlog.rate_bytes_per_second;
  if (rate > 0 && scan.bytes_to_upload > 0) d.detail = 'about ' + duration(scan.bytes_to_upload / rate) + ' left';
  if (uploaded === 0 && !scan.progress) {
    d.key = 'safe';
    d.word = 'Safe on disk; upload starts soon';
  }
  return d;
}

function duration(seconds) {
  if (seconds < 60) return Math.max(1, Math.round(seconds)) + ' s';
  if (seconds < 3600) return Math.round(seconds / 60) + ' min';
  return (seconds / 3600).toFixed(1) + ' h';
}

function localTime(utc) {
  const t = new Date(utc);
  return isNaN(t) ? '' : t.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
}

function isToday(utc) {
  const t = new Date(utc);
  return !isNaN(t) && t.toDateString() === new Date().toDateString();
}

function category(scan) {
  return (scan.findings && scan.findings.category) || '';
}

function findingsText(scan) {
  const f = scan.findings;
  if (!f) return '';
  const words = {'NORMAL': 'Normal', 'HIGH-RISK': 'High risk', 'FAILED': 'Analysis failed'};
  let text = words[f.category] || '';
  if (f.category === 'FAILED' && f.failure_reason) text += ': ' + f.failure_reason;
  else if (f.lesion_count !== undefined) text += (text ? ', ' : '') + f.lesion_count + ' lesion(s)';
  return text;
}

function cell(row, className, ...parts) {
  const td = document.createElement('td');
  td.className = className;
  for (const p of parts) if (p) td.appendChild(p);
  row.appendChild(td);
  return td;
}

function span(className, text) {
  const s = document.createElement('span');
  s.className = className;
  s.textContent = text;
  return s;
}

function render(status) {
  const scans = (status.scans || []).slice();
  // Newest first; a scan still acquiring has no creation time yet and goes on top.
  scans.sort((a, b) => (b.created_utc || '\uffff').localeCompare(a.created_utc || '\uffff'));
  const today = scans.filter((s) => !s.created_utc || isToday(s.created_utc) || s.state !== 'delivered');
  const body = document.querySelector('#scans tbody');
  const rows = [];
  for (const scan of today) {
    const d = describe(scan, status);
    const row = document.createElement('tr');
    row.dataset.scanUid = scan.scan_uid;
    row.dataset.state = d.key;
    if (d.percent !== undefined) row.dataset.percent = String(d.percent);
    row.className = d.key + (category(scan) === 'HIGH-RISK' ? ' high-risk' : '');
    const uid = scan.scan_uid || '';
    // The scan's images and report (scan.html); only the scan UID, never patient data, in the URL.
    const open = document.createElement('a');
    open.className = 'open-scan';
    open.href = '/scan.html?scan=' + encodeURIComponent(uid);
    open.textContent = 'images & report';
    cell(row, 'scan', span('uid', '…' + uid.slice(-8)), open);
    cell(row, 'started', document.createTextNode(scan.created_utc ? localTime(scan.created_utc) : 'now'));
    const state = cell(row, 'state', span('word', d.word));
    if (d.percent !== undefined) {
      const bar = document.createElement('progress');
      bar.max = 100;
      bar.value = d.percent;
      state.appendChild(bar);
    }
    if (d.detail) state.appendChild(span('detail', ' — ' + d.detail));
    if (d.todo) state.appendChild(span('what-to-do', d.todo));
    cell(row, 'findings', document.createTextNode(findingsText(scan)));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  document.getElementById('no-scans').hidden = rows.length > 0;

  const counted = scans.filter((s) => s.created_utc && isToday(s.created_utc));
  document.getElementById('total-scanned').textContent = String(counted.length);
  document.getElementById('total-normal').textContent = String(counted.filter((s) => category(s) === 'NORMAL').length);
  document.getElementById('total-high-risk').textContent =
      String(counted.filter((s) => category(s) === 'HIGH-RISK').length);
  document.getElementById('total-failed').textContent =
      String(counted.filter((s) => s.state === 'failed' || category(s) === 'FAILED').length);
  document.getElementById('paused').hidden = !(status.daemon && status.daemon.uploads_paused);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

function setLive(on) {
  const live = document.getElementById('live');
  live.className = 'live ' + (on ? 'on' : 'off');
  live.textContent = on ? 'live' : 'reconnecting…';
}

function start() {
  const events = new EventSource('/api/events');
  events.onopen = () => setLive(true);
  events.onerror = () => setLive(false);  // EventSource retries by itself (the server says every 2 s)
  events.onmessage = (e) => {
    setLive(true);
    render(JSON.parse(e.data));
  };
}

document.addEventListener('DOMContentLoaded', start);
