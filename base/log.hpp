// Structured, leveled log lines on stderr. Never log patient data: scan and study UIDs are
// pseudonymous identifiers and may be logged; names, IDs and birth dates never are.
#pragma once

#include <string_view>

namespace ctagent::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void SetLevel(Level level);
Level GetLevel();
bool ParseLevel(std::string_view text, Level* out);

void Write(Level level, std::string_view component, std::string_view message);

inline void Debug(std::string_view component, std::string_view message) { Write(Level::kDebug, component, message); }
inline void Info(std::string_view component, std::string_view message) { Write(Level::kInfo, component, message); }
inline void Warn(std::string_view component, std::string_view message) { Write(Level::kWarn, component, message); }
inline void Error(std::string_view component, std::string_view message) { Write(Level::kError, component, message); }

}  // namespace ctagent::log
