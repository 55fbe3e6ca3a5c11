// A scan's detail view on the operator's page (docs/operator-guide.md, "A scan"): the returned CT
// slices rendered by DCMTK in the lung and mediastinal windows, the lesion overlay from the SEG,
// the report (lesion table, involvement per lung, density histograms) computed from the SEG and
// the CT, the timing (scan end -> report) and the earlier scans of the same patient on this
// terminal. Images go to the page as raw 8-bit pixels (one byte per pixel, row by row) that the
// page draws on a canvas: docs/operator-guide.md, "How the images are rendered", says why.
//
// Routes (GET, answered through ui::Server's ScanRoutes; never a patient identifier in a URL):
//   /api/scans/<uid>                          JSON: slices, report, timing, follow-up
//   /api/scans/<uid>/slices/<i>/lung          the slice in the lung window (W 1500 / L -600)
//   /api/scans/<uid>/slices/<i>/mediastinal   the slice in the mediastinal window (W 350 / L 40)
//   /api/scans/<uid>/slices/<i>/overlay       per pixel: 0, or the lesion's number in the table
// 404 for an unknown scan or slice; a scan whose images have not come back answers its JSON with
// "results": false and a message, its slice routes 404 with that message.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "agent/ui/server.hpp"

namespace ctagent::ui {

// A display window: Hounsfield units mapped linearly to 0..255 (DICOM PS3.3 C.11.2.1.2, as
// DCMTK's dcmimgle applies it).
struct Window {
  double center = 0;
  double width = 1;
};
inline constexpr Window kLungWindow{-600, 1500};
inline constexpr Window kMediastinalWindow{40, 350};

// The gray value (0..255) of `hu` in `window`, by the same formula.
std::uint8_t WindowedGray(double hu, Window window);

// One CT slice of a scan's returned series, in z order.
struct CtSlice {
  std::filesystem::path file;
  std::string sop_instance_uid;
  double z_mm = 0;
};

// One segment of the scan's SEG.
struct Segment {
  std::uint16_t number = 0;
  std::string label;  // "Right lung", "Lesion 1", ...
  std::string type;   // the segmented property type's meaning, e.g. "Ground glass opacity"
  int lung = -1;      // 0 right, 1 left for a lung segment; -1 for a lesion
};

// What the view knows of a scan's returned images: the CT slices in z order and, when a SEG came
// back, its masks per slice. Built once per scan (IndexScan) and kept in a small cache.
struct ScanImages {
  std::uint16_t rows = 0;
  std::uint16_t columns = 0;
  double pixel_spacing_mm = 0;
  double slice_spacing_mm = 0;
  std::vector<CtSlice> slices;
  std::string patient_id;  // (0010,0020) of the re-identified CT: matched on the agent, never sent
  bool has_seg = false;
  std::vector<Segment> segments;
  // Per slice, per pixel: 0, or 1 + the index into `lesions` (the lesion overlay).
  std::vector<std::vector<std::uint8_t>> lesion_overlay;
  nlohmann::json report;  // lesions, lungs (volume, involvement, histogram); ScanReport's shape
};

// Reads the CT and SEG instances in `results_dir` (<spool>/scans/<uid>/results) with DCMTK:
// the CT slices (sorted by z), the SEG's frames matched to them by their Source Image reference
// (or by position when a frame has none), and the report computed from both. kNotFound when the
// folder holds no CT image; kCorrupt (naming the file) for a SEG that does not fit the CT.
Expected<ScanImages> IndexScan(const std::filesystem::path& results_dir);

// The slice's pixels in `window`, rows x columns bytes, rendered by DCMTK's dcmimgle.
Expected<std::vector<std::uint8_t>> RenderSlice(const ScanImages& images, std::size_t slice, Window window);

// One scan of the spool, as the daemon lists it for the view (on the io_context's thread).
struct ScanEntry {
  std::string scan_uid;
  std::string state;         // spool::ToString(ScanState)
  std::string created_utc;   // when the scan was armed
  std::filesystem::path scan_dir;  // <spool>/scans/<uid>: mapping.json, manifest.json, results/
  // When acquisition ended (the spool record's manifest_base; empty: read from manifest.json).
  std::string acquisition_end_utc;
};

class ScanView {
 public:
  using ListScans = std::function<std::vector<ScanEntry>()>;

  // `list` is called on `io`'s thread; DICOM reading and rendering run on one worker thread of
  // its own, with at most max_pending requests waiting (503 beyond), and at most cached_scans
  // scans kept indexed.
  ScanView(boost::asio::io_context& io, ListScans list, std::size_t max_pending = 16, std::size_t cached_scans = 6);
  ~ScanView();  // waits for the request being worked on
  ScanView(const ScanView&) = delete;
  ScanView& operator=(const ScanView&) = delete;

  // Server::ScanRoutes.
  void Handle(const std::string& path, std::function<void(Server::Reply)> done);

 private:
  struct Cached {
    std::string scan_uid;
    std::string stamp;  // the results folder's file count and findings.json's time: a change re-indexes
    std::shared_ptr<const ScanImages> images;
  };
  Server::Reply Answer(const std::string& scan_uid, const std::string& rest, const std::vector<ScanEntry>& scans);
  Expected<std::shared_ptr<const ScanImages>> Images(const ScanEntry& entry);
  nlohmann::json FollowUp(const ScanEntry& entry, const std::vector<ScanEntry>& scans, const ScanImages& images);

  boost::asio::io_context& io_;
  ListScans list_;
  const std::size_t max_pending_;
  const std::size_t cached_scans_;
  // Requests taken and not yet answered; io_context's thread only (shared: an answer posted to
  // the loop may run after the view is gone).
  std::shared_ptr<std::size_t> pending_ = std::make_shared<std::size_t>(0);
  std::list<Cached> cache_;     // worker thread only; most recently used first
  boost::asio::thread_pool worker_{1};
};

}  // namespace ctagent::ui
