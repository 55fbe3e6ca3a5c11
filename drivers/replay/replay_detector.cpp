#include "drivers/replay/replay_detector.hpp"

#include <string>

namespace ctagent::drivers::replay {

Expected<std::unique_ptr<ReplayDetector>> ReplayDetector::Create(const nlohmann::json& options) {
  constexpr const char* kUsage =
      "replay driver: driver.options must be {\"path\": \"<recording directory>\", \"format\": \"ctagent\" or "
      "\"dicom-ct-pd\" (optional)}";
  if (!options.is_object() || !options.contains("path") || !options["path"].is_string()) {
    return MakeError(ErrorKind::kInvalidInput, kUsage);
  }
  std::string format = "ctagent";
  for (const auto& [key, value] : options.items()) {
    if (key == "format" && value.is_string() && (value == "ctagent" || value == "dicom-ct-pd")) {
      format = value.get<std::string>();
    } else if (key != "path") {
      return MakeError(ErrorKind::kInvalidInput, "replay driver options: /" + key + ": unknown key or value; " + kUsage);
    }
  }
  const std::filesystem::path directory = options["path"].get<std::string>();
  if (format == "dicom-ct-pd") {
    auto info = ReadDicomCtPdInfo(directory);
    if (!info) return MakeError(info.error().WithContext("replay driver"));
    const Shape shape{info->rows, info->channels, SampleType::kUint16, info->views};
    return std::unique_ptr<ReplayDetector>(new ReplayDetector(directory, true, shape, "dicom-ct-pd"));
  }
  auto info = ReadRecordingInfo(directory);
  if (!info) return MakeError(info.error().WithContext("replay driver"));
  const ScanProtocol& p = info->protocol;
  const Shape shape{p.rows, p.channels, p.sample_type, info->views};
  return std::unique_ptr<ReplayDetector>(
      new ReplayDetector(directory, false, shape, info->detector_name + "/" + info->detector_model));
}

DetectorInfo ReplayDetector::Info() const {
  return DetectorInfo{"replay", model_, shape_.rows, shape_.channels, 1e9, {shape_.sample_type}};
}

Status ReplayDetector::Arm(const ScanProtocol& p) {
  recording_.reset();
  dicom_reader_.reset();
  if (p.rows != shape_.rows || p.channels != shape_.channels || p.sample_type != shape_.sample_type ||
      p.TotalViews() != shape_.views) {
    auto shape = [](std::uint32_t rows, std::uint32_t channels, SampleType type, std::uint64_t views) {
      return std::to_string(rows) + " rows x " + std::to_string(channels) + " channels, " + ToString(type) + ", " +
             std::to_string(views) + " views";
    };
    return MakeError(ErrorKind::kInvalidInput,
                     "replay driver: cannot arm: the recording " + directory_.string() + " has " +
                         shape(shape_.rows, shape_.channels, shape_.sample_type, shape_.views) +
                         "; the protocol asks for " + shape(p.rows, p.channels, p.sample_type, p.TotalViews()) +
                         "; set the config's scan section to the recording's shape");
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
