// Helpers shared by result_encoding.cpp and report_render.cpp (not part of the module's interface).
#pragma once

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/ofstd/ofcond.h>

#include <filesystem>
#include <string>

#include "base/error.hpp"
#include "cloud/worker/result_encoding.hpp"

namespace ctagent::cloud::encoding {

const char* CategoryName(StudyCategory category);
const char* LesionTypeName(LesionType type);
const char* LungName(Lung lung);
std::string Decimal(double value, int digits);

struct DicomNow {
  std::string date;  // YYYYMMDD (UTC)
  std::string time;  // HHMMSS
};
DicomNow Now();

// Checks the UIDs and that slices and CT instances match.
Status CheckInput(const ResultInput& input);

// Saves through a temporary file, then writes `path` durably (synced, renamed), so a crash never
// leaves a half-written object behind a complete result record.
Status SaveDurably(DcmFileFormat& file, const std::filesystem::path& path);

// Keeps the first failed DCMTK call so one check at the end reports it with what was being set.
class Putter {
 public:
  void operator()(const OFCondition& cond, const std::string& what) { Check(cond, what); }
  const std::string& failure() const { return failure_; }

 private:
  void Check(const OFCondition& cond, const std::string& what);
  std::string failure_;
};

}  // namespace ctagent::cloud::encoding
