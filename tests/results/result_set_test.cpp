// The AI result set on the agent's side (issue 14 item 5): validation of SR, SEG and the readable
// report, reading the SR's findings and references, the result-set check (foreign and broken
// references refused), the findings record for `ctagent status`, and delivery to a real DCMTK
// storescp that accepts everything or refuses SR.
#include <vector>

#include "agent/results/result_set.hpp"
#include "agent/results/results.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <set>
#include <string>

#include "base/uid.hpp"
#include "tests/results/result_objects.hpp"
#include "tests/support/process.hpp"

namespace fs = std::filesystem;
using namespace ctagent;
using namespace ctagent::test::result_objects;
using results::CheckResultSet;
using results::DefaultAllowedSopClasses;
using results::InstanceRef;
using results::ResultSetVerdict;
using results::StoredInstance;
using results::ValidateInstance;
using test::TempDir;

namespace {

// One scan's complete result set on disk: 2 CT slices, SEG, report page, SR.
struct ResultSet {
  std::string study = MintDicomUid();
  std::string ct_series = MintDicomUid();
  std::vector<std::string> ct = {MintDicomUid(), MintDicomUid()};
  std::string seg_series = MintDicomUid(), seg = MintDicomUid();
  std::string report_series = MintDicomUid(), report = MintDicomUid();
  std::string sr_series = MintDicomUid(), sr = MintDicomUid();
  std::map<std::string, fs::path> files;  // SOP instance UID -> file

  SrSpec Sr() const {
    SrSpec spec;
    spec.study = study;
    spec.series = sr_series;
    spec.sop = sr;
    spec.image_refs = ct;
    for (const auto& uid : ct) spec.evidence.push_back({study, ct_series, UID_CTImageStorage, uid});
    spec.evidence.push_back({study, seg_series, UID_SegmentationStorage, seg});
    spec.evidence.push_back({study, report_series, UID_SecondaryCaptureImageStorage, report});
    return spec;
  }
  SegSpec Seg() const { return {study, seg_series, seg, ct_series, ct}; }

  void Write(const fs::path& dir, const SrSpec& sr_spec, const SegSpec& seg_spec) {
    for (const auto& uid : ct) {
      files[uid] = dir / ("ct-" + uid + ".dcm");
      MakeCt(study, ct_series, uid, static_cast<int>(ct.size()), files[uid]);
    }
    files[seg] = dir / "seg.dcm";
    MakeSeg(seg_spec, files[seg]);
    files[report] = dir / "report.dcm";
    MakeReportPage(study, report_series, report, files[report]);
    files[sr] = dir / "sr.dcm";
    MakeSr(sr_spec, files[sr]);
  }
  void Write(const fs::path& dir) { Write(dir, Sr(), Seg()); }

  std::map<std::string, StoredInstance> Stored() const {
    std::map<std::string, StoredInstance> stored;
    for (const auto& uid : ct) stored[uid] = {ct_series, UID_CTImageStorage};
    stored[seg] = {seg_series, UID_SegmentationStorage};
    stored[report] = {report_series, UID_SecondaryCaptureImageStorage};
    stored[sr] = {sr_series, UID_ComprehensiveSRStorage};
    return stored;
  }
};

std::vector<std::uint8_t> Bytes(const fs::path& path) {
  const std::string text = test::ReadText(path);
  return {text.begin(), text.end()};
}

results::SrSummary Summary(const fs::path& path) {
  auto summary = results::ReadSrSummary(path);
  INFO((summary ? std::string() : summary.error().message()));
  REQUIRE(summary);
  return *summary;
}

results::SegReferences SegRefs(const fs::path& path) {
  auto refs = results::ReadSegReferences(path);
  INFO((refs ? std::string() : refs.error().message()));
  REQUIRE(refs);
  return *refs;
}

}  // namespace

TEST_CASE("result set: SR (three classes), SEG and the readable report validate, and their checks refuse bad ones",
          "[results][validate][aiset]") {
  TempDir dir("aiset-validate");
  ResultSet set;
  set.Write(dir.path());
  const auto& allowed = DefaultAllowedSopClasses();
  for (const auto& uid : {set.seg, set.report, set.sr, set.ct[0]}) {
    auto info = ValidateInstance(Bytes(set.files[uid]), set.study, allowed);
    INFO((info ? std::string() : info.error().message()));
    REQUIRE(info);
    CHECK(info->sop_instance_uid == uid);
  }
  for (const char* sop_class : {UID_EnhancedSRStorage, UID_Comprehensive3DSRStorage}) {
    SrSpec spec = set.Sr();
    spec.sop_class = sop_class;
    const auto path = dir.path() / "other-sr.dcm";
    auto info = ValidateInstance(MakeSr(spec, path), set.study, allowed);
    INFO((info ? std::string() : info.error().message()));
    REQUIRE(info);
    CHECK(info->sop_class_uid == sop_class);
  }

  SECTION("a SEG whose 1-bit pixel data is short is refused") {
    SegSpec spec = set.Seg();
    spec.pixel_bytes_short = 2;
    auto info = ValidateInstance(MakeSeg(spec, dir.path() / "short.dcm"), set.study, allowed);
    REQUIRE_FALSE(info);
    CHECK(info.error().kind() == ErrorKind::kCorrupt);
    CHECK_THAT(info.error().message(), Catch::Contains("PixelData is 62 bytes") && Catch::Contains("needs 64 bytes"));
  }
  SECTION("a SEG of 16 bits per pixel is refused") {
    SegSpec spec = set.Seg();
    spec.bits_allocated = 16;
    auto info = ValidateInstance(MakeSeg(spec, dir.path() / "seg16.dcm"), set.study, allowed);
    REQUIRE_FALSE(info);
    CHECK_THAT(info.error().message(), Catch::Contains("BitsAllocated is 16; a segmentation must have 1 or 8"));
  }
  SECTION("an SR that is not a readable document is refused") {
    DcmFileFormat file;
    PutIdentity(*file.getDataset(), UID_ComprehensiveSRStorage, set.sr, set.study, set.sr_series, "SR", "1003");
    REQUIRE(file.getDataset()->putAndInsertString(DCM_ValueType, "CONTAINER").good());
    auto info = ValidateInstance(SaveBytes(file, dir.path() / "bad-sr.dcm"), set.study, allowed);
    REQUIRE_FALSE(info);
    CHECK(info.error().kind() == ErrorKind::kCorrupt);
    CHECK_THAT(info.error().message(), Catch::Contains("instance " + set.sr + ": not a readable structured report"));
  }
  SECTION("an SR over its class's size bound (16 MiB) is refused; the same text in a small SR is not") {
    SrSpec spec = set.Sr();
    spec.padding_text = std::string(17u << 20, 'x');
    auto info = ValidateInstance(MakeSr(spec, dir.path() / "huge-sr.dcm"), set.study, allowed);
    REQUIRE_FALSE(info);
    CHECK(info.error().kind() == ErrorKind::kProtocol);
    CHECK_THAT(info.error().message(), Catch::Contains("more than the 16 MiB allowed for its SOP class"));
    spec.padding_text = std::string(1u << 20, 'x');
    CHECK(ValidateInstance(MakeSr(spec, dir.path() / "big-sr.dcm"), set.study, allowed));
    CHECK(results::MaxInstanceBytes(UID_ComprehensiveSRStorage) == (16u << 20));
    CHECK(results::MaxInstanceBytes(UID_SegmentationStorage) == (512u << 20));
  }
  SECTION("an SR of another study is refused like any instance") {
    auto info = ValidateInstance(Bytes(set.files[set.sr]), MintDicomUid(), allowed);
    REQUIRE_FALSE(info);
    CHECK_THAT(info.error().message(), Catch::Contains("belongs to study " + set.study));
  }
}

TEST_CASE("result set: the SR's findings, evidence and image references are read", "[results][aiset]") {
  TempDir dir("aiset-sr");
  ResultSet set;
  set.Write(dir.path());
  const auto summary = Summary(set.files[set.sr]);
  CHECK(summary.sop_instance_uid == set.sr);
  CHECK(summary.findings.category == "HIGH-RISK");
  REQUIRE(summary.findings.lesion_count);
  CHECK(*summary.findings.lesion_count == 2);
  REQUIRE(summary.findings.involvement_right_percent);
  CHECK(*summary.findings.involvement_right_percent == Approx(4.5));
  REQUIRE(summary.findings.involvement_left_percent);
  CHECK(*summary.findings.involvement_left_percent == Approx(1.25));
  REQUIRE(summary.evidence.size() == 4);
  CHECK(summary.evidence[2].sop_instance_uid == set.seg);
  CHECK(summary.evidence[2].series_uid == set.seg_series);
  CHECK(summary.evidence[2].sop_class_uid == UID_SegmentationStorage);
  CHECK(summary.evidence[0].study_uid == set.study);
  REQUIRE(summary.image_references.size() == 2);
  CHECK(summary.image_references[1].sop_instance_uid == set.ct[1]);

  SECTION("fixed-place INVOLVEMENT-RIGHT / -LEFT are read too") {
    SrSpec spec = set.Sr();
    spec.fixed_place_involvement = true;
    spec.right = 0.5;
    spec.left = 12.0;
    MakeSr(spec, dir.path() / "fixed.dcm");
    const auto fixed = Summary(dir.path() / "fixed.dcm");
    REQUIRE(fixed.findings.involvement_right_percent);
    CHECK(*fixed.findings.involvement_right_percent == Approx(0.5));
    REQUIRE(fixed.findings.involvement_left_percent);
    CHECK(*fixed.findings.involvement_left_percent == Approx(12.0));
  }
  SECTION("a failed analysis: category FAILED with its reason, no lungs") {
    SrSpec spec = set.Sr();
    spec.category = "FAILED";
    spec.failure_reason = "no lungs found in the volume";
    spec.lesion_count = 0;
    spec.right.reset();
    spec.left.reset();
    MakeSr(spec, dir.path() / "failed.dcm");
    const auto failed = Summary(dir.path() / "failed.dcm");
    CHECK(failed.findings.category == "FAILED");
    CHECK(failed.findings.failure_reason == "no lungs found in the volume");
    CHECK(failed.findings.lesion_count == 0u);
    CHECK_FALSE(failed.findings.involvement_right_percent);
    CHECK_FALSE(failed.findings.involvement_left_percent);
  }
  SECTION("an involvement that is not a percentage is refused") {
    SrSpec spec = set.Sr();
    spec.right = 140;
    MakeSr(spec, dir.path() / "bad.dcm");
    auto bad = results::ReadSrSummary(dir.path() / "bad.dcm");
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message(), Catch::Contains("INVOLVEMENT is not a percentage"));
  }
  SECTION("the SEG's referenced series and per-frame source images are read") {
    const auto refs = SegRefs(set.files[set.seg]);
    CHECK(refs.sop_instance_uid == set.seg);
    CHECK(refs.referenced_series == std::vector<std::string>{set.ct_series});
    std::set<std::string> uids;
    for (const auto& r : refs.referenced_instances) uids.insert(r.sop_instance_uid);
    CHECK(uids == std::set<std::string>(set.ct.begin(), set.ct.end()));
    CHECK(refs.referenced_instances.size() == 4);  // 2 in the series list + 2 frames
  }
}

TEST_CASE("result set: complete, waiting, and foreign or broken references refused", "[results][aiset]") {
  TempDir dir("aiset-check");
  ResultSet set;
  set.Write(dir.path());
  auto stored = set.Stored();
  const auto sr = Summary(set.files[set.sr]);
  std::vector<results::SegReferences> segs = {SegRefs(set.files[set.seg])};
  using State = ResultSetVerdict::State;

  const auto ok = CheckResultSet(set.study, sr, stored, {}, {}, segs);
  INFO(ok.reason);
  CHECK(ok.state == State::kComplete);
  CHECK(ok.members == std::set<std::string>{set.ct[0], set.ct[1], set.seg, set.report, set.sr});

  SECTION("an evidence instance still listed but not stored: waiting") {
    stored.erase(set.report);
    const auto v = CheckResultSet(set.study, sr, stored, {set.report}, {}, segs);
    CHECK(v.state == State::kWaiting);
    CHECK_THAT(v.reason, Catch::Contains("1 instance(s) not stored yet: " + set.report));
  }
  SECTION("an evidence instance the center does not have in this study: refused (foreign)") {
    stored.erase(set.report);
    const auto v = CheckResultSet(set.study, sr, stored, {}, {}, segs);
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("names instance " + set.report) && Catch::Contains("foreign"));
  }
  SECTION("evidence of another study: refused (foreign)") {
    SrSpec spec = set.Sr();
    spec.evidence[0].study_uid = MintDicomUid();
    MakeSr(spec, dir.path() / "foreign.dcm");
    const auto v = CheckResultSet(set.study, Summary(dir.path() / "foreign.dcm"), stored, {}, {}, segs);
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("of study " + spec.evidence[0].study_uid) &&
                             Catch::Contains("not of this scan's study " + set.study));
  }
  SECTION("evidence naming a stored instance under another series: refused") {
    SrSpec spec = set.Sr();
    spec.evidence[3].series_uid = set.ct_series;
    MakeSr(spec, dir.path() / "mislabelled.dcm");
    const auto v = CheckResultSet(set.study, Summary(dir.path() / "mislabelled.dcm"), stored, {}, {}, segs);
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("but the instance is of series " + set.report_series));
  }
  SECTION("an evidence instance refused at validation: the set is refused") {
    stored.erase(set.seg);
    const auto v = CheckResultSet(set.study, sr, stored, {}, {set.seg}, segs);
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("names instance " + set.seg + ", which was refused"));
  }
  SECTION("an image reference to the report page (not a CT image): refused") {
    SrSpec spec = set.Sr();
    spec.image_refs.push_back(set.report);
    MakeSr(spec, dir.path() / "imgref.dcm");
    const auto v = CheckResultSet(set.study, Summary(dir.path() / "imgref.dcm"), stored, {}, {}, segs);
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("image reference names instance " + set.report));
  }
  SECTION("a SEG that refers to another series, or to an image not of this scan: refused") {
    SegSpec spec = set.Seg();
    const bool other_series = GENERATE(true, false);
    if (other_series) {
      spec.referenced_series = MintDicomUid();
    } else {
      spec.source_instances[1] = MintDicomUid();
    }
    MakeSeg(spec, dir.path() / "seg-foreign.dcm");
    const auto v = CheckResultSet(set.study, sr, stored, {}, {}, {SegRefs(dir.path() / "seg-foreign.dcm")});
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("segmentation " + set.seg + " refers to " +
                                         (other_series ? "series " + spec.referenced_series
                                                       : "instance " + spec.source_instances[1])));
  }
  SECTION("an SR without evidence: refused") {
    SrSpec spec = set.Sr();
    spec.evidence.clear();
    MakeSr(spec, dir.path() / "noev.dcm");
    const auto v = CheckResultSet(set.study, Summary(dir.path() / "noev.dcm"), stored, {}, {}, segs);
    CHECK(v.state == State::kRefused);
    CHECK_THAT(v.reason, Catch::Contains("lists no evidence"));
  }
}

TEST_CASE("result set: the findings record round-trips and is read back for status", "[results][aiset][status]") {
  TempDir dir("aiset-findings");
  const std::string scan = MintDicomUid();
  const fs::path results_dir = dir.path() / "scans" / scan / "results";

  auto missing = results::ReadScanFindings(dir.path(), scan);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().kind() == ErrorKind::kNotFound);

  results::ScanFindings written;
  written.report = "received";
  written.findings.category = "HIGH-RISK";
  written.findings.lesion_count = 3;
  written.findings.involvement_right_percent = 4.25;
  written.findings.involvement_left_percent = 0.5;
  written.console_refused = {"ComprehensiveSRStorage (1.2.840.10008.5.1.4.1.1.88.33): 1 instance(s) not accepted by the console"};
  written.timeline_unix_ms = {1767225600123, 1767225600456, 1767225600789, 0};  // not delivered
  REQUIRE(results::WriteScanFindings(results_dir, written));
  auto back = results::ReadScanFindings(dir.path(), scan);
  REQUIRE(back);
  CHECK(back->report == "received");
  CHECK(back->findings.category == "HIGH-RISK");
  CHECK(back->findings.lesion_count == 3u);
  CHECK(back->findings.involvement_right_percent == 4.25);
  CHECK(back->findings.involvement_left_percent == 0.5);
  CHECK(back->console_refused == written.console_refused);
  CHECK(back->timeline_unix_ms.discovered == 1767225600123);
  CHECK(back->timeline_unix_ms.retrieved == 1767225600456);
  CHECK(back->timeline_unix_ms.validated == 1767225600789);
  CHECK(back->timeline_unix_ms.delivered == 0);
  CHECK(results::DescribeFindings(*back) ==
        "AI: HIGH-RISK, 3 lesion(s), involvement right 4.2 %, left 0.5 %; console refused "
        "ComprehensiveSRStorage (1.2.840.10008.5.1.4.1.1.88.33): 1 instance(s) not accepted by the console");

  // The status object's form: the record plus the status line.
  const nlohmann::json as_json = results::FindingsToJson(*back);
  CHECK(as_json.value("category", "") == "HIGH-RISK");
  CHECK(as_json.value("lesion_count", 0) == 3);
  CHECK(as_json.value("summary", "") == results::DescribeFindings(*back));
  CHECK(as_json.at("timeline_unix_ms") == nlohmann::json{{"discovered", 1767225600123},
                                                         {"retrieved", 1767225600456},
                                                         {"validated", 1767225600789}});
  auto in_dir = results::ReadFindingsInResultsDir(results_dir);
  REQUIRE(in_dir);
  CHECK(in_dir->findings.involvement_left_percent == 0.5);

  SECTION("no record but an SR in the results folder: the findings come from the SR") {
    fs::remove(results_dir / results::kFindingsFileName);
    ResultSet set;
    SrSpec spec = set.Sr();
    spec.category = "NORMAL";
    spec.lesion_count = 0;
    spec.right = 0.0;
    spec.left = 0.0;
    MakeSr(spec, results_dir / (set.sr + ".dcm"));
    MakeCt(set.study, set.ct_series, set.ct[0], 1, results_dir / (set.ct[0] + ".dcm"));
    auto from_sr = results::ReadScanFindings(dir.path(), scan);
    REQUIRE(from_sr);
    CHECK(results::DescribeFindings(*from_sr) == "AI: NORMAL, 0 lesion(s), involvement right 0.0 %, left 0.0 %");
  }
  SECTION("a CT-only center and a refused set are described as such") {
    results::ScanFindings none;
    CHECK(results::DescribeFindings(none) == "AI: no report (the imaging center sent CT only)");
    results::ScanFindings refused;
    refused.report = "refused";
    refused.refused_reason = "structured report X: a foreign report";
    CHECK(results::DescribeFindings(refused) == "AI: result set refused (structured report X: a foreign report)");
  }
  SECTION("a damaged record is an error, not empty findings") {
    std::ofstream(results_dir / results::kFindingsFileName) << "{\"lesion_count\": \"many\"}";
    auto damaged = results::ReadScanFindings(dir.path(), scan);
    REQUIRE_FALSE(damaged);
    CHECK(damaged.error().kind() == ErrorKind::kCorrupt);
  }
}

namespace {

std::unique_ptr<test::ChildProcess> StartStorescp(const fs::path& out_dir, const fs::path& log, std::uint16_t port,
                                                  std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {"storescp", "-aet", "CONSOLE", "-od", out_dir.string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(std::to_string(port));
  auto process = std::make_unique<test::ChildProcess>(argv, log);
  INFO("storescp log: " << test::ReadText(log));
  REQUIRE(test::WaitFor([&] { return test::PortAcceptsConnections(port) || !process->Running(); },
                        std::chrono::seconds(10)));
  REQUIRE(process->Running());
  return process;
}

// The SOP instance UIDs of the files storescp wrote.
std::set<std::string> Received(const fs::path& out_dir) {
  std::set<std::string> uids;
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    DcmFileFormat file;
    if (file.loadFile(OFFilename(entry.path().c_str())).bad()) continue;
    OFString uid;
    (void)file.getDataset()->findAndGetOFString(DCM_SOPInstanceUID, uid);
    uids.insert(uid.c_str());
  }
  return uids;
}

results::ConsoleNode Node(std::uint16_t port) { return {"127.0.0.1", port, "CONSOLE", "CTAGENT", 10}; }

}  // namespace

TEST_CASE("result set: a console that accepts everything gets CT, SEG, report and SR, one without SR gets the rest",
          "[results][console][aiset]") {
  TempDir dir("aiset-console");
  ResultSet set;
  set.Write(dir.path() / ".");
  std::vector<fs::path> files;
  for (const auto& uid : {set.ct[0], set.ct[1], set.seg, set.report, set.sr}) files.push_back(set.files[uid]);
  const std::set<std::string> all = {set.ct[0], set.ct[1], set.seg, set.report, set.sr};
  const std::uint16_t port = test::FreeLoopbackPort();
  const fs::path out = dir.path() / "out";
  fs::create_directories(out);

  SECTION("accepts everything") {
    auto scp = StartStorescp(out, dir.path() / "storescp.log", port);
    auto report = results::DeliverToConsole(Node(port), files);
    INFO((report ? std::string() : report.error().message()));
    REQUIRE(report);
    CHECK(report->delivered.size() == 5);
    CHECK(report->refused.empty());
    CHECK(report->refused_sop_classes.empty());
    CHECK(Received(out) == all);
  }
  SECTION("a console configured without SR storage") {
    // A storescp association profile (-xf) with every class of the set but Comprehensive SR.
    const fs::path cfg = dir.path() / "no-sr.cfg";
    std::ofstream(cfg) << "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\n"
                          "TransferSyntax2 = LittleEndianImplicit\n"
                          "[[PresentationContexts]]\n[NoSR]\n"
                          "PresentationContext1 = VerificationSOPClass\\Uncompressed\n"
                          "PresentationContext2 = CTImageStorage\\Uncompressed\n"
                          "PresentationContext3 = SegmentationStorage\\Uncompressed\n"
                          "PresentationContext4 = SecondaryCaptureImageStorage\\Uncompressed\n"
                          "[[Profiles]]\n[NoSR]\nPresentationContexts = NoSR\n";
    auto scp = StartStorescp(out, dir.path() / "storescp.log", port, {"-xf", cfg.string(), "NoSR"});
    auto report = results::DeliverToConsole(Node(port), files);
    INFO((report ? std::string() : report.error().message()));
    REQUIRE(report);
    CHECK(report->delivered.size() == 4);
    REQUIRE(report->refused.size() == 1);
    CHECK(report->refused[0].file == set.files[set.sr]);
    CHECK_THAT(report->refused[0].reason, Catch::Contains("did not accept SOP class ComprehensiveSRStorage (" +
                                                          std::string(UID_ComprehensiveSRStorage) + ")"));
    CHECK(report->refused_sop_classes == std::vector<std::string>{UID_ComprehensiveSRStorage});
    auto expected = all;
    expected.erase(set.sr);
    CHECK(Received(out) == expected);
    // SendToConsole, which wants every file, calls that an error naming the class.
    auto strict = results::SendToConsole(Node(port), files);
    REQUIRE_FALSE(strict);
    CHECK_THAT(strict.error().message(), Catch::Contains("ComprehensiveSRStorage"));
  }
}
