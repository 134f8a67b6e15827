#include "engine/runtime/l2_warm_plan.h"

#include <algorithm>
#include <charconv>
#include <iterator>
#include <utility>

#include <fmt/format.h>

namespace trove::engine {

Result<std::vector<L2WarmItem>> parse_l2_warm(std::string_view spec) {
  if (spec == "none") return std::vector<L2WarmItem>{};
  static constexpr std::pair<std::string_view, WarmAt> kAts[] = {
      {"rope", kWarmRope}, {"attn", kWarmAttn}, {"o", kWarmO}, {"gu", kWarmGu}, {"down", kWarmDown}};
  static constexpr std::pair<std::string_view, WarmWhat> kWhats[] = {
      {"qkv", kWarmWqkv}, {"o", kWarmWo}, {"gu", kWarmWgu}, {"down", kWarmWdown}};
  auto bad = [&](std::string_view item) {
    return Status::InvalidArgument(fmt::format(
        "TROVE_L2_WARM='{}': '{}' is not AT:WHAT[MB] (AT: rope, attn, o, gu or down; WHAT: o, gu, down or qkv; "
        "MB: megabytes, the whole weight if absent), e.g. attn:o,o:gu24", spec, item));
  };
  std::vector<L2WarmItem> items;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string_view item = spec.substr(pos, comma - pos);
    pos = comma + 1;
    const size_t colon = item.find(':');
    if (colon == std::string_view::npos) return bad(item);
    const std::string_view at = item.substr(0, colon), rest = item.substr(colon + 1);
    L2WarmItem it{};
    auto a = std::find_if(std::begin(kAts), std::end(kAts), [&](const auto& p) { return p.first == at; });
    auto w = std::find_if(std::begin(kWhats), std::end(kWhats), [&](const auto& p) { return rest.starts_with(p.first); });
    if (a == std::end(kAts) || w == std::end(kWhats)) return bad(item);
    it.at = a->second;
    it.what = w->second;
    const std::string_view mb = rest.substr(w->first.size());
    if (!mb.empty()) {
      uint64_t n = 0;
      auto [end, ec] = std::from_chars(mb.data(), mb.data() + mb.size(), n);
      if (ec != std::errc() || end != mb.data() + mb.size() || n == 0) return bad(item);
      it.bytes = n << 20;
    }
    items.push_back(it);
  }
  return items;
}

}  // namespace trove::engine
