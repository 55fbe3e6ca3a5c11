// The headers most test programs include, compiled once per build into a precompiled header
// that every ctagent_add_test program reuses (tests/CMakeLists.txt, ctagent_test_pch). Parsing
// them was about 3.7 s of a test unit's 13 s (tests/transport's, release build); with one test
// program per module that was paid ~60 times per build, twice in CI (asan and release).
// Only headers that need no macro set before them: catch_main.cpp defines CATCH_CONFIG_MAIN
// before Catch2's header, so it is not compiled with this.
#pragma once

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
