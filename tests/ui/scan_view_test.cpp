// A scan's view (agent/ui/scan_view.hpp) on the objects the reference imaging center makes: a
// painted chest phantom with two lesions, analysed by the center's lung analysis and written by its
// own encoders (CT slices, SEG, report, SR) into a scan's results folder, as the agent keeps them.
// Checked: the window formula on known HU values and DCMTK's rendering of every pixel against it,
// the overlay against the analysis' lesion mask pixel for pixel, the report against the analysis
// (volumes, involvement, histogram totals), the follow-up of the same patient, and the routes on
// a real loopback server (404s, bounds, the message of a scan without results, CSP).
#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/uid.hpp"
#include "agent/results/result_set.hpp"
#include "agent/ui/scan_view.hpp"
#include "agent/ui/server.hpp"
#include "cloud/worker/analysis.hpp"
#include "cloud/worker/dicom_writer.hpp"
#include "cloud/worker/result_encoding.hpp"
#include "drivers/sim/phantom.hpp"
#include "tests/support/loopback_http.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
namespace fs = std::filesystem;
using drivers::sim::ChestPhantom3d;
using drivers::sim::Lesion;

namespace {

constexpr std::uint32_t kSize = 128;
constexpr double kPixelMm = 3.0;
constexpr double kSpacingMm = 5.0;

// One scan's folder in a spool (<spool>/scans/<uid>) with the center's objects in results/.
struct PhantomScan {
  std::string scan_uid;
  fs::path scan_dir;
  std::vector<cloud::HuImage> slices;
  std::vector<std::string> ct_sops;  // slice order (z ascending)
  cloud::AnalysisResult analysis;
};

PhantomScan MakeScan(const fs::path& spool, const std::vector<Lesion>& lesions, const std::string& patient_id,
                     bool with_seg = true) {
  PhantomScan scan;
  scan.scan_uid = MintDicomUid();
  scan.scan_dir = spool / "scans" / scan.scan_uid;
  const fs::path results = scan.scan_dir / "results";
  fs::create_directories(results);
  const ChestPhantom3d chest(lesions);
  for (double z = -100; z <= 100 + 1e-9; z += kSpacingMm) {
    cloud::HuImage im;
    im.size = kSize;
    im.pixel_spacing_mm = kPixelMm;
    im.z_mm = z;
    im.hu.resize(std::size_t{kSize} * kSize);
    for (std::uint32_t r = 0; r < kSize; ++r) {
      for (std::uint32_t c = 0; c < kSize; ++c) {
        // Whole HU: the CT stores integers, so the report's histogram bins what the analysis saw.
        im.hu[std::size_t{r} * kSize + c] = static_cast<float>(std::round(chest.HuAt(im.XOfColumn(c), im.YOfRow(r), z)));
      }
    }
    scan.slices.push_back(std::move(im));
  }
  scan.analysis = cloud::Analyze(scan.slices);
  REQUIRE(scan.analysis.category != cloud::StudyCategory::kFailed);

  cloud::SeriesInfo series;
  series.scan_uid = scan.scan_uid;
  series.study_uid = MintDicomUid();
  series.series_uid = cloud::DerivedDicomUid("series " + scan.scan_uid);
  series.frame_of_reference_uid = cloud::DerivedDicomUid("frame " + scan.scan_uid);
  series.patient_id = patient_id;
  series.patient_name = "PHANTOM^VIEW";
  series.slice_thickness_mm = kSpacingMm;
  series.images_in_acquisition = static_cast<std::int32_t>(scan.slices.size());
  cloud::ResultInput input;
  input.ct = series;
  // Written in reverse z order: the view sorts by position, not by file name.
  for (std::size_t i = scan.slices.size(); i-- > 0;) {
    cloud::SlicePlacement placement;
    placement.instance_number = static_cast<std::int32_t>(i + 1);
    placement.z_mm = scan.slices[i].z_mm;
    placement.sop_instance_uid = cloud::DerivedDicomUid("ct " + scan.scan_uid + " " + std::to_string(i));
    auto sop = cloud::WriteCtSlice(results / (placement.sop_instance_uid + ".dcm"), series, placement, scan.slices[i]);
    REQUIRE(sop);
  }
  for (std::size_t i = 0; i < scan.slices.size(); ++i) {
    scan.ct_sops.push_back(cloud::DerivedDicomUid("ct " + scan.scan_uid + " " + std::to_string(i)));
    input.ct_instances.push_back({scan.ct_sops.back(), scan.slices[i].z_mm});
  }
  input.slices = scan.slices;
  if (with_seg) {
    const fs::path made = scan.scan_dir / "made";
    fs::create_directories(made);
    auto set = cloud::WriteResultSet(made, input, scan.analysis);
    INFO((set ? "" : set.error().message()));
    REQUIRE(set);
    // Kept as the agent keeps them: <sop>.dcm in the results folder.
    for (const auto& object : *set) fs::rename(object.file, results / (object.sop_instance_uid + ".dcm"));
    fs::remove_all(made);
    results::ScanFindings findings;
    findings.report = "received";
    findings.findings.category = scan.analysis.category == cloud::StudyCategory::kHighRisk ? "HIGH-RISK" : "NORMAL";
    findings.findings.lesion_count = static_cast<std::uint32_t>(scan.analysis.lesions.size());
    findings.timeline_unix_ms.validated = 1764930000000;  // 2025-12-05T10:20:00Z
    REQUIRE(results::WriteScanFindings(results, findings));
  }
  std::ofstream(scan.scan_dir / "manifest.json") << nlohmann::json{{"acquisition_end_utc", "2025-12-05T10:19:00Z"}}.dump();
  return scan;
}

const std::vector<Lesion> kTwoLesions = {
    {Lesion::Kind::kGroundGlass, -65, 10, 0, 16, -650},
    {Lesion::Kind::kConsolidation, 70, -20, 30, 20, 35},
};

std::uint8_t StoredGray(const fs::path& ct_file, std::size_t pixel, ui::Window window) {
  DcmFileFormat ff;
  REQUIRE(ff.loadFile(OFFilename(ct_file.c_str())).good());
  const Uint16* raw = nullptr;
  unsigned long count = 0;
  REQUIRE(ff.getDataset()->findAndGetUint16Array(DCM_PixelData, raw, &count).good());
  return ui::WindowedGray(static_cast<Sint16>(raw[pixel]), window);
}

}  // namespace

TEST_CASE("scan view: the window formula on known Hounsfield units", "[ui][scan-view]") {
  // Lung window W 1500 / L -600: -1350 and below black, +150 and above white, -600 mid-gray.
  CHECK(ui::WindowedGray(-2000, ui::kLungWindow) == 0);
  CHECK(ui::WindowedGray(-1350, ui::kLungWindow) == 0);
  CHECK(ui::WindowedGray(-600, ui::kLungWindow) == 128);
  CHECK(ui::WindowedGray(-850, ui::kLungWindow) == 85);  // aerated lung: dark gray
  CHECK(ui::WindowedGray(150, ui::kLungWindow) == 255);
  CHECK(ui::WindowedGray(3000, ui::kLungWindow) == 255);
  // Mediastinal W 350 / L 40: -135 black, 215 white, soft tissue 40 mid-gray, lung black.
  CHECK(ui::WindowedGray(-135, ui::kMediastinalWindow) == 0);
  CHECK(ui::WindowedGray(40, ui::kMediastinalWindow) == 128);
  CHECK(ui::WindowedGray(215, ui::kMediastinalWindow) == 255);
  CHECK(ui::WindowedGray(-850, ui::kMediastinalWindow) == 0);
  CHECK(ui::WindowedGray(100, ui::kMediastinalWindow) == 172);
}

TEST_CASE("scan view: the center's CT and SEG give the slices, the overlay and the report", "[ui][scan-view]") {
  test::TempDir spool("scan-view");
  const PhantomScan scan = MakeScan(spool.path(), kTwoLesions, "VIEW-1");
  const auto& a = scan.analysis;
  REQUIRE(a.lesions.size() == 2);

  auto images = ui::IndexScan(scan.scan_dir / "results");
  INFO((images ? "" : images.error().message()));
  REQUIRE(images);
  REQUIRE(images->slices.size() == scan.slices.size());
  CHECK(images->rows == kSize);
  CHECK(images->columns == kSize);
  CHECK(images->pixel_spacing_mm == Approx(kPixelMm));
  CHECK(images->slice_spacing_mm == Approx(kSpacingMm));
  CHECK(images->patient_id == "VIEW-1");
  for (std::size_t i = 0; i < scan.slices.size(); ++i) {
    CHECK(images->slices[i].z_mm == Approx(scan.slices[i].z_mm));
    CHECK(images->slices[i].sop_instance_uid == scan.ct_sops[i]);
  }

  // The overlay is the analysis' lesion mask, pixel for pixel (lesion k of the table = label k).
  REQUIRE(images->has_seg);
  std::size_t lesion_pixels = 0, mismatches = 0;
  for (std::uint32_t s = 0; s < a.lesion_mask.slices; ++s) {
    for (std::uint32_t r = 0; r < kSize; ++r) {
      for (std::uint32_t c = 0; c < kSize; ++c) {
        const std::uint8_t want = a.lesion_mask.At(s, r, c);
        lesion_pixels += want != 0 ? 1 : 0;
        mismatches += images->lesion_overlay[s][std::size_t{r} * kSize + c] != want ? 1 : 0;
      }
    }
  }
  CHECK(lesion_pixels > 50);
  CHECK(mismatches == 0);

  // The report: what the analysis measured, recomputed from the SEG and the CT.
  const auto& report = images->report;
  REQUIRE(report["lesions"].size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& l = report["lesions"][i];
    const auto& f = a.lesions[i];
    INFO("lesion " << i + 1);
    CHECK(l["number"] == i + 1);
    CHECK(l["volume_ml"].get<double>() == Approx(f.volume_ml).margin(0.01));
    CHECK(l["lung"] == (f.lung == cloud::Lung::kRight ? "right" : "left"));
    CHECK(l["type"] == (f.type == cloud::LesionType::kConsolidation ? "Consolidation" : "Ground glass opacity"));
    CHECK(l["first_slice"] == f.first_slice);
    CHECK(l["last_slice"] == f.last_slice);
  }
  for (std::size_t lung = 0; lung < 2; ++lung) {
    const auto& l = report["lungs"][lung];
    const auto& f = a.lungs[lung];
    INFO("lung " << lung);
    CHECK(l["volume_ml"].get<double>() == Approx(f.volume_ml).margin(0.1));
    CHECK(l["lesion_volume_ml"].get<double>() == Approx(f.lesion_volume_ml).margin(0.01));
    CHECK(l["involvement_percent"].get<double>() == Approx(f.involvement_percent).margin(0.01));
    std::uint64_t total = 0, want = 0;
    for (std::size_t b = 0; b < f.histogram.size(); ++b) {
      total += l["histogram"][b].get<std::uint64_t>();
      want += f.histogram[b];
    }
    CHECK(total == want);
    // Aerated lung (-850 HU) is the fullest bin, as in the analysis.
    CHECK(l["histogram"][3].get<std::uint64_t>() == f.histogram[3]);
  }
  CHECK(report["total_lesion_volume_ml"].get<double>() ==
        Approx(a.lesions[0].volume_ml + a.lesions[1].volume_ml).margin(0.02));

  // DCMTK's rendering is the window formula on the stored values, every pixel, both windows.
  const std::size_t slice = (a.lesions[0].first_slice + a.lesions[0].last_slice) / 2;
  for (const ui::Window window : {ui::kLungWindow, ui::kMediastinalWindow}) {
    auto pixels = ui::RenderSlice(*images, slice, window);
    INFO((pixels ? "" : pixels.error().message()));
    REQUIRE(pixels);
    REQUIRE(pixels->size() == std::size_t{kSize} * kSize);
    int worst = 0;
    for (std::size_t p = 0; p < pixels->size(); p += 7) {
      worst = std::max(worst, std::abs(int((*pixels)[p]) - int(StoredGray(images->slices[slice].file, p, window))));
      if (worst > 1) break;
    }
    CHECK(worst <= 1);  // DCMTK rounds its LUT; never more than one gray level apart
  }
  // The lesion is brighter than the lung around it in the lung window.
  auto lung_window = ui::RenderSlice(*images, slice, ui::kLungWindow);
  REQUIRE(lung_window);
  double in_lesion = 0, n = 0;
  for (std::size_t p = 0; p < lung_window->size(); ++p) {
    if (images->lesion_overlay[slice][p] == 1) {
      in_lesion += (*lung_window)[p];
      ++n;
    }
  }
  REQUIRE(n > 0);
  CHECK(in_lesion / n > ui::WindowedGray(-800, ui::kLungWindow));
  CHECK_FALSE(ui::RenderSlice(*images, images->slices.size(), ui::kLungWindow));
}

TEST_CASE("scan view: a results folder without CT is not found, with a message", "[ui][scan-view]") {
  test::TempDir dir("scan-view-empty");
  auto none = ui::IndexScan(dir.path());
  REQUIRE_FALSE(none);
  CHECK(none.error().kind() == ErrorKind::kNotFound);
  CHECK(none.error().message().find("no CT image has come back") != std::string::npos);
}

namespace {

struct Http {
  int code = 0;
  std::string head;
  std::string body;
};

Http Get(std::uint16_t port, const std::string& path) {
  test::LoopbackClient c(port);
  c.Send("GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  const std::string response = c.ReadAll();
  Http h;
  if (response.size() > 12) h.code = std::stoi(response.substr(9, 3));
  h.head = response.substr(0, response.find("\r\n\r\n"));
  h.body = test::BodyOf(response);
  return h;
}

}  // namespace

TEST_CASE("scan view: the routes on the page's server, follow-up of the same patient, 404s and bounds",
          "[ui][scan-view]") {
  test::TempDir spool("scan-view-routes");
  // The patient's earlier scan with one lesion, today's with two; another patient; a scan whose
  // images have not come back.
  const PhantomScan earlier = MakeScan(spool.path(), {kTwoLesions[0]}, "VIEW-2");
  const PhantomScan now = MakeScan(spool.path(), kTwoLesions, "VIEW-2");
  const PhantomScan other = MakeScan(spool.path(), {}, "SOMEONE-ELSE", false);
  const std::string waiting_uid = MintDicomUid();
  fs::create_directories(spool.path() / "scans" / waiting_uid);
  std::vector<ui::ScanEntry> entries = {
      // The earlier scan's end from its manifest.json (not yet deleted by retention), today's
      // from the spool record.
      {earlier.scan_uid, "delivered", "2025-12-01T09:00:00Z", earlier.scan_dir, ""},
      {now.scan_uid, "delivered", "2025-12-05T10:00:00Z", now.scan_dir, "2025-12-05T10:19:30Z"},
      {other.scan_uid, "delivered", "2025-12-03T10:00:00Z", other.scan_dir, ""},
      {waiting_uid, "uploaded", "2025-12-05T11:00:00Z", spool.path() / "scans" / waiting_uid, ""},
  };
  std::shared_ptr<ui::ScanView> view;
  test::ServerOnLoop<ui::Server> server([&](boost::asio::io_context& io) {
    view = std::make_shared<ui::ScanView>(io, [&] { return entries; });
    return ui::Server::Open(
        io, {}, [] { return nlohmann::json::object(); },
        [view](const std::string& path, std::function<void(ui::Server::Reply)> done) { view->Handle(path, std::move(done)); });
  });
  const auto port = server.port();

  const Http info = Get(port, "/api/scans/" + now.scan_uid);
  REQUIRE(info.code == 200);
  CHECK(info.head.find("Content-Security-Policy: default-src 'self';") != std::string::npos);
  CHECK(info.head.find("Cache-Control: no-store") != std::string::npos);
  const auto j = nlohmann::json::parse(info.body);
  CHECK(j["results"] == true);
  CHECK(j["slices"].size() == now.slices.size());
  CHECK(j["rows"] == kSize);
  CHECK(j["report"]["lesions"].size() == 2);
  CHECK(j["findings"]["category"] == "HIGH-RISK");
  CHECK(j["timing"]["scan_end_utc"] == "2025-12-05T10:19:30Z");
  CHECK(j["timing"]["report_utc"] == "2025-12-05T10:20:00Z");
  CHECK(j["timing"]["scan_end_to_report_s"].get<double>() == Approx(30.0));
  // Never a patient identifier or name in what the page gets.
  CHECK(info.body.find("VIEW-2") == std::string::npos);
  CHECK(info.body.find("PHANTOM") == std::string::npos);
  // The follow-up: the same patient's earlier scan only, with the change since.
  REQUIRE(j["followup"].size() == 1);
  const auto& f = j["followup"][0];
  CHECK(f["scan_uid"] == earlier.scan_uid);
  const auto total_ml = [](const cloud::AnalysisResult& r) {
    double ml = 0;
    for (const auto& l : r.lesions) ml += l.volume_ml;
    return ml;
  };
  CHECK(f["change_lesion_volume_ml"].get<double>() ==
        Approx(total_ml(now.analysis) - total_ml(earlier.analysis)).margin(0.05));
  CHECK(f["change_lesion_volume_ml"].get<double>() > 1.0);  // the consolidation came
  CHECK(f["change_involvement_points"]["left"].get<double>() ==
        Approx(now.analysis.lungs[1].involvement_percent - earlier.analysis.lungs[1].involvement_percent).margin(0.02));
  CHECK(f["change_involvement_points"]["right"].get<double>() == Approx(0).margin(0.02));
  // The earlier scan has no earlier one to compare with; its scan end is its manifest's.
  const auto was = nlohmann::json::parse(Get(port, "/api/scans/" + earlier.scan_uid).body);
  CHECK(was["followup"].empty());
  CHECK(was["timing"]["scan_end_to_report_s"].get<double>() == Approx(60.0));

  // Slices: rows x columns bytes; the overlay matches the lesion mask.
  const std::size_t slice = (now.analysis.lesions[1].first_slice + now.analysis.lesions[1].last_slice) / 2;
  const std::string base = "/api/scans/" + now.scan_uid + "/slices/" + std::to_string(slice);
  const Http lung = Get(port, base + "/lung");
  const Http mediastinal = Get(port, base + "/mediastinal");
  const Http overlay = Get(port, base + "/overlay");
  REQUIRE(lung.code == 200);
  REQUIRE(mediastinal.code == 200);
  REQUIRE(overlay.code == 200);
  CHECK(lung.head.find("Content-Type: application/octet-stream") != std::string::npos);
  REQUIRE(lung.body.size() == std::size_t{kSize} * kSize);
  REQUIRE(mediastinal.body.size() == lung.body.size());
  REQUIRE(overlay.body.size() == lung.body.size());
  CHECK(lung.body != mediastinal.body);
  std::size_t marked = 0, wrong = 0;
  for (std::size_t p = 0; p < overlay.body.size(); ++p) {
    const auto want = now.analysis.lesion_mask.labels[slice * kSize * kSize + p];
    wrong += static_cast<std::uint8_t>(overlay.body[p]) != want ? 1 : 0;
    marked += want != 0 ? 1 : 0;
  }
  CHECK(marked > 10);
  CHECK(wrong == 0);

  // 404s: unknown scan, slice past the end, unknown view, a malformed path; a bad UID never
  // reaches the disk.
  CHECK(Get(port, "/api/scans/1.2.3.4").code == 404);
  CHECK(Get(port, "/api/scans/..%2F..%2Fetc").code == 404);
  CHECK(Get(port, "/api/scans/" + now.scan_uid + "/slices/" + std::to_string(now.slices.size()) + "/lung").code == 404);
  CHECK(Get(port, "/api/scans/" + now.scan_uid + "/slices/99999999999999999999/lung").code == 404);
  CHECK(Get(port, base + "/bone").code == 404);
  CHECK(Get(port, base + "/lung/extra").code == 404);
  CHECK(Get(port, "/api/scans/" + now.scan_uid + "/slices/-1/lung").code == 404);
  CHECK(Get(port, "/api/scans/").code == 404);
  // A scan without results: its JSON says so; its slices are not found, with the message.
  const Http waiting = Get(port, "/api/scans/" + waiting_uid);
  REQUIRE(waiting.code == 200);
  CHECK(nlohmann::json::parse(waiting.body)["results"] == false);
  CHECK(nlohmann::json::parse(waiting.body)["message"].get<std::string>().find("no CT image has come back") !=
        std::string::npos);
  const Http no_slice = Get(port, "/api/scans/" + waiting_uid + "/slices/0/lung");
  CHECK(no_slice.code == 404);
  CHECK(no_slice.body.find("no CT image has come back") != std::string::npos);
  // A scan with CT but no SEG: images, no overlay.
  CHECK(Get(port, "/api/scans/" + other.scan_uid + "/slices/0/lung").code == 200);
  CHECK(Get(port, "/api/scans/" + other.scan_uid + "/slices/0/overlay").code == 404);
  // Only GET.
  {
    test::LoopbackClient c(port);
    c.Send("DELETE /api/scans/" + now.scan_uid + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    CHECK(c.ReadAll().rfind("HTTP/1.1 405", 0) == 0);
  }
}

TEST_CASE("scan view: requests beyond the waiting bound are turned away, never queued", "[ui][scan-view]") {
  test::TempDir spool("scan-view-bound");
  const PhantomScan scan = MakeScan(spool.path(), kTwoLesions, "VIEW-3");
  std::vector<ui::ScanEntry> entries = {{scan.scan_uid, "delivered", "2025-12-05T10:00:00Z", scan.scan_dir, ""}};
  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);  // run_for waits for the worker's answers
  ui::ScanView view(io, [&] { return entries; }, /*max_pending=*/2);
  std::vector<int> codes;
  // Five requests asked at once on the loop: two are taken, three answered 503 at once.
  for (int i = 0; i < 5; ++i) {
    view.Handle("/api/scans/" + scan.scan_uid, [&](ui::Server::Reply r) { codes.push_back(r.code); });
  }
  CHECK(std::count(codes.begin(), codes.end(), 503) == 3);
  for (int i = 0; i < 200 && codes.size() < 5; ++i) io.run_for(std::chrono::milliseconds(100));
  REQUIRE(codes.size() == 5);
  CHECK(std::count(codes.begin(), codes.end(), 200) == 2);
  // Taken again once answered.
  view.Handle("/api/scans/" + scan.scan_uid, [&](ui::Server::Reply r) { codes.push_back(r.code); });
  for (int i = 0; i < 200 && codes.size() < 6; ++i) io.run_for(std::chrono::milliseconds(100));
  REQUIRE(codes.size() == 6);
  CHECK(codes.back() == 200);
}
