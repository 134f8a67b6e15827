// `trove version`: what this binary is and what it was built with.
//
// `trove version --device` also opens the Vulkan device trove would compute on (the same choice as the
// engine: TROVE_VK_DEVICE, else the first discrete GPU, ...) and prints it on one line. It is the
// cheapest proof that a machine's Vulkan loader and driver work for trove before a heavy run starts:
// scripts/device-run.sh calls it on the GPU machine. `--matrix` adds one line per matrix-unit shape the
// device offers (VK_KHR_cooperative_matrix: M×N×K and component types per subgroup; NV cooperative
// matrix 2: the flexible dimensions' granularities per workgroup size) — what a kernel for that GPU
// can tile with.
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
  const char* dot = !f.integer_dot_product            ? "no"
                    : f.integer_dot_4x8_accelerated ? "yes (4x8 packed: accelerated)"
                                                    : "yes (4x8 packed: not accelerated)";
  return fmt::format(
      "vulkan: {}; driver {}; API {}.{}.{}; {}; {:.1f} GiB device-local; subgroup {}; fp16 {}; "
      "int8 {}; int8 dot product {}; KHR cooperative matrix: {}; NV cooperative matrix 2: {}",
      f.name, f.driver, VK_API_VERSION_MAJOR(f.api_version), VK_API_VERSION_MINOR(f.api_version),
      VK_API_VERSION_PATCH(f.api_version), kind, static_cast<double>(f.device_local_bytes) / (1ull << 30),
      f.subgroup_size, f.fp16_arithmetic ? "yes" : "no", f.int8_arithmetic ? "yes" : "no", dot, coopmat, cm2);
}

// VkComponentTypeKHR (and NV's additions) by value; the number itself where this build does not know it.
std::string component(uint32_t t) {
  switch (t) {
    case 0: return "f16";
    case 1: return "f32";
    case 2: return "f64";
    case 3: return "s8";
    case 4: return "s16";
    case 5: return "s32";
    case 6: return "s64";
    case 7: return "u8";
    case 8: return "u16";
    case 9: return "u32";
    case 10: return "u64";
    case 1000141000: return "bf16";
    case 1000491000: return "s8 packed";
    case 1000491001: return "u8 packed";
    case 1000491002: return "e4m3";
    case 1000491003: return "e5m2";
    default: return fmt::format("type{}", t);
  }
}

std::string scope(uint32_t s) {
  switch (s) {
    case 1: return "device";
    case 2: return "workgroup";
    case 3: return "subgroup";
    case 5: return "queue family";
    default: return fmt::format("scope{}", s);
  }
}

void print_matrix_shapes(const trove::vk::DeviceFeatures& f) {
  if (f.coopmat_shapes.empty()) std::printf("KHR cooperative matrix: no usable shapes\n");
  for (const auto& c : f.coopmat_shapes) {
    std::printf("KHR cooperative matrix: %ux%ux%u  A %s  B %s  C %s  result %s  (%s)\n", c.m, c.n, c.k,
                component(c.a).c_str(), component(c.b).c_str(), component(c.c).c_str(),
                component(c.result).c_str(), scope(c.scope).c_str());
  }
  for (const auto& c : f.coopmat2_flexible) {
    std::printf("NV cooperative matrix 2: granularity %ux%ux%u  A %s  B %s  C %s  result %s  (%s, %u invocations)\n",
                c.m_granularity, c.n_granularity, c.k_granularity, component(c.a).c_str(), component(c.b).c_str(),
                component(c.c).c_str(), component(c.result).c_str(), scope(c.scope).c_str(), c.invocations);
  }
  if (!f.coopmat2_flexible.empty()) {
    std::printf("NV cooperative matrix 2: largest dimension %u, workgroups up to %u invocations, %u bytes of shared memory reserved\n",
                f.coopmat2_max_dimension, f.coopmat2_max_workgroup, f.coopmat2_reserved_shared);
  }
}

void add_version(CLI::App& sub) {
  auto device = std::make_shared<bool>(false);
  auto matrix = std::make_shared<bool>(false);
  sub.add_flag("--device", *device, "Also open the Vulkan device trove would use and print it on one line");
  sub.add_flag("--matrix", *matrix, "Open the device as --device does and also list the matrix-unit (cooperative matrix) shapes it offers");
  sub.callback([device, matrix] {
    std::printf("trove 0.1.0 (C++20, built %s)\n", __DATE__);
    if (!*device && !*matrix) return;
    trove::vk::DeviceOptions o;
    o.pipeline_cache_on_disk = false;
    auto dev = trove::vk::Device::open(o);
    if (!dev.ok()) trove::cli::fail(dev.status().message());
    std::printf("%s\n", device_line((*dev)->features()).c_str());
    if (*matrix) print_matrix_shapes((*dev)->features());
  });
}
trove::cli::CommandRegistration reg{"version", "Print trove's version (and with --device, its Vulkan device)",
                                    add_version};
}  // namespace
