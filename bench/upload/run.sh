#!/usr/bin/env bash
# bench/upload: tus upload throughput as a fraction of link capacity.
#
# A "scanner" and a "cloud" network namespace joined by a veth pair whose scanner side is
# shaped with tc tbf (the link rate); in "cloud" the reference tus server, and the fault proxy
# in front of it adding delay (netem does not work on this machine). Three clients upload the
# same bytes to the same server, one after another, in each cell (rate x delay):
#   agent   our upload path (transport::HttpClient + tus::Client, PATCH size as the agent's)
#   tusjs   the official tus-js-client, same PATCH size
#   curl    the curl CLI: one POST, then one PATCH streaming the whole payload (-T)
# plus the ceiling: curl inside "cloud" to the tus server directly over loopback, unshaped.
# Prints a table; ratios are to min(link rate, ceiling) and to tus-js-client.
#
# Needs root (ip netns, tc), the build's upload_bench and fault_proxy targets, and `npm ci` in
# this folder. Usage:
#   bench/upload/run.sh --build build/links [--rates 20,100,1000] [--delays 0,30,80]
#                       [--clients agent,tusjs,curl] [--seconds 4] [--patch-mib 4] [--max-mib 128]
# --delays are added round-trip times [ms], half each way. The payload per cell is sized to take
# about --seconds at the link rate (at least 4 MiB, at most --max-mib).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=""
rates="20,100,1000"
delays="0,30,80"
clients="agent,tusjs,curl"
seconds=4
patch_mib=4
max_mib=128
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --delays) delays=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --patch-mib) patch_mib=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$build" ] || { echo "run.sh: --build DIR is required (a configured ctagent build directory)" >&2; exit 2; }
build=$(cd "$build" && pwd)
bench_exe=$build/bench/upload/upload_bench
proxy_exe=$build/tests/support/fault_proxy/fault_proxy
for f in "$bench_exe" "$proxy_exe"; do
  [ -x "$f" ] || { echo "run.sh: $f missing; build it: cmake --build $build --target upload_bench fault_proxy" >&2; exit 2; }
done
[ -d "$here/node_modules/tus-js-client" ] || case ",$clients," in *,tusjs,*)
  echo "run.sh: tus-js-client missing; run: (cd $here && npm ci)" >&2; exit 2 ;; esac

id=$$
scan=bench-scan-$id
cloud=bench-cloud-$id
work=$(mktemp -d /tmp/ctagent-bench-upload.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$scan" 2>/dev/null || true
  ip netns del "$cloud" 2>/dev/null || true
  rm -rf "$work"
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

ip netns exec "$cloud" node "$src/cloud/tus-server/server.mjs" --host 0.0.0.0 --port 0 --dir "$work/store" \
  --cert "$work/svc.pem" --key "$work/svc.key" --ready-file "$work/tus.port" > "$work/tus.log" 2>&1 &
pids+=($!)
wait_file "$work/tus.port" "tus server"
tus_port=$(cat "$work/tus.port")
echo "# start" > "$work/proxy.control"
ip netns exec "$cloud" "$proxy_exe" --listen-host 10.78.1.1 --listen-port 0 --target 127.0.0.1:$tus_port \
  --ready-file "$work/proxy.port" --control-file "$work/proxy.control" > "$work/proxy.log" 2>&1 &
pids+=($!)
wait_file "$work/proxy.port" "fault proxy"
url=https://10.78.1.1:$(cat "$work/proxy.port")/files/
patch_bytes=$((patch_mib * 1048576))

payload() {  # $1 MiB -> file path
  local f=$work/payload-$1.bin
  [ -f "$f" ] || head -c $(($1 * 1048576)) /dev/urandom > "$f"
  echo "$f"
}

now() { date +%s.%N; }

# Each prints Mbit/s (or "fail").
run_agent() {  # $1 file $2 ns $3 url
  local out
  out=$(ip netns exec "$2" "$bench_exe" --url "$3" --file "$1" --ca "$pki/ca.pem" --patch-bytes $patch_bytes 2>>"$work/clients.log") || { echo fail; return; }
  local s b
  s=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out"); b=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$out")
  awk -v s="$s" -v b="$b" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }'
}
run_tusjs() {
  local out
  out=$(cd "$here" && ip netns exec "$2" env NODE_EXTRA_CA_CERTS="$pki/ca.pem" node tus_js_upload.mjs "$3" "$1" $patch_bytes 2>>"$work/clients.log") || { echo fail; return; }
  local s b
  s=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out"); b=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$out")
  awk -v s="$s" -v b="$b" 'BEGIN { printf "%.1f", b * 8 / s / 1e6 }'
}
run_curl() {
  local size t0 loc t1
  size=$(stat -c %s "$1")
  t0=$(now)
  loc=$(ip netns exec "$2" curl -sS --cacert "$pki/ca.pem" -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $size" \
        -o /dev/null -D - "$3" 2>>"$work/clients.log" | tr -d '\r' | sed -n 's/^[Ll]ocation: *//p')
  [ -n "$loc" ] || { echo fail; return; }
  case "$loc" in http*) ;; *) loc="${3%%/files/*}$loc" ;; esac
  ip netns exec "$2" curl -sS --cacert "$pki/ca.pem" -X PATCH -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
    -H 'Content-Type: application/offset+octet-stream' -H 'Expect:' -T "$1" -o /dev/null "$loc" 2>>"$work/clients.log" \
    || { echo fail; return; }
  t1=$(now)
  awk -v a="$t0" -v b="$t1" -v n="$size" 'BEGIN { printf "%.1f", n * 8 / (b - a) / 1e6 }'
}

# The ceiling: curl to the server over the cloud's own loopback (no link, no proxy).
ceiling_file=$(payload "$max_mib")
ceiling=$(run_curl "$ceiling_file" "$cloud" "https://127.0.0.1:$tus_port/files/")
echo "ceiling (curl over loopback, $max_mib MiB): $ceiling Mbit/s"
rm -rf "$work/store"/*

IFS=, read -r -a rate_list <<<"$rates"
IFS=, read -r -a delay_list <<<"$delays"
IFS=, read -r -a client_list <<<"$clients"

printf '\n| link Mbit/s | added RTT ms | MiB | agent Mbit/s | tus-js Mbit/s | curl Mbit/s | agent/cap | tus-js/cap | curl/cap | agent/tus-js |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for rate in "${rate_list[@]}"; do
  burst=$(( rate * 1000000 / 8 / 100 ))  # 10 ms of the rate
  [ $burst -ge 32768 ] || burst=32768
  tc -n "$scan" qdisc replace dev bs$id root tbf rate ${rate}mbit burst $burst latency 50ms
  mib=$(( rate * seconds / 8 ))
  [ $mib -ge 4 ] || mib=4
  [ $mib -le "$max_mib" ] || mib=$max_mib
  file=$(payload $mib)
  for delay in "${delay_list[@]}"; do
    half=$(( delay / 2 ))
    printf 'latency_up_ms=%s\nlatency_down_ms=%s\n# cell %s %s\n' $half $((delay - half)) "$rate" "$delay" > "$work/proxy.control.tmp"
    mv "$work/proxy.control.tmp" "$work/proxy.control"
    sleep 0.2
    declare -A got=()
    for c in "${client_list[@]}"; do
      got[$c]=$(run_"$c" "$file" "$scan" "$url")
      rm -rf "$work/store"/*
    done
    cap=$(awk -v r="$rate" -v c="$ceiling" 'BEGIN { if (c == "fail" || c + 0 > r) print r; else print c }')
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "fail" || b == "fail" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$rate" "$delay" "$mib" \
      "${got[agent]:--}" "${got[tusjs]:--}" "${got[curl]:--}" \
      "$(ratio "${got[agent]:-}" "$cap")" "$(ratio "${got[tusjs]:-}" "$cap")" "$(ratio "${got[curl]:-}" "$cap")" \
      "$(ratio "${got[agent]:-}" "${got[tusjs]:-}")"
    unset got
  done
done
if [ -s "$work/clients.log" ]; then
  echo; echo "client errors:"; cat "$work/clients.log"
fi
