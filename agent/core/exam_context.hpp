// Which patient a scan belongs to (issue 15, docs/privacy.md): the step the hospital's Modality
// Worklist scheduled for it, a temporary identity for an emergency, or (no worklist configured)
// the configuration's `study` identity, the fallback of a terminal without a RIS.
#pragma once

#include <chrono>
#include <string>

#include "base/error.hpp"
#include "agent/privacy/privacy.hpp"
#include "config/config.hpp"

namespace ctagent::core {

// What the scanner (an announcement) or the person (`ctagent scan`, take_scan) said of the exam.
struct ExamIdentity {
  std::string accession_number;
  std::string procedure_step_id;
  // No worklist entry exists (yet): a temporary identity, flagged for reconciliation.
  bool emergency = false;
};

// The identity a scan carries, and how it was found. Holds patient data: never log it.
struct ExamContext {
  privacy::RealIdentity identity;
  bool from_worklist = false;
  // An emergency scan's minted identity: a person must reconcile it with the real patient.
  bool reconcile = false;
  // The terminal's local date of the exam (YYYYMMDD): the "today" the worklist step was chosen
  // for, and the date an age band is computed on (a patient's age changes at local midnight).
  std::string local_date;
  // Whether what leaves the terminal is pseudonymised (a worklist or an emergency identity);
  // false only for the configuration's fallback identity, which is itself not a patient's.
  bool pseudonymise() const { return from_worklist || reconcile; }
};

// Resolves the exam. With a worklist configured this blocks on its C-FIND (up to a few
// worklist.timeout_s): call it from a worker or the acquisition thread, never the event loop.
// With a worklist: the step with exam.accession_number, or with none given the one step scheduled
// for this station today; no match, several matches or a worklist error fail (the message says
// what to do, and names no patient): a scan never starts under a guessed identity.
Expected<ExamContext> ResolveExam(const config::AgentConfig& config, const ExamIdentity& exam,
                                  std::chrono::system_clock::time_point now);

}  // namespace ctagent::core
