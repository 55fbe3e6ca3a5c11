# One INTERFACE target carries the warning flags; every ctagent target links it.
add_library(ctagent_warnings INTERFACE)
target_compile_options(ctagent_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Werror
  -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Wunused
  -Woverloaded-virtual -Wnull-dereference -Wdouble-promotion -Wformat=2
  -Wimplicit-fallthrough -Wsuggest-override)
