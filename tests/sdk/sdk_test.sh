#!/usr/bin/env bash
# The driver SDK end to end, as an OEM's driver project sees it (tests/sdk/CMakeLists.txt):
#   1. `cmake --install` of this build into a staging root (DESTDIR, so no install rule can
#      reach outside it, and the SDK must be relocatable);
#   2. the installed C example configured and built out of tree with CMAKE_PREFIX_PATH pointing
#      at the install only (find_package(ctagent_driver 0.1 REQUIRED), ctagent::driver_sdk);
#   3. `pkg-config --cflags ctagent_driver` from the installed .pc names the header's folder,
#      and the driver compiles with those flags and nothing else;
#   4. the installed ctagent-driver-check runs on the out-of-tree driver: exit 0, PASS lines,
#      no FAIL line.
# Usage: sdk_test.sh BUILD_DIR WORK_DIR CMAKE PKG_CONFIG EMULATOR [cmake args for the example]
# (EMULATOR may be empty; it runs the kit of a cross build, e.g. qemu-aarch64).
set -euo pipefail
build=$1 work=$2 cmake=$3 pkg_config=$4 emulator=$5
shift 5

fail() { echo "FAIL: $*" >&2; exit 1; }
show() { echo "---- $1"; cat "$1"; }

rm -rf "$work"
mkdir -p "$work"
stage=$work/stage
prefix=/opt/ctagent-sdk-test
root=$stage$prefix

echo "== install $build into $root"
DESTDIR=$stage "$cmake" --install "$build" --prefix "$prefix" > "$work/install.log" 2>&1 ||
  { show "$work/install.log"; fail "cmake --install failed"; }
for file in bin/ctagent bin/ctagent-driver-host bin/ctagent-driver-check; do
  [[ -x $root/$file ]] || fail "the install has no executable $file"
done
[[ -f $root/include/ctagent/ctagent_driver.h ]] || fail "the install has no include/ctagent/ctagent_driver.h"
config=$(find "$root" -name ctagent_driverConfig.cmake)
[[ -n $config && -f $(dirname "$config")/ctagent_driverConfigVersion.cmake ]] ||
  fail "the install has no CMake package ctagent_driver (Config + ConfigVersion)"
pc=$(find "$root" -name ctagent_driver.pc)
[[ -n $pc ]] || fail "the install has no ctagent_driver.pc"
example=$root/share/doc/ctagent/examples/c_example
[[ -f $example/CMakeLists.txt ]] || fail "the install has no example driver project in $example"

echo "== configure and build $example out of tree"
"$cmake" -S "$example" -B "$work/example" -DCMAKE_PREFIX_PATH="$root" -DCMAKE_BUILD_TYPE=Release "$@" \
  > "$work/example-configure.log" 2>&1 || { show "$work/example-configure.log"; fail "configuring the example failed"; }
"$cmake" --build "$work/example" > "$work/example-build.log" 2>&1 ||
  { show "$work/example-build.log"; fail "building the example failed"; }
driver=$work/example/libctagent_driver_c_example.so
[[ -f $driver ]] || fail "the example's build made no $driver"
# The package was found in the staging root, not in some other installed copy.
grep -q "ctagent_driver_DIR:PATH=$root/" "$work/example/CMakeCache.txt" ||
  fail "find_package(ctagent_driver) did not find the package under $root: $(grep ctagent_driver_DIR "$work/example/CMakeCache.txt")"

echo "== pkg-config --cflags ctagent_driver"
cflags=$(PKG_CONFIG_PATH=$(dirname "$pc") "$pkg_config" --cflags ctagent_driver)
echo "cflags: $cflags"
include_dir=${cflags#-I}
include_dir=${include_dir%% *}
[[ $cflags == -I* && -f $include_dir/ctagent_driver.h ]] ||
  fail "pkg-config --cflags ctagent_driver gave '$cflags', which does not name the folder of ctagent_driver.h"
compiler=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$work/example/CMakeCache.txt")
# shellcheck disable=SC2086  # cflags is a list of flags
"$compiler" -std=c11 -shared -fPIC -fvisibility=hidden $cflags "$example/c_example_driver.c" \
  -o "$work/libctagent_driver_pkgconfig.so" -lpthread -lm || fail "the example does not compile with pkg-config's flags"

echo "== installed ctagent-driver-check on $driver"
set +e
# 200 Hz as in tests/drivers: the view-rate check must hold on a loaded CI machine and under ASan.
$emulator "$root/bin/ctagent-driver-check" --rate 200 "$driver" > "$work/check.log" 2>&1
status=$?
set -e
cat "$work/check.log"
passes=$(grep -c '^PASS ' "$work/check.log" || true)
if grep -q '^FAIL' "$work/check.log"; then fail "the conformance kit reported failures"; fi
((status == 0)) || fail "ctagent-driver-check exited with $status"
((passes >= 5)) || fail "the conformance kit printed $passes PASS lines (expected its checks, at least 5)"
echo "OK: the out-of-tree driver passed $passes checks of the installed kit"
