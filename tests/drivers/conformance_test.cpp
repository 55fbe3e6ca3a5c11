// The conformance kit (ctagent-driver-check) run as OEMs run it: it passes sim through the C
// ABI (in-process table and .so) and the C example, and fails each faulty sample driver with
// a message that says what is wrong.
#include <catch2/catch.hpp>

#include <chrono>
#include <string>

#include "tests/support/process.hpp"

using namespace ctagent::test;

namespace {

struct KitRun {
  int exit_code = -1;
  std::string output;
};

KitRun RunKit(const std::vector<std::string>& args) {
  TempDir dir("driver-check");
  const auto log = dir.path() / "kit.log";
  std::vector<std::string> argv{CTAGENT_DRIVER_CHECK};
  argv.insert(argv.end(), args.begin(), args.end());
  KitRun run;
  {
    ChildProcess kit(argv, log);
    run.exit_code = kit.Wait(std::chrono::seconds(60));
  }
  run.output = ReadText(log);
  INFO(run.output);
  return run;
}

std::string Broken(const std::string& fault) {
  return std::string(CTAGENT_BROKEN_DIR) + "/libctagent_driver_broken_" + fault + ".so";
}

// Sanitizer builds are slow; a modest rate keeps the real-time checks about scheduling, not CPU.
// Three seconds of views, not the default one: a test program that the scheduler leaves out for a
// few hundred ms near the end of a 1 s window (seen on 2 cores at load 10: worst lateness 431 ms,
// 149 Hz measured for 200 asked) reads as a slow driver; over 3 s the same stall moves the mean
// rate by a third as much, and the tolerance and the lateness bound stay what they were.
const std::vector<std::string> kGentle{"--rate", "200", "--rate-seconds", "3", "--rate-tolerance", "0.15"};

}  // namespace

TEST_CASE("conformance: the sim driver passes through the C ABI, in-process and as a .so") {
  for (const std::vector<std::string>& target :
       {std::vector<std::string>{"--builtin", "sim"}, std::vector<std::string>{CTAGENT_SIM_DRIVER_SO}}) {
    auto args = target;
    args.insert(args.end(), kGentle.begin(), kGentle.end());
    const KitRun run = RunKit(args);
    INFO(run.output);
    CHECK(run.exit_code == 0);
    CHECK(run.output.find("PASS ordering") != std::string::npos);
    CHECK(run.output.find("PASS abort mid-scan") != std::string::npos);
    CHECK(run.output.find("PASS clean shutdown") != std::string::npos);
    CHECK(run.output.find(": 0 check(s) failed") != std::string::npos);
  }
}

TEST_CASE("conformance: the C example driver passes") {
  auto args = std::vector<std::string>{CTAGENT_C_EXAMPLE_SO};
  args.insert(args.end(), kGentle.begin(), kGentle.end());
  const KitRun run = RunKit(args);
  INFO(run.output);
  CHECK(run.exit_code == 0);
  CHECK(run.output.find("FAIL") == std::string::npos);
  CHECK(run.output.find("PASS view rate") != std::string::npos);
}

TEST_CASE("conformance: faulty drivers fail with the expected message") {
  struct Case {
    const char* fault;
    const char* expected;
  };
  const Case cases[] = {
      {"gap", "FAIL ordering: gap: view 5 was due but sequence 6 arrived (1 view(s) missing)"},
      {"duplicate", "FAIL ordering: duplicate or out of order: sequence 5 arrived after view 5; view 6 was due"},
      {"abi", "FAIL load: detector driver " },
      {"no_abort", "FAIL abort mid-scan: next_view() kept delivering views"},
  };
  for (const Case& c : cases) {
    auto args = std::vector<std::string>{Broken(c.fault)};
    args.insert(args.end(), kGentle.begin(), kGentle.end());
    const KitRun run = RunKit(args);
    INFO(c.fault << "\n" << run.output);
    CHECK(run.exit_code == 1);
    CHECK(run.output.find(c.expected) != std::string::npos);
  }
  const KitRun abi = RunKit({Broken("abi")});
  INFO(abi.output);
  CHECK(abi.output.find("built for driver ABI 2.2, but this agent speaks ABI 1.2") != std::string::npos);
}

TEST_CASE("conformance: bad usage and a missing file are reported") {
  CHECK(RunKit({}).exit_code == 2);
  const KitRun missing = RunKit({"/nonexistent/libdriver.so"});
  CHECK(missing.exit_code == 1);
  CHECK(missing.output.find("FAIL load: detector driver /nonexistent/libdriver.so: no such file") != std::string::npos);
}
