// The Modality Worklist client against a real peer: DCMTK's wlmscpfs serving a worklist folder
// whose entries each test writes with dump2dcm, on a free loopback port, stopped by PID.
#include "agent/worklist/worklist.hpp"

#include <fcntl.h>
#include <iconv.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/log.hpp"
#include "tests/support/process.hpp"
#include "tests/worklist/worklist_server.hpp"

namespace fs = std::filesystem;
using ctagent::ErrorKind;
using ctagent::test::ChildProcess;
using ctagent::test::FreeLoopbackPort;
using ctagent::test::PortAcceptsConnections;
using ctagent::test::ReadText;
using ctagent::test::TempDir;
using ctagent::test::WaitFor;
using ctagent::worklist::FindByAccession;
using ctagent::worklist::Query;
using ctagent::worklist::ScheduledStep;
using ctagent::worklist::TodaysSteps;
using ctagent::worklist::WorklistNode;
using ctagent::worklist::WorklistQuery;

using namespace ctagent::test::worklist_peer;

namespace {

WorklistQuery TodayWithAccession(const std::string& accession) {
  WorklistQuery query = TodaysSteps(std::chrono::system_clock::now());
  query.accession_number = accession;
  return query;
}

}  // namespace

TEST_CASE("worklist: one scheduled step comes back with every field", "[worklist]") {
  WorklistServer server;
  const Entry entry;
  server.Write("one", entry);
  server.Start();

  auto steps = Query(server.Node(), TodaysSteps(std::chrono::system_clock::now()));
  INFO((steps ? "" : steps.error().message()) << "\nwlmscpfs log: " << ReadText(server.log()));
  REQUIRE(steps);
  REQUIRE(steps->size() == 1);
  const ScheduledStep& s = steps->front();
  CHECK(s.patient_name == entry.patient_name);
  CHECK(s.patient_id == entry.patient_id);
  CHECK(s.patient_birth_date == entry.birth_date);
  CHECK(s.patient_sex == entry.sex);
  CHECK(s.accession_number == entry.accession);
  CHECK(s.study_instance_uid == entry.study_uid);
  CHECK(s.requested_procedure_id == entry.requested_procedure_id);
  CHECK(s.requested_procedure_description == entry.requested_procedure_description);
  CHECK(s.scheduled_step_id == entry.step_id);
  CHECK(s.scheduled_step_description == entry.step_description);
  CHECK(s.scheduled_start_date == entry.date);
  CHECK(s.scheduled_start_time == entry.time);
  CHECK(s.modality == "CT");
  CHECK(s.scheduled_station_ae == kStationAe);
  CHECK(s.specific_character_set == "ISO_IR 192");
}

TEST_CASE("worklist: only this station's CT steps of today are returned", "[worklist]") {
  WorklistServer server;
  Entry mine;
  server.Write("mine", mine);
  Entry other_station = mine;
  other_station.accession = "ACC0002";
  other_station.station_ae = "CTSTATION2";
  server.Write("other_station", other_station);
  Entry other_modality = mine;
  other_modality.accession = "ACC0003";
  other_modality.modality = "MR";
  server.Write("other_modality", other_modality);
  Entry other_day = mine;
  other_day.accession = "ACC0004";
  other_day.date = "20000101";
  server.Write("other_day", other_day);
  server.Start();

  auto steps = Query(server.Node(), TodaysSteps(std::chrono::system_clock::now()));
  INFO((steps ? "" : steps.error().message()));
  REQUIRE(steps);
  REQUIRE(steps->size() == 1);
  CHECK(steps->front().accession_number == "ACC0001");

  // The same folder asked without a date: the other day's step too, still not the others.
  WorklistQuery any_day;
  auto all_days = Query(server.Node(), any_day);
  REQUIRE(all_days);
  CHECK(all_days->size() == 2);
}

TEST_CASE("worklist: a Chinese name in ISO_IR 192 and in GB18030 comes back as the same UTF-8", "[worklist]") {
  WorklistServer server;
  Entry utf8;
  utf8.accession = "ACC-UTF8";
  utf8.patient_id = "PID-UTF8";
  utf8.patient_name = kChineseName;
  utf8.step_description = kChineseDescription;
  server.Write("utf8", utf8);
  Entry gb = utf8;
  gb.charset = "GB18030";
  gb.accession = "ACC-GB";
  gb.patient_id = "PID-GB";
  server.Write("gb18030", gb, "GB18030");
  // The GB18030 entry really holds GB18030 bytes, not UTF-8 (else this test proves nothing).
  const std::string gb_file = ReadText(server.folder() / "gb18030.wl");
  REQUIRE(gb_file.find(Encode(kChineseName, "GB18030")) != std::string::npos);
  REQUIRE(gb_file.find(kChineseName) == std::string::npos);
  server.Start();

  for (const char* accession : {"ACC-UTF8", "ACC-GB"}) {
    INFO("accession " << accession);
    auto step = FindByAccession(server.Node(), TodayWithAccession(accession));
    INFO((step ? "" : step.error().message()));
    REQUIRE(step);
    CHECK(step->patient_name == kChineseName);
    CHECK(step->scheduled_step_description == kChineseDescription);
    CHECK(step->specific_character_set == (std::string(accession) == "ACC-GB" ? "GB18030" : "ISO_IR 192"));
  }
}

TEST_CASE("worklist: lookup by accession: no match, one match, two matches", "[worklist]") {
  WorklistServer server;
  Entry a;
  a.accession = "ACC-ONE";
  a.patient_id = "PID-A";
  server.Write("a", a);
  Entry b = a;
  b.accession = "ACC-TWICE";
  b.patient_id = "PID-B";
  b.study_uid = "1.2.826.0.1.3680043.2.1125.99.2";
  server.Write("b", b);
  Entry c = b;
  c.patient_id = "PID-C";
  c.study_uid = "1.2.826.0.1.3680043.2.1125.99.3";
  server.Write("c", c);
  server.Start();

  SECTION("no match names the server and what to check, not the accession") {
    auto step = FindByAccession(server.Node(), TodayWithAccession("ACC-NONE"));
    REQUIRE_FALSE(step);
    CHECK(step.error().kind() == ErrorKind::kNotFound);
    CHECK_THAT(step.error().message(), Catch::Contains("no CT procedure step for station 'CTSTATION1'") &&
                                           Catch::Contains("RISWL@127.0.0.1:") &&
                                           Catch::Contains("check the number"));
    CHECK(step.error().message().find("ACC-NONE") == std::string::npos);
  }
  SECTION("one match is that step") {
    auto step = FindByAccession(server.Node(), TodayWithAccession("ACC-ONE"));
    INFO((step ? "" : step.error().message()));
    REQUIRE(step);
    CHECK(step->patient_id == "PID-A");
  }
  SECTION("two matches are an error that counts them and picks none") {
    auto step = FindByAccession(server.Node(), TodayWithAccession("ACC-TWICE"));
    REQUIRE_FALSE(step);
    CHECK(step.error().kind() == ErrorKind::kInvalidInput);
    CHECK_THAT(step.error().message(), Catch::StartsWith("2 procedure steps in worklist RISWL@127.0.0.1:") &&
                                           Catch::Contains("none was chosen"));
    CHECK(step.error().message().find("PID-") == std::string::npos);
  }
  SECTION("a wildcard is refused before anything is sent") {
    auto step = FindByAccession(server.Node(), TodayWithAccession("ACC*"));
    REQUIRE_FALSE(step);
    CHECK(step.error().kind() == ErrorKind::kInvalidInput);
  }
}

TEST_CASE("worklist: a server that is not there gives the host, port and what to check", "[worklist]") {
  WorklistNode node;
  node.host = "127.0.0.1";
  node.port = FreeLoopbackPort();  // nothing listens there
  node.called_ae = kServerAe;
  node.calling_ae = kStationAe;
  node.timeout_s = 30;
  const auto start = std::chrono::steady_clock::now();
  auto steps = Query(node, TodaysSteps(std::chrono::system_clock::now()));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(steps);
  CHECK(steps.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(steps.error().message(),
             Catch::Contains("127.0.0.1:" + std::to_string(node.port)) &&
                 Catch::Contains("check worklist.host/port in the config and that the RIS worklist server is running"));
  // A refused connection is an answer: it is reported at once, not after the 30 s timeout.
  CHECK(elapsed < std::chrono::seconds(node.timeout_s));
}

TEST_CASE("worklist: a wrong called AE title is rejected and named", "[worklist]") {
  WorklistServer server;
  server.Write("one", Entry{});
  server.Start();
  WorklistNode node = server.Node();
  node.called_ae = "NOTRIS";
  auto steps = Query(node, TodaysSteps(std::chrono::system_clock::now()));
  REQUIRE_FALSE(steps);
  CHECK(steps.error().kind() == ErrorKind::kPermission);
  CHECK_THAT(steps.error().message(),
             Catch::Contains("rejected the association to called AE title 'NOTRIS'") &&
                 Catch::Contains("check worklist.called_ae"));
}

TEST_CASE("worklist: more answers than max_answers cancel the query and say so", "[worklist]") {
  WorklistServer server;
  for (int i = 0; i < 4; ++i) {
    Entry e;
    e.accession = "ACC-" + std::to_string(i);
    e.study_uid = "1.2.826.0.1.3680043.2.1125.98." + std::to_string(i + 1);
    server.Write("e" + std::to_string(i), e);
  }
  server.Start();
  WorklistNode node = server.Node();

  node.max_answers = 4;
  auto all = Query(node, TodaysSteps(std::chrono::system_clock::now()));
  INFO((all ? "" : all.error().message()));
  REQUIRE(all);
  CHECK(all->size() == 4);

  node.max_answers = 3;
  auto too_many = Query(node, TodaysSteps(std::chrono::system_clock::now()));
  REQUIRE_FALSE(too_many);
  CHECK_THAT(too_many.error().message(), Catch::Contains("sent more than 3 scheduled steps (worklist.max_answers)") &&
                                             Catch::Contains("cancelled"));

  // The server is still serving after the cancelled query.
  node.max_answers = 4;
  auto again = Query(node, TodaysSteps(std::chrono::system_clock::now()));
  REQUIRE(again);
  CHECK(again->size() == 4);
}

TEST_CASE("worklist: a malformed answer names the attribute and binds nothing", "[worklist]") {
  struct Case {
    const char* what;
    void (*spoil)(Entry&);
    const char* attribute;
  };
  const Case cases[] = {
      {"bad study UID", [](Entry& e) { e.study_uid = "1.2.03.4"; }, "(0020,000D) StudyInstanceUID is not a valid DICOM UID"},
      {"no patient ID", [](Entry& e) { e.patient_id = ""; }, "(0010,0020) PatientID is missing or empty"},
      {"bad birth date", [](Entry& e) { e.birth_date = "1964"; }, "(0010,0030) PatientBirthDate"},
      {"unknown character set", [](Entry& e) { e.charset = "ISO_IR 999"; }, "(0008,0005) SpecificCharacterSet"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      WorklistServer server;
      Entry e;
      e.patient_name = kChineseName;  // the unknown character set then has text to decode
      c.spoil(e);
      server.Write("bad", e);
      server.Start();
      auto steps = Query(server.Node(), TodaysSteps(std::chrono::system_clock::now()));
      REQUIRE_FALSE(steps);
      CHECK(steps.error().kind() == ErrorKind::kProtocol);
      CHECK_THAT(steps.error().message(), Catch::Contains(c.attribute));
      CHECK(steps.error().message().find(kChineseName) == std::string::npos);
    }
  }
}

TEST_CASE("worklist: a server that does not answer in timeout_s fails with the timeout named", "[worklist]") {
  WorklistServer server({"--sleep-before", "4"});
  server.Write("one", Entry{});
  server.Start();
  WorklistNode node = server.Node();
  node.timeout_s = 1;
  auto steps = Query(node, TodaysSteps(std::chrono::system_clock::now()));
  REQUIRE_FALSE(steps);
  CHECK(steps.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(steps.error().message(), Catch::Contains("did not answer the worklist query within 1 s (worklist.timeout_s)"));
}

TEST_CASE("worklist: queries write no patient data to the agent's output", "[worklist]") {
  WorklistServer server;
  Entry e;
  e.patient_name = kChineseName;
  e.patient_id = "PID-SECRET-7";
  e.birth_date = "19511108";
  e.accession = "ACC-SECRET";
  server.Write("good", e);
  Entry bad = e;
  bad.accession = "ACC-SECRET-2";
  bad.study_uid = "1.2.03.4";  // malformed: the failing path must be as quiet
  server.Write("bad", bad);
  server.Start();
  ctagent::log::SetLevel(ctagent::log::Level::kInfo);
  bool found = false;
  bool refused = false;
  const std::string output = CaptureOutput(server.path() / "agent-output.txt", [&] {
    found = static_cast<bool>(FindByAccession(server.Node(), TodayWithAccession("ACC-SECRET")));
    refused = !Query(server.Node(), TodaysSteps(std::chrono::system_clock::now()));
    (void)FindByAccession(server.Node(), TodayWithAccession("ACC-SECRET-9"));
  });
  CHECK(found);
  CHECK(refused);
  for (const std::string& identity : {kChineseName, std::string("PID-SECRET"), std::string("19511108"),
                                      std::string("ACC-SECRET"), Encode(kChineseName, "GB18030")}) {
    CHECK(output.find(identity) == std::string::npos);
  }
}
