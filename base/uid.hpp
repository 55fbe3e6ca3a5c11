// DICOM UIDs minted by the agent: "2.25." followed by a random 128-bit UUID as a decimal
// integer (ISO/IEC 9834-8, DICOM PS3.5 B.2), so no registered root is needed.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace ctagent {

std::string MintDicomUid();
// "2.25." + the 128-bit big-endian integer `uuid` in decimal; the caller sets the UUID's version
// and variant bits (random: version 4, name-based: version 8).
std::string DicomUidFromUuid(std::array<std::uint8_t, 16> uuid);
bool IsValidDicomUid(const std::string& uid);

}  // namespace ctagent
