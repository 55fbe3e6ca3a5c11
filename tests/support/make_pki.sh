#!/usr/bin/env bash
# Makes a throwaway PKI for tests and demos in DIR: a CA, a server certificate for
# 127.0.0.1/localhost, and a client certificate (mTLS), all signed by the CA.
# Also: "hostile-server", for 127.0.0.1, 127.0.0.2 and localhost (tests/support/hostile_server);
# a second, unrelated CA ("other-ca") and a server certificate signed by it, an expired
# server certificate, one not valid before 2099 (a terminal clock that is behind), and one for
# the wrong host name, for TLS error tests.
# Usage: make_pki.sh DIR      (idempotent: existing files are kept)
set -euo pipefail
self=$(readlink -f "$0")
dir=${1:?usage: make_pki.sh DIR}
mkdir -p "$dir"
cd "$dir"
# Tests running in parallel share one PKI folder: one makes it while the others wait.
exec 9>"$dir/.make_pki.lock"
flock 9

# In the tests, a whole PKI is made once per build tree and folder name, then copied. With
# CTAGENT_TEST_KEY_POOL=POOL (set by the tests' MakeTestPki to a folder of the build tree) the PKI
# of a folder named NAME is made in POOL/pki/NAME the first time and copied from there: making
# one is 17 openssl runs (~1.8 s of CPU), and each suite made ~50. Folders of different names
# ("pki" and "other-pki") are still different trust roots, as the tests that trust "another PKI"
# need; two tests' folders of the same name get the same PKI, which no test can tell apart (each
# runs its own servers). A pooled PKI older than 30 days is made again: its certificates were
# issued 40 days back and are valid for 825 days.
if [ -n "${CTAGENT_TEST_KEY_POOL:-}" ] && [ -z "${CTAGENT_MAKE_PKI_POOLED:-}" ] && [ ! -f server-with-key.pem ]; then
  pooled="$CTAGENT_TEST_KEY_POOL/pki/$(basename "$PWD")"
  mkdir -p "$CTAGENT_TEST_KEY_POOL/pki"
  (
    flock 7
    if [ ! -f "$pooled/server-with-key.pem" ] || [ -n "$(find "$pooled/server-with-key.pem" -mtime +30)" ]; then
      rm -rf "$pooled" "$pooled.new"
      CTAGENT_MAKE_PKI_POOLED=1 bash "$self" "$pooled.new"
      mv "$pooled.new" "$pooled"
    fi
    find "$pooled" -mindepth 1 -maxdepth 1 ! -name .make_pki.lock -exec cp -a -t . {} +
  ) 7>"$CTAGENT_TEST_KEY_POOL/pki/.lock"
  exit 0
fi

sslconf() {  # $1 = subjectAltName
  cat <<CONF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ctagent-test
[ext]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $1
CONF
}

# Real certificates were issued well before they are used; so are these (40 days back, with
# libfaketime when it is installed), so a test may move a process's wall clock back: the clock
# test (tests/durability/faults_test.cpp) jumps it back 30 days while uploads run, and a TLS
# handshake in that window must still find the server's certificate valid (with 2 days it saw
# "not yet valid" whenever a connection was made then, and retried).
signing_openssl() {
  if command -v faketime >/dev/null; then faketime -f -40d openssl "$@"; else openssl "$@"; fi
}

# The RSA private key of $1 in $1.key (mode 0600). With CTAGENT_TEST_KEY_POOL=DIR (set by the
# tests' MakeTestPki to a folder of the build tree) a certificate's key is a copy of DIR/$1.key,
# generated there the first time: one key per name for all the PKIs of a build tree, since
# generating them was most of the suites' openssl time (2.7 s of CPU a PKI, ~50 PKIs a suite).
# A CA's key is always new: a test trusts "another PKI" to mean another trust root, and the
# certificates of one must not verify against the CA of the other. Without the
# pool (the demo, the benches) every key is new.
new_key() {  # $1 = name, [$2 = "ca": always a new key]
  if [ -n "${CTAGENT_TEST_KEY_POOL:-}" ] && [ "${2:-}" != ca ]; then
    mkdir -p "$CTAGENT_TEST_KEY_POOL"
    (
      flock 8
      if [ ! -s "$CTAGENT_TEST_KEY_POOL/$1.key" ]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$CTAGENT_TEST_KEY_POOL/$1.key.new" 2>/dev/null
        chmod 600 "$CTAGENT_TEST_KEY_POOL/$1.key.new"
        mv "$CTAGENT_TEST_KEY_POOL/$1.key.new" "$CTAGENT_TEST_KEY_POOL/$1.key"
      fi
    ) 8>"$CTAGENT_TEST_KEY_POOL/.lock"
    cp "$CTAGENT_TEST_KEY_POOL/$1.key" "$1.key"
  else
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null
  fi
  chmod 600 "$1.key"
}

make_ca() {  # $1 = name
  new_key "$1" ca
  signing_openssl req -x509 -key "$1.key" -out "$1.pem" -days 3650 \
    -subj "/CN=ctagent test $1" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

make_cert() {  # $1 = name, $2 = CA name, $3 = subjectAltName, $4 = days (may be negative via -not_after)
  sslconf "$3" > "$1.cnf"
  new_key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -config "$1.cnf" 2>/dev/null
  signing_openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days "$4" -extfile "$1.cnf" -extensions ext 2>/dev/null
  rm -f "$1.csr" "$1.cnf"
}

# A server certificate signed by the CA, valid from $2 to $3 (openssl ca dates, YYYYMMDDHHMMSSZ):
# openssl x509 has no -not_before in 3.0, so sign with a throwaway 'ca' database.
make_dated_cert() {  # $1 = name, $2 = start, $3 = end
  sslconf "IP:127.0.0.1,IP:127.0.0.2,DNS:localhost" > "$1.cnf"
  new_key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -config "$1.cnf" 2>/dev/null
  local db="$1-db"
  rm -rf "$db" && mkdir -p "$db" && : > "$db/index.txt" && echo 01 > "$db/serial"
  cat > "$db/ca.cnf" <<CONF
[ca]
default_ca = test
[test]
database = $db/index.txt
serial = $db/serial
new_certs_dir = $db
default_md = sha256
policy = any
copy_extensions = copy
[any]
commonName = supplied
CONF
  openssl ca -batch -config "$db/ca.cnf" -cert ca.pem -keyfile ca.key -in "$1.csr" -out "$1.pem" \
    -startdate "$2" -enddate "$3" -extfile "$1.cnf" -extensions ext -notext 2>/dev/null
  rm -rf "$1.csr" "$1.cnf" "$db"
  chmod 600 "$1.key"
}

if [ -f server-with-key.pem ]; then
  # A folder made before the hostile server's certificate existed gets just that one (and the
  # not-yet-valid one likewise).
  if [ ! -f hostile-server.pem ]; then
    make_cert hostile-server ca "IP:127.0.0.1,IP:127.0.0.2,DNS:localhost" 825
    chmod 600 hostile-server.key
  fi
  [ -f not-yet-valid.pem ] || make_dated_cert not-yet-valid 20990101000000Z 20991231000000Z
  exit 0
fi

make_ca ca
make_ca other-ca
make_cert server ca "IP:127.0.0.1,DNS:localhost" 825
make_cert hostile-server ca "IP:127.0.0.1,IP:127.0.0.2,DNS:localhost" 825
make_cert client ca "DNS:ctagent-terminal" 825
make_cert wrong-host ca "DNS:not-this-host.invalid" 825
make_cert other-ca-server other-ca "IP:127.0.0.1,DNS:localhost" 825
# Expired: valid for one day, starting two days ago (openssl x509 has no -not_before in 3.0,
# so sign with a backdated CA request via the 'ca' command's -startdate/-enddate).
sslconf "IP:127.0.0.1,DNS:localhost" > expired.cnf
new_key expired
openssl req -new -key expired.key -out expired.csr -config expired.cnf 2>/dev/null
mkdir -p ca-db && : > ca-db/index.txt && echo 01 > ca-db/serial
cat > ca-db/ca.cnf <<CONF
[ca]
default_ca = test
[test]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = any
copy_extensions = copy
[any]
commonName = supplied
CONF
openssl ca -batch -config ca-db/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
  -startdate 20200101000000Z -enddate 20200102000000Z -extfile expired.cnf -extensions ext -notext 2>/dev/null
rm -f expired.csr expired.cnf
# Not yet valid: from 2099 on, as a terminal whose clock is far behind sees a good certificate.
make_dated_cert not-yet-valid 20990101000000Z 20991231000000Z
# Orthanc wants certificate and key in one PEM.
cat server.pem server.key > server-with-key.pem
chmod 600 ./*.key server-with-key.pem
