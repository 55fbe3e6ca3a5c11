// The built-in "replay" driver: plays back a recorded scan, as fast as possible, or at the
// recorded timestamps when the armed protocol has real_time set. Two formats:
//   "ctagent"      the agent's own recording (drivers/replay/recording.hpp, `ctagent record`);
//   "dicom-ct-pd"  one DICOM file per view (drivers/replay/dicom_ct_pd.hpp).
// The recording sets the scan's shape: the agent arms it with ProtocolForReplay()
// (drivers/replay/recording.hpp), so the config needs only {"path": directory}.
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/replay/dicom_ct_pd.hpp"
#include "drivers/replay/recording.hpp"

namespace ctagent::drivers::replay {

class ReplayDetector final : public Detector {
 public:
  // `options`: {"path": directory (required), "format": "ctagent" | "dicom-ct-pd" (optional:
  // the directory tells)}; unknown keys are rejected.
  static Expected<std::unique_ptr<ReplayDetector>> Create(const nlohmann::json& options);

  // Model: the format and the recording's shape ("DICOM-CT-PD, 32 rows x 736 channels, 1 view").
  DetectorInfo Info() const override;
  // The protocol must have the recording's shape (rows, channels, sample type, total views):
  // the views are the recording's. Other fields that differ from the recording are logged (the
  // views keep their recorded angles and positions); the encoding is the protocol's (DICOM-CT-PD
  // line integrals are re-quantised or turned into counts with unattenuated_counts x dose).
  Status Arm(const ScanProtocol& protocol) override;
  Expected<std::optional<View>> NextView() override;
  void Abort() override;

 private:
  ReplayDetector(std::filesystem::path directory, bool dicom, ScanProtocol recorded, std::string model)
      : directory_(std::move(directory)), dicom_(dicom), recorded_(recorded), model_(std::move(model)) {}
  Expected<std::optional<View>> ReadNext();

  std::filesystem::path directory_;
  bool dicom_;
  ScanProtocol recorded_;  // the recording's protocol (ProtocolForReplay from the defaults)
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
