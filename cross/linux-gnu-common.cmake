# Shared body of the Linux toolchain files in cross/: the including file sets CMAKE_SYSTEM_PROCESSOR
# and ctagent_cross_triplet (the GNU triplet, which is also Debian's multiarch directory name).
# CMake reads a toolchain file again for every try_compile, so this file only sets variables.

# Settings come from -D... or the environment, and are cached so that a re-run of CMake by the build
# tool (without the environment of the first configure) still builds for the same target.
if(NOT DEFINED CACHE{CTAGENT_SYSROOT} AND NOT DEFINED CTAGENT_SYSROOT)
  set(CTAGENT_SYSROOT "$ENV{CTAGENT_SYSROOT}" CACHE PATH
      "Target root file system (empty: Debian multiarch libraries on the build host)")
endif()
if(NOT DEFINED CACHE{CTAGENT_CROSS_PREFIX} AND NOT DEFINED CTAGENT_CROSS_PREFIX)
  set(ctagent_cross_prefix_default "$ENV{CTAGENT_CROSS_PREFIX}")
  if(ctagent_cross_prefix_default STREQUAL "")
    set(ctagent_cross_prefix_default "${ctagent_cross_triplet}-")
  endif()
  set(CTAGENT_CROSS_PREFIX "${ctagent_cross_prefix_default}" CACHE STRING
      "Prefix of the cross compiler's name, found on PATH (gcc and g++ are appended)")
endif()
if(NOT DEFINED CACHE{CTAGENT_CROSS_STAGE} AND NOT DEFINED CTAGENT_CROSS_STAGE)
  set(ctagent_cross_stage_default "$ENV{CTAGENT_CROSS_STAGE}")
  if(ctagent_cross_stage_default STREQUAL "")
    get_filename_component(ctagent_cross_stage_default
                           "${CMAKE_CURRENT_LIST_DIR}/../build/cross-stage/${ctagent_cross_triplet}" ABSOLUTE)
  endif()
  set(CTAGENT_CROSS_STAGE "${ctagent_cross_stage_default}" CACHE PATH
      "Staging tree with target packages Debian cannot co-install (used without CTAGENT_SYSROOT)")
endif()
# try_compile projects do not see the cache of the main project: hand the settings over.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES CTAGENT_SYSROOT CTAGENT_CROSS_PREFIX CTAGENT_CROSS_STAGE)

# GCC contracts a * b + c into one fused multiply-add in C++ wherever the CPU has one (the default
# -ffp-contract=fast outside ISO C): aarch64 always, x86-64 only with -mfma, which our native
# builds never use. Fused and unfused results differ in the last bits, so the sim's projections
# and anything else computed in floating point would differ between the x86-64 build and the Arm
# build (tests/drivers/phantom_test.cpp's 1e-12 agreement of the two chord algorithms fails on
# aarch64). Off, every target computes the same bits as x86-64.
set(CMAKE_C_FLAGS_INIT "-ffp-contract=off")
set(CMAKE_CXX_FLAGS_INIT "-ffp-contract=off")

# Names only, never absolute paths: CMake finds them on PATH, so any installation of the
# toolchain works (Debian's crossbuild-essential, a vendor toolchain put first on PATH).
set(CMAKE_C_COMPILER "${CTAGENT_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${CTAGENT_CROSS_PREFIX}g++")

# A cross-built binary never runs from the build tree on this host, and an RPATH that names a
# build-host directory (the DCMTK stage) would travel into the firmware image: link without one.
# The target's dynamic loader finds the libraries in its standard directories.
set(CMAKE_SKIP_BUILD_RPATH ON)

# Programs (code generators, pkg-config) run on the build host; everything that is linked or
# included comes from the target's root only.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# pkg-config must read the target's .pc files, never the host's: PKG_CONFIG_LIBDIR replaces the
# default search path, and a PKG_CONFIG_PATH left in the environment would add host files back.
unset(ENV{PKG_CONFIG_PATH})
if(CTAGENT_SYSROOT)
  set(CMAKE_SYSROOT "${CTAGENT_SYSROOT}")
  set(CMAKE_FIND_ROOT_PATH "${CTAGENT_SYSROOT}")
  set(ENV{PKG_CONFIG_SYSROOT_DIR} "${CTAGENT_SYSROOT}")
  set(ENV{PKG_CONFIG_LIBDIR}
      "${CTAGENT_SYSROOT}/usr/lib/${ctagent_cross_triplet}/pkgconfig:${CTAGENT_SYSROOT}/usr/lib/pkgconfig:${CTAGENT_SYSROOT}/usr/lib64/pkgconfig:${CTAGENT_SYSROOT}/usr/share/pkgconfig")
else()
  # Debian multiarch: the target's libraries share / with the host's, in their own directories
  # (/usr/lib/<triplet>), so there is no root to switch to: with an empty CMAKE_FIND_ROOT_PATH the
  # modes above search the host's prefixes, and CMAKE_LIBRARY_ARCHITECTURE (detected from the
  # compiler) picks the <triplet> directories in them.
  unset(ENV{PKG_CONFIG_SYSROOT_DIR})
  set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/${ctagent_cross_triplet}/pkgconfig:/usr/share/pkgconfig")
  if(IS_DIRECTORY "${CTAGENT_CROSS_STAGE}/usr" AND NOT "${CTAGENT_CROSS_STAGE}/usr" IN_LIST CMAKE_PREFIX_PATH)
    list(PREPEND CMAKE_PREFIX_PATH "${CTAGENT_CROSS_STAGE}/usr")
  endif()
endif()

# Target binaries run on this host under qemu-user (Debian package qemu-user-static): try_run,
# catch_discover_tests (which lists a test executable's cases at build time) and ctest all go
# through CMAKE_CROSSCOMPILING_EMULATOR. -L is where qemu finds the target's dynamic loader and
# libraries: the sysroot, or / for Debian multiarch (/lib/ld-linux-<arch>.so.* from libc6:<arch>).
# Without qemu the build still works; only running target binaries here does not.
if(NOT DEFINED CMAKE_CROSSCOMPILING_EMULATOR)
  find_program(CTAGENT_CROSS_QEMU NAMES qemu-${ctagent_qemu_cpu}-static qemu-${ctagent_qemu_cpu}
               DOC "qemu-user for the target CPU, runs target binaries on the build host")
  if(CTAGENT_CROSS_QEMU)
    if(CTAGENT_SYSROOT)
      set(CMAKE_CROSSCOMPILING_EMULATOR "${CTAGENT_CROSS_QEMU};-L;${CTAGENT_SYSROOT}")
    else()
      set(CMAKE_CROSSCOMPILING_EMULATOR "${CTAGENT_CROSS_QEMU};-L;/")
    endif()
  endif()
endif()
