// The built-in "replay" driver: plays back a recorded scan, as fast as possible, or at the
// recorded timestamps when the armed protocol has real_time set. Two formats:
//   "ctagent"      the agent's own recording (drivers/replay/recording.hpp, `ctagent record`);
//   "dicom-ct-pd"  one DICOM file per view (drivers/replay/dicom_ct_pd.hpp).
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>

#include <nlohmann/json.hpp>

#include "agent/common/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/replay/dicom_ct_pd.hpp"
#include "drivers/replay/recording.hpp"

namespace ctagent::drivers::replay {

class ReplayDetector final : public Detector {
 public:
  // `options`: {"path": directory (required), "format": "ctagent" (default) | "dicom-ct-pd"};
  // unknown keys are rejected.
  static Expected<std::unique_ptr<ReplayDetector>> Create(const nlohmann::json& options);

  DetectorInfo Info() const override;
  // The protocol must have the recording's shape (rows, channels, sample type, total views);
  // its other fields are not used, except unattenuated_counts * dose_fraction to turn the line
  // integrals of foreign DICOM-CT-PD files into counts.
  Status Arm(const ScanProtocol& protocol) override;
  Expected<std::optional<View>> NextView() override;
  void Abort() override;

 private:
  struct Shape {
    std::uint32_t rows = 0;
    std::uint32_t channels = 0;
    SampleType sample_type = SampleType::kUint16;
    std::uint64_t views = 0;
  };
  ReplayDetector(std::filesystem::path directory, bool dicom, Shape shape, std::string model)
      : directory_(std::move(directory)), dicom_(dicom), shape_(shape), model_(std::move(model)) {}
  Expected<std::optional<View>> ReadNext();

  std::filesystem::path directory_;
  bool dicom_;
  Shape shape_;
  std::string model_;
  std::unique_ptr<RecordingReader> recording_;  // set by Arm (ctagent format)
  std::unique_ptr<DicomCtPdReader> dicom_reader_;  // set by Arm (DICOM-CT-PD)
  bool real_time_ = false;
  std::optional<std::chrono::steady_clock::time_point> started_;
  std::optional<std::int64_t> first_timestamp_us_;

  std::mutex mutex_;
  std::condition_variable wake_;
  bool aborted_ = false;
};

Expected<std::unique_ptr<Detector>> MakeReplayDetector(const nlohmann::json& options);

}  // namespace ctagent::drivers::replay
