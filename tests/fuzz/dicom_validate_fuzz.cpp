// libFuzzer target for the validation of DICOM instances from the imaging center
// (agent/results/validate.cpp ValidateInstance, DCMTK underneath): any bytes must end in an
// accepted instance or an error, never a crash, over-read or unbounded allocation (ASan + UBSan
// on the validation code; DCMTK itself is the distribution's build). An accepted instance must
// belong to the expected study, have an allowed SOP class and its identity filled in.
// Seeds: dicom_validate_fuzz_seeds writes valid and broken instances of kFuzzStudy.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "agent/results/results.hpp"

namespace {
// The study the seeds belong to (dicom_validate_fuzz_seeds.cpp writes the same).
constexpr const char* kFuzzStudy = "1.2.826.0.1.3680043.10.1018.1";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& allowed = ctagent::results::DefaultAllowedSopClasses();
  auto info = ctagent::results::ValidateInstance(std::span<const std::uint8_t>(data, size), kFuzzStudy, allowed);
  if (!info) {
    if (info.error().message().empty()) std::abort();  // every refusal says why
    return 0;
  }
  if (info->study_uid != kFuzzStudy) std::abort();
  if (allowed.count(info->sop_class_uid) == 0) std::abort();
  if (info->sop_instance_uid.empty() || info->series_uid.empty()) std::abort();
  return 0;
}
