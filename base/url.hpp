// URLs as they may be shown: in messages, logs and the journal.
#pragma once

#include <string>
#include <string_view>

namespace ctagent {

// `url` with any "user:password@" replaced by "***@" and control characters shown as \xNN, so a
// credential never reaches a message and a CR/LF cannot split a log line.
std::string RedactUrl(std::string_view url);

}  // namespace ctagent
