#!/usr/bin/env bash
# Starts the reference imaging center's PACS: Orthanc 1.10 with the DICOMweb plugin behind HTTPS,
# basic authentication, no DICOM (C-STORE) listener. For ctagent demos and tests only.
#
# Usage: start-orthanc.sh RUNDIR HTTP_PORT PKI_DIR [INTERNAL_PORT]
#   RUNDIR         state: orthanc.json, storage/, index/, orthanc-<user>-password (mode 0600)
#   HTTP_PORT      the HTTPS port clients use (127.0.0.1 only)
#   PKI_DIR        must hold server.pem and server.key (tests/support/make_pki.sh makes them)
#   INTERNAL_PORT  Orthanc's own plain-HTTP port (default HTTP_PORT + 1)
#
# HTTPS: Debian 12's Orthanc crashes on its first HTTPS connection (its system civetweb looks up
# an OpenSSL 1.1 symbol that libssl3 lacks; see tls-proxy.mjs), so Orthanc's own "SslEnabled" is
# false and tls-proxy.mjs terminates TLS on 127.0.0.1:HTTP_PORT, forwarding to Orthanc on
# INTERNAL_PORT. Orthanc 1.10 binds INTERNAL_PORT on every interface; "RemoteAccessAllowed": false
# makes it answer only loopback clients, and authentication is on, so nothing is served without a
# password even there.
#
# Users, each with a random password made once and then kept (the script is idempotent):
#   ctcloud  the reconstruction worker (stores instances)
#   ctagent  the scanner terminal: it only needs to read, but Orthanc's built-in authentication
#            has no roles, so every registered user can read AND write. Restricting it needs the
#            authorization plugin or a reverse proxy with rules; this reference center has neither.
#
# The script stays in the foreground as a supervisor: SIGTERM/SIGINT stops Orthanc and the proxy
# (by their PIDs); if either dies, the other is stopped and the script exits non-zero.
set -euo pipefail
usage="usage: start-orthanc.sh RUNDIR HTTP_PORT PKI_DIR [INTERNAL_PORT]"
rundir=${1:?$usage}
port=${2:?$usage}
pki=${3:?$usage}
internal_port=${4:-$((port + 1))}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for p in "$port" "$internal_port"; do
  case $p in ''|*[!0-9]*) echo "start-orthanc.sh: ports must be numbers, got '$p'" >&2; exit 2 ;; esac
done
mkdir -p "$rundir"
rundir=$(cd "$rundir" && pwd)
pki=$(cd "$pki" && pwd)
for f in server.pem server.key; do
  [ -r "$pki/$f" ] || { echo "start-orthanc.sh: $pki/$f is missing (make it with tests/support/make_pki.sh $pki)" >&2; exit 2; }
done
case $rundir in *'"'*|*'\'*) echo "start-orthanc.sh: RUNDIR '$rundir' must not contain quotes or backslashes" >&2; exit 2 ;; esac
plugin=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
[ -r "$plugin" ] || { echo "start-orthanc.sh: $plugin is missing (apt-get install orthanc-dicomweb)" >&2; exit 2; }
command -v Orthanc >/dev/null || { echo "start-orthanc.sh: Orthanc is not installed (apt-get install orthanc)" >&2; exit 2; }
command -v node >/dev/null || { echo "start-orthanc.sh: node is not installed (apt-get install nodejs)" >&2; exit 2; }

umask 077
password() {  # $1 = user; prints the password, creating it on first use
  local file="$rundir/orthanc-$1-password"
  if [ ! -s "$file" ]; then
    openssl rand -hex 16 > "$file.tmp"
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
  fi
  tr -d '\n' < "$file"
}
worker_password=$(password ctcloud)
agent_password=$(password ctagent)
mkdir -p "$rundir/storage" "$rundir/index"

# The config holds the passwords in clear text (Orthanc's format), hence mode 0600 (umask above).
cat > "$rundir/orthanc.json.tmp" <<JSON
{
  "Name" : "ctagent-reference-imaging-center",
  "StorageDirectory" : "$rundir/storage",
  "IndexDirectory" : "$rundir/index",
  "HttpServerEnabled" : true,
  "HttpPort" : $internal_port,
  "RemoteAccessAllowed" : false,
  "AuthenticationEnabled" : true,
  "RegisteredUsers" : {
    "ctcloud" : "$worker_password",
    "ctagent" : "$agent_password"
  },
  "SslEnabled" : false,
  "DicomServerEnabled" : false,
  "WebDavEnabled" : false,
  "ExecuteLuaEnabled" : false,
  "RestApiWriteToFileSystemEnabled" : false,
  "DeidentifyLogs" : true,
  "Plugins" : [ "$plugin" ],
  "DicomWeb" : {
    "Enable" : true,
    "Root" : "/dicom-web/"
  }
}
JSON
mv "$rundir/orthanc.json.tmp" "$rundir/orthanc.json"

orthanc_pid=""
proxy_pid=""
stop_children() {
  trap - TERM INT
  for pid in $proxy_pid $orthanc_pid; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do  # up to 5 s
    alive=0
    for pid in $proxy_pid $orthanc_pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in $proxy_pid $orthanc_pid; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop_children; exit 0' TERM INT

Orthanc "$rundir/orthanc.json" &
orthanc_pid=$!
node "$here/tls-proxy.mjs" --port "$port" --target-port "$internal_port" \
  --cert "$pki/server.pem" --key "$pki/server.key" &
proxy_pid=$!
echo "start-orthanc.sh: Orthanc pid $orthanc_pid (http 127.0.0.1:$internal_port), TLS proxy pid $proxy_pid (https 127.0.0.1:$port)"
set +e
wait -n "$orthanc_pid" "$proxy_pid"
status=$?
echo "start-orthanc.sh: a child exited with status $status; stopping the other" >&2
stop_children
exit $(( status == 0 ? 1 : status ))
