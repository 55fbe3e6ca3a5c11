// The AI result set (docs/results.md, "The AI result set"): what the agent reads from the SR and
// the SEG, the checks that decide whether the set may reach the console, and the per-scan
// findings record `ctagent status` shows.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace ctagent::results {

// One instance an SR or SEG refers to.
struct InstanceRef {
  std::string study_uid;  // empty when the reference does not say (IMAGE content items)
  std::string series_uid;
  std::string sop_class_uid;
  std::string sop_instance_uid;
};

// What the operator is shown per scan. Categories are the SR's codes: "NORMAL", "HIGH-RISK",
// "FAILED"; empty when the SR has no CATEGORY item.
struct Findings {
  std::string category;
  std::string failure_reason;
  std::optional<std::uint32_t> lesion_count;
  std::optional<double> involvement_right_percent;
  std::optional<double> involvement_left_percent;
};

// What the agent reads from a measurement report (SR).
struct SrSummary {
  std::string sop_instance_uid;
  std::string study_uid;
  // Current Requested Procedure Evidence Sequence (0040,A375): every other instance of the set.
  std::vector<InstanceRef> evidence;
  // Instances referenced by IMAGE content items (the image library and any image reference).
  std::vector<InstanceRef> image_references;
  Findings findings;
};

// Reads an SR file with DCMTK's dcmsr: its evidence, its image references and the 99CTAGENT
// items (CATEGORY, FAILURE-REASON, LESION-COUNT, INVOLVEMENT whose lung is the Finding Site of
// its measurement group, or INVOLVEMENT-RIGHT / -LEFT). kCorrupt when it is not a readable SR.
Expected<SrSummary> ReadSrSummary(const std::filesystem::path& sr_file);

// What a segmentation refers to: the series of its Referenced Series Sequence (0008,1115) with
// the instances listed there, and every Source Image Sequence (0008,2112) reference of its
// frames (per-frame and shared functional groups).
struct SegReferences {
  std::string sop_instance_uid;
  std::vector<std::string> referenced_series;
  std::vector<InstanceRef> referenced_instances;
};
Expected<SegReferences> ReadSegReferences(const std::filesystem::path& seg_file);

// A stored (validated) instance of the scan, as the result-set check sees it.
struct StoredInstance {
  std::string series_uid;
  std::string sop_class_uid;
};

// The verdict on a scan's AI result set.
struct ResultSetVerdict {
  enum class State {
    kWaiting,   // the SR lists instances not stored yet
    kComplete,  // every reference resolves: the set may be delivered
    kRefused,   // a reference is foreign or broken: nothing of the set reaches the console
  };
  State state = State::kWaiting;
  std::string reason;                     // kRefused: why (names the instance); kWaiting: what is missing
  std::set<std::string> members;          // SOP instance UIDs of the set: the SR(s) and their evidence
};

// Checks one SR against the instances stored for the scan (`stored`: SOP instance UID -> series
// and class), the instances the imaging center still lists but the agent has not stored
// (`pending`), the instances refused at validation (`refused`), and the SEGs' references:
// - every evidence item is of `study_uid`, and names an instance that is stored with that
//   series and SOP class (waiting while it is pending; refused when neither, or refused);
// - every IMAGE content item names a stored CT image (CT or Enhanced CT Image Storage);
// - every SEG of the set refers only to CT series and CT images of the scan.
ResultSetVerdict CheckResultSet(const std::string& study_uid, const SrSummary& sr,
                                const std::map<std::string, StoredInstance>& stored,
                                const std::set<std::string>& pending, const std::set<std::string>& refused,
                                const std::vector<SegReferences>& segs);

bool IsCtImage(const std::string& sop_class_uid);

// The per-scan findings record, kept as findings.json in the scan's results folder.
struct ScanFindings {
  // "received": the AI report was checked and delivered (or kept, console off);
  // "none": the imaging center sent no SR (a CT-only center), the CT series was delivered alone;
  // "refused": the result set was refused (reason in refused_reason), only the CT was delivered.
  std::string report = "none";
  Findings findings;
  std::string refused_reason;
  // What the console refused: "<SOP class name> (<uid>): <count> instance(s): <reason>".
  std::vector<std::string> console_refused;
  // When the results phase passed each milestone, in milliseconds since the Unix epoch (0: not
  // reached, e.g. `delivered` with the console off); what bench/latency splits the agent's share
  // by (docs/results.md, "Latency"). discovered: a QIDO-RS answer first listed an SR series of
  // the study; retrieved: the round that completed the set had downloaded, checked and spooled
  // its last instance; validated: the set check accepted (or refused) the set; delivered: the
  // console acknowledged the C-STORE batch.
  struct Timeline {
    std::int64_t discovered = 0;
    std::int64_t retrieved = 0;
    std::int64_t validated = 0;
    std::int64_t delivered = 0;
  };
  Timeline timeline_unix_ms;
};

inline constexpr const char* kFindingsFileName = "findings.json";

// Writes `<results_dir>/findings.json` atomically (temp file, fsync, rename).
Status WriteScanFindings(const std::filesystem::path& results_dir, const ScanFindings& findings);

// For `ctagent status`: the findings of `scan_uid` in the spool at `spool_dir`
// (`<spool_dir>/scans/<scan_uid>/results/findings.json`). When that file is missing but an SR is
// stored in the results folder, the findings are read from the SR. kNotFound when neither.
Expected<ScanFindings> ReadScanFindings(const std::filesystem::path& spool_dir, const std::string& scan_uid);
// The same from the scan's results folder (Spool::ResultPath(scan, "x").parent_path()).
Expected<ScanFindings> ReadFindingsInResultsDir(const std::filesystem::path& results_dir);

// The findings as the JSON object findings.json holds, plus "summary": DescribeFindings' line
// (for `ctagent status --json` and the status line).
nlohmann::json FindingsToJson(const ScanFindings& findings);

// One line for `ctagent status`, e.g. "AI: HIGH-RISK, 3 lesion(s), involvement right 4.2 %,
// left 0.8 %" or "AI: no report (CT only)"; refusals appended. No patient data.
std::string DescribeFindings(const ScanFindings& findings);

}  // namespace ctagent::results
