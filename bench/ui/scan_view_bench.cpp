// The scan view's image path (agent/ui/scan_view.hpp), for the choice between rendering on the
// agent and decoding DICOM in the browser (docs/operator-guide.md, "How the images are rendered"):
// a painted chest phantom with two lesions at the demo's 256 x 256, analysed and encoded by the
// reference center's own code (CT slices, SEG, report, SR) into a results folder, then:
//   - bytes per slice: the raw 8-bit pixels the page gets, the same as PNG (DCMTK's PNG plugin),
//     and the DICOM file a browser-side viewer would have to fetch and decode;
//   - ms per slice: DCMTK's windowed rendering (dcmimgle), and the PNG encoding on top of it;
//   - ms to index the scan once (CT headers, SEG frames, report from SEG + CT).
// A bench: it prints figures, it asserts nothing.
//
//   scan_view_bench [--slices N] [--reps N]
#include <unistd.h>

#include <dcmtk/config/osconfig.h>  // first, as DCMTK asks
#include <dcmtk/dcmimgle/dcmimage.h>
#include <dcmtk/dcmimage/dipipng.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "base/uid.hpp"
#include "agent/ui/scan_view.hpp"
#include "cloud/worker/analysis.hpp"
#include "cloud/worker/dicom_writer.hpp"
#include "cloud/worker/result_encoding.hpp"
#include "drivers/sim/phantom.hpp"

namespace fs = std::filesystem;
using namespace ctagent;
using Clock = std::chrono::steady_clock;

namespace {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

long PngBytes(const fs::path& file, ui::Window window, double& ms) {
  const auto t0 = Clock::now();
  DicomImage image(file.c_str());
  image.setWindow(window.center, window.width);
  DiPNGPlugin png;
  std::FILE* out = std::tmpfile();
  if (out == nullptr || image.writePluginFormat(&png, out) == 0) {
    if (out != nullptr) std::fclose(out);
    return -1;
  }
  const long bytes = std::ftell(out);
  std::fclose(out);
  ms = Ms(Clock::now() - t0);
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint32_t slice_count = 41;
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--slices") == 0) slice_count = static_cast<std::uint32_t>(std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::atoi(argv[i + 1]));
  }
  const std::uint32_t size = 256;
  const double pixel_mm = 1.5, spacing_mm = 5.0;
  const fs::path dir = fs::temp_directory_path() / ("scan_view_bench-" + std::to_string(::getpid()));
  const fs::path results = dir / "results";
  fs::create_directories(results);

  const drivers::sim::ChestPhantom3d chest({{drivers::sim::Lesion::Kind::kGroundGlass, -65, 10, 0, 16, -650},
                                            {drivers::sim::Lesion::Kind::kConsolidation, 70, -20, 30, 20, 35}});
  std::vector<cloud::HuImage> slices;
  const double z0 = -spacing_mm * (slice_count - 1) / 2;
  for (std::uint32_t s = 0; s < slice_count; ++s) {
    cloud::HuImage im;
    im.size = size;
    im.pixel_spacing_mm = pixel_mm;
    im.z_mm = z0 + s * spacing_mm;
    im.hu.resize(std::size_t{size} * size);
    for (std::uint32_t r = 0; r < size; ++r) {
      for (std::uint32_t c = 0; c < size; ++c) {
        // Some noise, as a reconstruction has (a flat phantom compresses unrealistically well).
        const double noise = 25.0 * std::sin(0.37 * r * c + 1.3 * s) * std::cos(0.11 * r + 0.7 * c);
        im.hu[std::size_t{r} * size + c] = static_cast<float>(chest.HuAt(im.XOfColumn(c), im.YOfRow(r), im.z_mm) + noise);
      }
    }
    slices.push_back(std::move(im));
  }
  const auto analysis = cloud::Analyze(slices);
  cloud::ResultInput input;
  input.ct.scan_uid = MintDicomUid();
  input.ct.study_uid = MintDicomUid();
  input.ct.series_uid = MintDicomUid();
  input.ct.frame_of_reference_uid = MintDicomUid();
  input.ct.patient_id = "BENCH";
  input.ct.slice_thickness_mm = spacing_mm;
  std::uintmax_t dicom_bytes = 0;
  for (std::uint32_t s = 0; s < slice_count; ++s) {
    cloud::SlicePlacement p;
    p.instance_number = static_cast<std::int32_t>(s + 1);
    p.z_mm = slices[s].z_mm;
    p.sop_instance_uid = MintDicomUid();
    const fs::path file = results / (p.sop_instance_uid + ".dcm");
    if (!cloud::WriteCtSlice(file, input.ct, p, slices[s])) return 1;
    dicom_bytes += fs::file_size(file);
    input.ct_instances.push_back({p.sop_instance_uid, p.z_mm});
  }
  input.slices = slices;
  fs::create_directories(dir / "set");
  auto set = cloud::WriteResultSet(dir / "set", input, analysis);
  if (set) {
    for (const auto& o : *set) fs::rename(o.file, results / (o.sop_instance_uid + ".dcm"));
  }

  const auto t_index = Clock::now();
  auto images = ui::IndexScan(results);
  const double index_ms = Ms(Clock::now() - t_index);
  if (!images) {
    std::fprintf(stderr, "index: %s\n", images.error().message().c_str());
    return 1;
  }
  std::vector<double> render_ms, png_ms;
  std::vector<long> png_bytes;
  for (int r = 0; r < reps; ++r) {
    for (std::size_t s = 0; s < images->slices.size(); ++s) {
      for (const ui::Window w : {ui::kLungWindow, ui::kMediastinalWindow}) {
        const auto t0 = Clock::now();
        auto px = ui::RenderSlice(*images, s, w);
        render_ms.push_back(Ms(Clock::now() - t0));
        if (!px) return 1;
        double ms = 0;
        png_bytes.push_back(PngBytes(images->slices[s].file, w, ms));
        png_ms.push_back(ms);
      }
    }
  }
  std::vector<double> png_kb(png_bytes.begin(), png_bytes.end());
  std::printf("scan_view_bench: %u slices of %u x %u, %zu lesion(s) in the SEG\n", slice_count, size, size,
              images->report["lesions"].size());
  std::printf("  bytes per slice: raw 8-bit %u (overlay the same), PNG median %.0f (DCMTK PNG plugin), "
              "DICOM CT file %.0f\n",
              size * size, Median(png_kb), static_cast<double>(dicom_bytes) / slice_count);
  std::printf("  ms per slice: DCMTK windowed render median %.2f (%zu renders), render + PNG encode median %.2f\n",
              Median(render_ms), render_ms.size(), Median(png_ms));
  std::printf("  ms to index the scan once (CT headers, SEG, report from SEG + CT): %.1f\n", index_ms);
  fs::remove_all(dir);
  return 0;
}
