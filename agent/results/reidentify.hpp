// Re-identification of the objects the imaging center returns (issue 15, docs/privacy.md): the
// center only ever saw pseudonyms, so every CT image, SR, SEG and report gets the patient's real
// identity back from the scan's mapping record before it is stored on the terminal or sent to
// the console.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/error.hpp"
#include "agent/privacy/privacy.hpp"

class DcmDataset;

namespace ctagent::results {

// In place, on a parsed data set. Refuses (kProtocol, the object untouched in meaning) an object
// whose Patient ID is not the scan's pseudonymous ID, whose Study Instance UID (at the top or in
// any reference, e.g. an SR's evidence or a SEG's referenced study) is not the scan's
// pseudonymous study UID, or whose Accession Number is neither empty nor the scan's pseudonym:
// such an object belongs to another scan, and is never shown under this patient. Otherwise: all
// text converted to UTF-8 and Specific Character Set set to ISO_IR 192; the patient module
// (name, ID, birth date, sex) and accession number restored; every UID anywhere in the data set
// that the mapping remapped (the study UID, any other recorded UID) replaced by the real one, so
// SR and SEG references stay consistent. Messages name attributes, never patient values.
Status Reidentify(DcmDataset& dataset, const privacy::MappingRecord& mapping);

// The same on DICOM Part 10 bytes: the re-identified object as Part 10 bytes, in the transfer
// syntax it came in.
Expected<std::vector<std::uint8_t>> ReidentifyPart10(std::span<const std::uint8_t> part10,
                                                     const privacy::MappingRecord& mapping);

}  // namespace ctagent::results
