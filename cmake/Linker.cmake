# CTAGENT_LINKER: the linker GCC runs (-fuse-ld=NAME: bfd, gold or lld); empty, the default, keeps
# the toolchain's own. The dev, release and asan presets, which link the ~40 test programs, set
# lld: linking ctagent under the sanitizers took 6.7 s of CPU with GNU ld and 2.2 s with lld
# (the same objects, -no-pie), and CI links every program twice (asan, release). The firmware
# presets and the cross toolchains leave it empty: what ships is linked by the OEM's toolchain.
set(CTAGENT_LINKER "" CACHE STRING "Linker for gcc's -fuse-ld= (bfd, gold, lld); empty: the toolchain's default")
if(CTAGENT_LINKER)
  # One cached result per linker name, so that changing CTAGENT_LINKER looks for the new one.
  find_program(CTAGENT_LD_${CTAGENT_LINKER} NAMES "ld.${CTAGENT_LINKER}")
  if(NOT CTAGENT_LD_${CTAGENT_LINKER})
    message(FATAL_ERROR "CTAGENT_LINKER is '${CTAGENT_LINKER}' but ld.${CTAGENT_LINKER} is not installed: "
                        "install it (Debian: apt-get install lld for lld; scripts/bootstrap does) "
                        "or configure with -DCTAGENT_LINKER= to use the default linker")
  endif()
  add_link_options("-fuse-ld=${CTAGENT_LINKER}")
endif()
