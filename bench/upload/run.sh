#!/usr/bin/env bash
# bench/upload: tus upload throughput as a fraction of link capacity.
#
# A "scanner" and a "cloud" network namespace joined by a veth pair whose scanner side is
# shaped with tc tbf (the link rate); in "cloud" the reference tus server, and the fault proxy
# in front of it adding delay (netem does not work on this machine).
#
# What is uploaded: the real compressed chunks of a scan. `ctagent scan` (sim driver, the
# 16-slice helical protocol and codec settings of config/examples/sixteen-slice-helical.json, more rotations) runs once against the server; its chunk
# files and manifest are taken from the server's store. Each cell uploads the first chunks of
# that scan (about --seconds at the link rate, at most --max-mib) and their manifest, the way the
# agent does: one tus upload per chunk, --parallel at a time, the manifest last. Three clients
# upload those same bytes to the same server, one after another, in each cell (rate x delay):
#   agent   the agent's Uploader (core::Uploader over a spool: journaling, PATCH size, TLS reuse)
#   tusjs   the official tus-js-client, same uploads, same parallelism and PATCH size
#   curl    the curl CLI: per upload one POST, then one PATCH with the whole file; same parallelism
# plus the ceiling: curl inside "cloud" to the tus server directly over loopback, unshaped, one
# upload of --max-mib. Prints a table; ratios are to min(link rate, ceiling) and to tus-js-client.
#
# Needs root (ip netns, tc), the build's ctagent, upload_bench and fault_proxy targets, and
# `npm ci` in this folder. Usage:
#   bench/upload/run.sh --build build/links-release [--rates 20,100,1000] [--delays 0,30,80]
#        [--clients agent,tusjs,curl] [--seconds 10] [--patch-mib 4] [--max-mib 256] [--parallel N]
#        [--repeat R] [--agent-spool DIR] [--server-store DIR] [--agent-b UPLOAD_BENCH] [--server-workers N]
#        [--warm]
# A cell is --seconds of the link's time (10 s: shorter than one real scan at 20 or 100 Mbit/s; a
# 16-slice chest scan is ~500 MiB compressed), because each scan's upload pays ~4 round trips
# that no tus client with a journal can overlap (docs/links.md); --seconds 4 shows them.
# "agent CPU %" is the agent client's CPU time (all threads, user + system) during its upload, in %
# of one core: the median over the repeats; "server CPU %" and "proxy CPU %" the tus server's
# and the fault proxy's over the same upload (the peers share this machine's cores: near 100 %
# for the single-threaded server means the server, not the link, set the figure); "agent window" the most uploads it let send at once
# (admitted by the measured rate x round trip, between cloud.parallel_uploads and
# cloud.max_uploads_in_flight; --parallel sets the first), the median over the repeats. --delays are added round-trip times [ms], half each way. --repeat runs every client R times per
# cell, interleaved (agent, tusjs, curl, agent, ...), and reports each client's median.
# --agent-spool puts the agent's spool elsewhere (default: under /tmp, a real disk here; a tmpfs
# shows what the journal's disk syncs cost). --server-store DIR keeps the tus server's uploads in a
# folder made inside DIR (default: under /tmp; a tmpfs such as /dev/shm takes this machine's disk
# out of the server's side: cells of several GiB otherwise wait for its writeback).
# --agent-b adds a client "agentb": another build of upload_bench (a variant to compare within
# one run; build/.../bench/upload/upload_bench_async is the uploads on AsyncHttp, one event
# loop); list it in --clients, read the "agent-b" columns (Mbit/s,
# ratio, CPU % as for the agent, and the most uploads in flight upload_bench_async allowed).
# --server-workers N runs the tus server as N node processes sharing its port (server.mjs
# --workers; default 1): one process holds about 1 Gbit/s of TLS uploads on a core, so in the
# 1000 Mbit/s cells it, not the client, sets the figure; "server CPU %" is then all N processes'.
# --warm has the agent client (upload_bench --scans 2) upload the cell's chunks as two scans, one
# after the other, with the same Uploader: the "agent Mbit/s" column stays the first (a fresh
# process: TLS handshakes, the first creation, the window grown from cloud.parallel_uploads by
# the rate it measures), and "warm Mbit/s" is the second, begun once the first is confirmed, as
# the daemon takes a scan that follows another (its connections open, its link measured).
# "agent CPU %" stays the first scan's; "server CPU %" and "proxy CPU %" are then over both.
# Environment: AGENT_LOG=debug logs the agent client's uploads (printed under "client errors");
# AGENT_WRAP="strace -f -tt -o FILE" (or perf ...) runs the agent client under that command.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=""
rates="20,100,1000"
delays="0,30,80"
clients="agent,tusjs,curl"
seconds=10
patch_mib=4
max_mib=256
parallel=""
repeat=1
agent_spool=""
server_store_parent=""
bench_exe_b=""
server_workers=1
warm=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --delays) delays=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --patch-mib) patch_mib=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    --parallel) parallel=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --agent-spool) agent_spool=$2; shift 2 ;;
    --server-store) server_store_parent=$2; shift 2 ;;
    --agent-b) bench_exe_b=$2; shift 2 ;;
    --server-workers) server_workers=$2; shift 2 ;;
    --warm) warm=1; shift ;;
    *) echo "run.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$build" ] || { echo "run.sh: --build DIR is required (a configured ctagent build directory)" >&2; exit 2; }
build=$(cd "$build" && pwd)
bench_exe=$build/bench/upload/upload_bench
proxy_exe=$build/tests/support/fault_proxy/fault_proxy
agent_exe=$build/agent/ctagent
for f in "$bench_exe" "$proxy_exe" "$agent_exe"; do
  [ -x "$f" ] || { echo "run.sh: $f missing; build it: cmake --build $build --target ctagent upload_bench fault_proxy" >&2; exit 2; }
done
# The agent's default parallelism unless told otherwise (config/config.hpp, cloud.parallel_uploads).
[ -n "$parallel" ] || parallel=$(sed -n 's/.*parallel_uploads = \([0-9]*\);.*/\1/p' "$src/config/config.hpp")
[ -d "$here/node_modules/tus-js-client" ] || case ",$clients," in *,tusjs,*)
  echo "run.sh: tus-js-client missing; run: (cd $here && npm ci)" >&2; exit 2 ;; esac

id=$$
scan=bench-scan-$id
cloud=bench-cloud-$id
work=$(mktemp -d /tmp/ctagent-bench-upload.XXXXXX)
[ -n "$agent_spool" ] || agent_spool=$work/agent-spool
store=$work/store
if [ -n "$server_store_parent" ]; then
  [ -d "$server_store_parent" ] || { echo "run.sh: --server-store $server_store_parent is not a folder" >&2; exit 2; }
  store=$(mktemp -d "$server_store_parent/ctagent-bench-store.XXXXXX")
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$scan" 2>/dev/null || true
  ip netns del "$cloud" 2>/dev/null || true
  rm -rf "$work"
  [ -z "$server_store_parent" ] || rm -rf "$store"
}
trap cleanup EXIT

if ! ip netns add "$scan" 2>/dev/null; then
  echo "run.sh: cannot create network namespaces (needs root); nothing measured" >&2
  exit 3
fi
ip netns add "$cloud"
ip link add bs$id netns "$scan" type veth peer name bc$id netns "$cloud"
ip -n "$scan" addr add 10.78.1.2/24 dev bs$id
ip -n "$cloud" addr add 10.78.1.1/24 dev bc$id
for ns in "$scan" "$cloud"; do ip -n "$ns" link set lo up; done
ip -n "$scan" link set bs$id up
ip -n "$cloud" link set bc$id up

# PKI: the test CA, and a server certificate for the cloud's veth address and loopback.
pki=$work/pki
bash "$src/tests/support/make_pki.sh" "$pki" >/dev/null
cat > "$work/svc.cnf" <<CONF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ctagent-bench
[ext]
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = IP:10.78.1.1,IP:127.0.0.1
CONF
openssl req -new -newkey rsa:2048 -nodes -keyout "$work/svc.key" -out "$work/svc.csr" -config "$work/svc.cnf" 2>/dev/null
openssl x509 -req -in "$work/svc.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -CAserial "$work/svc.srl" \
  -out "$work/svc.pem" -days 2 -extfile "$work/svc.cnf" -extensions ext 2>/dev/null

wait_file() {  # $1 file, $2 what
  for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "run.sh: $2 did not start" >&2; exit 1
}

ip netns exec "$cloud" node "$src/cloud/tus-server/server.mjs" --host 0.0.0.0 --port 0 --dir "$store" \
  --cert "$work/svc.pem" --key "$work/svc.key" --ready-file "$work/tus.port" --workers "$server_workers" > "$work/tus.log" 2>&1 &
pids+=($!)
tus_pid=$!  # ip netns exec execs node: the same PID
wait_file "$work/tus.port" "tus server"
tus_port=$(cat "$work/tus.port")
echo "# start" > "$work/proxy.control"
ip netns exec "$cloud" "$proxy_exe" --listen-host 10.78.1.1 --listen-port 0 --target 127.0.0.1:$tus_port \
  --ready-file "$work/proxy.port" --control-file "$work/proxy.control" > "$work/proxy.log" 2>&1 &
pids+=($!)
proxy_pid=$!
wait_file "$work/proxy.port" "fault proxy"
url=https://10.78.1.1:$(cat "$work/proxy.port")/files/
patch_bytes=$((patch_mib * 1048576))

# The scan: `ctagent scan` over the cloud's loopback (unshaped), then its chunks and manifest
# are taken from the store. Protocol and codec are config/examples/sixteen-slice-helical.json's
# (the 16-slice helical scan at 1/5 dose, the demo's before it scanned the low-dose chest; 64
# views per chunk: ~0.9 MiB compressed chunks), with as many rotations as
# make about --max-mib compressed (~17 MiB per rotation) and no real-time pacing.
node -e '
  const fs = require("fs");
  const [demo, out, spool, url, ca, maxMib] = process.argv.slice(1);
  const d = JSON.parse(fs.readFileSync(demo));
  const scan = { ...d.scan, real_time: false, rotations: Math.ceil(Number(maxMib) / 17) + 1 };
  fs.writeFileSync(out, JSON.stringify({
    terminal_id: "bench-upload", log_level: "warn", driver: { name: "sim", options: {} }, scan,
    study: { patient_id: "BENCH-0001", patient_name: "BENCH^UPLOAD", study_description: "BENCH" },
    codec: d.codec,
    spool: { directory: spool, max_bytes: "16 GiB", min_free_bytes: 0 },
    cloud: { upload_url: url, tls: { ca_file: ca }, parallel_uploads: 4 },
    results: { enabled: false }, console: { enabled: false } }, null, 2));' \
  "$src/config/examples/sixteen-slice-helical.json" "$work/scan.json" "$work/scan-spool" "https://127.0.0.1:$tus_port/files/" "$pki/ca.pem" "$max_mib"
ip netns exec "$cloud" "$agent_exe" scan --config "$work/scan.json" --quiet --no-results > "$work/scan.log" 2>&1 \
  || { echo "run.sh: ctagent scan failed:" >&2; cat "$work/scan.log" >&2; exit 1; }
mkdir -p "$work/scan"
node -e '
  const fs = require("fs"), path = require("path");
  const [store, out] = process.argv.slice(1);
  for (const f of fs.readdirSync(store).filter((f) => f.endsWith(".json"))) {
    const md = JSON.parse(fs.readFileSync(path.join(store, f))).metadata || {};
    const data = path.join(store, f.slice(0, -5));
    if (md.kind === "chunk") fs.copyFileSync(data, path.join(out, String(md.chunk_index).padStart(6, "0") + ".ctc"));
    if (md.kind === "manifest") fs.copyFileSync(data, path.join(out, "manifest-full.json"));
  }' "$store" "$work/scan"
rm -rf "$store"/* "$work/scan-spool"

# A cell's payload: the first chunks of the scan worth at least $1 MiB, and a manifest listing them.
cell_dir() {  # $1 MiB -> directory
  local d=$work/cell-$1
  if [ ! -d "$d" ]; then
    mkdir -p "$d"
    node -e '
      const fs = require("fs"), path = require("path");
      const [src, out, mib] = process.argv.slice(1);
      const m = JSON.parse(fs.readFileSync(path.join(src, "manifest-full.json")));
      const chunks = []; let n = 0;
      for (const c of m.chunks) { if (n >= mib * 1048576) break; chunks.push(c); n += c.compressed_bytes; }
      m.chunks = chunks;
      m.views_acquired = chunks.reduce((v, c) => v + c.view_count, 0);
      for (const c of chunks) { const f = String(c.index).padStart(6, "0") + ".ctc"; fs.symlinkSync(path.join(src, f), path.join(out, f)); }
      fs.writeFileSync(path.join(out, "manifest.json"), JSON.stringify(m, null, 2));' "$work/scan" "$d" "$1"
  fi
  echo "$d"
}

payload_file() {  # $1 MiB -> file of random bytes (the ceiling's single upload)
  local f=$work/payload-$1.bin
  [ -f "$f" ] || head -c $(($1 * 1048576)) /dev/urandom > "$f"
  echo "$f"
}

now() { date +%s.%N; }
mbits() { awk -v s="$1" -v b="$2" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }'; }

# Each prints Mbit/s (or "fail").
run_agent() { run_agent_exe "$bench_exe" "$@"; }
run_agentb() { run_agent_exe "$bench_exe_b" "$@"; }
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }  # user + system
server_ticks() {  # the tus server's, its worker processes' included (--server-workers)
  local total pid
  total=$(cpu_ticks "$tus_pid")
  for pid in $(cat /proc/"$tus_pid"/task/*/children 2>/dev/null); do total=$((total + $(cpu_ticks "$pid"))); done
  echo "$total"
}
run_agent_exe() {  # $1 upload_bench $2 dir $3 ns $4 url
  local exe=$1 out seconds server0 proxy0
  shift
  server0=$(server_ticks); proxy0=$(cpu_ticks "$proxy_pid")
  out=$(ip netns exec "$2" ${AGENT_WRAP:-} "$exe" --url "$3" --dir "$1" --ca "$pki/ca.pem" --patch-bytes $patch_bytes \
        --parallel "$parallel"  --spool "$agent_spool" ${AGENT_LOG:+--log $AGENT_LOG} \
        $([ "$warm" = 0 ] || [ "$exe" != "$bench_exe" ] || echo --scans 2) 2>>"$work/clients.log") || { echo fail; return; }
  seconds=$(sed -n 's/^seconds=\([0-9.]*\).*/\1/p' <<<"$out")
  # The client's CPU during the upload, in % of one core (the agent's own cost per byte).
  local cpu_file=$work/agent.cpu window_file=$work/agent.window
  [ "$exe" = "$bench_exe" ] || { cpu_file=$work/agentb.cpu; window_file=$work/agentb.window; }
  awk -v c="$(sed -n 's/.*cpu_seconds=\([0-9.]*\).*/\1/p' <<<"$out")" -v s="$seconds" \
    'BEGIN { printf "%.0f\n", 100 * c / s }' >> "$cpu_file"
  if [ "$exe" = "$bench_exe" ]; then  # the peers' CPU over the agent's upload (start-up included)
    local all_seconds  # with --warm, both scans'
    all_seconds=$(sed -n 's/.*all_seconds=\([0-9.]*\).*/\1/p' <<<"$out")
    [ -n "$all_seconds" ] || all_seconds=$seconds
    awk -v a="$server0" -v b="$(server_ticks)" -v t="$clk_tck" -v s="$all_seconds" \
      'BEGIN { printf "%.0f\n", 100 * (b - a) / t / s }' >> "$work/server.cpu"
    awk -v a="$proxy0" -v b="$(cpu_ticks "$proxy_pid")" -v t="$clk_tck" -v s="$all_seconds" \
      'BEGIN { printf "%.0f\n", 100 * (b - a) / t / s }' >> "$work/proxy.cpu"
  fi
  if [ "$warm" = 1 ] && [ "$exe" = "$bench_exe" ]; then  # the second scan, on the warm uploader
    mbits "$(sed -n 's/.*warm_seconds=\([0-9.]*\).*/\1/p' <<<"$out")" "$(sed -n 's/.*warm_bytes=\([0-9]*\).*/\1/p' <<<"$out")" >> "$work/agent.warm"
    echo >> "$work/agent.warm"
  fi
  # Both say how many uploads they let send at once at most (admitted by rate x round trip).
  sed -n 's/.*max_window=\([0-9]*\).*/\1/p' <<<"$out" >> "$window_file"
  mbits "$seconds" "$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$out")"
}
run_tusjs() {
  local out
  out=$(cd "$here" && ip netns exec "$2" env NODE_EXTRA_CA_CERTS="$pki/ca.pem" node tus_js_upload.mjs "$3" "$1" \
        $patch_bytes "$parallel" 2>>"$work/clients.log") || { echo fail; return; }
  mbits "$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")" "$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$out")"
}
# One file: POST, then one PATCH with the whole file. Exit status non-zero on failure.
curl_one() {  # $1 file $2 ns $3 url
  local size loc
  size=$(stat -L -c %s "$1")
  loc=$(ip netns exec "$2" curl -sS --cacert "$pki/ca.pem" -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $size" \
        -o /dev/null -D - "$3" 2>>"$work/clients.log" | tr -d '\r' | sed -n 's/^[Ll]ocation: *//p')
  [ -n "$loc" ] || return 1
  case "$loc" in http*) ;; *) loc="${3%%/files/*}$loc" ;; esac
  ip netns exec "$2" curl -sS --cacert "$pki/ca.pem" -X PATCH -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
    -H 'Content-Type: application/offset+octet-stream' -H 'Expect:' -T "$1" -o /dev/null "$loc" 2>>"$work/clients.log"
}
export -f curl_one
export pki work
run_curl() {  # $1 dir $2 ns $3 url
  local t0 t1 bytes
  bytes=$(cat "$1"/*.ctc "$1/manifest.json" | wc -c)
  t0=$(now)
  ls "$1"/*.ctc | xargs -P "$parallel" -I{} bash -c 'curl_one "$1" "$2" "$3"' _ {} "$2" "$3" || { echo fail; return; }
  curl_one "$1/manifest.json" "$2" "$3" || { echo fail; return; }
  t1=$(now)
  mbits "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$bytes"
}

median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (v[1] == "fail") print "fail"; else print v[int((NR + 1) / 2)] }'; }

# The ceiling: curl to the server over the cloud's own loopback (no link, no proxy).
ceiling_file=$(payload_file "$max_mib")
t0=$(now)
if curl_one "$ceiling_file" "$cloud" "https://127.0.0.1:$tus_port/files/"; then
  ceiling=$(mbits "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')" $((max_mib * 1048576)))
else
  ceiling=fail
fi
echo "ceiling (curl over loopback, $max_mib MiB): $ceiling Mbit/s; parallel uploads $parallel, PATCH $patch_mib MiB, repeat $repeat, tus server processes $server_workers; load: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$store"/*

IFS=, read -r -a rate_list <<<"$rates"
IFS=, read -r -a delay_list <<<"$delays"
IFS=, read -r -a client_list <<<"$clients"

bcol=""; bsep=""
if [ "$warm" = 1 ]; then bcol=" warm Mbit/s | warm/cap |"; bsep="---|---|"; fi
[ -z "$bench_exe_b" ] || { bcol+=" agent-b Mbit/s | agent-b/cap | agent-b CPU % | agent-b window |"; bsep+="---|---|---|---|"; }
printf '\n| link Mbit/s | added RTT ms | MiB | chunks | agent Mbit/s | tus-js Mbit/s | curl Mbit/s | agent/cap | tus-js/cap | curl/cap | agent/tus-js |%s agent CPU %% | server CPU %% | proxy CPU %% | agent window | load |\n' "$bcol"
printf '|---|---|---|---|---|---|---|---|---|---|---|%s---|---|---|---|---|\n' "$bsep"
for rate in "${rate_list[@]}"; do
  burst=$(( rate * 1000000 / 8 / 100 ))  # 10 ms of the rate
  [ $burst -ge 32768 ] || burst=32768
  tc -n "$scan" qdisc replace dev bs$id root tbf rate ${rate}mbit burst $burst latency 50ms
  mib=$(( rate * seconds / 8 ))
  [ $mib -ge 4 ] || mib=4
  [ $mib -le "$max_mib" ] || mib=$max_mib
  dir=$(cell_dir $mib)
  nchunks=$(ls "$dir"/*.ctc | wc -l)
  cell_mib=$(cat "$dir"/*.ctc | wc -c | awk '{ printf "%.1f", $1 / 1048576 }')
  for delay in "${delay_list[@]}"; do
    half=$(( delay / 2 ))
    printf 'latency_up_ms=%s\nlatency_down_ms=%s\n# cell %s %s\n' $half $((delay - half)) "$rate" "$delay" > "$work/proxy.control.tmp"
    mv "$work/proxy.control.tmp" "$work/proxy.control"
    sleep 0.2
    declare -A got=()
    : > "$work/agent.cpu"; : > "$work/agent.warm"; : > "$work/agentb.cpu"; : > "$work/server.cpu"; : > "$work/proxy.cpu"; : > "$work/agent.window"; : > "$work/agentb.window"
    for _ in $(seq 1 "$repeat"); do
      for c in "${client_list[@]}"; do
        got[$c]="${got[$c]:-} $(run_"$c" "$dir" "$scan" "$url")"
        rm -rf "$store"/*
      done
    done
    for c in "${client_list[@]}"; do got[$c]=$(median <<<"${got[$c]}"); done
    cap=$(awk -v r="$rate" -v c="$ceiling" 'BEGIN { if (c == "fail" || c + 0 > r) print r; else print c }')
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "fail" || b == "fail" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
    bval=""
    if [ "$warm" = 1 ]; then
      warm_mbits=$(median < "$work/agent.warm")
      bval=" $warm_mbits | $(ratio "$warm_mbits" "$cap") |"
    fi
    [ -z "$bench_exe_b" ] || bval+=" ${got[agentb]:--} | $(ratio "${got[agentb]:-}" "$cap") | $(median < "$work/agentb.cpu") | $(median < "$work/agentb.window") |"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |%s %s | %s | %s | %s | %s |\n' "$rate" "$delay" "$cell_mib" "$nchunks" \
      "${got[agent]:--}" "${got[tusjs]:--}" "${got[curl]:--}" \
      "$(ratio "${got[agent]:-}" "$cap")" "$(ratio "${got[tusjs]:-}" "$cap")" "$(ratio "${got[curl]:-}" "$cap")" \
      "$(ratio "${got[agent]:-}" "${got[tusjs]:-}")" "$bval" "$(median < "$work/agent.cpu")" "$(median < "$work/server.cpu")" "$(median < "$work/proxy.cpu")" "$(median < "$work/agent.window")" "$(cut -d' ' -f1 /proc/loadavg)"
    unset got
  done
done
if [ -s "$work/clients.log" ]; then
  echo; echo "client errors:"; cat "$work/clients.log"
fi
