#include "agent/codec/filter.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

namespace ctagent::codec {
namespace {

// Byte shuffle: for samples of `width` bytes, byte k of every sample is stored contiguously.
// Detector counts and small residuals have nearly constant high bytes, which then form long
// runs (or a skewed alphabet) that zstd codes in far fewer bits.
void Shuffle(std::span<const std::uint8_t> in, std::span<std::uint8_t> out, std::size_t width) {
  const std::size_t count = in.size() / width;
  for (std::size_t i = 0; i < count; ++i) {
    for (std::size_t k = 0; k < width; ++k) out[k * count + i] = in[i * width + k];
  }
}

void Unshuffle(std::span<const std::uint8_t> in, std::span<std::uint8_t> out, std::size_t width) {
  const std::size_t count = in.size() / width;
  for (std::size_t i = 0; i < count; ++i) {
    for (std::size_t k = 0; k < width; ++k) out[i * width + k] = in[k * count + i];
  }
}

// Zigzag maps small signed residuals (0, -1, 1, -2, ...) to small unsigned codes (0, 1, 2, 3, ...).
template <typename Word>
Word ZigZag(Word residual) {
  using Signed = std::make_signed_t<Word>;
  const auto sign = static_cast<Word>(static_cast<Signed>(residual) < 0 ? ~Word{0} : Word{0});
  return static_cast<Word>(static_cast<Word>(residual << 1) ^ sign);
}

template <typename Word>
Word UnZigZag(Word code) {
  return static_cast<Word>(static_cast<Word>(code >> 1) ^ static_cast<Word>(Word{0} - static_cast<Word>(code & 1u)));
}

// LOCO-I / JPEG-LS median edge detector: picks left or up at an edge, the planar guess otherwise.
template <typename Word>
Word Med(Word left, Word up, Word up_left) {
  const Word hi = std::max(left, up);
  const Word lo = std::min(left, up);
  if (up_left >= hi) return lo;
  if (up_left <= lo) return hi;
  return static_cast<Word>(left + up - up_left);
}

template <typename Word>
Word Load(const std::uint8_t* base, std::size_t index) {
  Word w;
  std::memcpy(&w, base + index * sizeof(Word), sizeof(Word));
  return w;
}

template <typename Word>
void Store(std::uint8_t* base, std::size_t index, Word w) {
  std::memcpy(base + index * sizeof(Word), &w, sizeof(Word));
}

// Sums for the weighted average: uint16 words fit in 32 bits, uint32 words need 64.
template <typename Word>
using Wide = std::conditional_t<sizeof(Word) == 2, std::uint32_t, std::uint64_t>;

// Prediction of channel `c` (0 < c < channels - 1) of a row in any view but a chunk's first,
// from already-known samples: `cur` (this row, channels before c) and `up` (the same row of the
// previous view). The filter is a template parameter so no branch on it is left in the loops.
template <typename Word, Filter kFilter>
Word PredictInterior(const std::uint8_t* cur, const std::uint8_t* up, std::size_t c) {
  if constexpr (kFilter == Filter::kDeltaChannel) {
    return Load<Word>(cur, c - 1);
  } else if constexpr (kFilter == Filter::kDeltaView) {
    return Load<Word>(up, c);
  } else if constexpr (kFilter == Filter::kMed) {
    return Med<Word>(Load<Word>(cur, c - 1), Load<Word>(up, c), Load<Word>(up, c - 1));
  } else {
    // Averaging four neighbours halves the noise the prediction carries into the residual;
    // the weights favour the nearer (left, up) ones.
    const Wide<Word> sum = 2 * Wide<Word>{Load<Word>(cur, c - 1)} + Wide<Word>{Load<Word>(up, c - 1)} +
                           3 * Wide<Word>{Load<Word>(up, c)} + 2 * Wide<Word>{Load<Word>(up, c + 1)} + 4;
    return static_cast<Word>(sum >> 3);
  }
}

// A chunk's first view has no previous view: every filter predicts from the left neighbour
// (0 for channel 0).
template <typename Word>
Word PredictFirstView(const std::uint8_t* cur, std::size_t c) {
  return c > 0 ? Load<Word>(cur, c - 1) : Word{0};
}

// The same at the edges of a row of a later view, where some neighbours do not exist: channel 0
// and the last channel predict from the previous view, except for delta_channel and MED, which
// use the left neighbour wherever there is one.
template <typename Word, Filter kFilter>
Word PredictEdge(const std::uint8_t* cur, const std::uint8_t* up, std::size_t c) {
  if (c == 0) return Load<Word>(up, 0);
  if constexpr (kFilter == Filter::kPredict) {
    return Load<Word>(up, c);
  } else {
    return PredictInterior<Word, kFilter>(cur, up, c);
  }
}

// Encoder: residuals of every sample, zigzagged, written straight into the byte-shuffled output
// (byte k of residual i at out[k * count + i]).
template <typename Word, Filter kFilter>
void Encode(const SampleShape& shape, const std::uint8_t* in, std::uint8_t* out, std::size_t count) {
  const std::size_t channels = shape.channels;
  const std::size_t view_words = shape.rows * channels;
  auto emit = [&](std::size_t i, Word x, Word prediction) {
    const Word z = ZigZag<Word>(static_cast<Word>(x - prediction));
    for (std::size_t k = 0; k < sizeof(Word); ++k) out[k * count + i] = static_cast<std::uint8_t>(z >> (8 * k));
  };
  for (std::size_t v = 0; v < shape.views; ++v) {
    for (std::size_t r = 0; r < shape.rows; ++r) {
      const std::size_t base = v * view_words + r * channels;
      const std::uint8_t* cur = in + base * sizeof(Word);
      if (v == 0) {
        for (std::size_t c = 0; c < channels; ++c) emit(base + c, Load<Word>(cur, c), PredictFirstView<Word>(cur, c));
        continue;
      }
      // Never null: the first view, the only one without a previous view, was handled above.
      const std::uint8_t* up = cur - view_words * sizeof(Word);
      emit(base, Load<Word>(cur, 0), PredictEdge<Word, kFilter>(cur, up, 0));
      std::size_t c = 1;
      for (; c + 1 < channels; ++c) emit(base + c, Load<Word>(cur, c), PredictInterior<Word, kFilter>(cur, up, c));
      for (; c < channels; ++c) emit(base + c, Load<Word>(cur, c), PredictEdge<Word, kFilter>(cur, up, c));
    }
  }
}

// Decoder: the mirror image, reconstructing each sample from the ones already written to `out`.
template <typename Word, Filter kFilter>
void Decode(const SampleShape& shape, const std::uint8_t* in, std::uint8_t* out, std::size_t count) {
  const std::size_t channels = shape.channels;
  const std::size_t view_words = shape.rows * channels;
  auto residual = [&](std::size_t i) {
    Word z = 0;
    for (std::size_t k = 0; k < sizeof(Word); ++k) z = static_cast<Word>(z | Word{in[k * count + i]} << (8 * k));
    return UnZigZag<Word>(z);
  };
  for (std::size_t v = 0; v < shape.views; ++v) {
    for (std::size_t r = 0; r < shape.rows; ++r) {
      const std::size_t base = v * view_words + r * channels;
      std::uint8_t* cur = out + base * sizeof(Word);
      if (v == 0) {
        for (std::size_t c = 0; c < channels; ++c) {
          Store<Word>(cur, c, static_cast<Word>(PredictFirstView<Word>(cur, c) + residual(base + c)));
        }
        continue;
      }
      const std::uint8_t* up = cur - view_words * sizeof(Word);
      Store<Word>(cur, 0, static_cast<Word>(PredictEdge<Word, kFilter>(cur, up, 0) + residual(base)));
      std::size_t c = 1;
      for (; c + 1 < channels; ++c) {
        Store<Word>(cur, c, static_cast<Word>(PredictInterior<Word, kFilter>(cur, up, c) + residual(base + c)));
      }
      for (; c < channels; ++c) {
        Store<Word>(cur, c, static_cast<Word>(PredictEdge<Word, kFilter>(cur, up, c) + residual(base + c)));
      }
    }
  }
}

// Fast paths for the default filter (predict) on uint16 samples, the agent's hot loop. They
// compute exactly what Encode/Decode<std::uint16_t, Filter::kPredict> compute (the tests compare
// them against a reference written from the wire-format text), but in blocks of kBlock channels
// held in local arrays: a fixed trip count and no aliasing between input and output let the
// compiler turn each block into SSE2 / NEON code even at -O2 (its "very cheap" vectoriser cost
// model only takes loops it can vectorise without a scalar remainder or runtime checks).
constexpr std::size_t kBlock = 16;

// Residuals of channels c .. c + kBlock - 1 of a row with a previous view. `cur` and `up` point
// at channel c of this row and of the same row in the previous view; needs channels c - 1 ..
// c + kBlock of `up`, so the caller keeps c >= 1 and c + kBlock < channels. Writes the low and
// high bytes of the zigzagged residuals to `lo` and `hi`.
inline void PredictBlock16(const std::uint8_t* cur, const std::uint8_t* up, std::uint8_t* lo, std::uint8_t* hi) {
  std::uint16_t left[kBlock];
  std::uint16_t x[kBlock];
  std::uint16_t up_left[kBlock];
  std::uint16_t above[kBlock];
  std::uint16_t up_right[kBlock];
  std::memcpy(left, cur - 2, sizeof left);
  std::memcpy(x, cur, sizeof x);
  std::memcpy(up_left, up - 2, sizeof up_left);
  std::memcpy(above, up, sizeof above);
  std::memcpy(up_right, up + 2, sizeof up_right);
  std::uint8_t low[kBlock];
  std::uint8_t high[kBlock];
  for (std::size_t j = 0; j < kBlock; ++j) {
    const std::uint32_t sum = 2u * left[j] + up_left[j] + 3u * above[j] + 2u * up_right[j] + 4u;
    const auto residual = static_cast<std::uint16_t>(x[j] - static_cast<std::uint16_t>(sum >> 3));
    const auto sign = static_cast<std::uint16_t>(0u - static_cast<std::uint32_t>(residual >> 15));
    const auto z = static_cast<std::uint16_t>(static_cast<std::uint16_t>(residual << 1) ^ sign);
    low[j] = static_cast<std::uint8_t>(z);
    high[j] = static_cast<std::uint8_t>(z >> 8);
  }
  std::memcpy(lo, low, sizeof low);
  std::memcpy(hi, high, sizeof high);
}

void EncodePredict16(const SampleShape& shape, const std::uint8_t* in, std::uint8_t* out, std::size_t count) {
  const std::size_t channels = shape.channels;
  const std::size_t view_words = shape.rows * channels;
  std::uint8_t* const lo = out;
  std::uint8_t* const hi = out + count;
  auto emit = [lo, hi](std::size_t i, std::uint16_t x, std::uint16_t prediction) {
    const std::uint16_t z = ZigZag<std::uint16_t>(static_cast<std::uint16_t>(x - prediction));
    lo[i] = static_cast<std::uint8_t>(z);
    hi[i] = static_cast<std::uint8_t>(z >> 8);
  };
  for (std::size_t v = 0; v < shape.views; ++v) {
    for (std::size_t r = 0; r < shape.rows; ++r) {
      const std::size_t base = v * view_words + r * channels;
      const std::uint8_t* cur = in + base * 2;
      if (v == 0) {
        for (std::size_t c = 0; c < channels; ++c) {
          emit(base + c, Load<std::uint16_t>(cur, c), c > 0 ? Load<std::uint16_t>(cur, c - 1) : std::uint16_t{0});
        }
        continue;
      }
      const std::uint8_t* up = cur - view_words * 2;
      emit(base, Load<std::uint16_t>(cur, 0), Load<std::uint16_t>(up, 0));
      std::size_t c = 1;
      for (; c + kBlock < channels; c += kBlock) PredictBlock16(cur + 2 * c, up + 2 * c, lo + base + c, hi + base + c);
      for (; c + 1 < channels; ++c) {
        emit(base + c, Load<std::uint16_t>(cur, c), PredictInterior<std::uint16_t, Filter::kPredict>(cur, up, c));
      }
      if (c < channels) emit(base + c, Load<std::uint16_t>(cur, c), Load<std::uint16_t>(up, c));
    }
  }
}

// Inverse of PredictBlock16's arithmetic for one row: the up-row part of every prediction and
// the residuals are computed a block at a time (vectorised), then the left-neighbour recurrence
// runs serially over the block.
void DecodePredict16(const SampleShape& shape, const std::uint8_t* in, std::uint8_t* out, std::size_t count) {
  const std::size_t channels = shape.channels;
  const std::size_t view_words = shape.rows * channels;
  const std::uint8_t* const lo = in;
  const std::uint8_t* const hi = in + count;
  auto residual = [lo, hi](std::size_t i) {
    return UnZigZag<std::uint16_t>(static_cast<std::uint16_t>(lo[i] | (hi[i] << 8)));
  };
  for (std::size_t v = 0; v < shape.views; ++v) {
    for (std::size_t r = 0; r < shape.rows; ++r) {
      const std::size_t base = v * view_words + r * channels;
      std::uint8_t* cur = out + base * 2;
      if (v == 0) {
        std::uint16_t left = 0;
        for (std::size_t c = 0; c < channels; ++c) {
          left = static_cast<std::uint16_t>(left + residual(base + c));
          Store<std::uint16_t>(cur, c, left);
        }
        continue;
      }
      const std::uint8_t* up = cur - view_words * 2;
      auto left = static_cast<std::uint16_t>(Load<std::uint16_t>(up, 0) + residual(base));
      Store<std::uint16_t>(cur, 0, left);
      std::size_t c = 1;
      for (; c + kBlock < channels; c += kBlock) {
        std::uint16_t up_left[kBlock];
        std::uint16_t above[kBlock];
        std::uint16_t up_right[kBlock];
        std::uint8_t low[kBlock];
        std::uint8_t high[kBlock];
        std::memcpy(up_left, up + 2 * c - 2, sizeof up_left);
        std::memcpy(above, up + 2 * c, sizeof above);
        std::memcpy(up_right, up + 2 * c + 2, sizeof up_right);
        std::memcpy(low, lo + base + c, sizeof low);
        std::memcpy(high, hi + base + c, sizeof high);
        std::uint32_t partial[kBlock];
        std::uint16_t res[kBlock];
        for (std::size_t j = 0; j < kBlock; ++j) {
          partial[j] = up_left[j] + 3u * above[j] + 2u * up_right[j] + 4u;
          res[j] = UnZigZag<std::uint16_t>(static_cast<std::uint16_t>(low[j] | (high[j] << 8)));
        }
        std::uint16_t x[kBlock];
        for (std::size_t j = 0; j < kBlock; ++j) {
          left = static_cast<std::uint16_t>(static_cast<std::uint16_t>((2u * left + partial[j]) >> 3) + res[j]);
          x[j] = left;
        }
        std::memcpy(cur + 2 * c, x, sizeof x);
      }
      for (; c + 1 < channels; ++c) {
        Store<std::uint16_t>(cur, c, static_cast<std::uint16_t>(PredictInterior<std::uint16_t, Filter::kPredict>(cur, up, c) +
                                                                residual(base + c)));
      }
      if (c < channels) Store<std::uint16_t>(cur, c, static_cast<std::uint16_t>(Load<std::uint16_t>(up, c) + residual(base + c)));
    }
  }
}

bool IsPredictive(Filter filter) {
  return filter == Filter::kDeltaChannel || filter == Filter::kDeltaView || filter == Filter::kMed ||
         filter == Filter::kPredict;
}

// `shuffled`: write the residual bytes shuffled (the chunk payload) or as plain words (the bench).
template <typename Word>
void EncodeFor(Filter filter, const SampleShape& shape, std::span<const std::uint8_t> in, std::span<std::uint8_t> out,
               bool shuffled) {
  const std::size_t count = in.size() / sizeof(Word);
  // The unshuffled form (bench only) is built in a staging buffer. A new[] result is never null,
  // which also keeps GCC's -Wnull-dereference quiet on 32-bit targets, where it flagged the
  // std::vector::resize this used to be.
  std::unique_ptr<std::uint8_t[]> staging;
  std::uint8_t* target = out.data();
  if (!shuffled) {
    staging = std::make_unique_for_overwrite<std::uint8_t[]>(out.size());
    target = staging.get();
  }
  switch (filter) {
    case Filter::kDeltaChannel: Encode<Word, Filter::kDeltaChannel>(shape, in.data(), target, count); break;
    case Filter::kDeltaView: Encode<Word, Filter::kDeltaView>(shape, in.data(), target, count); break;
    case Filter::kMed: Encode<Word, Filter::kMed>(shape, in.data(), target, count); break;
    case Filter::kPredict:
      if constexpr (sizeof(Word) == 2) {
        EncodePredict16(shape, in.data(), target, count);
      } else {
        Encode<Word, Filter::kPredict>(shape, in.data(), target, count);
      }
      break;
    case Filter::kNone:
    case Filter::kShuffle:
      return;
  }
  if (!shuffled) Unshuffle({staging.get(), out.size()}, out, sizeof(Word));
}

template <typename Word>
void DecodeFor(Filter filter, const SampleShape& shape, std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
  const std::size_t count = in.size() / sizeof(Word);
  switch (filter) {
    case Filter::kDeltaChannel: return Decode<Word, Filter::kDeltaChannel>(shape, in.data(), out.data(), count);
    case Filter::kDeltaView: return Decode<Word, Filter::kDeltaView>(shape, in.data(), out.data(), count);
    case Filter::kMed: return Decode<Word, Filter::kMed>(shape, in.data(), out.data(), count);
    case Filter::kPredict:
      if constexpr (sizeof(Word) == 2) return DecodePredict16(shape, in.data(), out.data(), count);
      return Decode<Word, Filter::kPredict>(shape, in.data(), out.data(), count);
    case Filter::kNone:
    case Filter::kShuffle:
      break;
  }
}

// Guards the public entry points: the spans must hold exactly the shape's samples. Callers
// (EncodeChunk, DecodeChunk) check this first; the guard keeps a misuse from touching memory
// outside the spans.
bool SizesAgree(drivers::SampleType type, const SampleShape& shape, std::span<const std::uint8_t> in,
                std::span<std::uint8_t> out) {
  const std::size_t width = drivers::SampleSize(type);
  if (width != 2 && width != 4) return false;
  if (shape.rows != 0 && shape.channels > std::numeric_limits<std::uint64_t>::max() / shape.rows) return false;
  const std::uint64_t per_view = shape.rows * shape.channels;
  if (per_view != 0 && shape.views > std::numeric_limits<std::uint64_t>::max() / width / per_view) return false;
  const std::uint64_t bytes = shape.views * per_view * width;
  return in.size() == bytes && out.size() == bytes;
}

}  // namespace

void ApplyFilter(Filter filter, drivers::SampleType type, const SampleShape& shape, std::span<const std::uint8_t> in,
                 std::span<std::uint8_t> out) {
  if (!SizesAgree(type, shape, in, out)) return;
  const std::size_t width = drivers::SampleSize(type);
  if (filter == Filter::kShuffle) {
    Shuffle(in, out, width);
  } else if (IsPredictive(filter)) {
    if (width == 2) EncodeFor<std::uint16_t>(filter, shape, in, out, /*shuffled=*/true);
    else EncodeFor<std::uint32_t>(filter, shape, in, out, /*shuffled=*/true);
  } else if (!in.empty()) {
    std::memcpy(out.data(), in.data(), in.size());
  }
}

void InvertFilter(Filter filter, drivers::SampleType type, const SampleShape& shape, std::span<const std::uint8_t> in,
                  std::span<std::uint8_t> out) {
  if (!SizesAgree(type, shape, in, out)) return;
  const std::size_t width = drivers::SampleSize(type);
  if (filter == Filter::kShuffle) {
    Unshuffle(in, out, width);
  } else if (IsPredictive(filter)) {
    if (width == 2) DecodeFor<std::uint16_t>(filter, shape, in, out);
    else DecodeFor<std::uint32_t>(filter, shape, in, out);
  } else if (!in.empty()) {
    std::memcpy(out.data(), in.data(), in.size());
  }
}

void ComputeResiduals(Filter filter, drivers::SampleType type, const SampleShape& shape,
                      std::span<const std::uint8_t> in, std::span<std::uint8_t> out) {
  if (!SizesAgree(type, shape, in, out)) return;
  if (!IsPredictive(filter)) {
    if (!in.empty()) std::memcpy(out.data(), in.data(), in.size());
  } else if (drivers::SampleSize(type) == 2) {
    EncodeFor<std::uint16_t>(filter, shape, in, out, /*shuffled=*/false);
  } else {
    EncodeFor<std::uint32_t>(filter, shape, in, out, /*shuffled=*/false);
  }
}

}  // namespace ctagent::codec
