// The Modality Worklist C-FIND client on DCMTK's DcmSCU. DcmSCU does the association and the
// DIMSE messages; this file builds the query, reads each answer as it arrives (so that an
// answer past max_answers or a malformed one stops the query at once), decodes the answer's
// text to UTF-8 and maps DCMTK's conditions to errors a technician can act on.
#include "agent/worklist/worklist.hpp"

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmnet/cond.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/scu.h>
#include <dcmtk/oflog/logger.h>
#include <dcmtk/oflog/loglevel.h>

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <optional>

#include "base/dcmnet_support.hpp"
#include "base/dcmtk_logging.hpp"
#include "base/log.hpp"
#include "base/uid.hpp"

namespace ctagent::worklist {
namespace {

using dcmnet::IsNetworkCondition;
using dcmnet::OneLine;

using dcmtk_support::QuietDcmtkLogging;

std::string Hex16(unsigned value) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%04X", value & 0xFFFFu);
  return buf;
}

std::string Trim(std::string s) {
  const auto not_space = [](char c) { return c != ' ' && c != '\0'; };
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  return s;
}

// "(0010,0020) PatientID": how messages name an attribute (never its value: it may identify).
std::string AttributeLabel(const DcmTagKey& key) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "(%04X,%04X)", static_cast<unsigned>(key.getGroup()),
                static_cast<unsigned>(key.getElement()));
  DcmTag tag(key);
  return std::string(buf) + " " + tag.getTagName();
}

Error AssociationError(const WorklistNode& node, const OFCondition& cond) {
  const std::string reason = OneLine(cond);
  if (cond == DUL_ASSOCIATIONREJECTED) {
    return Error(ErrorKind::kPermission,
                 NodeLabel(node) + " rejected the association to called AE title '" + node.called_ae +
                     "' from calling AE title '" + node.calling_ae + "' (" + reason +
                     "); check worklist.called_ae (the RIS worklist server's AE title) and that the RIS "
                     "accepts this station's AE title in worklist.calling_ae");
  }
  if (cond == NET_EC_NoAcceptablePresentationContexts) {
    return Error(ErrorKind::kProtocol, NodeLabel(node) +
                                           " does not offer the Modality Worklist service (C-FIND, " +
                                           UID_FINDModalityWorklistInformationModel +
                                           "); check worklist.host/port point at the RIS worklist server");
  }
  if (IsNetworkCondition(cond)) {
    return Error(ErrorKind::kNetwork, NodeLabel(node) + " is not reachable (" + reason +
                                          "); check worklist.host/port in the config and that the RIS worklist "
                                          "server is running");
  }
  return Error(ErrorKind::kProtocol, "association with " + NodeLabel(node) + " failed: " + reason);
}

// A query value that goes out as a matching key: printable ASCII, no value delimiter, no
// wildcard (a '*' would turn an exact lookup into a pattern).
bool QueryValueOk(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= ' ' && c <= '~' && c != '\\' && c != '*' && c != '?'; });
}

bool IsDicomDate(const std::string& s) {
  return s.size() == 8 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Status CheckQuery(const WorklistNode& node, const WorklistQuery& query) {
  if (!QueryValueOk(query.accession_number) || query.accession_number.size() > 16) {
    return MakeError(ErrorKind::kInvalidInput,
                     "the accession number given cannot be looked up: it must be at most 16 printable ASCII "
                     "characters without '\\', '*' or '?'");
  }
  if (query.modality.empty() || query.modality.size() > 16 || !QueryValueOk(query.modality)) {
    return MakeError(ErrorKind::kInvalidInput, "worklist query: modality '" + query.modality +
                                                   "' is not a DICOM modality code (like CT)");
  }
  for (const std::string* date : {&query.date_from, &query.date_to}) {
    if (!date->empty() && !IsDicomDate(*date)) {
      return MakeError(ErrorKind::kInvalidInput,
                       "worklist query: date '" + *date + "' is not a DICOM date YYYYMMDD");
    }
  }
  if (node.max_answers == 0) {
    return MakeError(ErrorKind::kInvalidInput, "worklist.max_answers is 0; set it to at least 1");
  }
  return Ok();
}

// The C-FIND identifier: matching keys with values, return keys empty (PS3.4 K.6.1.2.2).
void BuildIdentifier(const WorklistNode& node, const WorklistQuery& query, DcmDataset& id) {
  id.putAndInsertString(DCM_SpecificCharacterSet, "");
  id.putAndInsertString(DCM_AccessionNumber, query.accession_number.c_str());
  id.putAndInsertString(DCM_PatientName, "");
  id.putAndInsertString(DCM_PatientID, "");
  id.putAndInsertString(DCM_PatientBirthDate, "");
  id.putAndInsertString(DCM_PatientSex, "");
  id.putAndInsertString(DCM_StudyInstanceUID, "");
  id.putAndInsertString(DCM_RequestedProcedureID, "");
  id.putAndInsertString(DCM_RequestedProcedureDescription, "");
  DcmItem* step = nullptr;
  id.findOrCreateSequenceItem(DCM_ScheduledProcedureStepSequence, step, -2);
  if (step == nullptr) return;
  step->putAndInsertString(DCM_Modality, query.modality.c_str());
  step->putAndInsertString(DCM_ScheduledStationAETitle, node.calling_ae.c_str());
  std::string dates;
  if (!query.date_from.empty() || !query.date_to.empty()) {
    dates = query.date_from == query.date_to ? query.date_from : query.date_from + "-" + query.date_to;
  }
  step->putAndInsertString(DCM_ScheduledProcedureStepStartDate, dates.c_str());
  step->putAndInsertString(DCM_ScheduledProcedureStepStartTime, "");
  step->putAndInsertString(DCM_ScheduledProcedureStepDescription, "");
  step->putAndInsertString(DCM_ScheduledProcedureStepID, "");
}

std::string GetText(DcmItem& item, const DcmTagKey& key) {
  OFString value;
  // The whole value, all its components: a PN's '=' groups and any (wrong) backslash stay in.
  if (item.findAndGetOFStringArray(key, value).bad()) return "";
  return Trim(value.c_str());
}

// Decodes one answer into a step, or says which attribute made it unusable.
Expected<ScheduledStep> ReadAnswer(const WorklistNode& node, DcmDataset& answer) {
  const std::string where = "an answer from " + NodeLabel(node);
  ScheduledStep step;
  step.specific_character_set = GetText(answer, DCM_SpecificCharacterSet);
  const OFCondition converted = answer.convertToUTF8();
  if (converted.bad()) {
    return MakeError(ErrorKind::kProtocol,
                     where + " cannot be decoded: " + AttributeLabel(DCM_SpecificCharacterSet) + " is '" +
                         step.specific_character_set + "' and its text does not convert to UTF-8 (" +
                         OneLine(converted) + "); the RIS must name the character set its text is in");
  }
  auto malformed = [&](const DcmTagKey& key, const std::string& what) {
    return MakeError(ErrorKind::kProtocol, where + " is malformed: " + AttributeLabel(key) + " " + what +
                                               "; no scan is bound to it (ask the RIS administrator to fix the entry)");
  };
  step.patient_name = GetText(answer, DCM_PatientName);
  step.patient_id = GetText(answer, DCM_PatientID);
  step.patient_birth_date = GetText(answer, DCM_PatientBirthDate);
  step.patient_sex = GetText(answer, DCM_PatientSex);
  step.accession_number = GetText(answer, DCM_AccessionNumber);
  step.study_instance_uid = GetText(answer, DCM_StudyInstanceUID);
  step.requested_procedure_id = GetText(answer, DCM_RequestedProcedureID);
  step.requested_procedure_description = GetText(answer, DCM_RequestedProcedureDescription);
  if (step.patient_name.empty()) return malformed(DCM_PatientName, "is missing or empty");
  if (step.patient_id.empty()) return malformed(DCM_PatientID, "is missing or empty");
  if (step.patient_id.find('\\') != std::string::npos) return malformed(DCM_PatientID, "has several values");
  if (!step.patient_birth_date.empty() && !IsDicomDate(step.patient_birth_date)) {
    return malformed(DCM_PatientBirthDate, "is not a DICOM date YYYYMMDD");
  }
  if (!step.patient_sex.empty() && step.patient_sex != "M" && step.patient_sex != "F" && step.patient_sex != "O") {
    return malformed(DCM_PatientSex, "is not M, F or O");
  }
  if (!IsValidDicomUid(step.study_instance_uid)) {
    return malformed(DCM_StudyInstanceUID, step.study_instance_uid.empty() ? "is missing or empty"
                                                                           : "is not a valid DICOM UID");
  }
  if (step.accession_number.find('\\') != std::string::npos) {
    return malformed(DCM_AccessionNumber, "has several values");
  }
  DcmSequenceOfItems* steps = nullptr;
  if (answer.findAndGetSequence(DCM_ScheduledProcedureStepSequence, steps).bad() || steps == nullptr ||
      steps->card() == 0) {
    return malformed(DCM_ScheduledProcedureStepSequence, "is missing or has no item");
  }
  if (steps->card() != 1) return malformed(DCM_ScheduledProcedureStepSequence, "has more than one item");
  DcmItem* item = steps->getItem(0);
  step.modality = GetText(*item, DCM_Modality);
  step.scheduled_station_ae = GetText(*item, DCM_ScheduledStationAETitle);
  step.scheduled_start_date = GetText(*item, DCM_ScheduledProcedureStepStartDate);
  step.scheduled_start_time = GetText(*item, DCM_ScheduledProcedureStepStartTime);
  step.scheduled_step_description = GetText(*item, DCM_ScheduledProcedureStepDescription);
  step.scheduled_step_id = GetText(*item, DCM_ScheduledProcedureStepID);
  return step;
}

// Reads the answers as DcmSCU receives them: decodes each, and stops the C-FIND at the first
// one past max_answers or the first malformed one, so that neither an endless worklist nor a
// bad entry keeps the station waiting.
class FindScu final : public DcmSCU {
 public:
  FindScu(const WorklistNode& node) : node_(node) {}

  OFCondition handleFINDResponse(const T_ASC_PresentationContextID /*presID*/, QRResponse* response,
                                 OFBool& waitForNextResponse) override {
    waitForNextResponse = OFFalse;
    if (response == nullptr) return DIMSE_NULLKEY;
    if (!DICOM_PENDING_STATUS(response->m_status)) {
      final_status_ = response->m_status;
      return EC_Normal;
    }
    if (response->m_dataset == nullptr) {
      stop_ = Error(ErrorKind::kProtocol, "an answer from " + NodeLabel(node_) + " has a pending status but no data set");
      return EC_Normal;
    }
    if (steps_.size() >= node_.max_answers) {
      stop_ = Error(ErrorKind::kProtocol,
                    NodeLabel(node_) + " sent more than " + std::to_string(node_.max_answers) +
                        " scheduled steps (worklist.max_answers); the query was cancelled. Look the exam up by "
                        "its accession number, or raise worklist.max_answers if this station really has that many");
      return EC_Normal;
    }
    Expected<ScheduledStep> step = ReadAnswer(node_, *response->m_dataset);
    if (!step) {
      stop_ = step.error();
      return EC_Normal;
    }
    steps_.push_back(std::move(*step));
    waitForNextResponse = OFTrue;
    return EC_Normal;
  }

  const std::optional<Error>& stop() const { return stop_; }
  std::optional<unsigned> final_status() const { return final_status_; }
  std::vector<ScheduledStep>& steps() { return steps_; }

 private:
  const WorklistNode& node_;
  std::vector<ScheduledStep> steps_;
  std::optional<Error> stop_;
  std::optional<unsigned> final_status_;
};

}  // namespace

std::string NodeLabel(const WorklistNode& node) {
  return "worklist " + node.called_ae + "@" + node.host + ":" + std::to_string(node.port);
}

WorklistQuery TodaysSteps(std::chrono::system_clock::time_point now, const std::string& modality) {
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm local{};
  localtime_r(&t, &local);
  char date[48];
  std::snprintf(date, sizeof(date), "%04d%02d%02d", local.tm_year + 1900, local.tm_mon + 1, local.tm_mday);
  WorklistQuery query;
  query.modality = modality;
  query.date_from = date;
  query.date_to = date;
  return query;
}

Expected<std::vector<ScheduledStep>> Query(const WorklistNode& node, const WorklistQuery& query) {
  if (auto s = CheckQuery(node, query); !s) return MakeError(s.error());
  QuietDcmtkLogging();

  FindScu scu(node);
  // The timeout bounds the connect, the association and the wait for each answer.
  dcmnet::ConfigureAssociation(scu, node.calling_ae, node.called_ae, node.host, node.port, node.timeout_s);
  OFList<OFString> syntaxes;
  syntaxes.push_back(UID_LittleEndianExplicitTransferSyntax);
  syntaxes.push_back(UID_LittleEndianImplicitTransferSyntax);
  scu.addPresentationContext(UID_FINDModalityWorklistInformationModel, syntaxes);

  OFCondition cond = scu.initNetwork();
  if (cond.bad()) {
    return MakeError(ErrorKind::kInternal,
                     "cannot initialise DICOM networking for " + NodeLabel(node) + ": " + OneLine(cond));
  }
  cond = scu.negotiateAssociation();
  if (cond.bad()) return MakeError(AssociationError(node, cond));
  const T_ASC_PresentationContextID context = scu.findPresentationContextID(UID_FINDModalityWorklistInformationModel, "");
  if (context == 0) return MakeError(AssociationError(node, NET_EC_NoAcceptablePresentationContexts));

  DcmDataset identifier;
  BuildIdentifier(node, query, identifier);
  cond = scu.sendFINDRequest(context, &identifier, nullptr);
  if (cond.bad()) {
    scu.abortAssociation();
    if (cond == DIMSE_NODATAAVAILABLE) {
      return MakeError(ErrorKind::kNetwork, NodeLabel(node) + " did not answer the worklist query within " +
                                                std::to_string(node.timeout_s) +
                                                " s (worklist.timeout_s); check that the RIS worklist server is "
                                                "working, or raise worklist.timeout_s for a slow one");
    }
    const ErrorKind kind = IsNetworkCondition(cond) ? ErrorKind::kNetwork : ErrorKind::kProtocol;
    return MakeError(kind, "the worklist query to " + NodeLabel(node) + " failed: " + OneLine(cond));
  }
  if (scu.stop()) {
    // The answers still coming are not wanted: cancel the C-FIND (PS3.7 9.3.2.3), then abort
    // rather than read on, so that a server that ignores the cancel cannot keep us here.
    (void)scu.sendCANCELRequest(context);
    scu.abortAssociation();
    return MakeError(*scu.stop());
  }
  scu.releaseAssociation();
  const unsigned status = scu.final_status().value_or(0xFFFFu);
  if (status != STATUS_Success) {
    return MakeError(ErrorKind::kProtocol, NodeLabel(node) + " ended the worklist query with status " + Hex16(status) +
                                               " (" + DU_cfindStatusString(static_cast<Uint16>(status)) +
                                               ") instead of success; see the RIS worklist server's log");
  }
  return std::move(scu.steps());
}

Expected<ScheduledStep> FindByAccession(const WorklistNode& node, const WorklistQuery& query) {
  if (query.accession_number.empty()) {
    return MakeError(ErrorKind::kInvalidInput, "no accession number given to look up in the worklist");
  }
  Expected<std::vector<ScheduledStep>> steps = Query(node, query);
  if (!steps) return MakeError(steps.error());
  // The server matched the key; a server that does not (or matches loosely) must not bind a
  // scan to another exam, so the match is checked here too.
  std::vector<ScheduledStep> matching;
  for (ScheduledStep& step : *steps) {
    if (step.accession_number == query.accession_number) matching.push_back(std::move(step));
  }
  const std::string scope = query.date_from.empty() ? std::string()
                            : " scheduled " + (query.date_from == query.date_to ? "on " + query.date_from
                                                                                  : "from " + query.date_from + " to " + query.date_to);
  if (matching.empty()) {
    return MakeError(ErrorKind::kNotFound,
                     "no " + query.modality + " procedure step for station '" + node.calling_ae + "'" + scope +
                         " in " + NodeLabel(node) +
                         " has the accession number given; check the number on the request, and that the exam is "
                         "scheduled on this station today");
  }
  if (matching.size() > 1) {
    return MakeError(ErrorKind::kInvalidInput,
                     std::to_string(matching.size()) + " procedure steps in " + NodeLabel(node) +
                         " have the accession number given; none was chosen. Ask the RIS administrator to make the "
                         "accession number unique, or pick the step on the operator page");
  }
  return std::move(matching.front());
}

}  // namespace ctagent::worklist
