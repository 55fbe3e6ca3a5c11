// Framing of the spool's journal and snapshot files: a sequence of records, each
//
//   u32 little-endian payload length | u32 little-endian CRC-32C of the payload | payload (JSON)
//
// A record whose length runs past the end of the file, whose CRC does not match, or whose
// payload is not JSON ends the readable part: everything from there on is a torn tail (a write
// interrupted by a power cut) and is never interpreted. Files are read in bounded pieces.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/durable_file.hpp"
#include "base/error.hpp"

namespace ctagent::spool::journal {

inline constexpr std::uint32_t kMaxRecordBytes = 64u << 20;

std::uint32_t Crc32c(std::span<const std::uint8_t> bytes);

// One framed record.
std::vector<std::uint8_t> Frame(const nlohmann::json& payload);
// The same for a payload already written as JSON text (built piece by piece, see the snapshot).
std::vector<std::uint8_t> FrameText(std::string_view payload);
// A record framed in place at the end of `out`, for payloads built piece by piece without a
// copy of their own (the snapshot of a long scan's record is ~2 MiB): BeginFrame leaves room for
// the header and returns where it is; the caller appends the payload; EndFrame fills the header.
std::size_t BeginFrame(std::vector<std::uint8_t>& out);
void EndFrame(std::vector<std::uint8_t>& out, std::size_t begun_at);

struct ReadSummary {
  std::uint64_t records = 0;
  std::uint64_t valid_bytes = 0;  // end of the last good record
  std::uint64_t file_bytes = 0;
  std::string tail_problem;       // why reading stopped before file_bytes ("" if it did not)
};

// Calls `record` for every good record in order; reads at most `piece_bytes` at a time (plus
// one record). A `record` returning an error, or throwing nlohmann::json::exception (a member
// missing or of another type), stops the read with that error (kCorrupt for a throw).
Expected<ReadSummary> Read(FileStore& files, const std::filesystem::path& path,
                           const std::function<Status(nlohmann::json&&)>& record,
                           std::uint64_t piece_bytes = 1u << 20);

}  // namespace ctagent::spool::journal
