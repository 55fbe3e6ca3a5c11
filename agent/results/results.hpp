// Results path: validate DICOM instances pulled back from the imaging center (DCMTK), keep
// them under the spool, and deliver them to the scanner console by C-STORE.
#pragma once

#include <cstdint>
#include <filesystem>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "base/error.hpp"

namespace ctagent::results {

struct InstanceInfo {
  std::string sop_class_uid;
  std::string sop_instance_uid;
  std::string study_uid;
  std::string series_uid;
  std::string modality;
  std::uint16_t rows = 0;
  std::uint16_t columns = 0;
  // (0020,1002) Images in Acquisition: how many instances the series will hold when complete
  // (the reference imaging center sets it; 0 when absent).
  std::uint32_t images_in_acquisition = 0;
};

// The SOP classes the agent accepts from the cloud: CT Image Storage, Enhanced CT, Secondary
// Capture (the readable report), Segmentation (lesion and lung masks), Basic Text, Enhanced,
// Comprehensive and Comprehensive 3D SR (the AI measurement report).
const std::set<std::string>& DefaultAllowedSopClasses();

// The largest Part 10 file accepted for a SOP class (docs/results.md, "Validation").
std::uint64_t MaxInstanceBytes(const std::string& sop_class_uid);

// True for the four SR storage classes above.
bool IsStructuredReport(const std::string& sop_class_uid);
bool IsSegmentation(const std::string& sop_class_uid);

// "CTImageStorage (1.2.840.10008.5.1.4.1.1.2)"; the bare UID when DCMTK does not know it.
std::string SopClassName(const std::string& uid);

// Parses DICOM Part 10 bytes with DCMTK and checks: it parses, has the SOP class, SOP instance,
// study and series UIDs, belongs to `expected_study_uid`, has an allowed SOP class, and for
// images sane dimensions and pixel data of the declared size, for an SR a document DCMTK's SR
// module reads, and the size bound of its class. Errors are kCorrupt or kProtocol and say which
// check failed. References to other instances are checked per result set (result_set.hpp).
Expected<InstanceInfo> ValidateInstance(std::span<const std::uint8_t> part10, const std::string& expected_study_uid,
                                        const std::set<std::string>& allowed_sop_classes);
Expected<InstanceInfo> ValidateInstanceFile(const std::filesystem::path& path, const std::string& expected_study_uid,
                                            const std::set<std::string>& allowed_sop_classes);

struct ConsoleNode {
  std::string host;
  std::uint16_t port = 104;
  std::string called_ae;   // the console's AE title
  std::string calling_ae;  // ours
  std::uint32_t timeout_s = 30;
};

// What one delivery did: files the console stored, and the ones it refused, each with the
// reason (a SOP class the console did not accept in negotiation, or a failure status).
struct DeliveryReport {
  struct Refusal {
    std::filesystem::path file;
    std::string sop_class_uid;
    std::string reason;
  };
  std::vector<std::filesystem::path> delivered;
  std::vector<Refusal> refused;
  // The SOP classes the console refused in negotiation (each once), e.g. a console without SR.
  std::vector<std::string> refused_sop_classes;
};

// Sends Part 10 files to the console by C-STORE over one association, one presentation context
// per SOP class. A console that accepts some classes gets the files of those; the others are in
// `refused`. An error only when nothing could be tried or the association broke (network,
// rejected association, no class accepted): then re-sending the batch later is the remedy.
Expected<DeliveryReport> DeliverToConsole(const ConsoleNode& node, const std::vector<std::filesystem::path>& files);

// DeliverToConsole, but an error unless every file was acknowledged with a success (or warning)
// status; the message names the file and the DIMSE status.
Status SendToConsole(const ConsoleNode& node, const std::vector<std::filesystem::path>& files);

// DICOM connectivity check (C-ECHO), for the field technician's diagnostics.
Status EchoConsole(const ConsoleNode& node);

}  // namespace ctagent::results
