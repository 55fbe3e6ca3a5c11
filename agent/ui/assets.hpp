// The operator's page's files (agent/ui/assets/: HTML, JS, CSS), embedded in the binary at build
// time by cmake/EmbedFiles.cmake: the page needs no file on disk and nothing from the internet.
#pragma once

#include <span>
#include <string_view>

namespace ctagent::ui {

struct Asset {
  std::string_view path;          // "/index.html", "/app.js": the file's path under agent/ui/assets/
  std::string_view content_type;  // from the extension
  std::string_view body;
};

std::span<const Asset> EmbeddedAssets();

}  // namespace ctagent::ui
