// The AI result set: reading the SR (dcmsr) and the SEG's references (dcmdata), the checks that
// let a set reach the console, and the per-scan findings record.
#include "agent/results/result_set.hpp"

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcstack.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmsr/dsrdoc.h>
#include <dcmtk/oflog/logger.h>
#include <dcmtk/oflog/loglevel.h>
#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "base/dcmtk_logging.hpp"
#include "base/log.hpp"
#include "agent/results/results.hpp"

namespace ctagent::results {
namespace {

constexpr const char* kScheme = "99CTAGENT";
constexpr const char* kFindingSite = "363698007";  // SCT "Finding site"
constexpr const char* kLeftLung = "44029006";      // SCT "Left lung structure"
constexpr const char* kRightLung = "3341006";      // SCT "Right lung structure"
// The SR and SEG files are already validated, so these reads only bound a damaged spool file.
constexpr std::uintmax_t kMaxReadBytes = std::uintmax_t{1} << 30;

using dcmtk_support::QuietDcmtkLogging;

std::string GetString(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  if (item.findAndGetOFString(tag, value).bad()) return {};
  return value.c_str();
}

Expected<std::unique_ptr<DcmFileFormat>> LoadFile(const std::filesystem::path& path, const char* what) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) return MakeError(ErrorKind::kIo, std::string("cannot read ") + what + " " + path.string() + ": " + ec.message());
  if (size > kMaxReadBytes) {
    return MakeError(ErrorKind::kCorrupt, std::string(what) + " " + path.string() + " is larger than 1 GiB");
  }
  auto file = std::make_unique<DcmFileFormat>();
  const OFCondition cond = file->loadFile(OFFilename(path.c_str()));
  if (cond.bad()) {
    return MakeError(ErrorKind::kCorrupt, std::string("cannot parse ") + what + " " + path.string() + ": " + cond.text());
  }
  return file;
}

std::optional<double> ParseNumber(const OFString& text) {
  try {
    std::size_t used = 0;
    const double value = std::stod(std::string(text.c_str()), &used);
    if (!std::isfinite(value)) return std::nullopt;
    return value;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The items of the content tree, flattened with each item's parent, so that an item's siblings
// (the other items of its measurement group) can be found.
struct FlatItem {
  std::size_t id = 0;
  std::size_t parent = 0;
  DSRTypes::E_ValueType type = DSRTypes::VT_invalid;
  DSRCodedEntryValue concept_name;
  DSRCodedEntryValue code;  // CODE items
  OFString number;          // NUM items
  OFString text;            // TEXT items
  InstanceRef image;        // IMAGE items
};

std::vector<FlatItem> Flatten(DSRDocumentTree& tree) {
  std::vector<FlatItem> items;
  std::vector<std::size_t> ancestors;  // node IDs by level (root is level 1)
  if (tree.gotoRoot() == 0) return items;
  do {
    const std::size_t level = tree.getLevel();
    if (level == 0) break;
    ancestors.resize(level - 1);
    FlatItem item;
    item.id = tree.getNodeID();
    item.parent = ancestors.empty() ? 0 : ancestors.back();
    ancestors.push_back(item.id);
    DSRContentItem& content = tree.getCurrentContentItem();
    item.type = content.getValueType();
    item.concept_name = content.getConceptName();
    if (item.type == DSRTypes::VT_Code) item.code = content.getCodeValue();
    if (item.type == DSRTypes::VT_Num) item.number = content.getNumericValue().getNumericValue();
    if (item.type == DSRTypes::VT_Text) item.text = content.getStringValue();
    if (item.type == DSRTypes::VT_Image) {
      const DSRImageReferenceValue& ref = content.getImageReference();
      item.image.sop_class_uid = ref.getSOPClassUID().c_str();
      item.image.sop_instance_uid = ref.getSOPInstanceUID().c_str();
    }
    items.push_back(std::move(item));
  } while (tree.iterate() != 0);
  return items;
}

// The lung an INVOLVEMENT item belongs to: the Finding Site among its siblings.
std::string LungOf(const std::vector<FlatItem>& items, const FlatItem& num) {
  for (const auto& sibling : items) {
    if (sibling.parent != num.parent || sibling.type != DSRTypes::VT_Code) continue;
    if (sibling.concept_name.getCodeValue() != kFindingSite) continue;
    if (sibling.code.getCodeValue() == kLeftLung) return "left";
    if (sibling.code.getCodeValue() == kRightLung) return "right";
  }
  return {};
}

Status ReadFindings(const std::vector<FlatItem>& items, const std::string& label, Findings& findings) {
  for (const auto& item : items) {
    const DSRCodedEntryValue& name = item.concept_name;
    if (name.getCodingSchemeDesignator() != kScheme) continue;
    if (item.type == DSRTypes::VT_Code && name.getCodeValue() == "CATEGORY") {
      findings.category = item.code.getCodeValue().c_str();
    } else if (item.type == DSRTypes::VT_Text && name.getCodeValue() == "FAILURE-REASON") {
      findings.failure_reason = item.text.c_str();
    } else if (item.type == DSRTypes::VT_Num) {
      const std::optional<double> value = ParseNumber(item.number);
      const std::string concept_value = name.getCodeValue().c_str();
      if (concept_value != "LESION-COUNT" && concept_value.rfind("INVOLVEMENT", 0) != 0) continue;
      if (!value) {
        return MakeError(ErrorKind::kCorrupt, label + ": the value of (99CTAGENT, " + concept_value + ") is not a number");
      }
      if (concept_value == "LESION-COUNT") {
        if (*value < 0 || *value > 1e6 || std::floor(*value) != *value) {
          return MakeError(ErrorKind::kCorrupt, label + ": LESION-COUNT is not a whole number of lesions");
        }
        findings.lesion_count = static_cast<std::uint32_t>(*value);
        continue;
      }
      if (*value < 0 || *value > 100) {
        return MakeError(ErrorKind::kCorrupt, label + ": " + concept_value + " is not a percentage (0..100)");
      }
      std::string lung = concept_value == "INVOLVEMENT-RIGHT" ? "right"
                         : concept_value == "INVOLVEMENT-LEFT" ? "left"
                         : concept_value == "INVOLVEMENT"      ? LungOf(items, item)
                                                               : "";
      if (lung == "right") findings.involvement_right_percent = *value;
      if (lung == "left") findings.involvement_left_percent = *value;
    }
  }
  return Ok();
}

void ReadEvidence(DcmDataset& dataset, std::vector<InstanceRef>& evidence) {
  DcmSequenceOfItems* studies = nullptr;
  if (dataset.findAndGetSequence(DCM_CurrentRequestedProcedureEvidenceSequence, studies).bad() || !studies) return;
  for (unsigned long s = 0; s < studies->card(); ++s) {
    DcmItem* study = studies->getItem(s);
    const std::string study_uid = GetString(*study, DCM_StudyInstanceUID);
    DcmSequenceOfItems* series_seq = nullptr;
    if (study->findAndGetSequence(DCM_ReferencedSeriesSequence, series_seq).bad() || !series_seq) continue;
    for (unsigned long r = 0; r < series_seq->card(); ++r) {
      DcmItem* series = series_seq->getItem(r);
      const std::string series_uid = GetString(*series, DCM_SeriesInstanceUID);
      DcmSequenceOfItems* sops = nullptr;
      if (series->findAndGetSequence(DCM_ReferencedSOPSequence, sops).bad() || !sops) continue;
      for (unsigned long i = 0; i < sops->card(); ++i) {
        DcmItem* sop = sops->getItem(i);
        evidence.push_back({study_uid, series_uid, GetString(*sop, DCM_ReferencedSOPClassUID),
                            GetString(*sop, DCM_ReferencedSOPInstanceUID)});
      }
    }
  }
}

std::string JoinFirst(const std::vector<std::string>& uids) {
  std::string out;
  for (std::size_t i = 0; i < uids.size() && i < 3; ++i) out += (i ? ", " : "") + uids[i];
  if (uids.size() > 3) out += " and " + std::to_string(uids.size() - 3) + " more";
  return out;
}

std::string Percent(double value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %%", value);
  return buf;
}

}  // namespace

bool IsCtImage(const std::string& sop_class_uid) {
  return sop_class_uid == UID_CTImageStorage || sop_class_uid == UID_EnhancedCTImageStorage;
}

Expected<SrSummary> ReadSrSummary(const std::filesystem::path& sr_file) {
  QuietDcmtkLogging();
  auto file = LoadFile(sr_file, "structured report");
  if (!file) return MakeError(file.error());
  DcmDataset& dataset = *(*file)->getDataset();
  SrSummary summary;
  summary.sop_instance_uid = GetString(dataset, DCM_SOPInstanceUID);
  summary.study_uid = GetString(dataset, DCM_StudyInstanceUID);
  const std::string label = "structured report " + summary.sop_instance_uid;
  DSRDocument document;
  if (const OFCondition cond = document.read(dataset); cond.bad()) {
    return MakeError(ErrorKind::kCorrupt, label + ": not a readable structured report: " + std::string(cond.text()));
  }
  ReadEvidence(dataset, summary.evidence);
  const std::vector<FlatItem> items = Flatten(document.getTree());
  for (const auto& item : items) {
    if (item.type == DSRTypes::VT_Image) summary.image_references.push_back(item.image);
  }
  if (Status st = ReadFindings(items, label, summary.findings); !st) return MakeError(st.error());
  return summary;
}

Expected<SegReferences> ReadSegReferences(const std::filesystem::path& seg_file) {
  QuietDcmtkLogging();
  auto file = LoadFile(seg_file, "segmentation");
  if (!file) return MakeError(file.error());
  DcmDataset& dataset = *(*file)->getDataset();
  SegReferences refs;
  refs.sop_instance_uid = GetString(dataset, DCM_SOPInstanceUID);
  DcmSequenceOfItems* series_seq = nullptr;
  if (dataset.findAndGetSequence(DCM_ReferencedSeriesSequence, series_seq).good() && series_seq) {
    for (unsigned long r = 0; r < series_seq->card(); ++r) {
      DcmItem* series = series_seq->getItem(r);
      const std::string series_uid = GetString(*series, DCM_SeriesInstanceUID);
      refs.referenced_series.push_back(series_uid);
      DcmSequenceOfItems* instances = nullptr;
      if (series->findAndGetSequence(DCM_ReferencedInstanceSequence, instances).bad() || !instances) continue;
      for (unsigned long i = 0; i < instances->card(); ++i) {
        DcmItem* inst = instances->getItem(i);
        refs.referenced_instances.push_back({"", series_uid, GetString(*inst, DCM_ReferencedSOPClassUID),
                                             GetString(*inst, DCM_ReferencedSOPInstanceUID)});
      }
    }
  }
  // Source Image Sequence items anywhere in the data set: the frames' Derivation Image
  // Sequences in the per-frame and shared functional groups.
  DcmStack stack;
  while (dataset.search(DCM_SourceImageSequence, stack, ESM_afterStackTop, OFTrue).good()) {
    auto* seq = dynamic_cast<DcmSequenceOfItems*>(stack.top());
    if (seq == nullptr) continue;
    for (unsigned long i = 0; i < seq->card(); ++i) {
      DcmItem* inst = seq->getItem(i);
      refs.referenced_instances.push_back(
          {"", "", GetString(*inst, DCM_ReferencedSOPClassUID), GetString(*inst, DCM_ReferencedSOPInstanceUID)});
    }
  }
  return refs;
}

ResultSetVerdict CheckResultSet(const std::string& study_uid, const SrSummary& sr,
                                const std::map<std::string, StoredInstance>& stored,
                                const std::set<std::string>& pending, const std::set<std::string>& refused,
                                const std::vector<SegReferences>& segs) {
  ResultSetVerdict verdict;
  const std::string label = "structured report " + sr.sop_instance_uid;
  const auto refuse = [&](std::string why) {
    verdict.state = ResultSetVerdict::State::kRefused;
    verdict.reason = label + ": " + std::move(why);
    return verdict;
  };
  if (sr.evidence.empty()) return refuse("lists no evidence (Current Requested Procedure Evidence Sequence)");
  verdict.members.insert(sr.sop_instance_uid);
  std::vector<std::string> missing;
  for (const auto& ref : sr.evidence) {
    if (ref.study_uid != study_uid) {
      return refuse("its evidence names instance " + ref.sop_instance_uid + " of study " + ref.study_uid +
                    ", not of this scan's study " + study_uid + " (a foreign report)");
    }
    if (refused.count(ref.sop_instance_uid)) {
      return refuse("its evidence names instance " + ref.sop_instance_uid + ", which was refused");
    }
    const auto it = stored.find(ref.sop_instance_uid);
    if (it == stored.end()) {
      if (!pending.count(ref.sop_instance_uid)) {
        return refuse("its evidence names instance " + ref.sop_instance_uid +
                      ", which the imaging center does not list in this scan's study (a foreign report)");
      }
      missing.push_back(ref.sop_instance_uid);
      continue;
    }
    if (it->second.series_uid != ref.series_uid || it->second.sop_class_uid != ref.sop_class_uid) {
      return refuse("its evidence names instance " + ref.sop_instance_uid + " as series " + ref.series_uid +
                    ", SOP class " + ref.sop_class_uid + " but the instance is of series " + it->second.series_uid +
                    ", SOP class " + it->second.sop_class_uid);
    }
    verdict.members.insert(ref.sop_instance_uid);
  }
  // Image references must be CT images of this scan; a report computed from other images is not
  // this scan's report.
  for (const auto& ref : sr.image_references) {
    const auto it = stored.find(ref.sop_instance_uid);
    if (it == stored.end() && pending.count(ref.sop_instance_uid) && !refused.count(ref.sop_instance_uid)) {
      missing.push_back(ref.sop_instance_uid);
      continue;
    }
    if (it == stored.end() || !IsCtImage(it->second.sop_class_uid)) {
      return refuse("an image reference names instance " + ref.sop_instance_uid + ", which is not a CT image of this scan");
    }
  }
  if (!missing.empty()) {
    verdict.state = ResultSetVerdict::State::kWaiting;
    verdict.reason = label + " lists " + std::to_string(missing.size()) + " instance(s) not stored yet: " + JoinFirst(missing);
    return verdict;
  }
  std::set<std::string> ct_series;
  for (const auto& [uid, inst] : stored) {
    if (IsCtImage(inst.sop_class_uid)) ct_series.insert(inst.series_uid);
  }
  for (const auto& seg : segs) {
    if (!verdict.members.count(seg.sop_instance_uid)) continue;
    const std::string seg_label = "segmentation " + seg.sop_instance_uid;
    if (seg.referenced_series.empty() && seg.referenced_instances.empty()) {
      return refuse(seg_label + " refers to no CT series or image");
    }
    for (const auto& series : seg.referenced_series) {
      if (!ct_series.count(series)) {
        return refuse(seg_label + " refers to series " + series + ", which is not a CT series of this scan");
      }
    }
    for (const auto& ref : seg.referenced_instances) {
      const auto it = stored.find(ref.sop_instance_uid);
      if (it == stored.end() || !IsCtImage(it->second.sop_class_uid)) {
        return refuse(seg_label + " refers to instance " + ref.sop_instance_uid + ", which is not a CT image of this scan");
      }
    }
  }
  verdict.state = ResultSetVerdict::State::kComplete;
  return verdict;
}

nlohmann::json FindingsToJson(const ScanFindings& findings) {
  nlohmann::json j;
  j["version"] = 1;
  j["report"] = findings.report;
  const Findings& f = findings.findings;
  if (!f.category.empty()) j["category"] = f.category;
  if (!f.failure_reason.empty()) j["failure_reason"] = f.failure_reason;
  if (f.lesion_count) j["lesion_count"] = *f.lesion_count;
  if (f.involvement_right_percent) j["involvement_right_percent"] = *f.involvement_right_percent;
  if (f.involvement_left_percent) j["involvement_left_percent"] = *f.involvement_left_percent;
  if (!findings.refused_reason.empty()) j["refused_reason"] = findings.refused_reason;
  j["console_refused"] = findings.console_refused;
  const ScanFindings::Timeline& t = findings.timeline_unix_ms;
  nlohmann::json timeline = nlohmann::json::object();
  if (t.discovered > 0) timeline["discovered"] = t.discovered;
  if (t.retrieved > 0) timeline["retrieved"] = t.retrieved;
  if (t.validated > 0) timeline["validated"] = t.validated;
  if (t.delivered > 0) timeline["delivered"] = t.delivered;
  if (!timeline.empty()) j["timeline_unix_ms"] = timeline;
  j["summary"] = DescribeFindings(findings);
  return j;
}

Status WriteScanFindings(const std::filesystem::path& results_dir, const ScanFindings& findings) {
  nlohmann::json j = FindingsToJson(findings);
  j.erase("summary");
  const std::string text = j.dump(2) + "\n";

  std::error_code ec;
  std::filesystem::create_directories(results_dir, ec);
  if (ec) return MakeError(ErrorKind::kIo, "cannot create " + results_dir.string() + ": " + ec.message());
  const auto final_path = results_dir / kFindingsFileName;
  const auto temp_path = results_dir / (std::string(kFindingsFileName) + ".tmp");
  const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return MakeError(ErrorKind::kIo, "cannot write " + temp_path.string() + ": " + std::strerror(errno));
  std::size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      return MakeError(errno == ENOSPC ? ErrorKind::kNoSpace : ErrorKind::kIo,
                       "cannot write " + temp_path.string() + ": " + why);
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    return MakeError(ErrorKind::kIo, "cannot write " + temp_path.string() + ": " + std::strerror(errno));
  }
  std::filesystem::rename(temp_path, final_path, ec);
  if (ec) return MakeError(ErrorKind::kIo, "cannot write " + final_path.string() + ": " + ec.message());
  return Ok();
}

Expected<ScanFindings> ReadScanFindings(const std::filesystem::path& spool_dir, const std::string& scan_uid) {
  return ReadFindingsInResultsDir(spool_dir / "scans" / scan_uid / "results");
}

Expected<ScanFindings> ReadFindingsInResultsDir(const std::filesystem::path& results_dir) {
  const auto path = results_dir / kFindingsFileName;
  std::ifstream in(path);
  if (in) {
    std::stringstream buffer;
    buffer << in.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(buffer.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return MakeError(ErrorKind::kCorrupt, path.string() + " is not a findings record (not a JSON object)");
    }
    try {
      ScanFindings out;
      out.report = j.value("report", std::string("none"));
      out.findings.category = j.value("category", std::string());
      out.findings.failure_reason = j.value("failure_reason", std::string());
      if (j.contains("lesion_count")) out.findings.lesion_count = j.at("lesion_count").get<std::uint32_t>();
      if (j.contains("involvement_right_percent")) {
        out.findings.involvement_right_percent = j.at("involvement_right_percent").get<double>();
      }
      if (j.contains("involvement_left_percent")) {
        out.findings.involvement_left_percent = j.at("involvement_left_percent").get<double>();
      }
      out.refused_reason = j.value("refused_reason", std::string());
      if (j.contains("console_refused")) out.console_refused = j.at("console_refused").get<std::vector<std::string>>();
      if (j.contains("timeline_unix_ms")) {
        const nlohmann::json& t = j.at("timeline_unix_ms");
        out.timeline_unix_ms.discovered = t.value("discovered", std::int64_t{0});
        out.timeline_unix_ms.retrieved = t.value("retrieved", std::int64_t{0});
        out.timeline_unix_ms.validated = t.value("validated", std::int64_t{0});
        out.timeline_unix_ms.delivered = t.value("delivered", std::int64_t{0});
      }
      return out;
    } catch (const nlohmann::json::exception& e) {
      return MakeError(ErrorKind::kCorrupt, path.string() + " is not a findings record: " + e.what());
    }
  }
  // No record (written by an older agent, or removed): the findings are in the stored SR.
  std::error_code ec;
  std::filesystem::directory_iterator it(results_dir, ec);
  if (!ec) {
    for (const auto& entry : it) {
      if (entry.path().extension() != ".dcm") continue;
      DcmFileFormat meta;
      if (meta.loadFile(OFFilename(entry.path().c_str()), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_metaOnly)
              .bad()) {
        continue;
      }
      OFString sop_class;
      (void)meta.getMetaInfo()->findAndGetOFString(DCM_MediaStorageSOPClassUID, sop_class);
      if (!IsStructuredReport(sop_class.c_str())) continue;
      auto sr = ReadSrSummary(entry.path());
      if (!sr) return MakeError(sr.error());
      ScanFindings out;
      out.report = "received";
      out.findings = sr->findings;
      return out;
    }
  }
  return MakeError(ErrorKind::kNotFound, "no AI findings recorded in " + results_dir.string());
}

std::string DescribeFindings(const ScanFindings& findings) {
  std::string line;
  if (findings.report == "refused") {
    line = "AI: result set refused (" + findings.refused_reason + ")";
  } else if (findings.report != "received") {
    line = "AI: no report (the imaging center sent CT only)";
  } else {
    const Findings& f = findings.findings;
    line = "AI: " + (f.category.empty() ? std::string("no category") : f.category);
    if (!f.failure_reason.empty()) line += " (" + f.failure_reason + ")";
    if (f.lesion_count) line += ", " + std::to_string(*f.lesion_count) + " lesion(s)";
    if (f.involvement_right_percent || f.involvement_left_percent) {
      line += ", involvement";
      if (f.involvement_right_percent) line += " right " + Percent(*f.involvement_right_percent);
      if (f.involvement_right_percent && f.involvement_left_percent) line += ",";
      if (f.involvement_left_percent) line += " left " + Percent(*f.involvement_left_percent);
    }
  }
  for (const auto& refusal : findings.console_refused) line += "; console refused " + refusal;
  return line;
}

}  // namespace ctagent::results
