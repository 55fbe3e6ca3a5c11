// The sim's scan announcements (driver ABI 1.2, Detector::WaitForScan): a simulated scanner
// whose operator starts scans at the console, on a schedule or on request, so `ctagent run`
// can be shown and tested taking every scan as it comes. Wraps any Detector (the sim's own);
// the driver option "announce" (docs/drivers.md, "Scan announcements") turns it on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"

namespace ctagent::drivers::sim {

struct AnnounceOptions {
  // Schedule: scan k (from 0) is announced first_after + k * every after the driver opened, or
  // at once when the previous one took longer (back to back). count 0: no schedule.
  std::chrono::milliseconds every{5000};
  std::chrono::milliseconds first_after{-1};  // negative: `every`
  std::uint32_t count = 0;
  // On request: while this file exists a scan is announced, and the file is removed.
  std::filesystem::path request_file;
  ScanProtocol protocol = SixteenSliceAxialProtocol();  // scan k has seed protocol.seed + k
  std::string accession_prefix = "SIM";  // accession SIM0001, SIM0002 ...; procedure step SPS0001 ...
};

// Parses the "announce" option: {"every_s", "first_after_s", "count", "request_file",
// "protocol" (a scan protocol object as in the config's "scan"), "accession_prefix"}.
Expected<AnnounceOptions> ParseAnnounceOptions(const nlohmann::json& j);

class AnnouncingDetector final : public Detector {
 public:
  AnnouncingDetector(std::unique_ptr<Detector> inner, AnnounceOptions options);

  DetectorInfo Info() const override { return inner_->Info(); }
  Status Arm(const ScanProtocol& protocol) override { return inner_->Arm(protocol); }
  Expected<std::optional<View>> NextView() override { return inner_->NextView(); }
  void Abort() override;
  Status SelfTest() override { return inner_->SelfTest(); }
  bool AnnouncesScans() const override { return true; }
  Expected<std::optional<ScanAnnouncement>> WaitForScan(std::chrono::milliseconds timeout) override;

  std::uint32_t announced() const { return announced_; }

 private:
  std::optional<std::chrono::steady_clock::time_point> NextDue() const;
  bool TakeRequest();
  Expected<std::optional<ScanAnnouncement>> Announce();

  std::unique_ptr<Detector> inner_;
  AnnounceOptions options_;
  const std::chrono::steady_clock::time_point opened_ = std::chrono::steady_clock::now();
  std::uint32_t scheduled_done_ = 0;  // acquisition thread only
  std::uint32_t announced_ = 0;       // acquisition thread only
  std::mutex mutex_;
  std::condition_variable wake_;
  bool aborted_ = false;  // guarded by mutex_; consumed by the next WaitForScan
};

}  // namespace ctagent::drivers::sim
