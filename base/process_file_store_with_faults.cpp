// MakeProcessFileStore() of test builds (CMake option CTAGENT_FAULT_HOOKS): the plain
// PosixFileStore unless the environment asks for faults (base/fault_injecting_file_store.hpp).
#include "base/fault_injecting_file_store.hpp"

namespace ctagent {

std::unique_ptr<FileStore> MakeProcessFileStore() {
  const FileFaults& faults = FileFaultsFromEnvironment();
  if (!faults.any()) return std::make_unique<PosixFileStore>();
  return std::make_unique<FaultInjectingFileStore>(faults);
}

}  // namespace ctagent
