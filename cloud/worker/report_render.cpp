// The readable report of the result set (result_encoding.hpp): Secondary Capture pages, RGB 8 bit,
// drawn with a small built-in 5x7 bitmap font so nothing beyond DCMTK is needed. Page 1: summary,
// lesion table, involvement, density histograms; then one key image per lesion.
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cloud/worker/result_encoding.hpp"
#include "cloud/worker/result_encoding_internal.hpp"

namespace ctagent::cloud {
namespace fs = std::filesystem;
namespace {

using encoding::Decimal;
using encoding::Putter;

struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};
constexpr Rgb kBackground{16, 16, 24};
constexpr Rgb kText{230, 230, 230};
constexpr Rgb kDim{150, 150, 160};
constexpr Rgb kWarning{255, 90, 70};
constexpr Rgb kNormal{90, 220, 120};
constexpr Rgb kHighRisk{255, 170, 40};
constexpr Rgb kGroundGlass{255, 220, 0};
constexpr Rgb kConsolidation{255, 60, 60};
constexpr Rgb kRightBars{90, 160, 255};
constexpr Rgb kLeftBars{200, 120, 255};

// 5x7 glyphs, one byte per row, bit 4 = leftmost column. Lower case is drawn as upper case;
// a character without a glyph is drawn as '?'.
struct Glyph {
  char ch;
  std::array<std::uint8_t, 7> rows;
};
constexpr Glyph kFont[] = {
    {' ', {0, 0, 0, 0, 0, 0, 0}},
    {'A', {0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001}},
    {'B', {0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110}},
    {'C', {0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110}},
    {'D', {0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110}},
    {'E', {0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111}},
    {'F', {0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000}},
    {'G', {0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111}},
    {'H', {0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001}},
    {'I', {0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110}},
    {'J', {0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100}},
    {'K', {0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001}},
    {'L', {0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111}},
    {'M', {0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001}},
    {'N', {0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001}},
    {'O', {0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110}},
    {'P', {0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000}},
    {'Q', {0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101}},
    {'R', {0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001}},
    {'S', {0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110}},
    {'T', {0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100}},
    {'U', {0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110}},
    {'V', {0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100}},
    {'W', {0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010}},
    {'X', {0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001}},
    {'Y', {0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100}},
    {'Z', {0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111}},
    {'0', {0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110}},
    {'1', {0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110}},
    {'2', {0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111}},
    {'3', {0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110}},
    {'4', {0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010}},
    {'5', {0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110}},
    {'6', {0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110}},
    {'7', {0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000}},
    {'8', {0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110}},
    {'9', {0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100}},
    {'.', {0, 0, 0, 0, 0, 0b01100, 0b01100}},
    {',', {0, 0, 0, 0, 0b01100, 0b00100, 0b01000}},
    {':', {0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0}},
    {';', {0, 0b01100, 0b01100, 0, 0b01100, 0b00100, 0b01000}},
    {'-', {0, 0, 0, 0b11111, 0, 0, 0}},
    {'+', {0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0}},
    {'%', {0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011}},
    {'(', {0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010}},
    {')', {0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000}},
    {'/', {0, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0}},
    {'=', {0, 0, 0b11111, 0, 0b11111, 0, 0}},
    {'<', {0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010}},
    {'>', {0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000}},
    {'_', {0, 0, 0, 0, 0, 0, 0b11111}},
    {'\'', {0b00100, 0b00100, 0b01000, 0, 0, 0, 0}},
    {'?', {0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100}},
    {'!', {0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0b00100}},
    {'*', {0, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0}},
    {'#', {0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010}},
    {'[', {0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110}},
    {']', {0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110}},
};

const Glyph& GlyphOf(char ch) {
  const char upper = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  for (const Glyph& glyph : kFont) {
    if (glyph.ch == upper) return glyph;
  }
  for (const Glyph& glyph : kFont) {
    if (glyph.ch == '?') return glyph;
  }
  return kFont[0];
}

class Canvas {
 public:
  Canvas(int width, int height) : width_(width), height_(height), rgb_(std::size_t(width) * height * 3) {
    Fill(0, 0, width, height, kBackground);
  }
  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<std::uint8_t>& rgb() const { return rgb_; }

  void Set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
    std::uint8_t* p = &rgb_[(std::size_t(y) * width_ + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  void Fill(int x, int y, int w, int h, Rgb c) {
    for (int yy = std::max(0, y); yy < std::min(height_, y + h); ++yy) {
      for (int xx = std::max(0, x); xx < std::min(width_, x + w); ++xx) Set(xx, yy, c);
    }
  }
  // Draws `text` with its top left at (x, y); each font pixel is scale x scale. Returns the
  // x after the text.
  int Text(int x, int y, const std::string& text, int scale, Rgb c) {
    for (const char ch : text) {
      const Glyph& glyph = GlyphOf(ch);
      for (int row = 0; row < 7; ++row) {
        for (int col = 0; col < 5; ++col) {
          if (glyph.rows[static_cast<std::size_t>(row)] & (0x10 >> col)) {
            Fill(x + col * scale, y + row * scale, scale, scale, c);
          }
        }
      }
      x += 6 * scale;
    }
    return x;
  }

 private:
  int width_, height_;
  std::vector<std::uint8_t> rgb_;
};

// Splits `text` into lines of at most `width` characters at spaces.
std::vector<std::string> Wrap(const std::string& text, std::size_t width) {
  std::vector<std::string> lines;
  std::string line;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    std::string word = text.substr(start, end - start);
    start = end + 1;
    while (word.size() > width) {  // a word longer than a line is cut
      if (!line.empty()) lines.push_back(std::move(line)), line.clear();
      lines.push_back(word.substr(0, width));
      word.erase(0, width);
    }
    if (!line.empty() && line.size() + 1 + word.size() > width) lines.push_back(std::move(line)), line.clear();
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

std::string Pad(std::string text, std::size_t width) {
  if (text.size() < width) text.append(width - text.size(), ' ');
  return text;
}

Rgb CategoryColour(StudyCategory category) {
  switch (category) {
    case StudyCategory::kNormal: return kNormal;
    case StudyCategory::kHighRisk: return kHighRisk;
    case StudyCategory::kFailed: return kWarning;
  }
  return kText;
}

void DrawHistogram(Canvas& canvas, int x, int y, int w, int h, const LungFindings& lung, Rgb colour) {
  canvas.Text(x, y, std::string(encoding::LungName(lung.lung)) + " density (voxels per HU bin)", 2, kText);
  const int top = y + 24;
  const int chart_h = h - 24 - 40;
  const std::uint64_t peak = *std::max_element(lung.histogram.begin(), lung.histogram.end());
  const int bar_w = w / kHistogramBins;
  canvas.Fill(x, top + chart_h, bar_w * kHistogramBins, 2, kDim);  // axis
  for (int bin = 0; bin < kHistogramBins; ++bin) {
    const std::uint64_t count = lung.histogram[static_cast<std::size_t>(bin)];
    const int bar_h = peak == 0 ? 0 : static_cast<int>(std::lround(double(count) / double(peak) * chart_h));
    canvas.Fill(x + bin * bar_w + 1, top + chart_h - bar_h, bar_w - 2, bar_h, colour);
  }
  for (int bin = 0; bin <= kHistogramBins; bin += 4) {  // HU labels every 200 HU
    const int hu = kHistogramMinHu + bin * kHistogramBinHu;
    canvas.Fill(x + bin * bar_w, top + chart_h, 1, 6, kDim);
    canvas.Text(x + bin * bar_w - 8, top + chart_h + 10, std::to_string(hu), 1, kDim);
  }
  canvas.Text(x, top + chart_h + 24, "HU, bins of " + std::to_string(kHistogramBinHu) + "; peak " +
                                         std::to_string(peak) + " voxels",
              1, kDim);
}

Canvas SummaryPage(const ResultInput& input, const AnalysisResult& analysis) {
  constexpr int kWidth = 1024;
  constexpr std::size_t kColumns = 82;  // characters per line at scale 2 with margins
  constexpr std::size_t kMaxTableRows = 18;
  Canvas canvas(kWidth, 1024);
  int y = 24;
  canvas.Text(24, y, "Reference analysis - not for diagnosis", 4, kWarning);
  y += 44;
  for (const auto& line : Wrap(kReferenceAnalysisLabel, kColumns)) {
    canvas.Text(24, y, line, 2, kDim);
    y += 20;
  }
  y += 8;
  canvas.Text(24, y, "Study: " + input.ct.study_description, 2, kDim);
  y += 36;
  const int after = canvas.Text(24, y, "Category: ", 3, kText);
  canvas.Text(after, y, encoding::CategoryName(analysis.category), 3, CategoryColour(analysis.category));
  y += 32;
  std::vector<std::string> notes;
  if (analysis.category == StudyCategory::kFailed) {
    for (auto& line : Wrap("Reason: " + (analysis.failure_reason.empty() ? std::string("unknown") : analysis.failure_reason), kColumns)) {
      notes.push_back(std::move(line));
    }
  }
  if (!analysis.category_rule.empty()) {
    for (auto& line : Wrap("Rule: " + analysis.category_rule, kColumns)) notes.push_back(std::move(line));
  }
  for (std::size_t i = 0; i < notes.size() && i < 4; ++i, y += 20) canvas.Text(24, y, notes[i], 2, kText);
  y += 12;
  if (analysis.category == StudyCategory::kFailed) return canvas;

  canvas.Text(24, y, "Lesions: " + std::to_string(analysis.lesions.size()), 2, kText);
  y += 26;
  if (!analysis.lesions.empty()) {
    canvas.Text(24, y, Pad("#", 4) + Pad("type", 22) + Pad("lung", 7) + Pad("vol ml", 9) + Pad("mean HU", 9) +
                           "position x, y, z mm",
                2, kDim);
    y += 20;
    for (std::size_t i = 0; i < analysis.lesions.size() && i < kMaxTableRows; ++i, y += 20) {
      const LesionFinding& l = analysis.lesions[i];
      canvas.Text(24, y,
                  Pad(std::to_string(i + 1), 4) + Pad(encoding::LesionTypeName(l.type), 22) +
                      Pad(l.lung == Lung::kLeft ? "left" : "right", 7) + Pad(Decimal(l.volume_ml, 2), 9) +
                      Pad(Decimal(l.mean_hu, 0), 9) + Decimal(l.x_mm, 0) + ", " + Decimal(l.y_mm, 0) + ", " +
                      Decimal(l.z_mm, 0),
                  2, l.type == LesionType::kConsolidation ? kConsolidation : kGroundGlass);
    }
    if (analysis.lesions.size() > kMaxTableRows) {
      canvas.Text(24, y, "... and " + std::to_string(analysis.lesions.size() - kMaxTableRows) +
                             " more (all are in the measurement report)",
                  2, kDim);
      y += 20;
    }
  }
  y += 10;
  for (const LungFindings& lung : analysis.lungs) {
    canvas.Text(24, y, std::string("Involvement, ") + encoding::LungName(lung.lung) + ": " +
                           Decimal(lung.involvement_percent, 1) + " % (lesions " + Decimal(lung.lesion_volume_ml, 1) +
                           " ml of " + Decimal(lung.volume_ml, 0) + " ml)",
                2, kText);
    y += 22;
  }
  y += 16;
  const int chart_h = std::min(300, canvas.height() - y - 16);
  if (chart_h >= 120) {
    DrawHistogram(canvas, 24, y, 472, chart_h, analysis.lungs[0], kRightBars);
    DrawHistogram(canvas, 528, y, 472, chart_h, analysis.lungs[1], kLeftBars);
  }
  return canvas;
}

// The slice through the lesion's centroid (the analysed slice nearest its z), lung window,
// the lesion outlined.
Canvas KeyImagePage(const ResultInput& input, const AnalysisResult& analysis, std::size_t lesion_index,
                    std::size_t* slice_out) {
  const LesionFinding& lesion = analysis.lesions[lesion_index];
  std::size_t best = std::min<std::size_t>(lesion.first_slice, input.slices.size() - 1);
  for (std::size_t z = 0; z < input.slices.size(); ++z) {
    if (std::abs(input.slices[z].z_mm - lesion.z_mm) < std::abs(input.slices[best].z_mm - lesion.z_mm)) best = z;
  }
  *slice_out = best;
  const HuImage& image = input.slices[best];
  const int size = static_cast<int>(image.size);
  const int factor = std::max(1, 512 / std::max(1, size));
  const int display = size * factor;
  constexpr int kCaption = 72;
  Canvas canvas(std::max(display, 512), display + kCaption);
  const std::size_t plane = std::size_t(image.size) * image.size;
  const bool have_mask = analysis.lesion_mask.slices == input.slices.size() && analysis.lesion_mask.size == image.size &&
                         analysis.lesion_mask.labels.size() == plane * input.slices.size();
  auto inside = [&](int row, int col) {
    if (!have_mask || row < 0 || col < 0 || row >= size || col >= size) return false;
    return analysis.lesion_mask.At(static_cast<std::uint32_t>(best), static_cast<std::uint32_t>(row),
                                   static_cast<std::uint32_t>(col)) == lesion.label;
  };
  constexpr double kLevel = -600, kWidth = 1500;  // lung window
  for (int y = 0; y < display; ++y) {
    for (int x = 0; x < display; ++x) {
      const double hu = image.At(static_cast<std::uint32_t>(y / factor), static_cast<std::uint32_t>(x / factor));
      const double v = std::clamp((hu - (kLevel - kWidth / 2)) / kWidth, 0.0, 1.0) * 255.0;
      const auto g = static_cast<std::uint8_t>(std::lround(v));
      canvas.Set(x, kCaption + y, {g, g, g});
    }
  }
  const Rgb outline = lesion.type == LesionType::kConsolidation ? kConsolidation : kGroundGlass;
  for (int y = 0; y < display; ++y) {
    for (int x = 0; x < display; ++x) {
      if (!inside(y / factor, x / factor)) continue;
      bool edge = false;
      for (const auto& [dy, dx] : {std::pair{-2, 0}, {2, 0}, {0, -2}, {0, 2}}) {
        const int ny = y + dy, nx = x + dx;
        if (ny < 0 || nx < 0 || ny >= display || nx >= display || !inside(ny / factor, nx / factor)) edge = true;
      }
      if (edge) canvas.Set(x, kCaption + y, outline);
    }
  }
  canvas.Text(8, 8, "Reference analysis - not for diagnosis", 2, kWarning);
  canvas.Text(8, 32, "Lesion " + std::to_string(lesion_index + 1) + " of " + std::to_string(analysis.lesions.size()) +
                         ": " + encoding::LesionTypeName(lesion.type) + ", " + encoding::LungName(lesion.lung) + ", " +
                         Decimal(lesion.volume_ml, 2) + " ml, " + Decimal(lesion.mean_hu, 0) + " HU",
              1, outline);
  canvas.Text(8, 48, "Slice z " + Decimal(image.z_mm, 1) + " mm; lung window " + Decimal(kLevel, 0) + "/" +
                         Decimal(kWidth, 0) + "; patient right on the image left",
              1, kDim);
  return canvas;
}

Expected<ResultObject> WritePage(const fs::path& path, const ResultInput& input, int page, const Canvas& canvas,
                                 const std::string& comment, const CtInstance* source) {
  const std::string& scan_uid = input.ct.scan_uid;
  const std::string series_uid = ReportSeriesUid(scan_uid);
  const std::string sop_uid = ReportInstanceUid(scan_uid, page);
  const auto now = encoding::Now();
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  Putter put;
  auto str = [&](const DcmTagKey& tag, const std::string& value) {
    put(ds->putAndInsertString(tag, value.c_str()), tag.toString().c_str());
  };
  auto u16 = [&](const DcmTagKey& tag, Uint16 value) {
    put(ds->putAndInsertUint16(tag, value), tag.toString().c_str());
  };
  const std::string& acq = input.ct.acquisition_date_time;
  str(DCM_SpecificCharacterSet, "ISO_IR 192");
  str(DCM_SOPClassUID, kSecondaryCaptureStorage);
  str(DCM_SOPInstanceUID, sop_uid);
  str(DCM_PatientName, input.ct.patient_name);
  str(DCM_PatientID, input.ct.patient_id);
  str(DCM_PatientBirthDate, "");
  str(DCM_PatientSex, "");
  str(DCM_StudyInstanceUID, input.ct.study_uid);
  str(DCM_StudyDate, acq.size() >= 14 ? acq.substr(0, 8) : now.date);
  str(DCM_StudyTime, acq.size() >= 14 ? acq.substr(8, 6) : now.time);
  str(DCM_StudyID, "");
  str(DCM_AccessionNumber, "");
  str(DCM_ReferringPhysicianName, "");
  str(DCM_StudyDescription, input.ct.study_description);
  str(DCM_Modality, "OT");
  str(DCM_SeriesInstanceUID, series_uid);
  str(DCM_SeriesNumber, std::to_string(kReportSeriesNumber));
  str(DCM_SeriesDescription, "Reference lung analysis report - not for diagnosis");
  str(DCM_Manufacturer, kManufacturer);
  str(DCM_ConversionType, "WSD");
  str(DCM_InstanceNumber, std::to_string(page));
  str(DCM_ContentDate, now.date);
  str(DCM_ContentTime, now.time);
  str(DCM_ImageType, "DERIVED\\SECONDARY");
  str(DCM_BurnedInAnnotation, "YES");
  str(DCM_ImageComments, comment + " Reference analysis from the ctagent reference imaging center. NOT A DIAGNOSTIC "
                                   "PRODUCT.");
  if (source) {
    DcmItem* item = nullptr;
    put(ds->findOrCreateSequenceItem(DCM_SourceImageSequence, item, 0), "SourceImageSequence");
    if (item) {
      put(item->putAndInsertString(DCM_ReferencedSOPClassUID, kCtImageStorage), "ReferencedSOPClassUID");
      put(item->putAndInsertString(DCM_ReferencedSOPInstanceUID, source->sop_instance_uid.c_str()),
          "ReferencedSOPInstanceUID");
    }
  }
  u16(DCM_SamplesPerPixel, 3);
  str(DCM_PhotometricInterpretation, "RGB");
  u16(DCM_PlanarConfiguration, 0);
  u16(DCM_Rows, static_cast<Uint16>(canvas.height()));
  u16(DCM_Columns, static_cast<Uint16>(canvas.width()));
  u16(DCM_BitsAllocated, 8);
  u16(DCM_BitsStored, 8);
  u16(DCM_HighBit, 7);
  u16(DCM_PixelRepresentation, 0);
  put(ds->putAndInsertUint8Array(DCM_PixelData, canvas.rgb().data(), static_cast<unsigned long>(canvas.rgb().size())),
      "PixelData");
  if (!put.failure().empty()) return MakeError(ErrorKind::kInternal, "cannot build report page: " + put.failure());
  if (auto st = encoding::SaveDurably(file, path); !st) return MakeError(st.error().WithContext("report page"));
  return ResultObject{"report", kSecondaryCaptureStorage, series_uid, sop_uid, path};
}

}  // namespace

Expected<std::vector<ResultObject>> WriteReport(const fs::path& dir, const ResultInput& input,
                                                const AnalysisResult& analysis) {
  if (auto st = encoding::CheckInput(input); !st) return MakeError(st.error());
  std::vector<ResultObject> pages;
  auto name = [&](int page) {
    char text[32];
    std::snprintf(text, sizeof text, "report-%03d.dcm", page);
    return dir / text;
  };
  auto summary = WritePage(name(1), input, 1, SummaryPage(input, analysis), "Summary of the lung analysis.", nullptr);
  if (!summary) return MakeError(summary.error());
  pages.push_back(std::move(*summary));
  if (analysis.category == StudyCategory::kFailed) return pages;
  for (std::size_t i = 0; i < analysis.lesions.size() && i < kMaxKeyImages; ++i) {
    std::size_t slice = 0;
    const Canvas canvas = KeyImagePage(input, analysis, i, &slice);
    const int page = static_cast<int>(i) + 2;
    auto written = WritePage(name(page), input, page, canvas, "Key image of lesion " + std::to_string(i + 1) + ".",
                             &input.ct_instances[slice]);
    if (!written) return MakeError(written.error());
    pages.push_back(std::move(*written));
  }
  return pages;
}

}  // namespace ctagent::cloud
