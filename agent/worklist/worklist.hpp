// The DICOM Modality Worklist (PS3.4 Annex K) client: asks the hospital's RIS, by C-FIND, for
// the procedure steps scheduled on this modality and station, so that each scan carries its own
// patient instead of one from the configuration (issue 15).
//
// Query() blocks for up to a few timeouts (DCMTK's networking is synchronous): call it from a
// worker, never from the event loop. Every answer's text is decoded to UTF-8 from the Specific
// Character Set the worklist sent (ISO_IR 192, GB18030, ISO_IR 100, ...). A ScheduledStep holds
// patient identity: never log it, and keep its fields out of error messages.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.hpp"

namespace ctagent::worklist {

// The RIS worklist server and how long to wait for it (the config's `worklist` section).
struct WorklistNode {
  std::string host;
  std::uint16_t port = 104;
  std::string called_ae;               // the worklist server's AE title
  std::string calling_ae = "CTAGENT";  // this station's AE title; also the Scheduled Station AE Title asked for
  std::uint32_t timeout_s = 10;        // TCP connect, association, and each C-FIND response
  std::uint32_t max_answers = 500;     // more than this many answers: cancel and fail
};

struct WorklistQuery {
  std::string modality = "CT";
  // Scheduled Procedure Step Start Date range, YYYYMMDD each; both empty: any date.
  std::string date_from;
  std::string date_to;
  // Accession Number to match exactly; empty: any. Printable ASCII without '\', '*' or '?'.
  std::string accession_number;
};

// One scheduled procedure step as the worklist answered it; text in UTF-8, padding trimmed.
struct ScheduledStep {
  std::string patient_name;  // DICOM PN form: Family^Given^Middle^Prefix^Suffix, '=' between groups
  std::string patient_id;
  std::string patient_birth_date;  // YYYYMMDD, or "" when the RIS does not know it
  std::string patient_sex;         // "M", "F", "O" or ""
  std::string accession_number;
  std::string study_instance_uid;
  std::string requested_procedure_id;
  std::string requested_procedure_description;
  std::string scheduled_step_id;
  std::string scheduled_step_description;
  std::string scheduled_start_date;  // YYYYMMDD
  std::string scheduled_start_time;  // HHMMSS[.frac] or ""
  std::string modality;
  std::string scheduled_station_ae;
  // The Specific Character Set (0008,0005) the answer came in ("" for the default repertoire);
  // the strings above are already UTF-8 whatever it was.
  std::string specific_character_set;
};

// Today's steps for this station: `modality`, the local calendar date of `now` as the range.
WorklistQuery TodaysSteps(std::chrono::system_clock::time_point now, const std::string& modality = "CT");

// The steps scheduled for node.calling_ae that match `query`, in the order the worklist sent
// them. Errors: kNetwork (server not reachable, or silent past timeout_s), kPermission
// (association rejected: the called AE title), kProtocol (no Modality Worklist service, a
// failure status, more than max_answers answers, an answer that is not a usable step: the
// message names the attribute), kInvalidInput (a query value that cannot be sent).
Expected<std::vector<ScheduledStep>> Query(const WorklistNode& node, const WorklistQuery& query);

// The one step with query.accession_number (which must be set). No match and several matches
// are errors (kNotFound, kInvalidInput): a scan never starts under a guessed identity.
Expected<ScheduledStep> FindByAccession(const WorklistNode& node, const WorklistQuery& query);

// "worklist RIS@host:port": how messages name the server.
std::string NodeLabel(const WorklistNode& node);

}  // namespace ctagent::worklist
