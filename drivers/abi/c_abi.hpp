// C++ helpers shared by both sides of the C driver ABI (drivers/include/ctagent_driver.h):
// status <-> ErrorKind, protocol <-> ctagent_protocol, and the checks a driver's function
// table must pass before the agent calls it.
#pragma once

#include <cstddef>
#include <string>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::abi {

const char* StatusName(ctagent_status status);
ErrorKind KindOf(ctagent_status status);
ctagent_status StatusOf(ErrorKind kind);

ctagent_protocol ToC(const ScanProtocol& protocol);
// Fails (kInvalidInput / kUnsupported) on a struct that is too small or unknown enum values.
Expected<ScanProtocol> FromC(const ctagent_protocol* protocol);

// A driver built for ABI 1.0 knows parallel-beam count protocols only: anything else is
// refused here (kUnsupported, naming `origin` and what to do) instead of reaching its arm().
Status CheckDriverTakes(const ctagent_driver_api& api, const ScanProtocol& protocol, const std::string& origin);

// ABI 1.2's wait_scan of a table, or null: a 1.1 table (shorter, or abi_minor < 2) has none,
// and a 1.2 driver that does not announce scans leaves it NULL.
decltype(ctagent_driver_api::wait_scan) WaitScanOf(const ctagent_driver_api& api);

// An announcement to and from its C struct. ToC fills `out` and the protocol it points at.
void ToC(const ScanAnnouncement& announcement, ctagent_scan_announcement* out);
// Fails (kInvalidInput) on a struct that is too small, a NULL protocol or a bad protocol.
Expected<ScanAnnouncement> FromC(const ctagent_scan_announcement* announcement);

// Copies `text` into a C buffer, NUL-terminated and truncated to `capacity`; returns text's length.
std::size_t CopyText(const std::string& text, char* buffer, std::size_t capacity);

// Checks a driver's table: non-null, same major version, large enough, no null function.
// `origin` names the driver in messages (a path, or "built-in sim").
Status ValidateApi(const ctagent_driver_api* api, const std::string& origin);

}  // namespace ctagent::drivers::abi
