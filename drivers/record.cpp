#include "drivers/record.hpp"

#include <cstdio>

#include "config/config.hpp"
#include "drivers/replay/dicom_ct_pd.hpp"
#include "drivers/replay/recording.hpp"

namespace ctagent::drivers {

Expected<std::uint64_t> RecordScan(Detector& detector, const ScanProtocol& protocol,
                                   const std::filesystem::path& directory, RecordFormat format) {
  std::unique_ptr<replay::RecordingWriter> recording;
  std::unique_ptr<replay::DicomCtPdWriter> dicom;
  if (format == RecordFormat::kDicomCtPd) {
    auto w = replay::DicomCtPdWriter::Create(directory, protocol);
    if (!w) return MakeError(w.error());
    dicom = std::move(w).value();
  } else {
    auto w = replay::RecordingWriter::Create(directory, protocol, detector.Info());
    if (!w) return MakeError(w.error());
    recording = std::move(w).value();
  }
  if (auto s = detector.Arm(protocol); !s) return MakeError(s.error().WithContext("recording: arming the detector"));
  const std::uint64_t total = protocol.TotalViews();
  for (std::uint64_t i = 0; i <= total; ++i) {  // bounded: one call more than the protocol's views
    auto view = detector.NextView();
    if (!view) return MakeError(view.error().WithContext("recording: after " + std::to_string(i) + " views"));
    if (!view->has_value()) break;
    if (auto s = dicom ? dicom->Append(**view) : recording->Append(**view); !s) return MakeError(s.error());
    if (i + 1 == total) {
      // The scan must end here; reading its end marker keeps drivers that stop on it happy.
      auto end = detector.NextView();
      if (!end) return MakeError(end.error().WithContext("recording: after the last view"));
      if (end->has_value()) {
        return MakeError(ErrorKind::kProtocol, "recording: the driver delivered more than the protocol's " +
                                                   std::to_string(total) + " views");
      }
      if (recording) {
        if (auto s = recording->Finish(); !s) return MakeError(s.error());
      }
      return total;
    }
  }
  return MakeError(ErrorKind::kProtocol, "recording: the driver ended the scan before its " + std::to_string(total) +
                                             " views; nothing usable was written to " + directory.string());
}

int RecordCommand(const std::vector<std::string>& args) {
  std::string config_path;
  std::string out;
  RecordFormat format = RecordFormat::kCtagent;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (args[i] == "--out" && i + 1 < args.size()) {
      out = args[++i];
    } else if (args[i] == "--format" && i + 1 < args.size() &&
               (args[i + 1] == "ctagent" || args[i + 1] == "dicom-ct-pd")) {
      format = args[++i] == "dicom-ct-pd" ? RecordFormat::kDicomCtPd : RecordFormat::kCtagent;
    } else {
      config_path.clear();
      break;
    }
  }
  if (config_path.empty() || out.empty()) {
    std::fprintf(stderr,
                 "usage: ctagent record --config FILE --out DIR [--format ctagent|dicom-ct-pd]\n"
                 "Acquires one scan from the configured driver with the configured scan protocol and writes\n"
                 "it to DIR (new or empty) for the replay driver (driver.name \"replay\", options.path DIR).\n"
                 "Default format: ctagent (lossless). With the replay driver the recording's shape and geometry\n"
                 "replace the config's scan section (each change is printed).\n");
    return 2;
  }
  auto config = config::LoadConfig(config_path);
  if (!config) {
    std::fprintf(stderr, "record: %s\n", config.error().message().c_str());
    return 3;  // the CLI's "configuration cannot be read or is invalid" (cli::kExitConfig), as for every command
  }
  auto detector = MakeDetector(config->driver.name, config->driver.options);
  if (!detector) {
    std::fprintf(stderr, "record: driver \"%s\": %s\n", config->driver.name.c_str(), detector.error().message().c_str());
    return 1;
  }
  // A replayed recording sets the scan's shape and geometry (the config needs none); each
  // field it changes is said, so a config written for another scanner is not silently ignored.
  auto adopted = replay::ScanProtocolFor(config->driver.name, config->driver.options, config->protocol);
  if (!adopted) {
    std::fprintf(stderr, "record: %s\n", adopted.error().message().c_str());
    return 1;
  }
  const ScanProtocol& protocol = adopted->protocol;
  for (const std::string& change : adopted->changes) {
    std::fprintf(stderr, "record: from the recording: %s\n", change.c_str());
  }
  auto views = RecordScan(**detector, protocol, out, format);
  if (!views) {
    std::fprintf(stderr, "record: %s\n", views.error().message().c_str());
    return 1;
  }
  std::printf("recorded %llu %s of %u rows x %u channels (%s beam, %u %s per rotation) to %s\n",
              static_cast<unsigned long long>(*views), *views == 1 ? "view" : "views", protocol.rows,
              protocol.channels, ToString(protocol.geometry), protocol.views_per_rotation,
              protocol.views_per_rotation == 1 ? "view" : "views", out.c_str());
  return 0;
}

}  // namespace ctagent::drivers
