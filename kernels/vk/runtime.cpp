// Vulkan runtime implementation (see runtime.h for the contract).
#include "kernels/vk/runtime.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <unordered_map>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <fmt/format.h>

#include "common/log.h"

namespace trove::vk {
namespace {

std::string vk_err(const char* what, VkResult r) { return fmt::format("Vulkan: {} failed (VkResult {})", what, static_cast<int>(r)); }

#define TROVE_VK(call, what)                                        \
  do {                                                              \
    VkResult _r = (call);                                           \
    if (_r != VK_SUCCESS) return Status::Internal(vk_err(what, _r)); \
  } while (0)

VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                             VkDebugUtilsMessageTypeFlagsEXT,
                                             const VkDebugUtilsMessengerCallbackDataEXT* data, void* user) {
  if (severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) {
    trove::log::error("vulkan", "validation: {}", data->pMessage);
    static_cast<Device*>(user)->count_validation_error();
    // Test runs under the layer (ctest *_validated) stop at the first error, so it cannot go unseen.
    if (const char* fatal = std::getenv("TROVE_VK_VALIDATION_FATAL"); fatal && std::string(fatal) == "1") std::abort();
  } else {
    trove::log::warn("vulkan", "validation: {}", data->pMessage);
  }
  return VK_FALSE;
}

// One VkInstance per process for each layer set (plain, validated), made on first use and kept to the
// end: devices come and go on it. The NVIDIA driver refused vkCreateInstance (VK_ERROR_INCOMPATIBLE_DRIVER)
// after ~50 instances made and destroyed in one process (test_engine on the H100, 2026-12-06), and a
// public report (Genesis-Embodied-AI/quadrants#465) has repeated instance cycles corrupting
// SubgroupLocalInvocationId on that driver. The instances are never destroyed: a device still open at
// exit would otherwise outlive its instance, and the process's end frees them.
Result<VkInstance> shared_instance(const VkInstanceCreateInfo& ici, bool validated) {
  static std::mutex mu;
  static VkInstance instances[2] = {VK_NULL_HANDLE, VK_NULL_HANDLE};
  std::lock_guard<std::mutex> lock(mu);
  VkInstance& slot = instances[validated ? 1 : 0];
  if (slot == VK_NULL_HANDLE) {
    const VkResult r = vkCreateInstance(&ici, nullptr, &slot);
    if (r != VK_SUCCESS) {
      slot = VK_NULL_HANDLE;  // the next open tries again
      return Status::Unsupported(fmt::format(
          "no Vulkan instance (VkResult {}); install a Vulkan driver (for CPU testing: mesa-vulkan-drivers) "
          "and the loader (libvulkan1)", static_cast<int>(r)));
    }
  }
  return slot;
}

bool env_true(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "1";
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string cache_dir() {
  if (const char* h = std::getenv("TROVE_HOME"); h && *h) return std::string(h) + "/vk-pipeline-cache";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/trove/vk-pipeline-cache";
  return {};
}

}  // namespace

const char* descriptors_name(Descriptors d) {
  switch (d) {
    case Descriptors::kAuto: return "auto";
    case Descriptors::kCached: return "cached";
    case Descriptors::kPush: return "push";
    case Descriptors::kPerDispatch: return "pool";
  }
  return "?";
}

// ---------------------------------------------------------------- Device

Result<std::unique_ptr<Device>> Device::open(const DeviceOptions& opts) {
  std::unique_ptr<Device> d(new Device());
#ifndef NDEBUG
  bool want_validation = true;
#else
  bool want_validation = opts.validation || env_true("TROVE_VK_VALIDATION");
#endif
  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "trove";
  // Vulkan 1.3 where the loader has it: the NV cooperative-matrix-2 shaders are SPIR-V 1.6. Devices
  // below 1.3 still work (the effective version is the lower of the two); 1.2 is the minimum.
  uint32_t loader_version = VK_API_VERSION_1_0;
  vkEnumerateInstanceVersion(&loader_version);
  app.apiVersion = loader_version >= VK_API_VERSION_1_3 ? VK_API_VERSION_1_3 : VK_API_VERSION_1_2;

  std::vector<const char*> layers, exts;
  if (want_validation) {
    uint32_t n = 0;
    vkEnumerateInstanceLayerProperties(&n, nullptr);
    std::vector<VkLayerProperties> lp(n);
    vkEnumerateInstanceLayerProperties(&n, lp.data());
    bool have = std::any_of(lp.begin(), lp.end(), [](const VkLayerProperties& l) {
      return std::strcmp(l.layerName, "VK_LAYER_KHRONOS_validation") == 0;
    });
    if (have) {
      layers.push_back("VK_LAYER_KHRONOS_validation");
      exts.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
    } else if (env_true("TROVE_VK_VALIDATION_FATAL")) {
      return Status::Unsupported("Vulkan validation is required (TROVE_VK_VALIDATION_FATAL=1) but "
                                 "VK_LAYER_KHRONOS_validation is not installed (install vulkan-validationlayers)");
    } else {
      trove::log::warn("vulkan", "Vulkan validation requested but VK_LAYER_KHRONOS_validation is not installed "
                       "(install vulkan-validationlayers); continuing without it");
    }
  }
  VkInstanceCreateInfo ici{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  ici.pApplicationInfo = &app;
  ici.enabledLayerCount = static_cast<uint32_t>(layers.size());
  ici.ppEnabledLayerNames = layers.data();
  ici.enabledExtensionCount = static_cast<uint32_t>(exts.size());
  ici.ppEnabledExtensionNames = exts.data();
  auto instance = shared_instance(ici, !layers.empty());
  if (!instance.ok()) return instance.status();
  d->instance_ = *instance;
  if (!layers.empty()) {
    // Each device's messenger sees the whole shared instance's messages: an error counts on every
    // device open under the layer at the time (tests open one at a time, and stop at the first error).
    auto create = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(d->instance_, "vkCreateDebugUtilsMessengerEXT"));
    if (create) {
      VkDebugUtilsMessengerCreateInfoEXT mci{VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
      mci.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
      mci.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                        VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
      mci.pfnUserCallback = on_validation;
      mci.pUserData = d.get();
      create(d->instance_, &mci, nullptr, &d->messenger_);
    }
  }

  uint32_t n = 0;
  vkEnumeratePhysicalDevices(d->instance_, &n, nullptr);
  std::vector<VkPhysicalDevice> pds(n);
  vkEnumeratePhysicalDevices(d->instance_, &n, pds.data());
  if (pds.empty()) {
    return Status::Unsupported("no Vulkan device found; install your GPU's Vulkan driver, or for CPU testing "
                               "install mesa-vulkan-drivers (lavapipe)");
  }
  std::vector<VkPhysicalDeviceProperties> props(n);
  for (uint32_t i = 0; i < n; ++i) vkGetPhysicalDeviceProperties(pds[i], &props[i]);

  int pick = -1;
  if (const char* sel = std::getenv("TROVE_VK_DEVICE"); sel && *sel) {
    std::string s(sel);
    bool numeric = std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    if (numeric) {
      unsigned long idx = std::stoul(s);
      if (idx < n) pick = static_cast<int>(idx);
    } else {
      for (uint32_t i = 0; i < n && pick < 0; ++i)
        if (lower(props[i].deviceName).find(lower(s)) != std::string::npos) pick = static_cast<int>(i);
    }
    if (pick < 0) {
      std::string list;
      for (uint32_t i = 0; i < n; ++i) list += fmt::format("\n  {}: {}", i, props[i].deviceName);
      return Status::NotFound(fmt::format("TROVE_VK_DEVICE='{}' matches no Vulkan device; use an index or a "
                                          "name substring of one of:{}", s, list));
    }
  } else {
    const VkPhysicalDeviceType order[] = {VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU,
                                          VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU, VK_PHYSICAL_DEVICE_TYPE_CPU,
                                          VK_PHYSICAL_DEVICE_TYPE_OTHER};
    for (auto t : order)
      for (uint32_t i = 0; i < n && pick < 0; ++i)
        if (props[i].deviceType == t) pick = static_cast<int>(i);
    if (pick < 0) pick = 0;
  }
  d->physical_ = pds[pick];
  const auto& p = props[pick];
  if (VK_API_VERSION_MINOR(p.apiVersion) < 2 && VK_API_VERSION_MAJOR(p.apiVersion) == 1) {
    return Status::Unsupported(fmt::format("Vulkan device '{}' supports only API 1.{}; trove needs Vulkan 1.2 "
                                           "(update the driver)", p.deviceName, VK_API_VERSION_MINOR(p.apiVersion)));
  }

  // ---- features
  DeviceFeatures& f = d->features_;
  f.name = p.deviceName;
  f.vendor_id = p.vendorID;
  f.device_id = p.deviceID;
  f.discrete = p.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU;
  f.is_cpu = p.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
  f.api_version = p.apiVersion;
  f.max_storage_buffer_range = p.limits.maxStorageBufferRange;
  f.max_push_constants_size = p.limits.maxPushConstantsSize;
  for (int i = 0; i < 3; ++i) f.max_compute_workgroup_count[i] = p.limits.maxComputeWorkGroupCount[i];
  f.max_compute_workgroup_invocations = p.limits.maxComputeWorkGroupInvocations;
  f.max_compute_shared_memory = p.limits.maxComputeSharedMemorySize;

  VkPhysicalDeviceDriverProperties drv{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  VkPhysicalDeviceMaintenance3Properties m3{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  m3.pNext = &drv;
  VkPhysicalDeviceSubgroupProperties sg{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  sg.pNext = &m3;
  VkPhysicalDeviceProperties2 p2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  p2.pNext = &sg;
  vkGetPhysicalDeviceProperties2(d->physical_, &p2);
  f.driver = fmt::format("{} {}", drv.driverName, drv.driverInfo);
  f.subgroup_size = sg.subgroupSize;
  bool sg_compute = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) != 0;
  f.subgroup_arithmetic = sg_compute && (sg.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
  f.subgroup_shuffle = sg_compute && (sg.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT);
  f.max_memory_allocation_size = m3.maxMemoryAllocationSize;

  uint32_t ne = 0;
  vkEnumerateDeviceExtensionProperties(d->physical_, nullptr, &ne, nullptr);
  std::vector<VkExtensionProperties> dev_exts(ne);
  vkEnumerateDeviceExtensionProperties(d->physical_, nullptr, &ne, dev_exts.data());
  auto has_ext = [&](const char* name) {
    return std::any_of(dev_exts.begin(), dev_exts.end(), [&](const VkExtensionProperties& e) { return std::strcmp(e.extensionName, name) == 0; });
  };

  VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  VkPhysicalDeviceVulkan11Features f11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
  f11.pNext = &f12;
  VkPhysicalDeviceFeatures2 fe2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  fe2.pNext = &f11;
#ifdef VK_NV_cooperative_matrix2
  // NV cooperative matrix 2: queried only where offered (the structs are unknown to older drivers).
  f.cooperative_matrix2_offered = has_ext(VK_NV_COOPERATIVE_MATRIX_2_EXTENSION_NAME);
  VkPhysicalDeviceCooperativeMatrix2FeaturesNV cm2f{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_FEATURES_NV};
  if (f.cooperative_matrix2_offered) {
    cm2f.pNext = fe2.pNext;
    fe2.pNext = &cm2f;
  }
#endif
  // Integer dot products (matvec's q8 form): the extension and its feature bit, queried where offered.
  VkPhysicalDeviceShaderIntegerDotProductFeaturesKHR idpf{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES_KHR};
  const bool idp_offered = has_ext("VK_KHR_shader_integer_dot_product");
  if (idp_offered) {
    idpf.pNext = fe2.pNext;
    fe2.pNext = &idpf;
  }
  vkGetPhysicalDeviceFeatures2(d->physical_, &fe2);
  f.fp16_arithmetic = f12.shaderFloat16;
  f.int8_arithmetic = f12.shaderInt8;
  f.storage_8bit = f12.storageBuffer8BitAccess;
  f.storage_16bit = f11.storageBuffer16BitAccess;

  f.push_descriptors = has_ext(VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
  if (f.push_descriptors) {
    VkPhysicalDevicePushDescriptorPropertiesKHR pdp{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PUSH_DESCRIPTOR_PROPERTIES_KHR};
    VkPhysicalDeviceProperties2 pp{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    pp.pNext = &pdp;
    vkGetPhysicalDeviceProperties2(d->physical_, &pp);
    f.max_push_descriptors = pdp.maxPushDescriptors;
  }
  // The descriptor mode (runtime.h): the options, else TROVE_VK_DESCRIPTORS, else kCached.
  Descriptors mode = opts.descriptors;
  if (mode == Descriptors::kAuto) {
    mode = Descriptors::kCached;
    if (const char* v = std::getenv("TROVE_VK_DESCRIPTORS"); v && *v) {
      const std::string m = lower(v);
      if (m == "cached") mode = Descriptors::kCached;
      else if (m == "push") mode = Descriptors::kPush;
      else if (m == "pool") mode = Descriptors::kPerDispatch;
      else return Status::InvalidArgument(fmt::format("TROVE_VK_DESCRIPTORS='{}' is not a descriptor mode; use cached, "
                                                      "push or pool (or unset it)", v));
    }
  }
  if (mode == Descriptors::kPush && !f.push_descriptors) {
    return Status::Unsupported(fmt::format("push descriptors were asked for (TROVE_VK_DESCRIPTORS=push or "
                                           "DeviceOptions) but Vulkan device '{}' lacks VK_KHR_push_descriptor; "
                                           "use cached or pool", f.name));
  }
  d->descriptors_ = mode;

  f.integer_dot_product = idp_offered && idpf.shaderIntegerDotProduct;
  if (f.integer_dot_product) {
    VkPhysicalDeviceShaderIntegerDotProductPropertiesKHR idpp{
        VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_PROPERTIES_KHR};
    VkPhysicalDeviceProperties2 pp{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    pp.pNext = &idpp;
    vkGetPhysicalDeviceProperties2(d->physical_, &pp);
    f.integer_dot_4x8_accelerated = idpp.integerDotProduct4x8BitPackedSignedAccelerated;
  }
  f.cooperative_matrix = has_ext("VK_KHR_cooperative_matrix");
#ifdef VK_KHR_cooperative_matrix
  // The shapes and component types the device multiplies on its matrix units (headers from
  // scripts/fetch-toolchain.sh on Debian 12; the system's on newer distributions).
  if (f.cooperative_matrix) {
    auto query = reinterpret_cast<PFN_vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR>(
        vkGetInstanceProcAddr(d->instance_, "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR"));
    uint32_t count = 0;
    if (query && query(d->physical_, &count, nullptr) == VK_SUCCESS && count > 0) {
      std::vector<VkCooperativeMatrixPropertiesKHR> cm(count, {VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR});
      if (query(d->physical_, &count, cm.data()) == VK_SUCCESS) {
        for (uint32_t i = 0; i < count; ++i) {
          f.coopmat_shapes.push_back({cm[i].MSize, cm[i].NSize, cm[i].KSize, static_cast<uint32_t>(cm[i].AType),
                                      static_cast<uint32_t>(cm[i].BType), static_cast<uint32_t>(cm[i].CType),
                                      static_cast<uint32_t>(cm[i].ResultType), static_cast<uint32_t>(cm[i].scope)});
        }
      }
    }
  }
#endif
#ifdef VK_NV_cooperative_matrix2
  // Workgroup-scope shapes (granularities per workgroup size) and the limits of NV cm2.
  if (f.cooperative_matrix2_offered) {
    VkPhysicalDeviceCooperativeMatrix2PropertiesNV cm2p{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_PROPERTIES_NV};
    VkPhysicalDeviceProperties2 pp{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    pp.pNext = &cm2p;
    vkGetPhysicalDeviceProperties2(d->physical_, &pp);
    f.coopmat2_max_dimension = cm2p.cooperativeMatrixFlexibleDimensionsMaxDimension;
    f.coopmat2_max_workgroup = cm2p.cooperativeMatrixWorkgroupScopeMaxWorkgroupSize;
    f.coopmat2_reserved_shared = cm2p.cooperativeMatrixWorkgroupScopeReservedSharedMemory;
    auto query = reinterpret_cast<PFN_vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV>(
        vkGetInstanceProcAddr(d->instance_, "vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV"));
    uint32_t count = 0;
    if (query && query(d->physical_, &count, nullptr) == VK_SUCCESS && count > 0) {
      std::vector<VkCooperativeMatrixFlexibleDimensionsPropertiesNV> fl(
          count, {VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_FLEXIBLE_DIMENSIONS_PROPERTIES_NV});
      if (query(d->physical_, &count, fl.data()) == VK_SUCCESS) {
        for (uint32_t i = 0; i < count; ++i) {
          if (fl[i].saturatingAccumulation) continue;
          f.coopmat2_flexible.push_back({fl[i].MGranularity, fl[i].NGranularity, fl[i].KGranularity,
                                         static_cast<uint32_t>(fl[i].AType), static_cast<uint32_t>(fl[i].BType),
                                         static_cast<uint32_t>(fl[i].CType), static_cast<uint32_t>(fl[i].ResultType),
                                         static_cast<uint32_t>(fl[i].scope), fl[i].workgroupInvocations});
        }
      }
    }
  }
#endif

  vkGetPhysicalDeviceMemoryProperties(d->physical_, &d->mem_props_);
  for (uint32_t i = 0; i < d->mem_props_.memoryHeapCount; ++i)
    if (d->mem_props_.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
      f.device_local_bytes = std::max<uint64_t>(f.device_local_bytes, d->mem_props_.memoryHeaps[i].size);

  // ---- queue: a compute-capable family
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(d->physical_, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> qf(nq);
  vkGetPhysicalDeviceQueueFamilyProperties(d->physical_, &nq, qf.data());
  int fam = -1;
  for (uint32_t i = 0; i < nq; ++i)
    if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) { fam = static_cast<int>(i); break; }
  if (fam < 0) return Status::Unsupported(fmt::format("Vulkan device '{}' has no compute queue", f.name));
  d->queue_family_ = static_cast<uint32_t>(fam);
  if (qf[fam].timestampValidBits > 0) f.timestamp_period_ns = p.limits.timestampPeriod;

  // ---- logical device: enable what we detected
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qci{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  qci.queueFamilyIndex = d->queue_family_;
  qci.queueCount = 1;
  qci.pQueuePriorities = &prio;
  VkPhysicalDeviceVulkan12Features en12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  en12.shaderFloat16 = f12.shaderFloat16;
  en12.shaderInt8 = f12.shaderInt8;
  en12.storageBuffer8BitAccess = f12.storageBuffer8BitAccess;
  en12.uniformAndStorageBuffer8BitAccess = f12.uniformAndStorageBuffer8BitAccess;
  VkPhysicalDeviceVulkan11Features en11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
  en11.storageBuffer16BitAccess = f11.storageBuffer16BitAccess;
  en11.uniformAndStorageBuffer16BitAccess = f11.uniformAndStorageBuffer16BitAccess;
  en11.pNext = &en12;
  VkPhysicalDeviceFeatures2 en{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
  en.features.shaderInt16 = fe2.features.shaderInt16;
  en.features.shaderInt64 = fe2.features.shaderInt64;
  en.pNext = &en11;
  std::vector<const char*> dexts;
  VkPhysicalDeviceShaderIntegerDotProductFeaturesKHR idpen{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES_KHR};
  if (f.integer_dot_product) {
    dexts.push_back("VK_KHR_shader_integer_dot_product");
    idpen.shaderIntegerDotProduct = VK_TRUE;
    idpen.pNext = en.pNext;
    en.pNext = &idpen;
  }
  if (f.push_descriptors) dexts.push_back(VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
  // TROVE_PIPELINE_STATS=1: the driver's statistics of each compiled pipeline (registers, shared and
  // local memory on NVIDIA), for occupancy questions no timer answers.
  VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR pepf{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR};
  if (env_true("TROVE_PIPELINE_STATS")) {
    if (has_ext(VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME)) {
      dexts.push_back(VK_KHR_PIPELINE_EXECUTABLE_PROPERTIES_EXTENSION_NAME);
      pepf.pipelineExecutableInfo = VK_TRUE;
      pepf.pNext = en.pNext;
      en.pNext = &pepf;
      d->pipeline_stats_ = true;
    } else {
      trove::log::warn("vulkan", "TROVE_PIPELINE_STATS=1 but '{}' lacks VK_KHR_pipeline_executable_properties: no "
                       "pipeline statistics", f.name);
    }
  }
#ifdef VK_KHR_cooperative_matrix
  // Cooperative matrices (tensor cores) need the extension, its feature and the Vulkan memory model.
  VkPhysicalDeviceCooperativeMatrixFeaturesKHR cmf{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR};
  if (!f.coopmat_shapes.empty() && f12.vulkanMemoryModel && f12.shaderFloat16 && f11.storageBuffer16BitAccess) {
    en12.vulkanMemoryModel = VK_TRUE;
    cmf.cooperativeMatrix = VK_TRUE;
    cmf.pNext = en.pNext;
    en.pNext = &cmf;
    dexts.push_back("VK_KHR_cooperative_matrix");
  } else {
    f.coopmat_shapes.clear();  // not usable here: the kernels take their fallbacks
  }
#endif
#ifdef VK_NV_cooperative_matrix2
  // NV cooperative matrix 2 on top of the KHR one: the features trove's cm2 shaders declare
  // (workgroup scope, flexible dimensions, tensor addressing, block loads; decode functions take
  // buffer_reference pointers, hence buffer device address) and SPIR-V 1.6 (Vulkan 1.3). Left off
  // under validation: Debian 12's layer predates the extension and rejects its feature struct.
  VkPhysicalDeviceCooperativeMatrix2FeaturesNV cm2en{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_FEATURES_NV};
  if (f.cooperative_matrix2_offered && !f.coopmat_shapes.empty() && !want_validation && !env_true("TROVE_VK_NO_CM2") &&
      app.apiVersion >= VK_API_VERSION_1_3 && p.apiVersion >= VK_API_VERSION_1_3 && f12.bufferDeviceAddress &&
      cm2f.cooperativeMatrixWorkgroupScope && cm2f.cooperativeMatrixFlexibleDimensions &&
      cm2f.cooperativeMatrixTensorAddressing && cm2f.cooperativeMatrixBlockLoads) {
    cm2en.cooperativeMatrixWorkgroupScope = VK_TRUE;
    cm2en.cooperativeMatrixFlexibleDimensions = VK_TRUE;
    cm2en.cooperativeMatrixTensorAddressing = VK_TRUE;
    cm2en.cooperativeMatrixBlockLoads = VK_TRUE;
    cm2en.cooperativeMatrixReductions = cm2f.cooperativeMatrixReductions;
    cm2en.cooperativeMatrixConversions = cm2f.cooperativeMatrixConversions;
    cm2en.cooperativeMatrixPerElementOperations = cm2f.cooperativeMatrixPerElementOperations;
    cm2en.pNext = en.pNext;
    en.pNext = &cm2en;
    en12.bufferDeviceAddress = VK_TRUE;
    dexts.push_back(VK_NV_COOPERATIVE_MATRIX_2_EXTENSION_NAME);
    f.cooperative_matrix2 = true;
    f.coopmat2_per_element = cm2f.cooperativeMatrixPerElementOperations;
    f.coopmat2_reductions = cm2f.cooperativeMatrixReductions;
    f.coopmat2_conversions = cm2f.cooperativeMatrixConversions;
  }
#endif
  VkDeviceCreateInfo dci{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  dci.pNext = &en;
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  dci.enabledExtensionCount = static_cast<uint32_t>(dexts.size());
  dci.ppEnabledExtensionNames = dexts.data();
  TROVE_VK(vkCreateDevice(d->physical_, &dci, nullptr, &d->device_), "vkCreateDevice");
  vkGetDeviceQueue(d->device_, d->queue_family_, 0, &d->queue_);
  if (d->pipeline_stats_) {
    d->exec_props_ = reinterpret_cast<PFN_vkGetPipelineExecutablePropertiesKHR>(
        vkGetDeviceProcAddr(d->device_, "vkGetPipelineExecutablePropertiesKHR"));
    d->exec_stats_ = reinterpret_cast<PFN_vkGetPipelineExecutableStatisticsKHR>(
        vkGetDeviceProcAddr(d->device_, "vkGetPipelineExecutableStatisticsKHR"));
    d->pipeline_stats_ = d->exec_props_ && d->exec_stats_;
  }
  if (f.push_descriptors) {
    d->push_descriptor_set_ = reinterpret_cast<PFN_vkCmdPushDescriptorSetKHR>(
        vkGetDeviceProcAddr(d->device_, "vkCmdPushDescriptorSetKHR"));
    if (!d->push_descriptor_set_) {
      f.push_descriptors = false;
      if (d->descriptors_ == Descriptors::kPush) {
        return Status::Unsupported(fmt::format("Vulkan device '{}' offers VK_KHR_push_descriptor but not "
                                               "vkCmdPushDescriptorSetKHR; use TROVE_VK_DESCRIPTORS=cached", f.name));
      }
    }
  }

  d->max_buffer_bytes_ = std::min<uint64_t>(f.max_storage_buffer_range,
                                            f.max_memory_allocation_size ? f.max_memory_allocation_size : UINT64_MAX);
  if (opts.max_buffer_bytes_override) d->max_buffer_bytes_ = std::min(d->max_buffer_bytes_, opts.max_buffer_bytes_override);

  VkCommandPoolCreateInfo cpi{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  cpi.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT | VK_COMMAND_POOL_CREATE_TRANSIENT_BIT;
  cpi.queueFamilyIndex = d->queue_family_;
  TROVE_VK(vkCreateCommandPool(d->device_, &cpi, nullptr, &d->transfer_pool_), "vkCreateCommandPool");

  // ---- pipeline cache, keyed by vendor/device/driver so a driver update never loads a stale blob
  std::vector<char> blob;
  if (opts.pipeline_cache_on_disk) {
    std::string dir = cache_dir();
    if (!dir.empty()) {
      d->cache_path_ = fmt::format("{}/{:04x}-{:04x}-{:08x}.bin", dir, f.vendor_id, f.device_id, p.driverVersion);
      std::ifstream in(d->cache_path_, std::ios::binary);
      if (in) blob.assign(std::istreambuf_iterator<char>(in), {});
    }
  }
  VkPipelineCacheCreateInfo pci{VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
  pci.initialDataSize = blob.size();
  pci.pInitialData = blob.empty() ? nullptr : blob.data();
  if (vkCreatePipelineCache(d->device_, &pci, nullptr, &d->cache_) != VK_SUCCESS) {
    // A corrupt cache file must not stop us: the driver validates the header; start empty.
    pci.initialDataSize = 0;
    pci.pInitialData = nullptr;
    TROVE_VK(vkCreatePipelineCache(d->device_, &pci, nullptr, &d->cache_), "vkCreatePipelineCache");
  }
  return d;
}

Status Device::save_pipeline_cache() {
  if (cache_path_.empty() || !cache_) return Status::Ok();
  size_t n = 0;
  TROVE_VK(vkGetPipelineCacheData(device_, cache_, &n, nullptr), "vkGetPipelineCacheData");
  std::vector<char> data(n);
  TROVE_VK(vkGetPipelineCacheData(device_, cache_, &n, data.data()), "vkGetPipelineCacheData");
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(cache_path_).parent_path(), ec);
  std::string tmp = cache_path_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return Status::IoError(fmt::format("cannot write pipeline cache {}", tmp));
    out.write(data.data(), static_cast<std::streamsize>(n));
  }
  std::filesystem::rename(tmp, cache_path_, ec);
  if (ec) return Status::IoError(fmt::format("cannot rename {} to {}: {}", tmp, cache_path_, ec.message()));
  return Status::Ok();
}

Device::~Device() {
  if (device_) {
    vkDeviceWaitIdle(device_);
    (void)save_pipeline_cache();
    if (cache_) vkDestroyPipelineCache(device_, cache_, nullptr);
    if (transfer_pool_) vkDestroyCommandPool(device_, transfer_pool_, nullptr);
    vkDestroyDevice(device_, nullptr);
  }
  if (messenger_) {
    auto destroy = reinterpret_cast<PFN_vkDestroyDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(instance_, "vkDestroyDebugUtilsMessengerEXT"));
    if (destroy) destroy(instance_, messenger_, nullptr);
  }
  // instance_ is the process's shared instance (shared_instance above): it stays.
}

Result<uint32_t> Device::memory_type(uint32_t bits, VkMemoryPropertyFlags want) const {
  for (uint32_t i = 0; i < mem_props_.memoryTypeCount; ++i)
    if ((bits & (1u << i)) && (mem_props_.memoryTypes[i].propertyFlags & want) == want) return i;
  return Status::Unsupported(fmt::format("Vulkan device '{}' has no memory type with flags 0x{:x}", features_.name, want));
}

Result<Buffer> Device::buffer(uint64_t bytes, Memory kind) {
  if (bytes == 0) return Status::InvalidArgument("Vulkan buffer of 0 bytes requested; sizes must be positive");
  if (bytes > max_buffer_bytes_) {
    return Status::InvalidArgument(fmt::format("Vulkan buffer of {} bytes exceeds the device's single-buffer limit "
                                               "of {} bytes; use Device::buffer_set() to split it", bytes, max_buffer_bytes_));
  }
  Buffer b;
  b.device_ = this;
  b.serial_ = next_serial_.fetch_add(1, std::memory_order_relaxed);
  b.size_ = bytes;
  b.kind_ = kind;
  VkBufferCreateInfo bci{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  bci.size = bytes;
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  // With buffer device address on (NV cm2 decode functions take pointers into the weight buffers),
  // every buffer is addressable, as the cm2 path in llama.cpp's Vulkan backend runs them.
  if (features_.cooperative_matrix2) bci.usage |= VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  TROVE_VK(vkCreateBuffer(device_, &bci, nullptr, &b.buffer_), "vkCreateBuffer");
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(device_, b.buffer_, &req);
  const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  auto mt = kind == Memory::kDeviceLocal ? memory_type(req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT)
                                         : memory_type(req.memoryTypeBits, host);
  if (kind == Memory::kHostCached) {
    if (auto cached = memory_type(req.memoryTypeBits, host | VK_MEMORY_PROPERTY_HOST_CACHED_BIT); cached.ok()) mt = cached;
  }
  if (!mt.ok()) return mt.status();
  VkMemoryAllocateInfo mai{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
  mai.allocationSize = req.size;
  mai.memoryTypeIndex = *mt;
  VkMemoryAllocateFlagsInfo mafi{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO};
  if (features_.cooperative_matrix2) {
    mafi.flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT;
    mai.pNext = &mafi;
  }
  VkResult r = vkAllocateMemory(device_, &mai, nullptr, &b.mem_);
  if (r != VK_SUCCESS) {
    return Status::ResourceExhausted(fmt::format("Vulkan: cannot allocate {} bytes of {} memory on '{}' (VkResult {})",
                                                 bytes, kind == Memory::kDeviceLocal ? "device-local" : "host-visible",
                                                 features_.name, static_cast<int>(r)));
  }
  TROVE_VK(vkBindBufferMemory(device_, b.buffer_, b.mem_, 0), "vkBindBufferMemory");
  if (kind != Memory::kDeviceLocal) TROVE_VK(vkMapMemory(device_, b.mem_, 0, VK_WHOLE_SIZE, 0, &b.mapped_), "vkMapMemory");
  return b;
}

Status Device::one_shot(const std::function<void(VkCommandBuffer)>& record) {
  VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  ai.commandPool = transfer_pool_;
  ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  ai.commandBufferCount = 1;
  VkCommandBuffer cb;
  TROVE_VK(vkAllocateCommandBuffers(device_, &ai, &cb), "vkAllocateCommandBuffers");
  VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  vkBeginCommandBuffer(cb, &bi);
  record(cb);
  vkEndCommandBuffer(cb);
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cb;
  VkResult r = vkQueueSubmit(queue_, 1, &si, VK_NULL_HANDLE);
  if (r == VK_SUCCESS) r = vkQueueWaitIdle(queue_);
  vkFreeCommandBuffers(device_, transfer_pool_, 1, &cb);
  if (r != VK_SUCCESS) return Status::Internal(vk_err("transfer submit", r));
  return Status::Ok();
}

Result<BufferSet> Device::buffer_set(uint64_t bytes, uint64_t align) {
  auto plan = BufferSet::plan(bytes, align, max_buffer_bytes_);
  if (!plan.ok()) return plan.status();
  BufferSet s;
  s.size_ = bytes;
  s.align_ = align;
  uint64_t off = 0;
  for (uint64_t sz : *plan) {
    auto b = buffer(sz);
    if (!b.ok()) return b.status();
    s.chunks_.push_back({off, std::move(*b)});
    off += sz;
  }
  return s;
}

// ---------------------------------------------------------------- Buffer

Buffer::Buffer(Buffer&& o) noexcept { *this = std::move(o); }
Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    device_ = o.device_; buffer_ = o.buffer_; mem_ = o.mem_; serial_ = o.serial_; size_ = o.size_; kind_ = o.kind_;
    mapped_ = o.mapped_;
    o.device_ = nullptr; o.buffer_ = VK_NULL_HANDLE; o.mem_ = VK_NULL_HANDLE; o.serial_ = 0; o.size_ = 0;
    o.mapped_ = nullptr;
  }
  return *this;
}
Buffer::~Buffer() { release(); }
void Buffer::release() {
  if (!device_) return;
  if (buffer_) vkDestroyBuffer(device_->handle(), buffer_, nullptr);
  if (mem_) vkFreeMemory(device_->handle(), mem_, nullptr);
  buffer_ = VK_NULL_HANDLE;
  mem_ = VK_NULL_HANDLE;
  serial_ = 0;
  device_ = nullptr;
}

namespace {
// Staging transfers go in pieces so that a huge upload does not need a huge staging buffer.
constexpr uint64_t kStagingBytes = 64ull << 20;
}

Status Buffer::upload(const void* src, uint64_t bytes, uint64_t offset) {
  if (offset + bytes > size_ || offset + bytes < offset)
    return Status::InvalidArgument(fmt::format("upload of {} bytes at offset {} overruns a {}-byte Vulkan buffer", bytes, offset, size_));
  if (bytes == 0) return Status::Ok();
  if (mapped_) { std::memcpy(static_cast<char*>(mapped_) + offset, src, bytes); return Status::Ok(); }
  auto st = device_->buffer(std::min(bytes, kStagingBytes), Memory::kHostVisible);
  if (!st.ok()) return st.status();
  for (uint64_t done = 0; done < bytes;) {
    uint64_t n = std::min(bytes - done, st->size());
    std::memcpy(st->mapped(), static_cast<const char*>(src) + done, n);
    VkBufferCopy c{0, offset + done, n};
    VkBuffer s = st->handle(), dst = buffer_;
    TROVE_RETURN_IF_ERROR(device_->one_shot([&](VkCommandBuffer cb) { vkCmdCopyBuffer(cb, s, dst, 1, &c); }));
    done += n;
  }
  return Status::Ok();
}

Status Buffer::download(void* dst, uint64_t bytes, uint64_t offset) const {
  if (offset + bytes > size_ || offset + bytes < offset)
    return Status::InvalidArgument(fmt::format("download of {} bytes at offset {} overruns a {}-byte Vulkan buffer", bytes, offset, size_));
  if (bytes == 0) return Status::Ok();
  if (mapped_) { std::memcpy(dst, static_cast<const char*>(mapped_) + offset, bytes); return Status::Ok(); }
  auto st = device_->buffer(std::min(bytes, kStagingBytes), Memory::kHostVisible);
  if (!st.ok()) return st.status();
  for (uint64_t done = 0; done < bytes;) {
    uint64_t n = std::min(bytes - done, st->size());
    VkBufferCopy c{offset + done, 0, n};
    VkBuffer s = buffer_, d = st->handle();
    TROVE_RETURN_IF_ERROR(device_->one_shot([&](VkCommandBuffer cb) { vkCmdCopyBuffer(cb, s, d, 1, &c); }));
    std::memcpy(static_cast<char*>(dst) + done, st->mapped(), n);
    done += n;
  }
  return Status::Ok();
}

Status Buffer::fill(uint32_t pattern) {
  VkBuffer b = buffer_;
  uint64_t sz = size_ & ~uint64_t{3};
  return device_->one_shot([&](VkCommandBuffer cb) { vkCmdFillBuffer(cb, b, 0, sz, pattern); });
}

// ---------------------------------------------------------------- BufferSet

Result<std::vector<uint64_t>> BufferSet::plan(uint64_t size, uint64_t align, uint64_t max_chunk) {
  if (size == 0) return Status::InvalidArgument("buffer set of 0 bytes requested");
  if (align == 0) return Status::InvalidArgument("buffer set alignment must be at least 1 byte");
  if (align > max_chunk) {
    return Status::InvalidArgument(fmt::format("buffer set alignment {} (a row or block size) exceeds the device's "
                                               "single-buffer limit {}; the tensor cannot be split", align, max_chunk));
  }
  // Largest multiple of align that fits; every chunk except the last has this size.
  uint64_t chunk = (max_chunk / align) * align;
  std::vector<uint64_t> out;
  for (uint64_t left = size; left > 0;) {
    uint64_t n = std::min(left, chunk);
    out.push_back(n);
    left -= n;
  }
  return out;
}

std::pair<const BufferSet::Chunk*, uint64_t> BufferSet::locate(uint64_t offset) const {
  for (const auto& c : chunks_)
    if (offset >= c.offset && offset < c.offset + c.buffer.size()) return {&c, offset - c.offset};
  return {nullptr, 0};
}

Status BufferSet::upload(const void* src, uint64_t bytes, uint64_t offset) {
  if (offset + bytes > size_) return Status::InvalidArgument(fmt::format("upload of {} bytes at {} overruns a {}-byte buffer set", bytes, offset, size_));
  for (auto& c : chunks_) {
    uint64_t lo = std::max(offset, c.offset), hi = std::min(offset + bytes, c.offset + c.buffer.size());
    if (lo >= hi) continue;
    TROVE_RETURN_IF_ERROR(c.buffer.upload(static_cast<const char*>(src) + (lo - offset), hi - lo, lo - c.offset));
  }
  return Status::Ok();
}

Status BufferSet::download(void* dst, uint64_t bytes, uint64_t offset) const {
  if (offset + bytes > size_) return Status::InvalidArgument(fmt::format("download of {} bytes at {} overruns a {}-byte buffer set", bytes, offset, size_));
  for (const auto& c : chunks_) {
    uint64_t lo = std::max(offset, c.offset), hi = std::min(offset + bytes, c.offset + c.buffer.size());
    if (lo >= hi) continue;
    TROVE_RETURN_IF_ERROR(c.buffer.download(static_cast<char*>(dst) + (lo - offset), hi - lo, lo - c.offset));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------- Pipeline

Pipeline::Pipeline(Pipeline&& o) noexcept { *this = std::move(o); }
Pipeline& Pipeline::operator=(Pipeline&& o) noexcept {
  if (this != &o) {
    release();
    device_ = o.device_; serial_ = o.serial_; desc_ = std::move(o.desc_); module_ = o.module_;
    set_layout_ = o.set_layout_; layout_ = o.layout_; pipeline_ = o.pipeline_; statistics_ = std::move(o.statistics_);
    o.device_ = nullptr; o.serial_ = 0; o.module_ = VK_NULL_HANDLE; o.set_layout_ = VK_NULL_HANDLE; o.layout_ = VK_NULL_HANDLE;
    o.pipeline_ = VK_NULL_HANDLE;
  }
  return *this;
}
Pipeline::~Pipeline() { release(); }
void Pipeline::release() {
  if (!device_) return;
  VkDevice d = device_->handle();
  if (pipeline_) vkDestroyPipeline(d, pipeline_, nullptr);
  if (layout_) vkDestroyPipelineLayout(d, layout_, nullptr);
  if (set_layout_) vkDestroyDescriptorSetLayout(d, set_layout_, nullptr);
  if (module_) vkDestroyShaderModule(d, module_, nullptr);
  device_ = nullptr;
}

Result<Pipeline> Device::pipeline(const PipelineDesc& desc) {
  ShaderBlob blob = find_shader(desc.shader);
  if (!blob.words) {
    std::string known;
    for (const auto& n : shader_names()) known += " " + n;
    return Status::NotFound(fmt::format("shader '{}' is not embedded in this build; known shaders:{}", desc.shader, known));
  }
  if (desc.push_constant_bytes > features_.max_push_constants_size)
    return Status::InvalidArgument(fmt::format("shader '{}' wants {} push-constant bytes; device allows {}", desc.shader,
                                               desc.push_constant_bytes, features_.max_push_constants_size));
  if (descriptors_ == Descriptors::kPush && desc.bindings > features_.max_push_descriptors) {
    return Status::InvalidArgument(fmt::format("shader '{}' has {} bindings; push descriptors allow {} on '{}' "
                                               "(use TROVE_VK_DESCRIPTORS=cached)", desc.shader, desc.bindings,
                                               features_.max_push_descriptors, features_.name));
  }
  Pipeline p;
  p.device_ = this;
  p.serial_ = next_serial_.fetch_add(1, std::memory_order_relaxed);
  p.desc_ = desc;
  VkShaderModuleCreateInfo smi{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
  smi.codeSize = blob.word_count * 4;
  smi.pCode = blob.words;
  TROVE_VK(vkCreateShaderModule(device_, &smi, nullptr, &p.module_), "vkCreateShaderModule");
  std::vector<VkDescriptorSetLayoutBinding> binds(desc.bindings);
  for (uint32_t i = 0; i < desc.bindings; ++i)
    binds[i] = {i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, nullptr};
  VkDescriptorSetLayoutCreateInfo dli{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
  dli.bindingCount = desc.bindings;
  dli.pBindings = binds.data();
  if (descriptors_ == Descriptors::kPush) dli.flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR;
  TROVE_VK(vkCreateDescriptorSetLayout(device_, &dli, nullptr, &p.set_layout_), "vkCreateDescriptorSetLayout");
  VkPushConstantRange pcr{VK_SHADER_STAGE_COMPUTE_BIT, 0, desc.push_constant_bytes};
  VkPipelineLayoutCreateInfo pli{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
  pli.setLayoutCount = 1;
  pli.pSetLayouts = &p.set_layout_;
  pli.pushConstantRangeCount = desc.push_constant_bytes ? 1 : 0;
  pli.pPushConstantRanges = &pcr;
  TROVE_VK(vkCreatePipelineLayout(device_, &pli, nullptr, &p.layout_), "vkCreatePipelineLayout");
  std::vector<VkSpecializationMapEntry> entries(desc.spec_constants.size());
  for (uint32_t i = 0; i < entries.size(); ++i) entries[i] = {i, i * 4, 4};
  VkSpecializationInfo spec{static_cast<uint32_t>(entries.size()), entries.data(), desc.spec_constants.size() * 4,
                            desc.spec_constants.data()};
  VkComputePipelineCreateInfo cpi{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
  cpi.stage = {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
  cpi.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  cpi.stage.module = p.module_;
  cpi.stage.pName = "main";
  cpi.stage.pSpecializationInfo = entries.empty() ? nullptr : &spec;
  cpi.layout = p.layout_;
  if (pipeline_stats_) cpi.flags |= VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR;
  TROVE_VK(vkCreateComputePipelines(device_, cache_, 1, &cpi, nullptr, &p.pipeline_), "vkCreateComputePipelines");
  pipelines_created_.fetch_add(1, std::memory_order_relaxed);
  if (pipeline_stats_) {
    p.statistics_ = executable_statistics(p.pipeline_);
    std::string spec;
    for (uint32_t v : desc.spec_constants) spec += fmt::format("{}{}", spec.empty() ? "" : ",", v);
    std::string all;
    for (const std::string& st : p.statistics_) all += (all.empty() ? "" : "; ") + st;
    trove::log::info("vulkan", "pipeline {} [{}]: {}", desc.shader, spec, all);
  }
  return p;
}

std::vector<std::string> Device::executable_statistics(VkPipeline pipeline) const {
  std::vector<std::string> out;
  VkPipelineInfoKHR pi{VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR};
  pi.pipeline = pipeline;
  uint32_t n = 0;
  if (exec_props_(device_, &pi, &n, nullptr) != VK_SUCCESS) return out;
  std::vector<VkPipelineExecutablePropertiesKHR> props(n, {VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR});
  if (exec_props_(device_, &pi, &n, props.data()) != VK_SUCCESS) return out;
  for (uint32_t e = 0; e < n; ++e) {
    VkPipelineExecutableInfoKHR ei{VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR};
    ei.pipeline = pipeline;
    ei.executableIndex = e;
    uint32_t m = 0;
    if (exec_stats_(device_, &ei, &m, nullptr) != VK_SUCCESS) continue;
    std::vector<VkPipelineExecutableStatisticKHR> st(m, {VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR});
    if (exec_stats_(device_, &ei, &m, st.data()) != VK_SUCCESS) continue;
    const std::string prefix = n > 1 ? fmt::format("{}: ", props[e].name) : std::string();
    for (const auto& s : st) {
      std::string v;
      switch (s.format) {
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR: v = s.value.b32 ? "true" : "false"; break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR: v = fmt::format("{}", s.value.i64); break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR: v = fmt::format("{}", s.value.u64); break;
        case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_FLOAT64_KHR: v = fmt::format("{}", s.value.f64); break;
        default: v = "?";
      }
      out.push_back(fmt::format("{}{} = {}", prefix, s.name, v));
    }
  }
  return out;
}

// ---------------------------------------------------------------- CommandStream

namespace {
constexpr uint32_t kSetsPerPool = 256;         // pools of the per-dispatch sets (kPerDispatch, uncachable)
constexpr uint32_t kCachedSetsPerPool = 1024;  // pools of the cached sets
constexpr uint32_t kDescriptorsPerSet = 8;     // pool sizing: storage buffers per set on average
constexpr uint32_t kMaxTimestamps = 1024;      // TROVE_PROFILE=ops marks ~9 per layer
constexpr uint32_t kMaxKeyBindings = 12;       // dispatches with more bindings are not cached

using Clock = std::chrono::steady_clock;

double ns_since(Clock::time_point t) { return std::chrono::duration<double, std::nano>(Clock::now() - t).count(); }

// The descriptor cache's key: the pipeline and, per binding, (buffer serial, offset, size). Serials
// are never reused, so a set that names a destroyed buffer is never found again (it stays in the
// cache, unbound, until the cache is emptied).
struct SetKey {
  uint64_t pipeline = 0;
  uint32_t n = 0;
  std::array<uint64_t, 3 * kMaxKeyBindings> r{};
  bool operator==(const SetKey& o) const {
    return pipeline == o.pipeline && n == o.n && std::equal(r.begin(), r.begin() + 3 * n, o.r.begin());
  }
};
struct SetKeyHash {
  size_t operator()(const SetKey& k) const {
    uint64_t h = k.pipeline * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = 0; i < 3 * k.n; ++i) h = (h ^ (k.r[i] + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2))) * 0xBF58476D1CE4E5B9ull;
    return static_cast<size_t>(h ^ (h >> 31));
  }
};

// Descriptor pools that grow by one pool when the last one is full.
struct SetPools {
  uint32_t sets_per_pool;
  std::vector<VkDescriptorPool> pools;
  uint32_t sets_in_last = 0;

  Result<VkDescriptorSet> allocate(VkDevice d, VkDescriptorSetLayout layout, uint32_t bindings) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (pools.empty() || sets_in_last >= sets_per_pool || attempt > 0) {
        VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, sets_per_pool * std::max(kDescriptorsPerSet, bindings)};
        VkDescriptorPoolCreateInfo dpi{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
        dpi.maxSets = sets_per_pool;
        dpi.poolSizeCount = 1;
        dpi.pPoolSizes = &ps;
        VkDescriptorPool pool;
        TROVE_VK(vkCreateDescriptorPool(d, &dpi, nullptr, &pool), "vkCreateDescriptorPool");
        pools.push_back(pool);
        sets_in_last = 0;
      }
      VkDescriptorSetAllocateInfo dai{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
      dai.descriptorPool = pools.back();
      dai.descriptorSetCount = 1;
      dai.pSetLayouts = &layout;
      VkDescriptorSet set;
      VkResult r = vkAllocateDescriptorSets(d, &dai, &set);
      if (r == VK_SUCCESS) {
        ++sets_in_last;
        return set;
      }
      // The pool may run out of descriptors before sets (many bindings): a fresh pool, once.
      if (r != VK_ERROR_OUT_OF_POOL_MEMORY && r != VK_ERROR_FRAGMENTED_POOL) return Status::Internal(vk_err("vkAllocateDescriptorSets", r));
    }
    return Status::Internal(fmt::format("Vulkan: a descriptor set of {} bindings does not fit a fresh pool", bindings));
  }
  // Frees every set; keeps one pool.
  void reset(VkDevice d) {
    for (auto p : pools) vkResetDescriptorPool(d, p, 0);
    for (size_t i = 1; i < pools.size(); ++i) vkDestroyDescriptorPool(d, pools[i], nullptr);
    if (pools.size() > 1) pools.resize(1);
    sets_in_last = 0;
  }
  void destroy(VkDevice d) {
    for (auto p : pools) vkDestroyDescriptorPool(d, p, nullptr);
    pools.clear();
  }
};
}  // namespace

// Everything a stream owns (behind a pointer: the stream moves cheaply and its header stays small).
struct CommandStream::State {
  StreamOptions opts;
  VkCommandPool pool = VK_NULL_HANDLE;
  std::vector<VkCommandBuffer> cmds;  // one per piece of a submission; reset (and reused) after each wait
  size_t piece = 0;                   // cmds[piece] records the current piece
  VkCommandBuffer cmd = VK_NULL_HANDLE;
  bool recording = false;             // cmd is begun and not ended
  bool open = false;                  // a submission is being built (earlier pieces may be in flight)
  bool in_flight = false;             // pieces submitted and not waited for
  bool ends_with_barrier = false;     // the last command recorded was a full barrier
  uint32_t piece_dispatches = 0;      // dispatches in the current piece
  uint32_t piece_limit = 0;           // barrier() submits the piece once it holds this many
  Clock::time_point opened;           // first command of the submission
  Status failed = Status::Ok();       // a piece's submit failed in barrier(): returned by submit_and_wait()
  VkPipeline bound_pipeline = VK_NULL_HANDLE;
  VkDescriptorSet bound_set = VK_NULL_HANDLE;
  VkFence fence = VK_NULL_HANDLE;
  VkQueryPool queries = VK_NULL_HANDLE;
  uint32_t query_count = 0;
  std::vector<uint64_t> last_timestamps;
  SetPools transient{kSetsPerPool};   // sets written for one submission
  SetPools cached{kCachedSetsPerPool};
  std::unordered_map<SetKey, VkDescriptorSet, SetKeyHash> cache;
  std::vector<VkDescriptorBufferInfo> infos;  // reused by every dispatch
  std::vector<VkWriteDescriptorSet> writes;
  StreamCounters counters;
  // Replay (CommandStream::begin_capture): captured submissions, their pool, and the cache's
  // generation (bumped when the cache is emptied, which frees the sets captures refer to).
  struct Captured {
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    uint64_t generation = 0;
    uint32_t query_count = 0;
    uint64_t dispatches = 0, barriers = 0, copies = 0;
  };
  VkCommandPool capture_pool = VK_NULL_HANDLE;
  std::vector<Captured> captures;
  bool capturing = false;          // the open (or next) submission records into a capture
  bool capture_spoiled = false;    // it used a set that does not outlive the submission: not kept
  StreamCounters capture_start;    // counters when the capture's first command was recorded
  uint64_t generation = 0;
};

CommandStream::CommandStream(Device* d, const StreamOptions& o) : device_(d), st_(std::make_unique<State>()) {
  st_->opts = o;
  if (o.chunk_dispatches > 0 && st_->opts.max_chunk_dispatches < o.chunk_dispatches) st_->opts.max_chunk_dispatches = o.chunk_dispatches;
}
CommandStream::CommandStream(CommandStream&& o) noexcept : device_(o.device_), st_(std::move(o.st_)) { o.device_ = nullptr; }
CommandStream::~CommandStream() {
  if (!device_ || !st_) return;
  VkDevice d = device_->handle();
  State& s = *st_;
  if (s.recording) vkEndCommandBuffer(s.cmd);
  // Pieces still running (a recording abandoned after a failure) must finish before their command
  // buffers, sets and pools go.
  if (s.in_flight) vkQueueWaitIdle(device_->queue());
  s.transient.destroy(d);
  s.cached.destroy(d);
  if (s.capture_pool) vkDestroyCommandPool(d, s.capture_pool, nullptr);
  if (s.queries) vkDestroyQueryPool(d, s.queries, nullptr);
  if (s.fence) vkDestroyFence(d, s.fence, nullptr);
  if (s.pool) vkDestroyCommandPool(d, s.pool, nullptr);
}

Result<CommandStream> Device::stream(const StreamOptions& opts) {
  CommandStream cs(this, opts);
  CommandStream::State& s = *cs.st_;
  VkCommandPoolCreateInfo cpi{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  cpi.queueFamilyIndex = queue_family_;
  TROVE_VK(vkCreateCommandPool(device_, &cpi, nullptr, &s.pool), "vkCreateCommandPool");
  VkFenceCreateInfo fci{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  TROVE_VK(vkCreateFence(device_, &fci, nullptr, &s.fence), "vkCreateFence");
  if (features_.timestamp_period_ns > 0) {
    VkQueryPoolCreateInfo qpi{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
    qpi.queryType = VK_QUERY_TYPE_TIMESTAMP;
    qpi.queryCount = kMaxTimestamps;
    TROVE_VK(vkCreateQueryPool(device_, &qpi, nullptr, &s.queries), "vkCreateQueryPool");
  }
  return cs;
}

Status CommandStream::begin_if_needed() {
  State& s = *st_;
  if (s.recording) return Status::Ok();
  if (!s.open) {
    s.open = true;
    s.opened = Clock::now();
    s.query_count = 0;
    s.piece = 0;
    s.piece_limit = s.opts.chunk_dispatches;
  }
  auto allocate = [&](VkCommandPool pool, VkCommandBuffer* cb) {
    VkCommandBufferAllocateInfo ai{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    ai.commandPool = pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    return vkAllocateCommandBuffers(device_->handle(), &ai, cb);
  };
  VkCommandBufferBeginInfo bi{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  if (s.capturing) {  // one piece, in a command buffer that outlives the submission (submitted again)
    if (!s.capture_pool) {
      VkCommandPoolCreateInfo cpi{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
      cpi.queueFamilyIndex = device_->queue_family();
      TROVE_VK(vkCreateCommandPool(device_->handle(), &cpi, nullptr, &s.capture_pool), "vkCreateCommandPool");
    }
    TROVE_VK(allocate(s.capture_pool, &s.cmd), "vkAllocateCommandBuffers");
    s.capture_start = s.counters;
  } else {
    if (s.piece == s.cmds.size()) {
      VkCommandBuffer cb;
      TROVE_VK(allocate(s.pool, &cb), "vkAllocateCommandBuffers");
      s.cmds.push_back(cb);
    }
    s.cmd = s.cmds[s.piece];
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  }
  TROVE_VK(vkBeginCommandBuffer(s.cmd, &bi), "vkBeginCommandBuffer");
  // Resetting the queries in the first piece covers the later ones: a query reset is ordered with
  // every later command on the same queries in submission order.
  if (s.piece == 0 && s.queries) vkCmdResetQueryPool(s.cmd, s.queries, 0, kMaxTimestamps);
  s.recording = true;
  s.piece_dispatches = 0;
  s.ends_with_barrier = false;
  s.bound_pipeline = VK_NULL_HANDLE;
  s.bound_set = VK_NULL_HANDLE;
  return Status::Ok();
}

Status CommandStream::dispatch(const Pipeline& p, std::span<const BufferRange> buffers, const void* push,
                               uint32_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
  const auto& desc = p.desc();
  if (buffers.size() != desc.bindings)
    return Status::InvalidArgument(fmt::format("dispatch of '{}' got {} buffers; the pipeline has {} bindings", desc.shader, buffers.size(), desc.bindings));
  if (push_bytes != desc.push_constant_bytes)
    return Status::InvalidArgument(fmt::format("dispatch of '{}' got {} push-constant bytes; the pipeline expects {}", desc.shader, push_bytes, desc.push_constant_bytes));
  const auto& f = device_->features();
  if (gx == 0 || gy == 0 || gz == 0) return Status::Ok();  // nothing to do
  if (gx > f.max_compute_workgroup_count[0] || gy > f.max_compute_workgroup_count[1] || gz > f.max_compute_workgroup_count[2])
    return Status::InvalidArgument(fmt::format("dispatch of '{}' with {}x{}x{} workgroups exceeds the device limit {}x{}x{}", desc.shader,
                                               gx, gy, gz, f.max_compute_workgroup_count[0], f.max_compute_workgroup_count[1], f.max_compute_workgroup_count[2]));
  State& s = *st_;
  if (!s.failed.ok()) return s.failed;
  TROVE_RETURN_IF_ERROR(begin_if_needed());
  VkDevice d = device_->handle();
  const uint32_t n = static_cast<uint32_t>(buffers.size());
  s.infos.resize(n);
  s.writes.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    s.infos[i] = {buffers[i].buffer, buffers[i].offset, buffers[i].size};
    s.writes[i] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
    s.writes[i].dstBinding = i;
    s.writes[i].descriptorCount = 1;
    s.writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    s.writes[i].pBufferInfo = &s.infos[i];
  }
  if (s.bound_pipeline != p.handle()) {
    vkCmdBindPipeline(s.cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p.handle());
    s.bound_pipeline = p.handle();
  }
  const Descriptors mode = device_->descriptors();
  if (mode == Descriptors::kPush) {
    if (n > 0) device_->push_descriptor_set_(s.cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout(), 0, n, s.writes.data());
  } else {
    // kCached: the set for (pipeline, ranges) if the stream made one before; else one is written.
    SetKey key;
    bool cachable = mode == Descriptors::kCached && n <= kMaxKeyBindings;
    if (cachable) {
      key.pipeline = p.serial();
      key.n = n;
      for (uint32_t i = 0; i < n; ++i) {
        cachable &= buffers[i].serial != 0;
        key.r[3 * i] = buffers[i].serial;
        key.r[3 * i + 1] = buffers[i].offset;
        key.r[3 * i + 2] = buffers[i].size;
      }
    }
    VkDescriptorSet set = VK_NULL_HANDLE;
    if (cachable) {
      if (auto it = s.cache.find(key); it != s.cache.end()) set = it->second;
    }
    // A transient set in a captured submission is freed after its first run: the capture runs once
    // and is not kept.
    if (set == VK_NULL_HANDLE && !cachable && s.capturing) s.capture_spoiled = true;
    if (set == VK_NULL_HANDLE) {
      auto made = (cachable ? s.cached : s.transient).allocate(d, p.set_layout(), n);
      if (!made.ok()) return made.status();
      set = *made;
      for (uint32_t i = 0; i < n; ++i) s.writes[i].dstSet = set;
      vkUpdateDescriptorSets(d, n, s.writes.data(), 0, nullptr);
      ++s.counters.sets_written;
      if (cachable) s.cache.emplace(key, set);
    }
    if (set != s.bound_set) {
      vkCmdBindDescriptorSets(s.cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout(), 0, 1, &set, 0, nullptr);
      s.bound_set = set;
    }
  }
  if (push_bytes) vkCmdPushConstants(s.cmd, p.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
  vkCmdDispatch(s.cmd, gx, gy, gz);
  ++s.counters.dispatches;
  ++s.piece_dispatches;
  s.ends_with_barrier = false;
  return Status::Ok();
}

namespace {
void record_full_barrier(VkCommandBuffer cmd) {
  VkMemoryBarrier mb{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(cmd, st, st, 0, 1, &mb, 0, nullptr, 0, nullptr);
}
}  // namespace

void CommandStream::barrier() {
  State& s = *st_;
  if (!s.failed.ok()) return;
  if (Status b = begin_if_needed(); !b.ok()) {
    s.failed = b;
    return;
  }
  // A full barrier right after another (nothing but timestamps between) orders nothing more: ops that
  // end with a barrier of their own (split attention's combine) and the step's barrier after them make
  // one. skip_barriers: flush() still records the one before the submit.
  if (!s.opts.skip_barriers && !s.ends_with_barrier) {
    record_full_barrier(s.cmd);
    ++s.counters.barriers;
    s.ends_with_barrier = true;
  }
  // A piece is cut only here, right after a full barrier (runtime.h says why that is enough).
  if (s.opts.chunk_dispatches > 0 && !s.capturing && s.piece_dispatches >= s.piece_limit) {
    if (Status f = submit_piece(); !f.ok()) s.failed = f;
  }
}

Status CommandStream::submit_piece() {
  State& s = *st_;
  if (!s.recording) return Status::Ok();
  s.recording = false;
  TROVE_VK(vkEndCommandBuffer(s.cmd), "vkEndCommandBuffer");
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &s.cmd;
  ++s.counters.submits;
  if (s.piece == 0) s.counters.lead_ns += ns_since(s.opened);
  s.in_flight = true;  // before the call: if it fails, the destructor still waits for the queue
  TROVE_VK(vkQueueSubmit(device_->queue(), 1, &si, VK_NULL_HANDLE), "vkQueueSubmit");
  ++s.piece;
  s.piece_limit = std::min(s.piece_limit * 2, s.opts.max_chunk_dispatches);
  return Status::Ok();
}

Status CommandStream::flush() {
  State& s = *st_;
  if (!s.failed.ok()) return s.failed;
  if (!s.recording) return Status::Ok();
  if (s.capturing) {  // one piece: the barrier orders what follows, the submit waits for the end
    if (!s.ends_with_barrier) {
      record_full_barrier(s.cmd);
      ++s.counters.barriers;
      s.ends_with_barrier = true;
    }
    return Status::Ok();
  }
  if (!s.ends_with_barrier) {
    record_full_barrier(s.cmd);
    ++s.counters.barriers;
    s.ends_with_barrier = true;
  }
  return submit_piece();
}

void CommandStream::copy(const Buffer& src, uint64_t src_off, const Buffer& dst, uint64_t dst_off, uint64_t bytes) {
  State& s = *st_;
  if (!s.failed.ok() || bytes == 0) return;
  if (Status b = begin_if_needed(); !b.ok()) {
    s.failed = b;
    return;
  }
  VkBufferCopy c{src_off, dst_off, bytes};
  vkCmdCopyBuffer(s.cmd, src.handle(), dst.handle(), 1, &c);
  ++s.counters.copies;
  s.ends_with_barrier = false;
}

uint32_t CommandStream::timestamp() {
  State& s = *st_;
  if (!s.failed.ok()) return s.query_count;
  if (Status b = begin_if_needed(); !b.ok()) {
    s.failed = b;
    return s.query_count;
  }
  if (!s.queries || s.query_count >= kMaxTimestamps) return s.query_count;
  // Timestamps of all pieces share one query pool and one timebase (one queue): they compare as in
  // one command buffer. A timestamp writes no memory, so a barrier before it still ends the piece.
  vkCmdWriteTimestamp(s.cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, s.queries, s.query_count);
  return s.query_count++;
}

Status CommandStream::submit_and_wait(Wait wait) {
  State& s = *st_;
  VkDevice d = device_->handle();
  Status result = s.failed;
  s.failed = Status::Ok();
  if (!s.open) return result;
  s.open = false;
  const bool last = s.recording;
  if (last) {
    s.recording = false;
    if (VkResult r = vkEndCommandBuffer(s.cmd); r != VK_SUCCESS && result.ok()) result = Status::Internal(vk_err("vkEndCommandBuffer", r));
  }
  s.counters.record_ns += ns_since(s.opened);
  if (s.piece == 0) s.counters.lead_ns += ns_since(s.opened);
  bool waited = false;
  result = submit_with_fence(last && result.ok() ? s.cmd : VK_NULL_HANDLE, wait, result, waited);
  if (s.capturing) {
    s.capturing = false;
    if (last && result.ok() && !s.capture_spoiled) {
      const StreamCounters& c = s.counters;
      s.captures.push_back({s.cmd, s.generation, s.query_count, c.dispatches - s.capture_start.dispatches,
                            c.barriers - s.capture_start.barriers, c.copies - s.capture_start.copies});
    } else if (s.cmd != VK_NULL_HANDLE && last) {
      vkFreeCommandBuffers(d, s.capture_pool, 1, &s.cmd);  // a failed capture is not kept
    }
  }
  vkResetCommandPool(d, s.pool, 0);
  s.piece = 0;
  s.transient.reset(d);
  // The cache's bound: nothing of this stream is in flight now, so its sets may all go (and with
  // them every capture: the generation moves on).
  if (s.cache.size() > kMaxCachedSets) {
    s.cache.clear();
    s.cached.reset(d);
    ++s.generation;
  }
  return result;
}

Status CommandStream::submit_with_fence(VkCommandBuffer cmd, Wait wait, Status result, bool& waited) {
  State& s = *st_;
  VkDevice d = device_->handle();
  const auto t0 = Clock::now();
  // The fence of the last submit also covers the pieces before it (a fence signal's first scope is
  // every command submitted earlier to the queue); with no last piece it is submitted alone.
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  si.commandBufferCount = 1;
  si.pCommandBuffers = &cmd;
  waited = false;
  if (result.ok() || s.in_flight) {
    VkResult r = vkQueueSubmit(device_->queue(), cmd != VK_NULL_HANDLE ? 1 : 0, cmd != VK_NULL_HANDLE ? &si : nullptr, s.fence);
    ++s.counters.submits;
    if (r == VK_SUCCESS && wait == Wait::kSpin) {
      const auto spin_end = Clock::now() + std::chrono::milliseconds(kMaxSpinMs);
      do {
        r = vkGetFenceStatus(d, s.fence);
      } while (r == VK_NOT_READY && Clock::now() < spin_end);
      if (r == VK_NOT_READY) r = VK_SUCCESS;  // still running: block below
    }
    if (r == VK_SUCCESS) r = vkWaitForFences(d, 1, &s.fence, VK_TRUE, UINT64_MAX);
    else if (s.in_flight) vkQueueWaitIdle(device_->queue());
    if (r != VK_SUCCESS && result.ok()) result = Status::Internal(vk_err("vkQueueSubmit/vkWaitForFences", r));
    waited = r == VK_SUCCESS;
    vkResetFences(d, 1, &s.fence);
  }
  s.in_flight = false;
  s.counters.wait_ns += ns_since(t0);
  ++s.counters.waits;
  s.last_timestamps.assign(s.query_count, 0);
  if (waited && result.ok() && s.query_count && s.queries) {
    if (VkResult r = vkGetQueryPoolResults(d, s.queries, 0, s.query_count, s.query_count * 8, s.last_timestamps.data(), 8,
                                           VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
        r != VK_SUCCESS) {
      result = Status::Internal(vk_err("vkGetQueryPoolResults", r));
    }
  }
  return result;
}

Status CommandStream::begin_capture() {
  State& s = *st_;
  if (s.open) {
    return Status::FailedPrecondition("begin_capture: a submission is being recorded; call it before the submission's "
                                      "first command (after submit_and_wait)");
  }
  if (device_->descriptors() == Descriptors::kPerDispatch) {
    return Status::FailedPrecondition("begin_capture: descriptor mode pool writes a set per dispatch and frees them after "
                                      "each submission; a captured submission needs cached or pushed descriptors");
  }
  s.capturing = true;
  s.capture_spoiled = false;
  return Status::Ok();
}

uint32_t CommandStream::last_capture() const {
  return st_->captures.empty() ? kNoCapture : static_cast<uint32_t>(st_->captures.size() - 1);
}

bool CommandStream::capture_valid(uint32_t id) const {
  const State& s = *st_;
  return id < s.captures.size() && s.captures[id].cmd != VK_NULL_HANDLE && s.captures[id].generation == s.generation;
}

Status CommandStream::replay(uint32_t id, Wait wait) {
  State& s = *st_;
  if (s.open) return Status::FailedPrecondition("replay: a submission is being recorded; submit it first");
  if (!capture_valid(id)) {
    return Status::FailedPrecondition(fmt::format(
        "replay: capture {} is not valid here ({} captures; the descriptor cache was emptied since, or they were "
        "dropped): record the submission again", id, s.captures.size()));
  }
  const State::Captured& c = s.captures[id];
  s.query_count = c.query_count;
  s.counters.dispatches += c.dispatches;
  s.counters.barriers += c.barriers;
  s.counters.copies += c.copies;
  bool waited = false;
  return submit_with_fence(c.cmd, wait, Status::Ok(), waited);
}

void CommandStream::drop_captures() {
  State& s = *st_;
  for (auto& c : s.captures) {
    if (c.cmd != VK_NULL_HANDLE) vkFreeCommandBuffers(device_->handle(), s.capture_pool, 1, &c.cmd);
  }
  s.captures.clear();
}

std::vector<double> CommandStream::timestamps_ns() const {
  std::vector<double> out;
  const State& s = *st_;
  if (s.last_timestamps.empty()) return out;
  double period = device_->features().timestamp_period_ns;
  for (uint64_t t : s.last_timestamps) out.push_back(static_cast<double>(t - s.last_timestamps[0]) * period);
  return out;
}

const StreamCounters& CommandStream::counters() const { return st_->counters; }
size_t CommandStream::cached_sets() const { return st_->cache.size(); }

}  // namespace trove::vk
