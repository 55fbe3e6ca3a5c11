#include "agent/spool/journal.hpp"

#include <array>

namespace ctagent::spool::journal {
namespace {

constexpr std::size_t kHeaderBytes = 8;

std::array<std::uint32_t, 256> MakeTable() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // Castagnoli, reflected
    table[i] = c;
  }
  return table;
}

void PutU32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint32_t GetU32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}

}  // namespace

std::uint32_t Crc32c(std::span<const std::uint8_t> bytes) {
  static const std::array<std::uint32_t, 256> kTable = MakeTable();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::uint8_t b : bytes) c = kTable[(c ^ b) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::vector<std::uint8_t> Frame(const nlohmann::json& payload) { return FrameText(payload.dump()); }

std::vector<std::uint8_t> FrameText(std::string_view text) {
  std::vector<std::uint8_t> out;
  out.reserve(kHeaderBytes + text.size());
  PutU32(out, static_cast<std::uint32_t>(text.size()));
  PutU32(out, Crc32c(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size())));
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

std::size_t BeginFrame(std::vector<std::uint8_t>& out) {
  const std::size_t at = out.size();
  out.resize(at + kHeaderBytes);
  return at;
}

void EndFrame(std::vector<std::uint8_t>& out, std::size_t begun_at) {
  const std::size_t payload_at = begun_at + kHeaderBytes;
  const std::size_t length = out.size() - payload_at;
  const std::uint32_t crc = Crc32c(std::span<const std::uint8_t>(out.data() + payload_at, length));
  for (int i = 0; i < 4; ++i) {
    out[begun_at + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(length >> (8 * i));
    out[begun_at + 4 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(crc >> (8 * i));
  }
}

Expected<ReadSummary> Read(FileStore& files, const std::filesystem::path& path,
                           const std::function<Status(nlohmann::json&&)>& record, std::uint64_t piece_bytes) {
  ReadSummary summary;
  std::vector<std::uint8_t> buffer;  // unparsed bytes starting at file offset `buffer_offset`
  std::uint64_t buffer_offset = 0;
  std::uint64_t read_offset = 0;
  bool eof = false;
  while (true) {
    // Parse every complete record in the buffer.
    std::size_t pos = 0;
    while (buffer.size() - pos >= kHeaderBytes) {
      const std::uint32_t length = GetU32(buffer.data() + pos);
      const std::uint32_t crc = GetU32(buffer.data() + pos + 4);
      if (length > kMaxRecordBytes) {
        summary.tail_problem = "record length " + std::to_string(length) + " is implausible";
        break;
      }
      if (buffer.size() - pos - kHeaderBytes < length) break;  // need more bytes
      const std::span<const std::uint8_t> payload(buffer.data() + pos + kHeaderBytes, length);
      if (Crc32c(payload) != crc) {
        summary.tail_problem = "record checksum mismatch";
        break;
      }
      auto j = nlohmann::json::parse(payload.begin(), payload.end(), nullptr, false);
      if (j.is_discarded()) {
        summary.tail_problem = "record is not JSON";
        break;
      }
      // A record that passed its CRC but has not the shape the reader expects (a missing member, a
      // wrong type: nlohmann throws) is damage the caller reports, not an exception out of Open.
      Status st = Ok();
      try {
        st = record(std::move(j));
      } catch (const nlohmann::json::exception& e) {
        st = MakeError(ErrorKind::kCorrupt, std::string("malformed record: ") + e.what());
      }
      if (!st) return MakeError(st.error());
      pos += kHeaderBytes + length;
      ++summary.records;
      summary.valid_bytes = buffer_offset + pos;
    }
    buffer.erase(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(pos));
    buffer_offset += pos;
    if (!summary.tail_problem.empty() || eof) break;
    // Read on: at least one piece, or the rest of a record larger than a piece.
    std::uint64_t want = piece_bytes;
    if (buffer.size() >= kHeaderBytes) {
      const std::uint64_t need = kHeaderBytes + GetU32(buffer.data()) - buffer.size();
      want = std::max(want, need);
    }
    auto piece = files.ReadRange(path, read_offset, want);
    if (!piece) return MakeError(piece.error());
    if (piece->empty()) {
      eof = true;
      continue;
    }
    read_offset += piece->size();
    buffer.insert(buffer.end(), piece->begin(), piece->end());
  }
  summary.file_bytes = read_offset;
  if (summary.tail_problem.empty() && !buffer.empty()) summary.tail_problem = "last record is incomplete";
  if (!summary.tail_problem.empty()) {
    // Learn the true size, so the caller knows how much to cut.
    while (true) {
      auto piece = files.ReadRange(path, summary.file_bytes, piece_bytes);
      if (!piece) return MakeError(piece.error());
      if (piece->empty()) break;
      summary.file_bytes += piece->size();
    }
  }
  return summary;
}

}  // namespace ctagent::spool::journal
