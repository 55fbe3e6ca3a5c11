# Warning flags for ctagent's own targets, applied PRIVATE by ctagent_target_warnings(target):
# they never reach a consumer of our libraries (a test, an OEM's project, a distribution's build
# with its own flags), and a newer compiler's new warning cannot break someone else's build.
# -Werror only with CTAGENT_WARNINGS_AS_ERRORS=ON, which the dev, release and asan presets (and
# so CI) set: a plain `cmake -DCMAKE_BUILD_TYPE=Release` build reports warnings and carries on.
option(CTAGENT_WARNINGS_AS_ERRORS "Treat compiler warnings in ctagent's own targets as errors" OFF)

set(CTAGENT_WARNING_FLAGS
  -Wall -Wextra -Wpedantic -Wshadow -Wcast-align -Wunused -Wnull-dereference -Wdouble-promotion
  -Wformat=2 -Wimplicit-fallthrough)
# Flags that only mean something in C++ (GCC warns about them on C sources).
set(CTAGENT_CXX_WARNING_FLAGS
  -Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual -Wsuggest-override)

function(ctagent_target_warnings target)
  target_compile_options(${target} PRIVATE
    ${CTAGENT_WARNING_FLAGS}
    "$<$<COMPILE_LANGUAGE:CXX>:${CTAGENT_CXX_WARNING_FLAGS}>"
    $<$<BOOL:${CTAGENT_WARNINGS_AS_ERRORS}>:-Werror>)
endfunction()
