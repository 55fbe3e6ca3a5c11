// The scan view's data (scan_view.hpp): DCMTK's dcmdata reads the returned CT and SEG, dcmimgle
// renders the windows; everything runs on the view's one worker thread, never the event loop.
#include "agent/ui/scan_view.hpp"

#include <boost/asio/post.hpp>

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmimgle/dcmimage.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <map>
#include <optional>
#include <sstream>

#include "agent/privacy/privacy.hpp"
#include "agent/results/result_set.hpp"
#include "agent/results/results.hpp"

namespace ctagent::ui {
namespace fs = std::filesystem;

namespace {

// The report's density histograms: lung voxels per HU bin, as the reference analysis bins them
// (cloud/worker/analysis.hpp: 22 bins of 50 HU from -1000; outside values go to the end bins).
constexpr int kHistogramMinHu = -1000;
constexpr int kHistogramBinHu = 50;
constexpr int kHistogramBins = 22;
// A follow-up lists at most this many earlier scans of the patient (the newest first).
constexpr std::size_t kMaxFollowUps = 8;

std::string Str(DcmItem& item, const DcmTagKey& tag, unsigned long pos = 0) {
  OFString v;
  return item.findAndGetOFString(tag, v, pos).good() ? std::string(v.c_str()) : std::string();
}

std::optional<double> Num(DcmItem& item, const DcmTagKey& tag, unsigned long pos = 0) {
  Float64 v = 0;
  if (item.findAndGetFloat64(tag, v, pos).good()) return v;
  return std::nullopt;
}

bool IsCtClass(const std::string& sop_class) {
  return sop_class == UID_CTImageStorage || sop_class == UID_EnhancedCTImageStorage;
}

// The first item of `sequence` in `item`, or null.
DcmItem* First(DcmItem& item, const DcmTagKey& sequence) {
  DcmItem* out = nullptr;
  return item.findAndGetSequenceItem(sequence, out, 0).good() ? out : nullptr;
}

// A CT slice's Hounsfield units (16-bit stored values, modality rescale applied).
Expected<std::vector<float>> ReadHu(const fs::path& file, std::size_t pixels) {
  DcmFileFormat ff;
  if (OFCondition c = ff.loadFile(OFFilename(file.c_str())); c.bad()) {
    return MakeError(ErrorKind::kCorrupt, "cannot read CT image " + file.string() + ": " + c.text());
  }
  DcmDataset& ds = *ff.getDataset();
  Uint16 bits = 0, representation = 0;
  ds.findAndGetUint16(DCM_BitsAllocated, bits);
  ds.findAndGetUint16(DCM_PixelRepresentation, representation);
  const Uint16* raw = nullptr;
  unsigned long count = 0;
  if (bits != 16 || ds.findAndGetUint16Array(DCM_PixelData, raw, &count).bad() || raw == nullptr ||
      count < pixels) {
    return MakeError(ErrorKind::kCorrupt, "CT image " + file.string() +
                                              " has no uncompressed 16-bit pixel data of its size; the view "
                                              "shows images as the reference imaging center returns them");
  }
  const double slope = Num(ds, DCM_RescaleSlope).value_or(1.0);
  const double intercept = Num(ds, DCM_RescaleIntercept).value_or(0.0);
  std::vector<float> hu(pixels);
  for (std::size_t i = 0; i < pixels; ++i) {
    const double stored = representation == 1 ? static_cast<double>(static_cast<Sint16>(raw[i])) : raw[i];
    hu[i] = static_cast<float>(stored * slope + intercept);
  }
  return hu;
}

// The SEG's segments and, per CT slice, the segment numbers present at each pixel (bit planes).
struct SegFrames {
  std::vector<Segment> segments;
  // Per frame: its segment number and CT slice index.
  std::vector<std::pair<std::uint16_t, std::size_t>> frames;
  std::vector<std::uint8_t> bits;  // packed, LSB first, frame after frame
};

Expected<SegFrames> ReadSeg(const fs::path& file, const ScanImages& images,
                            const std::map<std::string, std::size_t>& slice_of_sop) {
  const auto corrupt = [&](const std::string& why) {
    return MakeError(ErrorKind::kCorrupt, "segmentation " + file.string() + ": " + why);
  };
  DcmFileFormat ff;
  if (OFCondition c = ff.loadFile(OFFilename(file.c_str())); c.bad()) return corrupt(c.text());
  DcmDataset& ds = *ff.getDataset();
  Uint16 rows = 0, columns = 0, bits_allocated = 0;
  ds.findAndGetUint16(DCM_Rows, rows);
  ds.findAndGetUint16(DCM_Columns, columns);
  ds.findAndGetUint16(DCM_BitsAllocated, bits_allocated);
  if (rows != images.rows || columns != images.columns) {
    return corrupt("its frames are " + std::to_string(rows) + " x " + std::to_string(columns) +
                   " but the CT slices " + std::to_string(images.rows) + " x " + std::to_string(images.columns));
  }
  if (bits_allocated != 1) return corrupt("only binary segmentations (1 bit per pixel) are shown");
  SegFrames out;
  for (unsigned long i = 0;; ++i) {
    DcmItem* item = nullptr;
    if (ds.findAndGetSequenceItem(DCM_SegmentSequence, item, static_cast<int>(i)).bad() || item == nullptr) break;
    Segment s;
    Uint16 number = 0;
    item->findAndGetUint16(DCM_SegmentNumber, number);
    s.number = number;
    s.label = Str(*item, DCM_SegmentLabel);
    std::string code;
    if (DcmItem* type = First(*item, DCM_SegmentedPropertyTypeCodeSequence)) {
      s.type = Str(*type, DCM_CodeMeaning);
      code = Str(*type, DCM_CodeValue);
    }
    // The lungs by their SNOMED codes (right 3341006, left 44029006); anything else is a lesion.
    if (code == "3341006") s.lung = 0;
    if (code == "44029006") s.lung = 1;
    out.segments.push_back(std::move(s));
  }
  DcmItem* shared = First(ds, DCM_SharedFunctionalGroupsSequence);
  for (unsigned long f = 0;; ++f) {
    DcmItem* frame = nullptr;
    if (ds.findAndGetSequenceItem(DCM_PerFrameFunctionalGroupsSequence, frame, static_cast<int>(f)).bad() ||
        frame == nullptr) {
      break;
    }
    Uint16 segment = 0;
    DcmItem* ident = First(*frame, DCM_SegmentIdentificationSequence);
    if (ident == nullptr && shared != nullptr) ident = First(*shared, DCM_SegmentIdentificationSequence);
    if (ident != nullptr) ident->findAndGetUint16(DCM_ReferencedSegmentNumber, segment);
    std::optional<std::size_t> slice;
    if (DcmItem* derivation = First(*frame, DCM_DerivationImageSequence)) {
      if (DcmItem* source = First(*derivation, DCM_SourceImageSequence)) {
        const auto it = slice_of_sop.find(Str(*source, DCM_ReferencedSOPInstanceUID));
        if (it != slice_of_sop.end()) slice = it->second;
      }
    }
    if (!slice) {  // no Source Image reference: the slice at its position
      if (DcmItem* position = First(*frame, DCM_PlanePositionSequence)) {
        if (const auto z = Num(*position, DCM_ImagePositionPatient, 2)) {
          for (std::size_t i = 0; i < images.slices.size(); ++i) {
            if (std::fabs(images.slices[i].z_mm - *z) < 0.05) slice = i;
          }
        }
      }
    }
    if (!slice) {
      return corrupt("frame " + std::to_string(f + 1) + " refers to no CT slice of this scan");
    }
    out.frames.emplace_back(segment, *slice);
  }
  const std::size_t pixels = std::size_t{rows} * columns;
  const std::size_t need = (out.frames.size() * pixels + 7) / 8;
  const Uint8* data = nullptr;
  unsigned long count = 0;
  if (ds.findAndGetUint8Array(DCM_PixelData, data, &count).bad() || data == nullptr || count < need) {
    return corrupt("its pixel data is shorter than its " + std::to_string(out.frames.size()) + " frames");
  }
  out.bits.assign(data, data + need);
  return out;
}

// "2026-11-23T10:00:00Z" (fractions allowed) -> Unix milliseconds; nullopt when it does not parse.
std::optional<std::int64_t> ParseUtcMs(const std::string& iso) {
  std::tm tm{};
  std::istringstream in(iso);
  in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
  if (in.fail()) return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000;
}

std::string IsoOfMs(std::int64_t ms) {
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::optional<nlohmann::json> ReadJsonFile(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// The real patient ID a scan belongs to: its mapping record's (a worklist scan), else the one the
// re-identified CT carries. Compared on the agent only; never sent to the page.
std::string PatientKey(const ScanEntry& entry, const ScanImages* images) {
  std::ifstream in(entry.scan_dir / "mapping.json");
  if (in) {
    std::stringstream text;
    text << in.rdbuf();
    if (auto m = privacy::MappingFromJson(text.str(), "mapping.json"); m && !m->patient_id.real.empty()) {
      return m->patient_id.real;
    }
  }
  if (images != nullptr) return images->patient_id;
  std::error_code ec;
  for (const auto& file : fs::directory_iterator(entry.scan_dir / "results", ec)) {
    DcmFileFormat ff;
    if (ff.loadFile(OFFilename(file.path().c_str()), EXS_Unknown, EGL_noChange, 256).bad()) continue;
    if (IsCtClass(Str(*ff.getDataset(), DCM_SOPClassUID))) return Str(*ff.getDataset(), DCM_PatientID);
  }
  return {};
}

// What changes when a scan's results folder changes (a file more, findings.json rewritten).
std::string Stamp(const fs::path& results_dir) {
  std::error_code ec;
  std::size_t files = 0;
  for (auto it = fs::directory_iterator(results_dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    ++files;
  }
  const auto when = fs::last_write_time(results_dir / results::kFindingsFileName, ec);
  return std::to_string(files) + "/" + (ec ? "-" : std::to_string(when.time_since_epoch().count()));
}

Server::Reply Text(int code, std::string text) { return {code, "text/plain", std::move(text)}; }

double Round(double v, int digits) {
  const double f = std::pow(10.0, digits);
  return std::round(v * f) / f;
}

}  // namespace

std::uint8_t WindowedGray(double hu, Window window) {
  // PS3.3 C.11.2.1.2.1: linear, with the half-pixel offsets of the standard.
  const double low = window.center - 0.5 - (window.width - 1) / 2;
  const double high = window.center - 0.5 + (window.width - 1) / 2;
  if (hu <= low) return 0;
  if (hu > high) return 255;
  const double y = ((hu - (window.center - 0.5)) / (window.width - 1) + 0.5) * 255.0;
  return static_cast<std::uint8_t>(std::clamp(std::lround(y), 0L, 255L));
}

Expected<ScanImages> IndexScan(const fs::path& results_dir) {
  ScanImages images;
  std::vector<fs::path> segs;
  std::error_code ec;
  std::vector<fs::path> files;
  for (auto it = fs::directory_iterator(results_dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (it->path().extension() == ".dcm") files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) {
    DcmFileFormat ff;
    // Headers only: values over 1 KiB (the pixel data) are read when asked for.
    if (ff.loadFile(OFFilename(file.c_str()), EXS_Unknown, EGL_noChange, 1024).bad()) continue;
    DcmDataset& ds = *ff.getDataset();
    const std::string sop_class = Str(ds, DCM_SOPClassUID);
    if (results::IsSegmentation(sop_class)) segs.push_back(file);
    if (!IsCtClass(sop_class)) continue;
    Uint16 rows = 0, columns = 0;
    ds.findAndGetUint16(DCM_Rows, rows);
    ds.findAndGetUint16(DCM_Columns, columns);
    if (images.slices.empty()) {
      images.rows = rows;
      images.columns = columns;
      images.pixel_spacing_mm = Num(ds, DCM_PixelSpacing).value_or(0);
      images.slice_spacing_mm = Num(ds, DCM_SliceThickness).value_or(0);
      images.patient_id = Str(ds, DCM_PatientID);
    } else if (rows != images.rows || columns != images.columns) {
      continue;  // another series' size; the view shows the first series' slices
    }
    const auto z = Num(ds, DCM_ImagePositionPatient, 2);
    images.slices.push_back({file, Str(ds, DCM_SOPInstanceUID), z.value_or(Num(ds, DCM_SliceLocation).value_or(0))});
  }
  if (images.slices.empty()) {
    return MakeError(ErrorKind::kNotFound, "no CT image has come back for this scan yet; the images appear here "
                                           "once the imaging center has returned them");
  }
  std::stable_sort(images.slices.begin(), images.slices.end(),
                   [](const CtSlice& a, const CtSlice& b) { return a.z_mm < b.z_mm; });
  if (images.slices.size() > 1) {
    images.slice_spacing_mm = (images.slices.back().z_mm - images.slices.front().z_mm) /
                              static_cast<double>(images.slices.size() - 1);
  }
  images.report = {{"lesions", nlohmann::json::array()}, {"lungs", nlohmann::json::array()},
                   {"histogram", {{"min_hu", kHistogramMinHu}, {"bin_hu", kHistogramBinHu}}}};
  if (segs.empty()) return images;

  std::map<std::string, std::size_t> slice_of_sop;
  for (std::size_t i = 0; i < images.slices.size(); ++i) slice_of_sop[images.slices[i].sop_instance_uid] = i;
  auto seg = ReadSeg(segs.front(), images, slice_of_sop);
  if (!seg) return MakeError(seg.error());
  images.has_seg = true;
  images.segments = seg->segments;
  const std::size_t pixels = std::size_t{images.rows} * images.columns;
  const double voxel_ml = images.pixel_spacing_mm * images.pixel_spacing_mm * images.slice_spacing_mm / 1000.0;

  // Lesions are numbered in segment order, 1.. (the overlay's values).
  std::map<std::uint16_t, std::size_t> lesion_of_segment;
  std::map<std::uint16_t, int> lung_of_segment;
  for (const Segment& s : images.segments) {
    if (s.lung >= 0) lung_of_segment[s.number] = s.lung;
    else lesion_of_segment.emplace(s.number, lesion_of_segment.size());
  }
  const std::size_t lesion_count = lesion_of_segment.size();
  images.lesion_overlay.assign(images.slices.size(), std::vector<std::uint8_t>(pixels, 0));
  std::vector<std::vector<std::uint8_t>> lung_mask(images.slices.size(), std::vector<std::uint8_t>(pixels, 0));
  for (std::size_t f = 0; f < seg->frames.size(); ++f) {
    const auto [segment, slice] = seg->frames[f];
    const auto lesion = lesion_of_segment.find(segment);
    const auto lung = lung_of_segment.find(segment);
    for (std::size_t p = 0; p < pixels; ++p) {
      const std::size_t bit = f * pixels + p;
      if (((seg->bits[bit / 8] >> (bit % 8)) & 1) == 0) continue;
      if (lesion != lesion_of_segment.end() && lesion_count < 255) {
        images.lesion_overlay[slice][p] = static_cast<std::uint8_t>(lesion->second + 1);
      }
      if (lung != lung_of_segment.end()) lung_mask[slice][p] = static_cast<std::uint8_t>(lung->second + 1);
    }
  }

  // One pass over the CT: lesion voxels, HU sums and lung overlap; lung voxels and histograms.
  struct LesionSums {
    std::uint64_t voxels = 0;
    double hu_sum = 0;
    std::array<std::uint64_t, 2> in_lung{};
    std::size_t first = SIZE_MAX, last = 0;
  };
  std::vector<LesionSums> lesions(lesion_count);
  std::array<std::uint64_t, 2> lung_voxels{};
  std::array<std::array<std::uint64_t, kHistogramBins>, 2> histogram{};
  for (std::size_t s = 0; s < images.slices.size(); ++s) {
    auto hu = ReadHu(images.slices[s].file, pixels);
    if (!hu) return MakeError(hu.error());
    for (std::size_t p = 0; p < pixels; ++p) {
      const int lung = lung_mask[s][p] - 1;
      if (lung >= 0) {
        ++lung_voxels[lung];
        const int bin = std::clamp(static_cast<int>(std::floor(((*hu)[p] - kHistogramMinHu) / kHistogramBinHu)), 0,
                                   kHistogramBins - 1);
        ++histogram[lung][bin];
      }
      if (const int l = images.lesion_overlay[s][p] - 1; l >= 0) {
        LesionSums& sums = lesions[l];
        ++sums.voxels;
        sums.hu_sum += static_cast<double>((*hu)[p]);
        if (lung >= 0) ++sums.in_lung[lung];
        sums.first = std::min(sums.first, s);
        sums.last = std::max(sums.last, s);
      }
    }
  }
  std::array<double, 2> lesion_ml{};
  double total_ml = 0;
  static const char* const kLungNames[] = {"right", "left"};
  for (const Segment& s : images.segments) {
    const auto it = lesion_of_segment.find(s.number);
    if (it == lesion_of_segment.end()) continue;
    const LesionSums& sums = lesions[it->second];
    const int lung = sums.in_lung[1] > sums.in_lung[0] ? 1 : 0;
    const double ml = static_cast<double>(sums.voxels) * voxel_ml;
    if (sums.in_lung[0] + sums.in_lung[1] > 0) lesion_ml[lung] += ml;
    total_ml += ml;
    nlohmann::json l = {{"number", it->second + 1}, {"label", s.label}, {"type", s.type},
                        {"volume_ml", Round(ml, 2)}, {"voxels", sums.voxels}};
    if (sums.in_lung[0] + sums.in_lung[1] > 0) l["lung"] = kLungNames[lung];
    if (sums.voxels > 0) {
      l["mean_hu"] = std::lround(sums.hu_sum / static_cast<double>(sums.voxels));
      l["first_slice"] = sums.first;
      l["last_slice"] = sums.last;
    }
    images.report["lesions"].push_back(std::move(l));
  }
  for (int lung = 0; lung < 2; ++lung) {
    const double volume = static_cast<double>(lung_voxels[lung]) * voxel_ml;
    images.report["lungs"].push_back({{"lung", kLungNames[lung]},
                                      {"volume_ml", Round(volume, 1)},
                                      {"lesion_volume_ml", Round(lesion_ml[lung], 2)},
                                      {"involvement_percent", volume > 0 ? Round(100.0 * lesion_ml[lung] / volume, 2) : 0.0},
                                      {"histogram", histogram[lung]}});
  }
  images.report["total_lesion_volume_ml"] = Round(total_ml, 2);
  return images;
}

Expected<std::vector<std::uint8_t>> RenderSlice(const ScanImages& images, std::size_t slice, Window window) {
  if (slice >= images.slices.size()) {
    return MakeError(ErrorKind::kNotFound, "no slice " + std::to_string(slice) + "; this scan has " +
                                               std::to_string(images.slices.size()));
  }
  const fs::path& file = images.slices[slice].file;
  DicomImage image(file.c_str());
  if (image.getStatus() != EIS_Normal) {
    return MakeError(ErrorKind::kCorrupt, "DCMTK cannot render " + file.string() + ": " +
                                              DicomImage::getString(image.getStatus()));
  }
  if (!image.isMonochrome() || image.getWidth() != images.columns || image.getHeight() != images.rows ||
      !image.setWindow(window.center, window.width)) {
    return MakeError(ErrorKind::kCorrupt, "CT image " + file.string() + " is not a monochrome image of the series' size");
  }
  const std::size_t pixels = std::size_t{images.rows} * images.columns;
  const auto* data = static_cast<const std::uint8_t*>(image.getOutputData(8));
  if (data == nullptr || image.getOutputDataSize(8) < pixels) {
    return MakeError(ErrorKind::kCorrupt, "DCMTK rendered no pixels for " + file.string());
  }
  return std::vector<std::uint8_t>(data, data + pixels);
}

ScanView::ScanView(boost::asio::io_context& io, ListScans list, std::size_t max_pending, std::size_t cached_scans)
    : io_(io), list_(std::move(list)), max_pending_(max_pending), cached_scans_(cached_scans) {}

ScanView::~ScanView() {
  worker_.stop();
  worker_.join();
}

void ScanView::Handle(const std::string& path, std::function<void(Server::Reply)> done) {
  // /api/scans/<uid>[/slices/<i>/<kind>]
  const std::string rest_of_path = path.substr(std::string("/api/scans/").size());
  const auto slash = rest_of_path.find('/');
  const std::string uid = rest_of_path.substr(0, slash);
  const std::string rest = slash == std::string::npos ? "" : rest_of_path.substr(slash);
  const bool uid_ok = !uid.empty() && uid.size() <= 128 && std::all_of(uid.begin(), uid.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '-';
  });
  if (!uid_ok) return done(Text(404, "no such scan; the scans are listed at /"));
  std::vector<ScanEntry> scans = list_();
  if (std::none_of(scans.begin(), scans.end(), [&](const ScanEntry& e) { return e.scan_uid == uid; })) {
    return done(Text(404, "no scan " + uid + " on this terminal; the scans are listed at /"));
  }
  if (*pending_ >= max_pending_) return done(Text(503, "the scan view is busy; try again in a moment"));
  ++*pending_;
  boost::asio::post(worker_, [this, uid, rest, scans = std::move(scans), done = std::move(done)]() mutable {
    Server::Reply reply;
    try {
      reply = Answer(uid, rest, scans);
    } catch (const std::exception& e) {
      reply = Text(500, std::string("the scan view failed: ") + e.what());
    }
    boost::asio::post(io_, [pending = pending_, reply = std::move(reply), done = std::move(done)]() mutable {
      --*pending;
      done(std::move(reply));
    });
  });
}

Expected<std::shared_ptr<const ScanImages>> ScanView::Images(const ScanEntry& entry) {
  const fs::path results_dir = entry.scan_dir / "results";
  const std::string stamp = Stamp(results_dir);
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if (it->scan_uid != entry.scan_uid) continue;
    if (it->stamp == stamp) {
      cache_.splice(cache_.begin(), cache_, it);
      return cache_.front().images;
    }
    cache_.erase(it);
    break;
  }
  auto images = IndexScan(results_dir);
  if (!images) return MakeError(images.error());
  auto shared = std::make_shared<const ScanImages>(std::move(*images));
  cache_.push_front({entry.scan_uid, stamp, shared});
  while (cache_.size() > cached_scans_) cache_.pop_back();
  return shared;
}

nlohmann::json ScanView::FollowUp(const ScanEntry& entry, const std::vector<ScanEntry>& scans, const ScanImages& images) {
  nlohmann::json out = nlohmann::json::array();
  const std::string patient = PatientKey(entry, &images);
  if (patient.empty()) return out;
  std::vector<const ScanEntry*> earlier;
  for (const ScanEntry& other : scans) {
    if (other.scan_uid != entry.scan_uid && other.created_utc < entry.created_utc) earlier.push_back(&other);
  }
  std::sort(earlier.begin(), earlier.end(),
            [](const ScanEntry* a, const ScanEntry* b) { return a->created_utc > b->created_utc; });
  const auto& report = images.report;
  for (const ScanEntry* other : earlier) {
    if (out.size() >= kMaxFollowUps) break;
    if (PatientKey(*other, nullptr) != patient) continue;
    auto then = Images(*other);
    if (!then) continue;  // no images (yet, or any more): nothing to compare
    const auto& was = (*then)->report;
    nlohmann::json item = {{"scan_uid", other->scan_uid}, {"created_utc", other->created_utc}};
    if (auto f = results::ReadFindingsInResultsDir(other->scan_dir / "results"); f) {
      item["category"] = f->findings.category;
    }
    if (was.contains("total_lesion_volume_ml") && report.contains("total_lesion_volume_ml")) {
      item["total_lesion_volume_ml"] = was["total_lesion_volume_ml"];
      item["change_lesion_volume_ml"] =
          Round(report["total_lesion_volume_ml"].get<double>() - was["total_lesion_volume_ml"].get<double>(), 2);
      for (std::size_t lung = 0; lung < 2 && lung < was["lungs"].size() && lung < report["lungs"].size(); ++lung) {
        const std::string name = was["lungs"][lung]["lung"];
        const double then_percent = was["lungs"][lung]["involvement_percent"];
        const double now_percent = report["lungs"][lung]["involvement_percent"];
        item["involvement_percent"][name] = then_percent;
        item["change_involvement_points"][name] = Round(now_percent - then_percent, 2);
      }
    }
    out.push_back(std::move(item));
  }
  return out;
}

Server::Reply ScanView::Answer(const std::string& scan_uid, const std::string& rest,
                               const std::vector<ScanEntry>& scans) {
  const ScanEntry& entry = *std::find_if(scans.begin(), scans.end(), [&](const ScanEntry& e) { return e.scan_uid == scan_uid; });
  auto images = Images(entry);
  if (rest.empty()) {
    nlohmann::json j = {{"scan_uid", entry.scan_uid}, {"state", entry.state}, {"created_utc", entry.created_utc}};
    // Timing: scan end (the manifest's acquisition end) -> report (the result set checked).
    nlohmann::json timing = nlohmann::json::object();
    std::string end = entry.acquisition_end_utc;
    if (end.empty()) {
      if (auto manifest = ReadJsonFile(entry.scan_dir / "manifest.json")) end = manifest->value("acquisition_end_utc", "");
    }
    if (!end.empty()) timing["scan_end_utc"] = end;
    const std::optional<std::int64_t> end_ms = ParseUtcMs(end);
    auto findings = results::ReadFindingsInResultsDir(entry.scan_dir / "results");
    if (findings) {
      j["findings"] = results::FindingsToJson(*findings);
      const auto& t = findings->timeline_unix_ms;
      const std::int64_t report_ms = t.validated != 0 ? t.validated : t.retrieved;
      if (report_ms != 0) timing["report_utc"] = IsoOfMs(report_ms);
      if (t.delivered != 0) timing["delivered_utc"] = IsoOfMs(t.delivered);
      if (report_ms != 0 && end_ms) timing["scan_end_to_report_s"] = Round((report_ms - *end_ms) / 1000.0, 1);
    }
    j["timing"] = timing;
    if (!images) {
      if (images.error().kind() != ErrorKind::kNotFound) return Text(500, images.error().message());
      j["results"] = false;
      j["message"] = images.error().message();
      return {200, "application/json", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
    }
    const ScanImages& im = **images;
    j["results"] = true;
    j["rows"] = im.rows;
    j["columns"] = im.columns;
    j["pixel_spacing_mm"] = im.pixel_spacing_mm;
    j["slice_spacing_mm"] = Round(im.slice_spacing_mm, 3);
    j["has_seg"] = im.has_seg;
    nlohmann::json slices = nlohmann::json::array();
    for (std::size_t i = 0; i < im.slices.size(); ++i) {
      slices.push_back({{"index", i}, {"z_mm", Round(im.slices[i].z_mm, 2)}});
    }
    j["slices"] = std::move(slices);
    j["report"] = im.report;
    j["followup"] = FollowUp(entry, scans, im);
    return {200, "application/json", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
  }
  // /slices/<i>/<kind>: i in decimal digits only (at most 6), kind in lower-case letters.
  const std::string prefix = "/slices/";
  const auto kind_at = rest.find('/', prefix.size());
  const std::string digits = rest.rfind(prefix, 0) == 0 && kind_at != std::string::npos
                                 ? rest.substr(prefix.size(), kind_at - prefix.size())
                                 : std::string();
  const std::string what = kind_at == std::string::npos ? std::string() : rest.substr(kind_at + 1);
  if (digits.empty() || digits.size() > 6 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return Text(404, "no such view of a scan: /slices/<index>/lung, /mediastinal or /overlay");
  }
  const std::size_t index = std::stoul(digits);
  if (!images) return Text(images.error().kind() == ErrorKind::kNotFound ? 404 : 500, images.error().message());
  const ScanImages& im = **images;
  if (index >= im.slices.size()) {
    return Text(404, "no slice " + std::to_string(index) + " in this scan; it has " + std::to_string(im.slices.size()) +
                         " (0.." + std::to_string(im.slices.size() - 1) + ")");
  }
  if (what == "overlay") {
    if (!im.has_seg) return Text(404, "this scan has no segmentation (no AI report came back), so no lesion overlay");
    const auto& o = im.lesion_overlay[index];
    return {200, "application/octet-stream", std::string(o.begin(), o.end())};
  }
  if (what != "lung" && what != "mediastinal") {
    return Text(404, "no such view of a slice: lung, mediastinal or overlay");
  }
  auto pixels = RenderSlice(im, index, what == "lung" ? kLungWindow : kMediastinalWindow);
  if (!pixels) return Text(500, pixels.error().message());
  return {200, "application/octet-stream", std::string(pixels->begin(), pixels->end())};
}

}  // namespace ctagent::ui
