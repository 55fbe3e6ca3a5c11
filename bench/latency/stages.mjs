// bench/latency helper (node, no dependencies): the stamps of one scan, and the table over scans.
//
//   node stages.mjs scan SCAN_LOG TUS_STORE WORK_DIR SPOOL_DIR CONSOLE_DIR   -> one JSON line
//   node stages.mjs table FILE.jsonl                                          -> the table
//
// Where each stamp comes from (all wall clock of this machine, milliseconds since the epoch):
//   scan_end            the agent's log line "scan UID: N chunks (...) made durable" (the last
//                       view acquired and every chunk compressed and synced to the spool)
//   manifest_uploaded   the mtime of the manifest's upload in the tus store (its last byte written)
//   picked_up .. stored the worker's done marker, WORK/done/UID.json, unix_ms; stored is after
//                       Orthanc answered the SR's POST (the SR is stored last)
//   discovered .. delivered   the agent's findings record, SPOOL/scans/UID/results/findings.json,
//                       timeline_unix_ms (docs/results.md, "Findings record")
//   sr_on_console       the mtime of the SR's file in storescp's output folder
import fs from "node:fs";
import path from "node:path";

function fail(message) {
  process.stderr.write(`stages.mjs: ${message}\n`);
  process.exit(1);
}

function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    fail(`cannot read ${what} ${file}: ${e.message}`);
  }
}

// "2026-01-01T10:00:00.123Z INFO  [scan] ..." -> epoch ms
function logStamp(line) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) /.exec(line);
  return m ? Date.parse(m[1]) : NaN;
}

function scan([scanLog, tusStore, workDir, spoolDir, consoleDir]) {
  const lines = fs.readFileSync(scanLog, "utf8").split("\n");
  let uid = null;
  let scanEnd = NaN;
  for (const line of lines) {
    const armed = /\[scan\] scan (\S+) (armed|announced by the detector)/.exec(line);
    if (armed && !uid) uid = armed[1];
    if (uid && line.includes(`[scan] scan ${uid}: `) && line.includes(" made durable in ")) scanEnd = logStamp(line);
  }
  if (!uid) fail(`no "scan UID armed" line in ${scanLog} (log_level must be info)`);
  if (!Number.isFinite(scanEnd)) fail(`no "made durable" line for scan ${uid} in ${scanLog}`);

  let manifestUploaded = NaN;
  for (const f of fs.readdirSync(tusStore).filter((f) => f.endsWith(".json"))) {
    const info = readJson(path.join(tusStore, f), "tus upload record");
    const md = info.metadata || {};
    if (md.kind === "manifest" && md.scan_uid === uid) {
      manifestUploaded = fs.statSync(path.join(tusStore, f.slice(0, -5))).mtimeMs;
    }
  }
  if (!Number.isFinite(manifestUploaded)) fail(`no manifest upload for scan ${uid} in ${tusStore}`);

  const done = readJson(path.join(workDir, "done", `${uid}.json`), "worker done marker");
  const w = done.unix_ms || {};
  for (const k of ["picked_up", "reconstructed", "analysed", "encoded", "stored"]) {
    if (!(w[k] > 0)) fail(`the worker's done marker for ${uid} has no unix_ms.${k}`);
  }
  const sr = (done.results || []).find((r) => r.kind === "sr");
  if (!sr) fail(`the worker stored no SR for ${uid}`);

  const findings = readJson(path.join(spoolDir, "scans", uid, "results", "findings.json"), "findings record");
  const a = findings.timeline_unix_ms || {};
  for (const k of ["discovered", "retrieved", "validated", "delivered"]) {
    if (!(a[k] > 0)) fail(`findings.json of ${uid} has no timeline_unix_ms.${k} (is the agent built from this tree?)`);
  }
  const srFile = fs.readdirSync(consoleDir).find((f) => f.endsWith(`.${sr.sop_instance_uid}`));
  if (!srFile) fail(`the console (${consoleDir}) has no file of the SR ${sr.sop_instance_uid}`);
  const srOnConsole = fs.statSync(path.join(consoleDir, srFile)).mtimeMs;

  const t = done.timings_ms || {};
  const out = {
    scan_uid: uid,
    category: findings.category,
    lesion_count: findings.lesion_count,
    instances: (done.instance_count || 0) + (done.result_instance_count || 0),
    stamps: {
      scan_end: scanEnd,
      manifest_uploaded: manifestUploaded,
      ...w,
      ...a,
      sr_on_console: srOnConsole,
    },
    dicom_ms: t.dicom || 0,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

// The stages of the table, from the stamps of one scan.
function stagesOf(r) {
  const s = r.stamps;
  const analysisWithDicom = s.analysed - s.reconstructed;
  return [
    ["upload tail (scan end -> manifest uploaded)", s.manifest_uploaded - s.scan_end],
    ["center queue (-> worker picked up)", s.picked_up - s.manifest_uploaded],
    ["reconstruction (decode + FBP)", s.reconstructed - s.picked_up],
    ["CT DICOM writing", r.dicom_ms],
    ["analysis", analysisWithDicom - r.dicom_ms],
    ["encoding (SEG, report pages, SR)", s.encoded - s.analysed],
    ["PACS store (-> SR stored in Orthanc)", s.stored - s.encoded],
    ["agent discovery (-> SR listed by QIDO-RS)", s.discovered - s.stored],
    ["retrieve (WADO-RS, per-instance check, spool)", s.retrieved - s.discovered],
    ["validate (result-set check, findings)", s.validated - s.retrieved],
    ["C-STORE (-> console acknowledged all)", s.delivered - s.validated],
    ["whole chain (scan end -> SR on console)", s.sr_on_console - s.scan_end],
    ["agent's share (SR stored -> SR on console)", s.sr_on_console - s.stored],
  ];
}

function quantile(sorted, q) {  // nearest rank
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function table([file]) {
  const runs = fs.readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
  if (runs.length === 0) fail(`no scans in ${file}`);
  const sec = (ms) => (ms / 1000).toFixed(2);
  const per = runs.map(stagesOf);
  const names = per[0].map(([n]) => n);
  const width = Math.max(...names.map((n) => n.length));
  console.log(`| ${"stage".padEnd(width)} | median s | worst s | ${runs.map((_, i) => `#${i + 1}`.padStart(5)).join(" | ")} |`);
  console.log(`|${"-".repeat(width + 2)}|---------:|--------:|${runs.map(() => "------:").join("|")}|`);
  names.forEach((name, i) => {
    const values = per.map((p) => p[i][1]);
    const sorted = [...values].sort((a, b) => a - b);
    console.log(`| ${name.padEnd(width)} | ${sec(quantile(sorted, 0.5)).padStart(8)} | ${sec(sorted[sorted.length - 1]).padStart(7)} | ` +
                `${values.map((v) => sec(v).padStart(5)).join(" | ")} |`);
  });
  const share = per.map((p) => p[p.length - 1][1]).sort((a, b) => a - b);
  const chain = per.map((p) => p[p.length - 2][1]).sort((a, b) => a - b);
  console.log("");
  console.log(`scans: ${runs.length}; whole chain median ${sec(quantile(chain, 0.5))} s, worst ${sec(chain[chain.length - 1])} s ` +
              `(goal < 15 s); agent's share p95 ${sec(quantile(share, 0.95))} s (nearest rank; goal < 2 s)`);
  const cats = runs.map((r) => `${r.category}/${r.lesion_count}/${r.instances}`);
  console.log(`category/lesions/instances per scan: ${cats.join(", ")}`);
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "scan" && args.length === 5) scan(args);
else if (mode === "table" && args.length === 1) table(args);
else fail("usage: stages.mjs scan SCAN_LOG TUS_STORE WORK_DIR SPOOL_DIR CONSOLE_DIR | table FILE.jsonl");
