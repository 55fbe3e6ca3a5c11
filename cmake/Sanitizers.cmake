# CTAGENT_SANITIZE=ON builds everything with AddressSanitizer and UndefinedBehaviorSanitizer.
option(CTAGENT_SANITIZE "Build with ASan and UBSan" OFF)
if(CTAGENT_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=address,undefined)
  # Executables of this build are linked as position-dependent (-no-pie). UBSan leaves a static
  # record with pointers (file name, type) at every check, and ASan one per global: as a PIE,
  # ctagent had 2.35 million relative relocations (.rela.dyn 55 MB) that the dynamic loader
  # applied at every start, copying the 62 MB of .data it touched. That was half of each
  # start (0.43 s of `ctagent --version` on an idle core, 0.23 s without; more under load), and
  # each of the suite's ~480 tests is a process that may start the agent again. Shared objects (the
  # plugin drivers) stay position independent; the builds we ship (release, firmware) stay PIE.
  add_link_options("$<$<STREQUAL:$<TARGET_PROPERTY:TYPE>,EXECUTABLE>:-no-pie>")
endif()
