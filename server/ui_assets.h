// server/ui_assets.h — the dashboard's files (server/ui/*), embedded in the binary at build time by
// cmake/EmbedFiles.cmake, so `trove serve` needs nothing on disk or on the network to serve /ui.
//
// Contract: find_ui_asset("index.html") gives the bytes of server/ui/index.html as they were when the
// binary was built; nullptr for a name that is not a file of that folder (no subfolders, no "..").
#pragma once

#include <string_view>

namespace trove::server {

struct UiAsset {
  std::string_view name;
  std::string_view bytes;
};

const UiAsset* find_ui_asset(std::string_view name);

}  // namespace trove::server
