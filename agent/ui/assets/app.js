// The operator's page, "Today": every scan with its state in plain words and the day's totals,
// live from the agent's event stream (/api/events; the browser reconnects by itself). Built with
// textContent only: nothing the agent sends is ever parsed as HTML.
// A scan whose report is HIGH-RISK turns red, a banner names how many wait, a tone sounds (Web
// Audio, made here: no sound file) until a person presses Confirm on its line; the agent records
// the confirmation with the scan (when, by whom), so it holds across restarts.
// The patients' names come from /api/patients (this page only; never in a URL or the status).
'use strict';

// The token the agent gives this page (GET /api/token, new at each agent start): confirming and
// reading names need it in the X-CTAgent-Token header.
let token = '';
// scan uid -> {name, id}; refetched when a scan appears that it does not know.
let patients = {};
let patientsAsked = new Set();
let patientsLoading = false;
let lastStatus = null;
// scan uid -> why its confirmation failed (shown on its line until it succeeds).
const confirmErrors = new Map();
const confirming = new Set();

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

function awaitingConfirmation(scan) {
  return category(scan) === 'HIGH-RISK' && !scan.high_risk_confirmed_utc;
}

// A DICOM person name (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX, up to three groups split by '=': the
// alphabetic, ideographic and phonetic forms) as a person reads it: "FAMILY, GIVEN MIDDLE".
function personName(pn) {
  const groups = String(pn || '').split('=').map((group) => {
    const [family, given, middle, prefix, suffix] = group.split('^').map((p) => (p || '').trim());
    const rest = [prefix, given, middle, suffix].filter((p) => p).join(' ');
    return family && rest ? family + ', ' + rest : family || rest;
  });
  return groups.filter((g) => g).join(' / ');
}

async function fetchToken() {
  try {
    const r = await fetch('/api/token', {cache: 'no-store'});
    if (r.ok) token = (await r.json()).token || '';
  } catch {
    // The agent is restarting; the event stream's reconnection asks again.
  }
}

// Names for the scans on screen: asked once per new scan (and again after a reconnection).
async function fetchPatients() {
  if (patientsLoading || !token) return;
  patientsLoading = true;
  try {
    const r = await fetch('/api/patients', {cache: 'no-store', headers: {'X-CTAgent-Token': token}});
    if (r.ok) {
      patients = await r.json();
      if (lastStatus) render(lastStatus);
    }
  } catch {
    // Tried again at the next new scan or reconnection.
  } finally {
    patientsLoading = false;
  }
}

async function confirmScan(uid) {
  if (confirming.has(uid)) return;
  confirming.add(uid);
  confirmErrors.delete(uid);
  try {
    for (let attempt = 0; attempt < 2; ++attempt) {  // a second time with a new token after a restart
      if (!token) await fetchToken();
      const r = await fetch('/api/scans/' + encodeURIComponent(uid) + '/confirm',
                            {method: 'POST', cache: 'no-store', headers: {'X-CTAgent-Token': token}});
      if (r.ok) return;  // the event stream brings the confirmation
      if (r.status === 403 && attempt === 0) {
        token = '';
        continue;
      }
      confirmErrors.set(uid, 'Not confirmed: ' + (await r.text()).trim());
      return;
    }
  } catch {
    confirmErrors.set(uid, 'Not confirmed: the agent did not answer; press Confirm again');
  } finally {
    confirming.delete(uid);
    if (lastStatus) render(lastStatus);
  }
}

// The alert's tone: two short beeps made by an oscillator (Web Audio). A browser plays sound only
// after a person interacted with the page (autoplay policy), so the page starts silent and says
// so; the "sound on" button (a click is that interaction) turns it on, and the choice is kept for
// the next visit, when the browser may still ask for a click first.
const sound = {context: null, wanted: localStorage.getItem('ctagent-alert-sound') === 'on', lastBeep: 0};

function soundPlaying() {
  return sound.wanted && sound.context !== null && sound.context.state === 'running';
}

function showSound() {
  const button = document.getElementById('sound');
  const playing = soundPlaying();
  button.className = playing ? 'sound-on' : 'sound-off';
  button.setAttribute('aria-pressed', String(playing));
  if (playing) button.textContent = 'Alert sound is on: turn it off';
  else if (sound.wanted) button.textContent = 'The browser holds the sound back until you click: turn alert sound on';
  else button.textContent = 'Sound is off: turn alert sound on';
}

function startAudio() {
  if (!sound.context) {
    try {
      sound.context = new AudioContext();
      sound.context.onstatechange = showSound;
    } catch {
      sound.context = null;
    }
  }
  if (sound.context && sound.context.state === 'suspended') sound.context.resume().then(showSound, showSound);
}

function toggleSound() {
  sound.wanted = !soundPlaying();
  localStorage.setItem('ctagent-alert-sound', sound.wanted ? 'on' : 'off');
  if (sound.wanted) {
    startAudio();
    sound.lastBeep = 0;
  }
  showSound();
  alertTick();
}

function beep() {
  const ctx = sound.context;
  const t = ctx.currentTime;
  for (const [start, frequency] of [[0, 880], [0.35, 660]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = 'sine';
    osc.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, t + start);
    gain.gain.exponentialRampToValueAtTime(0.4, t + start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + start + 0.3);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t + start);
    osc.stop(t + start + 0.32);
  }
  document.body.dataset.tones = String(Number(document.body.dataset.tones || 0) + 1);
}

// Every few seconds while a high-risk finding waits: the tone, if the sound is on.
function alertTick() {
  const waiting = Number(document.body.dataset.awaiting || 0);
  if (waiting === 0 || !soundPlaying()) return;
  const now = Date.now();
  if (now - sound.lastBeep < 4000) return;
  sound.lastBeep = now;
  beep();
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
  lastStatus = status;
  let askPatients = false;
  const scans = (status.scans || []).slice();
  // Newest first; a scan still acquiring has no creation time yet and goes on top.
  scans.sort((a, b) => (b.created_utc || '\uffff').localeCompare(a.created_utc || '\uffff'));
  // An older scan stays while it is not delivered, or its high-risk finding awaits confirmation.
  const today = scans.filter((s) => !s.created_utc || isToday(s.created_utc) || s.state !== 'delivered' ||
                                    awaitingConfirmation(s));
  const body = document.querySelector('#scans tbody');
  const rows = [];
  for (const scan of today) {
    const d = describe(scan, status);
    const row = document.createElement('tr');
    row.dataset.scanUid = scan.scan_uid;
    row.dataset.state = d.key;
    if (d.percent !== undefined) row.dataset.percent = String(d.percent);
    const high = category(scan) === 'HIGH-RISK';
    row.className = d.key + (high ? ' high-risk ' + (awaitingConfirmation(scan) ? 'awaiting' : 'confirmed') : '');
    const uid = scan.scan_uid || '';
    const patient = patients[uid];
    if (patient) {
      cell(row, 'patient', span('name', personName(patient.name)), span('pid', patient.id ? 'ID ' + patient.id : ''));
    } else {
      cell(row, 'patient', span('quiet', '—'));
      if (uid && !patientsAsked.has(uid)) {
        patientsAsked.add(uid);
        askPatients = true;
      }
    }
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
    const findings = cell(row, 'findings', document.createTextNode(findingsText(scan)));
    if (high && awaitingConfirmation(scan)) {
      findings.appendChild(span('confirm-state', 'HIGH RISK — awaiting confirmation'));
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'confirm';
      button.textContent = confirming.has(uid) ? 'Confirming…' : 'Confirm';
      button.disabled = confirming.has(uid);
      button.addEventListener('click', () => confirmScan(uid));
      findings.appendChild(button);
      if (confirmErrors.has(uid)) findings.appendChild(span('what-to-do', confirmErrors.get(uid)));
    } else if (high) {
      findings.appendChild(span('confirm-state', 'Confirmed at ' + localTime(scan.high_risk_confirmed_utc) + ' by ' +
                                                     (scan.high_risk_confirmed_by || 'a person')));
    }
    rows.push(row);
  }
  body.replaceChildren(...rows);
  if (askPatients) fetchPatients();

  const awaiting = scans.filter(awaitingConfirmation).length;
  const previous = Number(document.body.dataset.awaiting || 0);
  document.body.dataset.awaiting = String(awaiting);
  document.getElementById('alert').hidden = awaiting === 0;
  document.getElementById('alert-text').textContent =
      'High risk: ' + awaiting + (awaiting === 1 ? ' scan awaits' : ' scans await') + ' confirmation';
  if (awaiting > previous) sound.lastBeep = 0;  // a new alert sounds at once
  alertTick();
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
  document.getElementById('sound').addEventListener('click', toggleSound);
  if (sound.wanted) startAudio();  // plays at once only if the browser allows it without a click
  showSound();
  setInterval(alertTick, 1000);
  const events = new EventSource('/api/events');
  events.onopen = async () => {
    setLive(true);
    // A new agent start has a new token, and may know names it did not before.
    await fetchToken();
    patientsAsked = new Set();
    if (lastStatus) render(lastStatus);
  };
  events.onerror = () => setLive(false);  // EventSource retries by itself (the server says every 2 s)
  events.onmessage = (e) => {
    setLive(true);
    render(JSON.parse(e.data));
  };
}

document.addEventListener('DOMContentLoaded', start);
