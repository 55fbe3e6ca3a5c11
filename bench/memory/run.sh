#!/usr/bin/env bash
# bench/memory: the agent's peak resident memory against the size of a scan.
#
# For each size, `ctagent scan --no-results` of config/examples/sixteen-slice-helical.json's protocol
# (the 16 x 896 helical scan at 1/5 dose, the example a new user starts from) with as many
# rotations as make about that many MiB of raw samples, unpaced
# (real_time false), with the default codec, spool and cloud settings (only the spool directory,
# the upload URL and its CA are set). The scan uploads to the reference tus server on loopback
# (cloud/tus-server, a throwaway PKI), or with --cloud none to a port where nothing listens: the
# scan is spooled either way, and its uploads fail and wait for the next run. Peak RSS is
# /usr/bin/time -v's "Maximum resident set size" of the ctagent process.
#
# Prints a table (raw MiB, chunks, peak RSS MiB, ratio to the first size) and the bound the
# configuration sets (docs/configuration.md, "Memory"). Prints figures; asserts nothing.
# A single run's peak moves by a few percent from run to run: --repeat N runs every size N
# times (the sizes in turn, so that a slow drift of the machine touches each alike) and prints
# each size's mean, lowest and highest peak and the ratio of the means.
#
# Usage: bench/memory/run.sh [--build DIR] [--sizes 64,4096,8192] [--cloud tus|none] [--repeat N]
#                            [--work DIR] [--keep] [--sample] [--set KEY=JSON]...
#   --set codec.threads=4   overrides one config key (dotted path, JSON value) for every size
#   --sample                also reads the process's VmRSS every 50 ms and prints its median
#                           (the peak is a spike; the median shows the level it rises from)
# Disk: each size needs about half its raw size in the spool and, with --cloud tus, the same
# again in the tus store; both are deleted after each size. 64 MiB, 4 GiB and 8 GiB take about
# 4 minutes on 2 idle cores.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$src/build/release
sizes=64,4096,8192
cloud=tus
work=""
keep=0
sample=0
repeat=1
sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$(cd "$2" && pwd); shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --cloud) cloud=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --sample) sample=1; shift ;;
    --repeat) repeat=$2; shift 2 ;;
    --set) sets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$cloud" in tus|none) ;; *) echo "run.sh: --cloud is tus or none, not $cloud" >&2; exit 2 ;; esac
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --repeat takes a count of runs, not $repeat" >&2; exit 2; }

protocol=$src/config/examples/sixteen-slice-helical.json
agent_exe=$build/agent/ctagent
[ -x "$agent_exe" ] || { echo "run.sh: $agent_exe missing; build the ctagent target of $build first" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "run.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 2; }
command -v node >/dev/null || { echo "run.sh: node missing (scripts/bootstrap)" >&2; exit 2; }

if [ -z "$work" ]; then work=$(mktemp -d /tmp/ctagent-memory-bench.XXXXXX); fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$keep" = 0 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

wait_file() {  # $1 file, $2 what
  for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "run.sh: $2 did not start" >&2; exit 1
}

pki=$work/pki
bash "$src/tests/support/make_pki.sh" "$pki" >/dev/null
if [ "$cloud" = tus ]; then
  mkdir -p "$work/store"
  node "$src/cloud/tus-server/server.mjs" --host 127.0.0.1 --port 0 --dir "$work/store" \
    --max-size $((64 << 20)) --cert "$pki/server.pem" --key "$pki/server.key" \
    --ready-file "$work/tus.port" > "$work/tus.log" 2>&1 &
  pids+=($!)
  wait_file "$work/tus.port" "tus server"
  url="https://127.0.0.1:$(cat "$work/tus.port")/files/"
else
  # A loopback port nobody listens on: bind one, note it, let it go.
  port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close();});')
  url="https://127.0.0.1:$port/files/"
fi

# What the defaults bound memory by: printed with the table (docs/configuration.md, "Memory").
config_for() {  # $1 raw MiB, $2 out file, $3 spool dir
  node -e '
    const fs = require("fs");
    const [protocol, mib, out, spool, url, ca, ...sets] = process.argv.slice(1);
    const d = JSON.parse(fs.readFileSync(protocol));
    const s = d.scan;
    const rotationMib = s.views_per_rotation * s.rows * s.channels * 2 / 1048576;
    const cfg = {
      terminal_id: "bench-memory", log_level: "warn", driver: { name: "sim", options: {} },
      scan: { ...s, real_time: false, rotations: Math.max(1, Math.round(Number(mib) / rotationMib)) },
      study: { patient_id: "BENCH-0001", patient_name: "BENCH^MEMORY", study_description: "BENCH" },
      spool: { directory: spool, max_bytes: "64 GiB", min_free_bytes: "1 GiB" },
      cloud: { upload_url: url, tls: { ca_file: ca } },
      results: { enabled: false }, console: { enabled: false } };
    for (const kv of sets) {
      const eq = kv.indexOf("=");
      const keys = kv.slice(0, eq).split(".");
      let o = cfg;
      for (const k of keys.slice(0, -1)) o = (o[k] ??= {});
      o[keys[keys.length - 1]] = JSON.parse(kv.slice(eq + 1));
    }
    fs.writeFileSync(out, JSON.stringify(cfg, null, 2));
    console.log(cfg.scan.rotations);' \
    "$protocol" "$1" "$2" "$3" "$url" "$pki/ca.pem" "${sets[@]}"
}

echo "# ctagent scan --no-results, $(basename "$protocol") unpaced, cloud: $cloud, $(nproc) CPUs, $(date -u +%FT%TZ)"
[ ${#sets[@]} -gt 0 ] && echo "# overrides: ${sets[*]}"
printf '%4s %10s %10s %8s %10s %14s %8s %8s' "run" "raw_MiB" "rotations" "chunks" "seconds" "peak_RSS_MiB" "ratio" "exit"
[ "$sample" = 1 ] && printf ' %16s' "median_RSS_MiB"
printf '\n'
first_rss=""
IFS=, read -r -a size_list <<< "$sizes"
declare -A peaks  # raw MiB asked for -> the peaks of its runs, space-separated
for run in $(seq 1 "$repeat"); do
for mib in "${size_list[@]}"; do
  spool=$work/spool-$mib
  rotations=$(config_for "$mib" "$work/scan-$mib.json" "$spool")
  start=$(date +%s.%N)
  set +e
  /usr/bin/time -v -o "$work/time-$mib.txt" "$agent_exe" scan --config "$work/scan-$mib.json" --quiet --no-results \
    > "$work/scan-$mib.log" 2>&1 &
  time_pid=$!
  : > "$work/rss-$mib.txt"
  if [ "$sample" = 1 ]; then
    agent_pid=""
    for _ in $(seq 1 100); do agent_pid=$(pgrep -P "$time_pid" | head -1); [ -n "$agent_pid" ] && break; sleep 0.02; done
    # Bounded: at most 2 hours of samples.
    for _ in $(seq 1 144000); do
      [ -n "$agent_pid" ] && [ -r "/proc/$agent_pid/status" ] || break
      awk '/^VmRSS/ { print $2 }' "/proc/$agent_pid/status" >> "$work/rss-$mib.txt" 2>/dev/null || break
      sleep 0.05
    done
  fi
  wait "$time_pid"
  rc=$?
  set -e
  end=$(date +%s.%N)
  rss_kib=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$work/time-$mib.txt")
  chunks=$(find "$spool/scans" -name '*.ctc' 2>/dev/null | wc -l)
  raw=$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1])).scan;
    console.log((s.rotations * s.views_per_rotation * s.rows * s.channels * 2 / 1048576).toFixed(0));' "$work/scan-$mib.json")
  rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
  [ -z "$first_rss" ] && first_rss=$rss_mib
  ratio=$(awk -v a="$rss_mib" -v b="$first_rss" 'BEGIN { printf "%.3f", a / b }')
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
  peaks[$mib]="${peaks[$mib]:-} $rss_mib"
  printf '%4s %10s %10s %8s %10s %14s %8s %8s' "$run" "$raw" "$rotations" "$chunks" "$secs" "$rss_mib" "$ratio" "$rc"
  if [ "$sample" = 1 ]; then
    printf ' %16s' "$(sort -n "$work/rss-$mib.txt" | awk '{ v[NR] = $1 } END { if (NR) printf "%.1f", v[int((NR + 1) / 2)] / 1024; else print "-" }')"
  fi
  printf '\n'
  if [ "$rc" != 0 ] && [ "$cloud" = tus ]; then
    echo "# scan of $mib MiB exited $rc:" >&2; tail -5 "$work/scan-$mib.log" >&2
  fi
  rm -rf "$spool"
  [ "$cloud" = tus ] && find "$work/store" -mindepth 1 -delete
done
done

if [ "$repeat" -gt 1 ]; then
  echo "# over $repeat runs: peak RSS MiB mean (lowest - highest), and the ratio of the means to the first size's"
  first_mean=""
  for mib in "${size_list[@]}"; do
    read -r mean low high <<< "$(tr ' ' '\n' <<< "${peaks[$mib]}" | awk 'NF { s += $1; n++; if (n == 1 || $1 < lo) lo = $1; if (n == 1 || $1 > hi) hi = $1 }
      END { printf "%.1f %.1f %.1f", s / n, lo, hi }')"
    [ -z "$first_mean" ] && first_mean=$mean
    printf '# %6s MiB asked: %6s (%s - %s)  ratio %s\n' "$mib" "$mean" "$low" "$high" \
      "$(awk -v a="$mean" -v b="$first_mean" 'BEGIN { printf "%.3f", a / b }')"
  done
fi

# The configured bound (docs/configuration.md, "Memory"), from the config the runs used.
node -e '
  const fs = require("fs");
  const cfg = JSON.parse(fs.readFileSync(process.argv[1]));
  const c = cfg.codec || {}, cl = cfg.cloud || {};
  const size = (v, d) => { if (v === undefined) return d; if (typeof v === "number") return v;
    const m = /^(\d+)\s*(B|KiB|MiB|GiB)$/.exec(v); return Number(m[1]) * { B: 1, KiB: 1024, MiB: 1 << 20, GiB: 1 << 30 }[m[2]]; };
  const s = cfg.scan, viewBytes = s.rows * s.channels * 2;
  const chunk = (c.views_per_chunk ?? 64) * viewBytes, threads = c.threads ?? 2;
  const queue = size(c.queue_bytes, 4 << 20), parallel = cl.parallel_uploads ?? 8;
  const MiB = (b) => (b / 1048576).toFixed(1);
  const output = chunk + Math.ceil(chunk / 256) + (16 << 10);  // header (views, descriptor) and zstd bound
  const budget = size(c.buffer_bytes, 12 << 20);
  // Code and libraries (file-backed, ~19 MiB) and the rest of the heap (TLS, libcurl, the spool
  // state, ~5 MiB). With a budget (codec.buffer_bytes) the scan makes, at its start, a sample
  // buffer for every raw chunk that may exist at once: as many whole chunks as the budget holds
  // (at least one), and no more than the counts allow (the chunk being filled, both queues, one
  // per codec thread and the overflow thread; agent/codec/chunk_stage.cpp, MakeChunkBuffers);
  // without one (0), those counts bound them and two freed buffers are kept for reuse besides.
  // Outside them: per codec worker (context_rans) two chunk-sized scratch buffers and its output
  // buffer; the overflow thread its output buffer and zstd context (with a budget all made when
  // the scan starts; an output buffer holds the header and zstd bound of a chunk, a little more
  // than the chunk: agent/codec/chunk.hpp, EncodedChunkCapacity); per upload the 256 KiB libcurl buffer
  // (transport/http.hpp); the 256 KiB piece a chunk file is checked in before its upload
  // (uploads send from the file and hold no chunk).
  const base = 24 << 20;
  const perQueue = Math.max(1, Math.floor(queue / chunk));
  const byCounts = 1 + 2 * perQueue + threads + 1;
  const buffers = budget > 0 ? Math.min(Math.max(1, Math.floor(budget / chunk)), byCounts) * chunk
                             : chunk + 2 * queue + (threads + 1) * chunk + 2 * chunk;
  const outside = threads * (2 * chunk + output) + output + (1 << 20) + (parallel + 1) * (256 << 10);
  console.log(`# bound from the config (docs/configuration.md, "Memory"): ${MiB(base)} base + ${MiB(buffers)} raw chunk buffers` +
              ` (codec.buffer_bytes ${MiB(budget)} MiB${budget > 0 ? ": the whole chunks it holds, made when the scan starts" : ": none, so their counts and two kept for reuse"})` +
              ` + ${MiB(outside)} outside them (codec scratch and outputs, libcurl buffers) = ${MiB(base + buffers + outside)} MiB;` +
              ` + ~0.25 KiB a chunk; + free heap pages not yet returned (at most 0.5 s of frees)`);' \
  "$work/scan-${size_list[0]}.json"
