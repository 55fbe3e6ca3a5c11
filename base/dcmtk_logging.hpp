// DCMTK logs through its own copy of log4cplus, and at info level it would print what it reads
// and receives (patient names among it); the agent's own errors already carry what a person
// needs. Header-only, like dcmnet_support.hpp: only modules that link DCMTK include it, so the
// base library itself does not depend on DCMTK.
#pragma once

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/oflog/logger.h>
#include <dcmtk/oflog/loglevel.h>

#include "base/log.hpp"

namespace ctagent::dcmtk_support {

// DCMTK's logging off, or at debug level when the agent runs at debug level. Call before a
// DCMTK operation (cheap: sets one level).
inline void QuietDcmtkLogging() {
  dcmtk::log4cplus::Logger::getRoot().setLogLevel(log::GetLevel() == log::Level::kDebug
                                                      ? dcmtk::log4cplus::DEBUG_LOG_LEVEL
                                                      : dcmtk::log4cplus::OFF_LOG_LEVEL);
}

}  // namespace ctagent::dcmtk_support
