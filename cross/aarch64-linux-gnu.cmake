# Toolchain file: 64-bit Arm Linux (glibc), e.g. `cmake --preset aarch64`. docs/cross-compiling.md.
#
# Two ways to get the target's libraries, chosen by CTAGENT_SYSROOT (cache variable or environment):
#   empty (default)  Debian multiarch on the build host: arm64 libraries in /usr/lib/aarch64-linux-gnu,
#                    headers in /usr/include; scripts/cross-build installs them. Debian 12 cannot
#                    co-install libdcmtk-dev for two architectures, so its arm64 headers and CMake
#                    package live in a staging tree, CTAGENT_CROSS_STAGE (default
#                    build/cross-stage/aarch64-linux-gnu, made by scripts/cross-build).
#   a directory      the target's root file system (Yocto SDK sysroot, debootstrap tree): every
#                    library, header, CMake package and .pc file comes from there, nothing from the host.
# The compiler is ${CTAGENT_CROSS_PREFIX}gcc/g++ found on PATH (default prefix aarch64-linux-gnu-).
set(ctagent_cross_triplet aarch64-linux-gnu)
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(ctagent_qemu_cpu aarch64)   # qemu-aarch64(-static) runs it
include("${CMAKE_CURRENT_LIST_DIR}/linux-gnu-common.cmake")
