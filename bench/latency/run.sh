#!/usr/bin/env bash
# bench/latency: scan end -> AI report (SR) on the console, for the demo protocol, split by stage.
#
# Starts the reference imaging center (cloud/imaging-center.sh: tus server, Orthanc, worker) and a
# console (DCMTK storescp) on free loopback ports in a temporary folder, then runs N scans one
# after the other with `ctagent scan` and config/demo.json's protocol, results and codec
# (cloud, spool and console pointed at this run). Per scan it collects wall-clock stamps from the
# agent's log, the tus store, the worker's done marker, the agent's findings.json and the SR's file
# at the console (stages.mjs says which stamp comes from where) and prints a table: median and
# worst per stage, the whole chain (scan end -> SR on the console) and the agent's share (SR stored
# in Orthanc -> SR on the console), with its 95th percentile. Prints figures; asserts nothing.
# Everything it starts is stopped by PID on exit.
#
# Usage: bench/latency/run.sh [--build DIR] [--scans 5] [--image-size 256] [--nagle on|off]
#                             [--work DIR] [--keep] [--set KEY=JSON]...
#   --build       the build folder with agent/ctagent and cloud/worker/ctcloud-worker (build/release)
#   --image-size  the worker's reconstruction matrix (scripts/demo's, 256)
#   --nagle off   TCP_NODELAY=1 in the environment of ctagent and storescp: DCMTK 3.6.7 leaves
#                 Nagle's algorithm on otherwise, and each C-STORE then waits ~40 ms for a delayed
#                 ACK (docs/results.md, "Latency"); on (the default): DCMTK's default
#   --set results.poll_max_interval_ms=1000   overrides one key of the generated agent config
# Each scan takes about 5.5 s of acquisition (real time) plus the chain; 5 scans about 2 minutes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build/release
scans=5
image_size=256
nagle=on
work=""
keep=0
sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$(cd "$2" && pwd); shift 2 ;;
    --scans) scans=$2; shift 2 ;;
    --image-size) image_size=$2; shift 2 ;;
    --nagle) nagle=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --set) sets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$scans" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --scans must be a positive number, not $scans" >&2; exit 2; }
case "$nagle" in
  on) dicom_env=() ;;
  off) dicom_env=(TCP_NODELAY=1) ;;
  *) echo "run.sh: --nagle is on or off, not $nagle" >&2; exit 2 ;;
esac

agent_exe=$build/agent/ctagent
worker_exe=$build/cloud/worker/ctcloud-worker
for exe in "$agent_exe" "$worker_exe"; do
  [ -x "$exe" ] || { echo "run.sh: $exe missing; build the ctagent and ctcloud-worker targets of $build first" >&2; exit 2; }
done
for tool in node storescp curl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool missing (scripts/bootstrap)" >&2; exit 2; }
done

if [ -z "$work" ]; then work=$(mktemp -d /tmp/ctagent-latency-bench.XXXXXX); fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
center=$work/center
console_pid=""
cleanup() {
  if [ -n "$console_pid" ]; then
    kill "$console_pid" 2>/dev/null || true
    wait "$console_pid" 2>/dev/null || true
  fi
  "$src/cloud/imaging-center.sh" stop "$center" >/dev/null 2>&1 || true
  if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "run.sh: kept $work"; fi
}
trap cleanup EXIT

# Free ports: tus, Orthanc's HTTPS port and console on loopback; Orthanc's own HTTP port free on
# every interface, where Orthanc binds it (cloud/imaging-center.sh says why not "that + 1").
free_port() {  # $1 = address
  node -e 'const s=require("net").createServer().listen(0,process.argv[1],()=>{console.log(s.address().port);s.close();});' "$1"
}
tus_port=$(free_port 127.0.0.1)
for _ in $(seq 1 50); do
  orthanc_port=$(free_port 127.0.0.1)
  orthanc_internal_port=$(free_port 0.0.0.0)
  if [ "$orthanc_port" != "$tus_port" ] && [ "$orthanc_internal_port" != "$tus_port" ] &&
     [ "$orthanc_internal_port" != "$orthanc_port" ]; then
    break
  fi
done
console_port=$(free_port 127.0.0.1)

CTCLOUD_WORKER=$worker_exe "$src/cloud/imaging-center.sh" start "$center" --tus-port "$tus_port" \
  --orthanc-port "$orthanc_port" --orthanc-internal-port "$orthanc_internal_port" --image-size "$image_size" > "$work/center-start.log" 2>&1 \
  || { echo "run.sh: the imaging center did not start:" >&2; cat "$work/center-start.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$center/center.env"

mkdir -p "$work/console"
env ${dicom_env[@]+"${dicom_env[@]}"} storescp --aetitle CONSOLE --output-directory "$work/console" "$console_port" > "$work/console.log" 2>&1 &
console_pid=$!
for _ in $(seq 1 100); do port_busy "$console_port" && break; sleep 0.1; done
port_busy "$console_port" || { echo "run.sh: storescp did not listen on $console_port" >&2; exit 1; }

# The agent's configuration: config/demo.json with this run's cloud, spool and console.
node -e '
  const fs = require("fs");
  const [demo, out, spool, tus, dicomweb, ca, password, consolePort, ...sets] = process.argv.slice(1);
  const cfg = JSON.parse(fs.readFileSync(demo));
  cfg.terminal_id = "bench-latency";
  cfg.log_level = "info";
  cfg.spool = { ...cfg.spool, directory: spool };
  cfg.cloud = { ...cfg.cloud, upload_url: tus, dicomweb_url: dicomweb.replace(/\/$/, ""), password_file: password,
                tls: { ...(cfg.cloud.tls || {}), ca_file: ca } };
  cfg.console = { ...cfg.console, port: Number(consolePort) };
  // The demo takes its patient from a worklist (scripts/demo starts one); the bench measures the
  // pipeline, so its scans carry the configuration fallback identity instead.
  cfg.worklist = { ...cfg.worklist, enabled: false };
  cfg.study = { ...cfg.study, patient_id: "BENCH-LATENCY", patient_name: "BENCH^LATENCY" };
  for (const kv of sets) {
    const eq = kv.indexOf("=");
    const keys = kv.slice(0, eq).split(".");
    let o = cfg;
    for (const k of keys.slice(0, -1)) o = (o[k] ??= {});
    o[keys[keys.length - 1]] = JSON.parse(kv.slice(eq + 1));
  }
  fs.writeFileSync(out, JSON.stringify(cfg, null, 2));' \
  "$src/config/demo.json" "$work/agent.json" "$work/spool" "$TUS_URL" "$DICOMWEB_URL" "$CA_FILE" \
  "$AGENT_PASSWORD_FILE" "$console_port" ${sets[@]+"${sets[@]}"}

echo "# bench/latency: $scans scan(s) of config/demo.json's protocol, worker image ${image_size} x ${image_size}," \
  "DICOM Nagle $nagle, $(nproc) CPUs, $(date -u +%FT%TZ)"
[ ${#sets[@]} -gt 0 ] && echo "# overrides: ${sets[*]}"
echo "# load before: $(uptime)"
: > "$work/stamps.jsonl"
for i in $(seq 1 "$scans"); do
  if ! env ${dicom_env[@]+"${dicom_env[@]}"} timeout 600 "$agent_exe" scan --config "$work/agent.json" > "$work/scan-$i.log" 2>&1; then
    echo "run.sh: scan $i failed (its log follows; the worker's is $center/logs/worker.log):" >&2
    tail -20 "$work/scan-$i.log" >&2
    exit 1
  fi
  node "$here/stages.mjs" scan "$work/scan-$i.log" "$TUS_STORE" "$WORK_DIR" "$work/spool" "$work/console" \
    >> "$work/stamps.jsonl"
  echo "# scan $i of $scans done"
done
echo "# load after: $(uptime)"
node "$here/stages.mjs" table "$work/stamps.jsonl"
