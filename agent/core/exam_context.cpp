#include "agent/core/exam_context.hpp"

#include "base/uid.hpp"
#include "agent/worklist/worklist.hpp"

namespace ctagent::core {
namespace {

worklist::WorklistNode NodeFrom(const config::WorklistConfig& wl) {
  worklist::WorklistNode node;
  node.host = wl.host;
  node.port = wl.port;
  node.called_ae = wl.called_ae;
  node.calling_ae = wl.calling_ae;
  node.timeout_s = wl.timeout_s;
  node.max_answers = wl.max_answers;
  return node;
}

privacy::RealIdentity FromStep(const worklist::ScheduledStep& step) {
  privacy::RealIdentity id;
  id.patient_name = step.patient_name;
  id.patient_id = step.patient_id;
  id.patient_birth_date = step.patient_birth_date;
  id.patient_sex = step.patient_sex;
  id.accession_number = step.accession_number;
  // A RIS that assigns no Study Instance UID leaves it to the modality.
  id.study_instance_uid = step.study_instance_uid.empty() ? MintDicomUid() : step.study_instance_uid;
  return id;
}

}  // namespace

Expected<ExamContext> ResolveExam(const config::AgentConfig& config, const ExamIdentity& exam,
                                  std::chrono::system_clock::time_point now) {
  ExamContext context;
  context.local_date = worklist::TodaysSteps(now, "CT").date_from;
  if (exam.emergency) {
    if (!exam.accession_number.empty()) {
      return MakeError(ErrorKind::kInvalidInput,
                       "an emergency scan has no worklist entry, so it takes no accession number; give one or the other");
    }
    // A minted identity that names nobody: the UID's digits make it unique on this terminal.
    const std::string uid = MintDicomUid();
    const std::string digits = uid.substr(uid.size() > 16 ? uid.size() - 16 : 0);
    context.identity.patient_id = "EMERGENCY-" + digits;
    context.identity.patient_name = "EMERGENCY^" + digits;
    context.identity.study_instance_uid = MintDicomUid();
    context.reconcile = true;
    return context;
  }
  if (!config.worklist.enabled) {
    // The fallback of a terminal without a RIS: the configured identity, as before issue 15.
    context.identity.patient_id = config.study.patient_id;
    context.identity.patient_name = config.study.patient_name;
    context.identity.accession_number = exam.accession_number;
    context.identity.study_instance_uid = config.study.study_uid.empty() ? MintDicomUid() : config.study.study_uid;
    return context;
  }
  const worklist::WorklistNode node = NodeFrom(config.worklist);
  worklist::WorklistQuery query = worklist::TodaysSteps(now, "CT");
  if (!exam.accession_number.empty()) {
    query.accession_number = exam.accession_number;
    auto step = worklist::FindByAccession(node, query);
    if (!step) return MakeError(step.error().WithContext("finding the scan's worklist entry"));
    context.identity = FromStep(*step);
  } else {
    auto steps = worklist::Query(node, query);
    if (!steps) return MakeError(steps.error().WithContext("asking for today's scheduled steps"));
    if (steps->size() != 1) {
      return MakeError(steps->empty() ? ErrorKind::kNotFound : ErrorKind::kInvalidInput,
                       worklist::NodeLabel(node) + " has " + std::to_string(steps->size()) +
                           " CT steps scheduled today for station " + node.calling_ae +
                           ": give the exam's accession number (ctagent scan --accession N), or --emergency for a "
                           "patient not on the worklist");
    }
    context.identity = FromStep(steps->front());
  }
  context.from_worklist = true;
  return context;
}

}  // namespace ctagent::core
