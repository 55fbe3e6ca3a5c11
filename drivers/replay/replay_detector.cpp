#include "drivers/replay/replay_detector.hpp"

#include <string>

#include "base/log.hpp"

namespace ctagent::drivers::replay {

Expected<std::unique_ptr<ReplayDetector>> ReplayDetector::Create(const nlohmann::json& options) {
  auto source = ParseReplayOptions(options);
  if (!source) return MakeError(source.error());
  auto adopted = ProtocolForReplay(options, ScanProtocol{});
  if (!adopted) return MakeError(adopted.error());
  const ScanProtocol& p = adopted->protocol;
  const bool dicom = source->format == RecordingFormat::kDicomCtPd;
  std::string model = std::string(dicom ? "DICOM-CT-PD" : "ctagent recording") + ", " + std::to_string(p.rows) +
                      " rows x " + std::to_string(p.channels) + " channels, " + std::to_string(p.TotalViews()) +
                      (p.TotalViews() == 1 ? " view" : " views");
  return std::unique_ptr<ReplayDetector>(new ReplayDetector(source->directory, dicom, p, std::move(model)));
}

DetectorInfo ReplayDetector::Info() const {
  return DetectorInfo{"replay", model_, recorded_.rows, recorded_.channels, 1e9, {recorded_.sample_type}};
}

Status ReplayDetector::Arm(const ScanProtocol& p) {
  recording_.reset();
  dicom_reader_.reset();
  const ScanProtocol& r = recorded_;
  if (p.rows != r.rows || p.channels != r.channels || p.sample_type != r.sample_type ||
      p.TotalViews() != r.TotalViews()) {
    auto shape = [](std::uint32_t rows, std::uint32_t channels, SampleType type, std::uint64_t views) {
      return std::to_string(rows) + " rows x " + std::to_string(channels) + " channels, " + ToString(type) + ", " +
             std::to_string(views) + (views == 1 ? " view" : " views");
    };
    // The agent arms a replay with the recording's shape (ProtocolForReplay); a caller that
    // does not, or a config written for another recording, gets what to set.
    return MakeError(ErrorKind::kInvalidInput,
                     "replay driver: cannot arm: the recording " + directory_.string() + " has " +
                         shape(r.rows, r.channels, r.sample_type, r.TotalViews()) + "; the protocol asks for " +
                         shape(p.rows, p.channels, p.sample_type, p.TotalViews()) +
                         "; a replayed scan takes its shape from the recording (scan.rows " + std::to_string(r.rows) +
                         ", scan.channels " + std::to_string(r.channels) + ", scan.views_per_rotation " +
                         std::to_string(r.views_per_rotation) + ", scan.rotations " + std::to_string(r.rotations) +
                         ")");
  }
  // The geometry the recording has and the armed protocol lacks; the encoding, dose and timing
  // are the protocol's to choose (the reader converts), so they are not compared.
  ScanProtocol geometry_only = r;
  geometry_only.rotation_time_s = p.rotation_time_s;
  geometry_only.dose_fraction = p.dose_fraction;
  geometry_only.unattenuated_counts = p.unattenuated_counts;
  geometry_only.sample_encoding = p.sample_encoding;
  geometry_only.line_integral_slope = p.line_integral_slope;
  geometry_only.line_integral_intercept = p.line_integral_intercept;
  if (const std::vector<std::string> changes = ProtocolChanges(geometry_only, p); !changes.empty()) {
    std::string list;
    for (const std::string& c : changes) list += (list.empty() ? "" : "; ") + c;
    log::Info("replay", "the recording " + directory_.string() + " differs from the armed scan in: " + list +
                            " (the views keep the recording's angles and table positions)");
  }
  if (dicom_) {
    auto reader = DicomCtPdReader::Open(directory_, p);
    if (!reader) return MakeError(reader.error().WithContext("replay driver"));
    dicom_reader_ = std::move(reader).value();
  } else {
    auto reader = RecordingReader::Open(directory_);
    if (!reader) return MakeError(reader.error().WithContext("replay driver"));
    recording_ = std::move(reader).value();
  }
  real_time_ = p.real_time;
  started_.reset();
  first_timestamp_us_.reset();
  std::lock_guard lock(mutex_);
  aborted_ = false;
  return Ok();
}

Expected<std::optional<View>> ReplayDetector::ReadNext() {
  if (dicom_reader_) return dicom_reader_->Next();
  return recording_->Next();
}

Expected<std::optional<View>> ReplayDetector::NextView() {
  if (!recording_ && !dicom_reader_) {
    return MakeError(ErrorKind::kInvalidInput, "replay driver: NextView() called before a successful Arm(); arm a scan first");
  }
  {
    std::lock_guard lock(mutex_);
    if (aborted_) return MakeError(ErrorKind::kCancelled, "replay driver: scan aborted");
  }
  auto view = ReadNext();
  if (!view || !view->has_value()) return view;
  if (real_time_) {
    const auto now = std::chrono::steady_clock::now();
    if (!started_) {
      started_ = now;
      first_timestamp_us_ = (*view)->timestamp_us;
    }
    // Deliver at the recorded spacing, from absolute deadlines so pacing does not drift.
    const auto due = *started_ + std::chrono::microseconds((*view)->timestamp_us - *first_timestamp_us_);
    std::unique_lock lock(mutex_);
    wake_.wait_until(lock, due, [this] { return aborted_; });
    if (aborted_) return MakeError(ErrorKind::kCancelled, "replay driver: scan aborted");
  }
  return view;
}

void ReplayDetector::Abort() {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
  }
  wake_.notify_all();
}

Expected<std::unique_ptr<Detector>> MakeReplayDetector(const nlohmann::json& options) {
  auto d = ReplayDetector::Create(options);
  if (!d) return MakeError(d.error());
  return std::unique_ptr<Detector>(std::move(d).value());
}

}  // namespace ctagent::drivers::replay
