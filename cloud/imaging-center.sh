#!/usr/bin/env bash
# The reference imaging center on one machine, for ctagent demos and tests only (not a diagnostic
# product): the tus upload server, Orthanc (DICOMweb, behind TLS) and the reconstruction worker.
#
# Usage: imaging-center.sh start|stop|status RUNDIR [--tus-port N] [--orthanc-port N]
#                                                 [--orthanc-internal-port N] [--image-size N]
#   start   makes the PKI (RUNDIR/pki) if missing, starts the three services in the background
#           (logs in RUNDIR/logs, PIDs in RUNDIR/pids), waits until each answers, then writes and
#           prints RUNDIR/center.env. Already running: says so and exits 0.
#   stop    stops exactly the recorded PIDs (TERM, up to 10 s, then KILL).
#   status  prints each service's state; exit 0 when all run, 3 otherwise.
# Ports: tus 18080, Orthanc 18042 (HTTPS) by default; Orthanc's own plain-HTTP port behind the TLS
# proxy is --orthanc-internal-port, by default the Orthanc port + 1. Orthanc binds it on every
# interface, so a caller that picks ports at random should pick this one too, free on 0.0.0.0
# (the kernel gives bind(0) odd ports and outgoing connections even ones, so "a free port + 1"
# is often a loopback client's port at that moment).
# --image-size: the worker's reconstruction matrix (N x N; the worker's default, 512, without it).
# The worker binary: $CTCLOUD_WORKER, else the newest build/*/cloud/worker/ctcloud-worker.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
usage="usage: imaging-center.sh start|stop|status RUNDIR [--tus-port N] [--orthanc-port N] [--orthanc-internal-port N] [--image-size N]"
action=${1:-}
rundir=${2:-}
[ -n "$action" ] && [ -n "$rundir" ] || { echo "$usage" >&2; exit 2; }
shift 2
tus_port=18080
orthanc_port=18042
orthanc_internal_port=""
worker_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --tus-port) tus_port=${2:?--tus-port needs a value}; shift 2 ;;
    --orthanc-port) orthanc_port=${2:?--orthanc-port needs a value}; shift 2 ;;
    --orthanc-internal-port) orthanc_internal_port=${2:?--orthanc-internal-port needs a value}; shift 2 ;;
    --image-size) worker_args+=(--image-size "${2:?--image-size needs a value}"); shift 2 ;;
    *) echo "imaging-center.sh: unknown argument $1" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
[ -n "$orthanc_internal_port" ] || orthanc_internal_port=$((orthanc_port + 1))
mkdir -p "$rundir"
rundir=$(cd "$rundir" && pwd)
services="tus orthanc worker"
# What each service's command line contains: a recorded PID is only ours if it still matches
# (a PID reused by another process after a reboot must never be signalled).
signature() {
  case $1 in
    tus) echo "server.mjs" ;;
    orthanc) echo "start-orthanc.sh" ;;
    worker) echo "ctcloud-worker" ;;
  esac
}

recorded_pid() {  # prints the recorded PID of $1 if that process is alive (maybe not ours)
  local file="$rundir/pids/$1.pid" pid
  [ -s "$file" ] || return 1
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

pid_of() {  # prints the recorded PID if that process is alive and is ours
  local pid
  pid=$(recorded_pid "$1") || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(signature "$1")" || return 1
  echo "$pid"
}

stop_service() {
  local name=$1 pid
  if pid=$(pid_of "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "imaging-center: $name (pid $pid) did not stop within 10 s; sending KILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "imaging-center: stopped $name (pid $pid)"
  fi
  rm -f "$rundir/pids/$name.pid"
}

running_since_start() {  # $1 = service just started by this script: alive and not a zombie
  # Not pid_of: between the fork and the exec the child still has this script's command line, so
  # the signature check would call a service that is starting "exited".
  local pid state
  pid=$(recorded_pid "$1") || return 1
  state=$(sed 's/^.*) \([A-Za-z]\).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

status() {
  local all=0 name pid
  for name in $services; do
    if pid=$(pid_of "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; all=3; fi
  done
  return $all
}

wait_until() {  # $1 = service (tus, orthanc, worker), $2 = what, $3 = seconds, rest = command that succeeds when ready
  local name=$1 what=$2 seconds=$3
  shift 3
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    # A service that exited will not answer: say why at once (its log's last lines; e.g. a port
    # another program took since it was chosen) instead of waiting out the time.
    if ! running_since_start "$name"; then
      echo "imaging-center: $what exited before it answered; the end of $rundir/logs/$name.log:" >&2
      tail -n 8 "$rundir/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  echo "imaging-center: $what did not answer within $seconds s; the end of $rundir/logs/$name.log:" >&2
  tail -n 8 "$rundir/logs/$name.log" >&2 || true
  return 1
}

http_ok() {  # $1 = URL, rest = extra curl args; succeeds on a 2xx answer
  local url=$1 code
  shift
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$rundir/pki/ca.pem" "$@" "$url") || return 1
  [ "${code:0:1}" = 2 ]
}

find_worker() {
  if [ -n "${CTCLOUD_WORKER:-}" ]; then echo "$CTCLOUD_WORKER"; return; fi
  ls -t "$repo"/build/*/cloud/worker/ctcloud-worker 2>/dev/null | head -1
}

write_env() {
  cat > "$rundir/center.env.tmp" <<ENV
TUS_URL=https://127.0.0.1:$tus_port/files/
DICOMWEB_URL=https://127.0.0.1:$orthanc_port/dicom-web/
CA_FILE=$rundir/pki/ca.pem
AGENT_USER=ctagent
AGENT_PASSWORD_FILE=$rundir/orthanc/orthanc-ctagent-password
TUS_STORE=$rundir/tus-store
WORK_DIR=$rundir/work
ENV
  mv "$rundir/center.env.tmp" "$rundir/center.env"
  cat "$rundir/center.env"
}

start() {
  if status >/dev/null; then
    echo "imaging-center: already running in $rundir"
    cat "$rundir/center.env"
    return 0
  fi
  # Half running (a crash, a reboot): stop what is left so ports and state are clean.
  for name in $services; do stop_service "$name" >/dev/null; done
  mkdir -p "$rundir/logs" "$rundir/pids" "$rundir/tus-store" "$rundir/work"
  if [ ! -f "$rundir/pki/server.pem" ]; then
    bash "$repo/tests/support/make_pki.sh" "$rundir/pki"
  fi
  if [ ! -d "$repo/cloud/tus-server/node_modules" ]; then
    (cd "$repo/cloud/tus-server" && npm ci --no-audit --no-fund)
  fi
  local worker
  worker=$(find_worker)
  [ -n "$worker" ] && [ -x "$worker" ] || {
    echo "imaging-center: ctcloud-worker not found; build it (cmake --build build/<dir> --target ctcloud-worker) or set CTCLOUD_WORKER" >&2
    return 2
  }

  nohup node "$repo/cloud/tus-server/server.mjs" --port "$tus_port" --dir "$rundir/tus-store" \
    --cert "$rundir/pki/server.pem" --key "$rundir/pki/server.key" \
    >> "$rundir/logs/tus.log" 2>&1 < /dev/null &
  echo $! > "$rundir/pids/tus.pid"
  nohup bash "$here/orthanc/start-orthanc.sh" "$rundir/orthanc" "$orthanc_port" "$rundir/pki" "$orthanc_internal_port" \
    >> "$rundir/logs/orthanc.log" 2>&1 < /dev/null &
  echo $! > "$rundir/pids/orthanc.pid"

  wait_until tus "tus server" 30 http_ok "https://127.0.0.1:$tus_port/files/" -X OPTIONS || return 1
  wait_until orthanc "Orthanc" 30 bash -c '[ -s "$1" ]' _ "$rundir/orthanc/orthanc-ctcloud-password" || return 1
  wait_until orthanc "Orthanc" 30 http_ok "https://127.0.0.1:$orthanc_port/system" \
    -u "ctagent:$(cat "$rundir/orthanc/orthanc-ctagent-password")" || return 1

  nohup "$worker" --store "$rundir/tus-store" --work "$rundir/work" \
    --orthanc "https://127.0.0.1:$orthanc_port" --orthanc-user ctcloud \
    --orthanc-password-file "$rundir/orthanc/orthanc-ctcloud-password" --ca "$rundir/pki/ca.pem" ${worker_args[@]+"${worker_args[@]}"} \
    >> "$rundir/logs/worker.log" 2>&1 < /dev/null &
  echo $! > "$rundir/pids/worker.pid"
  wait_until worker "ctcloud-worker" 30 grep -q "watching $rundir/tus-store" "$rundir/logs/worker.log" || return 1
  running_since_start worker || { echo "imaging-center: ctcloud-worker exited; see $rundir/logs/worker.log" >&2; return 1; }

  echo "imaging-center: running in $rundir (reference center for demos and tests; not a diagnostic product)"
  write_env
}

case $action in
  start)
    if ! start; then
      echo "imaging-center: start failed; stopping what was started" >&2
      for name in $services; do stop_service "$name" >/dev/null; done
      exit 1
    fi ;;
  stop) for name in worker orthanc tus; do stop_service "$name"; done ;;
  status) status ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
