// MakeProcessFileStore() of builds without fault injection (the firmware presets, the Debian
// package): the plain PosixFileStore. Builds with CTAGENT_FAULT_HOOKS compile
// process_file_store_with_faults.cpp instead (base/CMakeLists.txt).
#include "base/durable_file.hpp"

namespace ctagent {

std::unique_ptr<FileStore> MakeProcessFileStore() { return std::make_unique<PosixFileStore>(); }

}  // namespace ctagent
