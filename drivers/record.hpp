// `ctagent record`: acquires one scan from the configured driver and writes it as a recording
// (drivers/replay/recording.hpp) that the replay driver plays back.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "drivers/detector.hpp"

namespace ctagent::drivers {

enum class RecordFormat { kCtagent, kDicomCtPd };

// Arms `detector` with `protocol` and writes every view to `directory` (new or empty) in
// `format` (drivers/replay/recording.hpp or drivers/replay/dicom_ct_pd.hpp).
// Returns the number of views recorded.
Expected<std::uint64_t> RecordScan(Detector& detector, const ScanProtocol& protocol,
                                   const std::filesystem::path& directory, RecordFormat format = RecordFormat::kCtagent);

// `ctagent record --config FILE --out DIR [--format ctagent|dicom-ct-pd]`: args are the words
// after "record". The protocol is replay::ScanProtocolFor's (drivers/replay/recording.hpp): with
// the replay driver the recording's shape and geometry replace the config's, each change
// printed. Prints what it did or why it failed; returns the process exit code (0 ok, 1 failed,
// 2 bad usage).
int RecordCommand(const std::vector<std::string>& args);

}  // namespace ctagent::drivers
