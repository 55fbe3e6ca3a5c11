// Prints the configuration schema as Markdown, for docs/configuration.md:
//   cmake --build build --target ctagent-config-schema && build/config/ctagent-config-schema
#include <cstdio>

#include "config/config.hpp"

int main() {
  const std::string md = ctagent::config::SchemaMarkdown();
  std::fwrite(md.data(), 1, md.size(), stdout);
  return 0;
}
