// DICOM UIDs minted by the agent: "2.25." followed by a random 128-bit UUID as a decimal
// integer (ISO/IEC 9834-8, DICOM PS3.5 B.2), so no registered root is needed.
#pragma once

#include <string>

namespace ctagent {

std::string MintDicomUid();
bool IsValidDicomUid(const std::string& uid);

}  // namespace ctagent
