# Toolchain file: 32-bit Arm Linux, hard float (Debian armhf, ARMv7), e.g.
# `cmake -S . -B build/armhf -G Ninja --toolchain cross/armhf-linux-gnueabihf.cmake ...`
# (scripts/cross-build armhf). Settings as in aarch64-linux-gnu.cmake: CTAGENT_SYSROOT (a target
# root file system; empty = Debian multiarch armhf libraries on the build host), CTAGENT_CROSS_PREFIX
# (default arm-linux-gnueabihf-, found on PATH), CTAGENT_CROSS_STAGE (default
# build/cross-stage/arm-linux-gnueabihf). docs/cross-compiling.md.
set(ctagent_cross_triplet arm-linux-gnueabihf)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(ctagent_qemu_cpu arm)       # qemu-arm runs 32-bit Arm (ARMv7 and older)
include("${CMAKE_CURRENT_LIST_DIR}/linux-gnu-common.cmake")
