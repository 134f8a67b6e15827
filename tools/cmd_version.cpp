// `trove version`: what this binary is and what it was built with.
//
// `trove version --device` also opens the Vulkan device trove would compute on (the same choice as the
// engine: TROVE_VK_DEVICE, else the first discrete GPU, ...) and prints it on one line. It is the
// cheapest proof that a machine's Vulkan loader and driver work for trove before a heavy run starts:
// scripts/device-run.sh calls it on the GPU machine.
#include <cstdio>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "kernels/vk/runtime.h"
#include "tools/command.h"

namespace {

std::string device_line(const trove::vk::DeviceFeatures& f) {
  const char* kind = f.discrete ? "discrete GPU" : f.is_cpu ? "CPU device" : "GPU";
  std::string coopmat = f.coopmat_shapes.empty()
                            ? (f.cooperative_matrix ? "offered, not usable with this build" : "no")
                            : fmt::format("{} shapes", f.coopmat_shapes.size());
  const char* cm2 = f.cooperative_matrix2           ? "yes"
                    : f.cooperative_matrix2_offered ? "offered, not enabled (validation or TROVE_VK_NO_CM2)"
                                                    : "no";
  return fmt::format(
      "vulkan: {}; driver {}; API {}.{}.{}; {}; {:.1f} GiB device-local; subgroup {}; fp16 {}; "
      "int8 {}; KHR cooperative matrix: {}; NV cooperative matrix 2: {}",
      f.name, f.driver, VK_API_VERSION_MAJOR(f.api_version), VK_API_VERSION_MINOR(f.api_version),
      VK_API_VERSION_PATCH(f.api_version), kind, static_cast<double>(f.device_local_bytes) / (1ull << 30),
      f.subgroup_size, f.fp16_arithmetic ? "yes" : "no", f.int8_arithmetic ? "yes" : "no", coopmat, cm2);
}

void add_version(CLI::App& sub) {
  auto device = std::make_shared<bool>(false);
  sub.add_flag("--device", *device, "Also open the Vulkan device trove would use and print it on one line");
  sub.callback([device] {
    std::printf("trove 0.1.0 (C++20, built %s)\n", __DATE__);
    if (!*device) return;
    trove::vk::DeviceOptions o;
    o.pipeline_cache_on_disk = false;
    auto dev = trove::vk::Device::open(o);
    if (!dev.ok()) trove::cli::fail(dev.status().message());
    std::printf("%s\n", device_line((*dev)->features()).c_str());
  });
}
trove::cli::CommandRegistration reg{"version", "Print trove's version (and with --device, its Vulkan device)",
                                    add_version};
}  // namespace
