#include "agent/codec/context_coder.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <string>

namespace ctagent::codec {
namespace {

// The decoder's hot loops are built from small functions and lambdas; GCC's inliner gives up
// on some of them in a function this large (measured: the four rANS states then live in memory).
#if defined(__GNUC__)
#define CTAGENT_INLINE __attribute__((always_inline))
#define CTAGENT_NOINLINE __attribute__((noinline))
#else
#define CTAGENT_INLINE
#define CTAGENT_NOINLINE
#endif

// rANS with 64-bit states and 32-bit renormalisation (F. Giesen's rans64), probabilities in
// 12 bits, four states interleaved by channel (channel c uses state c % 4) so that the decoder
// has four independent dependency chains.
constexpr unsigned kScaleBits = 12;
constexpr std::uint32_t kTotal = 1u << kScaleBits;
constexpr std::uint64_t kRansLow = 1ull << 31;
constexpr unsigned kStates = 4;

// A residual's zigzag code z is sent as a token (rANS) plus raw bits: z < 16 is its own token;
// otherwise the token holds the position of z's top bit and the two bits below it, and the
// remaining low bits follow raw. Tokens 16 + 4 (m - 4) + b for top bit m in 4..15.
constexpr unsigned kTokens = 64;
constexpr unsigned kDirectTokens = 16;

// Context of a sample: the intensity of the same channel in the previous view in quarter
// octaves (the Poisson noise of the residual grows with the counts), 0..59; 60 for the first
// view of the chunk, which has no previous view.
constexpr unsigned kFirstViewContext = 60;
constexpr unsigned kContexts = 61;

// Top bit of a non-zero value (std::bit_width - 1, which GCC does not always inline in the
// decoder's loop).
CTAGENT_INLINE inline unsigned TopBit(std::uint32_t v) {
#if defined(__GNUC__)
  return 31u - static_cast<unsigned>(__builtin_clz(v));
#else
  return static_cast<unsigned>(std::bit_width(v)) - 1;
#endif
}

CTAGENT_INLINE inline unsigned IntensityContext(std::uint32_t up) {
  if (up < 8) return up;
  const unsigned top = TopBit(up);  // 3..15
  return top * 4 - 4 + ((up >> (top - 2)) & 3u);
}

// IntensityContext of every 16-bit value: one load instead of a dozen instructions per sample.
// The previous view's intensities change slowly along a row, so the loads hit a few cache lines.
struct IntensityContextTable {
  std::array<std::uint8_t, 65536> context{};
  IntensityContextTable() {
    for (std::uint32_t u = 0; u < context.size(); ++u) context[u] = static_cast<std::uint8_t>(IntensityContext(u));
  }
};
const IntensityContextTable kIntensityContextOf;

inline unsigned Token(std::uint32_t z, unsigned& extra_bits) {
  if (z < kDirectTokens) {
    extra_bits = 0;
    return z;
  }
  const unsigned top = static_cast<unsigned>(std::bit_width(z)) - 1;  // 4..15
  extra_bits = top - 2;
  return kDirectTokens + (top - 4) * 4 + ((z >> (top - 2)) & 3u);
}

// Token and raw bit count of every z below 4096 (most residuals), token | bits << 8.
struct TokenTable {
  std::array<std::uint16_t, 4096> entry{};
  TokenTable() {
    for (std::uint32_t z = 0; z < entry.size(); ++z) {
      unsigned extra_bits = 0;
      const unsigned token = Token(z, extra_bits);
      entry[z] = static_cast<std::uint16_t>(token | extra_bits << 8);
    }
  }
};
const TokenTable kTokenTable;

// Decoder side: the top bits of z and the raw bit count of each token, base | bits << 16.
struct TokenBase {
  std::array<std::uint32_t, kTokens> entry{};
  TokenBase() {
    for (unsigned s = 0; s < kTokens; ++s) {
      if (s < kDirectTokens) {
        entry[s] = s;
        continue;
      }
      const unsigned top = ((s - kDirectTokens) >> 2) + 4;
      entry[s] = ((4u | (s & 3u)) << (top - 2)) | (top - 2) << 16;
    }
  }
};
const TokenBase kTokenBase;

inline std::uint16_t ZigZag16(std::uint16_t e) {
  return static_cast<std::uint16_t>((e << 1) ^ ((e & 0x8000u) ? 0xffffu : 0u));
}
CTAGENT_INLINE inline std::uint16_t UnZigZag16(std::uint32_t z) {
  return static_cast<std::uint16_t>((z >> 1) ^ (0u - (z & 1u)));
}

inline std::uint64_t MulHi64(std::uint64_t a, std::uint64_t b) {
#if defined(__SIZEOF_INT128__)
  __extension__ using U128 = unsigned __int128;  // GCC and clang on 64-bit targets
  return static_cast<std::uint64_t>((static_cast<U128>(a) * b) >> 64);
#else
  const std::uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32, b_lo = b & 0xffffffffu, b_hi = b >> 32;
  const std::uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
  const std::uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffu) + lo_hi;
  return hi_hi + (hi_lo >> 32) + (cross >> 32);
#endif
}

// Encoder side of one symbol: division by the frequency replaced by a multiplication (rans64).
struct EncSymbol {
  std::uint64_t x_max = 0;
  std::uint64_t rcp_freq = 0;
  std::uint32_t bias = 0;
  std::uint32_t cmpl_freq = 0;
  std::uint32_t rcp_shift = 0;
};

EncSymbol MakeEncSymbol(std::uint32_t start, std::uint32_t freq) {
  EncSymbol s;
  s.x_max = ((kRansLow >> kScaleBits) << 32) * freq;
  s.cmpl_freq = kTotal - freq;
  if (freq < 2) {
    s.rcp_freq = ~0ull;
    s.rcp_shift = 0;
    s.bias = start + kTotal - 1;
  } else {
    std::uint32_t shift = 0;
    while (freq > (1u << shift)) ++shift;
    std::uint64_t x0 = freq - 1;
    const std::uint64_t x1 = 1ull << (shift + 31);
    const std::uint64_t t1 = x1 / freq;
    x0 += (x1 % freq) << 32;
    const std::uint64_t t0 = x0 / freq;
    s.rcp_freq = t0 + (t1 << 32);
    s.rcp_shift = shift - 1;
    s.bias = start;
  }
  return s;
}

// Scales a histogram to frequencies summing to kTotal, every seen symbol at least 1.
void Normalize(const std::uint32_t* counts, std::uint64_t total, std::uint32_t* freq) {
  std::int64_t sum = 0;
  unsigned largest = 0;
  for (unsigned s = 0; s < kTokens; ++s) {
    if (counts[s] == 0) {
      freq[s] = 0;
      continue;
    }
    freq[s] = std::max<std::uint32_t>(1, static_cast<std::uint32_t>((std::uint64_t{counts[s]} * kTotal + total / 2) / total));
    sum += freq[s];
    if (freq[s] > freq[largest] || counts[largest] == 0) largest = s;
  }
  // At most 64 symbols are rounded up to 1, and the largest holds at least kTotal / 64, so the
  // correction fits in it; the loop covers the general case anyway.
  while (sum != kTotal) {
    if (sum < kTotal) {
      freq[largest] += static_cast<std::uint32_t>(kTotal - sum);
      sum = kTotal;
    } else {
      unsigned biggest = 0;
      for (unsigned s = 0; s < kTokens; ++s) biggest = freq[s] > freq[biggest] ? s : biggest;
      const auto cut = static_cast<std::uint32_t>(std::min<std::int64_t>(sum - kTotal, freq[biggest] - 1));
      freq[biggest] -= cut;
      sum -= cut;
    }
  }
}

// Writes raw bits LSB first into a buffer the caller sized for the worst case (13 bits per
// sample) plus 8 bytes: every Put stores 8 bytes and advances by the whole bytes filled.
class BitWriter {
 public:
  explicit BitWriter(std::uint8_t* out) : begin_(out), out_(out) {}
  void Put(std::uint32_t value, unsigned bits) {
    acc_ |= std::uint64_t{value} << filled_;
    filled_ += bits;
    std::memcpy(out_, &acc_, 8);
    out_ += filled_ >> 3;
    acc_ >>= filled_ & ~7u;
    filled_ &= 7;
  }
  // Flushes the last bits; returns the bytes written.
  std::size_t Finish() {
    if (filled_ > 0) *out_++ = static_cast<std::uint8_t>(acc_);
    return static_cast<std::size_t>(out_ - begin_);
  }

 private:
  std::uint8_t* begin_;
  std::uint8_t* out_;
  std::uint64_t acc_ = 0;
  unsigned filled_ = 0;
};

void PutVarint(std::vector<std::uint8_t>& out, std::uint32_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<std::uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<std::uint8_t>(v));
}

// Decoder side of one context's table: one 32-bit entry per slot, symbol | (slot - start) << 6 |
// freq << 18, so that a token costs one load instead of three dependent ones (symbol, then its
// frequency and start).
constexpr unsigned kEntryOffsetShift = 6;
constexpr unsigned kEntryFreqShift = 18;
struct DecTable {
  std::array<std::uint32_t, kTotal> slot;
};

// Reads the raw bits of the residuals, LSB first, refilled to 56..63 bits before each residual
// (F. Giesen's branchless refill), so that the bits of one residual (at most 13) are there. Reads
// up to 8 bytes past its position: the caller pads the buffer.
struct BitReader {
  const std::uint8_t* p;
  std::uint64_t acc = 0;
  unsigned avail = 0;

  // The residual of `token`: its top bits and its raw bits.
  CTAGENT_INLINE std::uint32_t Residual(std::uint32_t token) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    acc |= w << avail;
    p += (63 - avail) >> 3;
    avail |= 56;
    const std::uint32_t base = kTokenBase.entry[token];
    const unsigned n_bits = base >> 16;
    const auto low = static_cast<std::uint32_t>(acc & ((1u << n_bits) - 1u));
    acc >>= n_bits;
    avail -= n_bits;
    return UnZigZag16((base & 0xffffu) | low);
  }
};

// The samples of one row from its tokens, raw bits and the previous view's row `up` (nullptr in
// the first view), by the predict rule. Not inlined: in its own function it gets the registers
// its two serial chains (bits, left neighbour) need; inlined in the decoder, where the four rANS
// states stay live, GCC spilled `left` and the bit buffer to the stack (measured ~10 % slower).
CTAGENT_NOINLINE void ReconstructRow(BitReader& bits, const std::uint8_t* tok, const std::uint8_t* up, std::uint8_t* cur,
                                     std::size_t channels) {
  auto load = [](const std::uint8_t* q, std::size_t i) {
    std::uint16_t w;
    std::memcpy(&w, q + 2 * i, 2);
    return static_cast<std::uint32_t>(w);
  };
  auto store = [](std::uint8_t* q, std::size_t i, std::uint32_t w) {
    const auto v = static_cast<std::uint16_t>(w);
    std::memcpy(q + 2 * i, &v, 2);
  };
  BitReader b = bits;
  if (up == nullptr) {
    std::uint32_t left = 0;
    for (std::size_t k = 0; k < channels; ++k) {
      left = static_cast<std::uint16_t>(left + b.Residual(tok[k]));
      store(cur, k, left);
    }
  } else {
    std::uint32_t left = static_cast<std::uint16_t>(load(up, 0) + b.Residual(tok[0]));
    store(cur, 0, left);
    if (channels > 1) {
      std::uint32_t ul = load(up, 0);
      std::uint32_t u = load(up, 1);
      for (std::size_t k = 1; k + 1 < channels; ++k) {
        const std::uint32_t ur = load(up, k + 1);
        left = static_cast<std::uint16_t>(((2u * left + ul + 3u * u + 2u * ur + 4u) >> 3) + b.Residual(tok[k]));
        store(cur, k, left);
        ul = u;
        u = ur;
      }
      store(cur, channels - 1, u + b.Residual(tok[channels - 1]));
    }
  }
  bits = b;
}

// A damaged context rANS payload: the message names the part of the chunk that failed.
Unexpected CorruptPayload(const std::string& what) {
  return MakeError(ErrorKind::kCorrupt, "corrupt chunk: context rANS payload: " + what);
}

// One rANS step: the token of `x` in table `t`, `x` advanced and renormalised from `rp`.
CTAGENT_INLINE inline std::uint32_t DecodeToken(std::uint64_t& x, const DecTable& t, const std::uint8_t*& rp) {
  const std::uint32_t e = t.slot[x & (kTotal - 1)];
  x = (e >> kEntryFreqShift) * (x >> kScaleBits) + ((e >> kEntryOffsetShift) & (kTotal - 1));
  std::uint32_t w;
  std::memcpy(&w, rp, 4);
  // GCC makes this a branch. Keep it one: predicted, it keeps the comparison off the state's
  // dependency chain; a branchless mask measured a third slower.
  const bool refill = x < kRansLow;
  x = refill ? (x << 32) | w : x;
  rp += refill ? 4 : 0;
  return e & (kTokens - 1);
}

}  // namespace

void EncodeContextRans(const SampleShape& shape, std::span<const std::uint8_t> samples, std::vector<std::uint8_t>& out) {
  const std::size_t channels = shape.channels;
  const std::size_t row_count = shape.views * shape.rows;
  const std::size_t n = row_count * channels;
  const std::size_t view_bytes = shape.rows * channels * 2;
  // Scratch reused by each codec worker thread (chunks of one scan have one size): fresh
  // buffers of this size cost a page fault per 4 KiB on every chunk. The raw bits (pass 1,
  // forwards from the start, at most 2 bytes a sample) and the rANS words (pass 2, backwards
  // from the end) share one buffer the size of the samples: a payload that needs more is larger
  // than the samples and EncodeChunk stores codec 1 instead, so only such data (random, never a
  // detector's) takes the worst-case buffer below, freed again after the chunk. A buffer for
  // each at its worst case (4 bytes a sample for the words alone) held 7 MiB per codec thread
  // for chunks of 1.75 MiB (docs/configuration.md, "Memory").
  thread_local std::vector<std::uint16_t> symbols;
  thread_local std::vector<std::uint32_t> shared;
  if (symbols.size() < n) symbols.resize(n);
  const std::size_t shared_words = (2 * n + 16 + 3) / 4 + 2 * kStates;
  if (shared.size() < shared_words) shared.resize(shared_words);
  std::uint8_t* const extra = reinterpret_cast<std::uint8_t*>(shared.data());

  // Pass 1: residuals -> (context, token) indices, raw bits, histograms.
  // Four histograms, by channel % 4: consecutive samples mostly hit the same few bins, and one
  // histogram would make each increment wait for the previous one's store.
  thread_local std::vector<std::uint32_t> counts4;
  counts4.assign(4 * kContexts * kTokens, 0);
  BitWriter bits(extra);
  auto load = [](const std::uint8_t* p, std::size_t i) {
    std::uint16_t w;
    std::memcpy(&w, p + 2 * i, 2);
    return static_cast<std::uint32_t>(w);
  };
  for (std::size_t row = 0; row < row_count; ++row) {
    const std::uint8_t* cur = samples.data() + row * channels * 2;
    std::uint16_t* sym = symbols.data() + row * channels;
    auto emit = [&](std::size_t c, std::uint32_t predicted, unsigned context) {
      const auto z = ZigZag16(static_cast<std::uint16_t>(load(cur, c) - predicted));
      unsigned extra_bits = 0;
      unsigned token = 0;
      if (z < kTokenTable.entry.size()) [[likely]] {
        token = kTokenTable.entry[z] & 0xffu;
        extra_bits = kTokenTable.entry[z] >> 8;
      } else {
        token = Token(z, extra_bits);
      }
      bits.Put(z & ((1u << extra_bits) - 1u), extra_bits);
      const auto index = static_cast<std::uint16_t>(context * kTokens + token);
      sym[c] = index;
      ++counts4[(c & 3) * (kContexts * kTokens) + index];
    };
    if (row * channels * 2 < view_bytes) {
      for (std::size_t c = 0; c < channels; ++c) emit(c, c == 0 ? 0 : load(cur, c - 1), kFirstViewContext);
      continue;
    }
    const std::uint8_t* up = cur - view_bytes;
    emit(0, load(up, 0), kIntensityContextOf.context[load(up, 0)]);
    if (channels == 1) continue;
    for (std::size_t c = 1; c + 1 < channels; ++c) {
      const std::uint32_t u = load(up, c);
      emit(c, (2u * load(cur, c - 1) + load(up, c - 1) + 3u * u + 2u * load(up, c + 1) + 4u) >> 3, kIntensityContextOf.context[u]);
    }
    emit(channels - 1, load(up, channels - 1), kIntensityContextOf.context[load(up, channels - 1)]);
  }
  const std::size_t extra_bytes = bits.Finish();

  // Tables: the contexts that occur, each scaled to kTotal.
  std::array<std::uint32_t, kContexts * kTokens> counts{};
  for (std::size_t i = 0; i < counts.size(); ++i) {
    counts[i] = counts4[i] + counts4[i + counts.size()] + counts4[i + 2 * counts.size()] + counts4[i + 3 * counts.size()];
  }
  std::vector<EncSymbol> enc(kContexts * kTokens);
  std::vector<std::uint8_t> tables;
  unsigned table_count = 0;
  for (unsigned ctx = 0; ctx < kContexts; ++ctx) {
    const std::uint32_t* h = counts.data() + std::size_t{ctx} * kTokens;
    std::uint64_t total = 0;
    unsigned used = 0;
    for (unsigned s = 0; s < kTokens; ++s) {
      total += h[s];
      if (h[s] != 0) used = s + 1;
    }
    if (total == 0) continue;
    std::array<std::uint32_t, kTokens> freq{};
    Normalize(h, total, freq.data());
    ++table_count;
    tables.push_back(static_cast<std::uint8_t>(ctx));
    tables.push_back(static_cast<std::uint8_t>(used));
    std::uint32_t start = 0;
    for (unsigned s = 0; s < used; ++s) {
      PutVarint(tables, freq[s]);
      if (freq[s] != 0) enc[ctx * kTokens + s] = MakeEncSymbol(start, freq[s]);
      start += freq[s];
    }
  }
  out.push_back(static_cast<std::uint8_t>(table_count));
  out.insert(out.end(), tables.begin(), tables.end());

  // Pass 2: rANS, backwards, so that the decoder reads forwards. At most one 32-bit word per
  // symbol, so a row writes at most `channels` words below where it starts: each row checks
  // that they stay above the raw bits (`floor`), and the final states need 2 x kStates more.
  // The renormalisation stores its word unconditionally and keeps it only when needed: it
  // happens about once every three symbols, unpredictably. ptr[-1] stays inside the buffer.
  auto put = [](std::uint64_t& x, const EncSymbol& s, std::uint32_t*& p) {
    const bool flush = x >= s.x_max;
    p[-1] = static_cast<std::uint32_t>(x);
    p -= flush ? 1 : 0;
    x = flush ? x >> 32 : x;
    const std::uint64_t q = MulHi64(x, s.rcp_freq) >> s.rcp_shift;
    x = x + s.bias + q * s.cmpl_freq;
  };
  const EncSymbol* table = enc.data();
  // Encodes every symbol into the words below `words_end`; returns where they start, or nullptr
  // when they would come within 2 x kStates words of `floor`.
  auto encode_words = [&](std::uint32_t* const words_end, const std::uint32_t* const floor) -> std::uint32_t* {
    std::uint32_t* ptr = words_end;
    std::uint64_t x0 = kRansLow, x1 = kRansLow, x2 = kRansLow, x3 = kRansLow;
    for (std::size_t row = row_count; row-- > 0;) {
      if (static_cast<std::size_t>(ptr - floor) < channels + 2 * kStates) return nullptr;
      const std::uint16_t* sym = symbols.data() + row * channels;
      std::size_t c = channels;
      // The channels past the last multiple of 4 first (their states are c % 4).
      while (c % 4 != 0) {
        --c;
        std::uint64_t& x = c % 4 == 0 ? x0 : c % 4 == 1 ? x1 : x2;
        put(x, table[sym[c]], ptr);
      }
      while (c != 0) {
        c -= 4;
        put(x3, table[sym[c + 3]], ptr);
        put(x2, table[sym[c + 2]], ptr);
        put(x1, table[sym[c + 1]], ptr);
        put(x0, table[sym[c]], ptr);
      }
    }
    if (static_cast<std::size_t>(ptr - floor) < 2 * kStates) return nullptr;
    const std::uint64_t final_states[kStates] = {x0, x1, x2, x3};
    for (unsigned k = kStates; k-- > 0;) {
      ptr -= 2;
      ptr[0] = static_cast<std::uint32_t>(final_states[k]);
      ptr[1] = static_cast<std::uint32_t>(final_states[k] >> 32);
    }
    return ptr;
  };
  std::uint32_t* words_end = shared.data() + shared_words;
  std::uint32_t* ptr = encode_words(words_end, shared.data() + (extra_bytes + 3) / 4);
  std::vector<std::uint32_t> worst_case;  // n + 2 x kStates words always suffice
  if (ptr == nullptr) {
    worst_case.resize(n + 2 * kStates);
    words_end = worst_case.data() + worst_case.size();
    ptr = encode_words(words_end, worst_case.data());
  }
  const auto rans_bytes = static_cast<std::uint32_t>((words_end - ptr) * 4);
  const std::size_t at = out.size();
  // Sized once, to what is written: reserving for the worst case (4 bytes a sample, about 4 x a
  // detector's payload) held ~4 MiB of heap per chunk from its encoding until it was stored
  // (docs/configuration.md, "Memory").
  out.reserve(at + 4 + rans_bytes + extra_bytes);
  out.resize(at + 4 + rans_bytes + extra_bytes);
  std::memcpy(out.data() + at, &rans_bytes, 4);
  std::memcpy(out.data() + at + 4, ptr, rans_bytes);
  if (extra_bytes != 0) std::memcpy(out.data() + at + 4 + rans_bytes, extra, extra_bytes);
}

Status DecodeContextRans(const SampleShape& shape, std::span<const std::uint8_t> payload, std::span<std::uint8_t> out) {
  const std::size_t channels = shape.channels;
  const std::size_t row_count = shape.views * shape.rows;
  const std::size_t n = row_count * channels;
  const std::size_t view_samples = shape.rows * channels;
  if (n == 0 || out.size() != n * 2) return CorruptPayload("output size does not match the shape");

  // Tables.
  std::size_t pos = 0;
  auto byte = [&]() -> int { return pos < payload.size() ? payload[pos++] : -1; };
  const int table_count = byte();
  if (table_count < 1 || table_count > static_cast<int>(kContexts)) {
    return CorruptPayload("table count " + std::to_string(table_count) + " is outside 1.." + std::to_string(kContexts));
  }
  // Contexts without a table decode through a valid dummy table (one symbol): a payload that
  // uses one is malformed and fails the final state check or the raw hash, never memory safety.
  // Scratch reused by each codec worker thread (1 MB at most): fresh tables of this size would
  // cost page faults on every chunk.
  thread_local std::vector<DecTable> tables;
  if (tables.size() < static_cast<std::size_t>(table_count) + 1) tables.resize(static_cast<std::size_t>(table_count) + 1);
  DecTable& dummy = tables[static_cast<std::size_t>(table_count)];
  for (std::uint32_t k = 0; k < kTotal; ++k) dummy.slot[k] = k << kEntryOffsetShift | kTotal << kEntryFreqShift;
  std::array<const DecTable*, kContexts> by_context;
  by_context.fill(&dummy);
  int previous = -1;
  for (int t = 0; t < table_count; ++t) {
    const int ctx = byte();
    const int used = byte();
    if (ctx <= previous || ctx >= static_cast<int>(kContexts)) return CorruptPayload("table contexts out of order or range");
    if (used < 1 || used > static_cast<int>(kTokens)) return CorruptPayload("table symbol count out of range");
    previous = ctx;
    DecTable& table = tables[static_cast<std::size_t>(t)];
    std::uint32_t start = 0;
    for (int s = 0; s < used; ++s) {
      std::uint32_t f = 0;
      int shift = 0;
      for (;;) {
        const int b = byte();
        if (b < 0 || shift > 14) return CorruptPayload("table truncated or frequency too long");
        f |= static_cast<std::uint32_t>(b & 0x7f) << shift;
        shift += 7;
        if ((b & 0x80) == 0) break;
      }
      if (f > kTotal - start) return CorruptPayload("table frequencies exceed " + std::to_string(kTotal));
      const std::uint32_t entry = static_cast<std::uint32_t>(s) | f << kEntryFreqShift;
      for (std::uint32_t k = 0; k < f; ++k) table.slot[start + k] = entry | k << kEntryOffsetShift;
      start += f;
    }
    if (start != kTotal) return CorruptPayload("table frequencies sum to " + std::to_string(start) + ", not " + std::to_string(kTotal));
    by_context[static_cast<std::size_t>(ctx)] = &table;
  }
  if (payload.size() - pos < 4) return CorruptPayload("truncated before the rANS stream length");
  std::uint32_t rans_bytes = 0;
  std::memcpy(&rans_bytes, payload.data() + pos, 4);
  pos += 4;
  if (rans_bytes % 4 != 0 || rans_bytes < 8 * kStates || rans_bytes > payload.size() - pos) {
    return CorruptPayload("rANS stream length " + std::to_string(rans_bytes) + " does not fit the payload");
  }
  // The streams are copied into a buffer with zero padding behind them, so that the loops
  // below read without bounds checks: within one row neither stream advances by more than 4
  // bytes per channel, and after every row both positions are checked against their ends.
  const std::size_t stream_bytes = payload.size() - pos;
  const std::size_t padding = 4 * channels + 64;
  thread_local std::vector<std::uint8_t> buffer;
  if (buffer.size() < stream_bytes + padding) buffer.resize(stream_bytes + padding);
  std::memcpy(buffer.data(), payload.data() + pos, stream_bytes);
  std::memset(buffer.data() + stream_bytes, 0, padding);
  const std::uint8_t* rp = buffer.data();
  const std::uint8_t* const rend = rp + rans_bytes;
  const std::uint8_t* const bend = buffer.data() + stream_bytes;
  std::uint64_t s0, s1, s2, s3;
  std::memcpy(&s0, rp, 8);
  std::memcpy(&s1, rp + 8, 8);
  std::memcpy(&s2, rp + 16, 8);
  std::memcpy(&s3, rp + 24, 8);
  rp += 32;

  // Per row, two loops: the tokens (four independent rANS chains, channel c on state c % 4),
  // then raw bits and the predict rule (two serial chains). One fused loop measured slower: the
  // four states no longer fit in registers beside the bit reader and the predictor.
  thread_local std::vector<std::uint8_t> tokens;
  if (tokens.size() < channels) tokens.resize(channels);
  std::uint8_t* const tok = tokens.data();
  auto load = [](const std::uint8_t* q, std::size_t i) {
    std::uint16_t w;
    std::memcpy(&w, q + 2 * i, 2);
    return static_cast<std::uint32_t>(w);
  };
  BitReader bits{rend};
  auto* samples = out.data();
  for (std::size_t row = 0; row < row_count; ++row) {
    std::uint8_t* cur = samples + row * channels * 2;
    const bool first_view = row * channels < view_samples;
    const std::uint8_t* up = first_view ? nullptr : cur - view_samples * 2;
    // The tokens of the row, table by table(c): the previous view's intensity, or the first
    // view's table (two copies of the loop, so that the choice is not made per token).
    auto tokens_of_row = [&](auto table) CTAGENT_INLINE {
      std::size_t c = 0;
      for (; c + 4 <= channels; c += 4) {
        tok[c] = static_cast<std::uint8_t>(DecodeToken(s0, table(c), rp));
        tok[c + 1] = static_cast<std::uint8_t>(DecodeToken(s1, table(c + 1), rp));
        tok[c + 2] = static_cast<std::uint8_t>(DecodeToken(s2, table(c + 2), rp));
        tok[c + 3] = static_cast<std::uint8_t>(DecodeToken(s3, table(c + 3), rp));
      }
      if (c < channels) tok[c] = static_cast<std::uint8_t>(DecodeToken(s0, table(c), rp)), ++c;
      if (c < channels) tok[c] = static_cast<std::uint8_t>(DecodeToken(s1, table(c), rp)), ++c;
      if (c < channels) tok[c] = static_cast<std::uint8_t>(DecodeToken(s2, table(c), rp)), ++c;
    };
    if (first_view) {
      const DecTable& t = *by_context[kFirstViewContext];
      tokens_of_row([&](std::size_t) CTAGENT_INLINE -> const DecTable& { return t; });
    } else {
      tokens_of_row([&](std::size_t c) CTAGENT_INLINE -> const DecTable& {
        return *by_context[kIntensityContextOf.context[load(up, c)]];
      });
    }

    ReconstructRow(bits, tok, up, cur, channels);
    if (rp > rend) return CorruptPayload("the rANS stream ended early");
    if (bits.p > bend + 8) return CorruptPayload("the raw bit stream ended early");  // bp runs up to 8 bytes ahead
  }
  if (rp != rend) return CorruptPayload("the rANS stream has unread words");
  if (s0 != kRansLow || s1 != kRansLow || s2 != kRansLow || s3 != kRansLow) return CorruptPayload("rANS final states do not match");
  const auto extra_bytes = static_cast<std::uint64_t>(bend - rend);
  const std::uint64_t loaded_bits = static_cast<std::uint64_t>(bits.p - rend) * 8;
  if (loaded_bits < bits.avail) return CorruptPayload("raw bit stream length does not match");
  const std::uint64_t bits_read = loaded_bits - bits.avail;
  if ((bits_read + 7) / 8 != extra_bytes) return CorruptPayload("raw bit stream length does not match");
  return Ok();
}

}  // namespace ctagent::codec
