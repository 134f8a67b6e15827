// kernels/vk/runtime.h — the Vulkan compute runtime every op is built on.
//
// Contract:
//  - Device::open() creates an instance and picks a physical device: TROVE_VK_DEVICE (an index into
//    the enumeration, or a case-insensitive substring of the device name) wins; otherwise the first
//    discrete GPU, then integrated, then anything else (lavapipe/CPU is accepted). No device → an
//    error that says what to install. Validation layers are enabled when TROVE_VK_VALIDATION=1 (or in
//    Debug builds) and the layer is installed; validation messages go to trove::log and are counted
//    (Device::validation_errors()).
//  - Features are detected once and exposed in DeviceFeatures; ops pick shader variants from them.
//  - Buffer: one VkBuffer + its own VkDeviceMemory (RAII, move-only). Device-local buffers are filled
//    and read through upload()/download(), which go through a host-visible staging buffer and block
//    until done. Host-visible buffers can also be mapped directly.
//  - BufferSet: a logical byte range larger than maxStorageBufferRange / maxMemoryAllocationSize,
//    split into chunks that each fit (chunk boundaries aligned to `align` bytes, so that a tensor row
//    or quant block never straddles two chunks when the caller passes its row size). A 17 GB model is
//    loaded as BufferSets.
//  - Pipeline: a compute pipeline from embedded SPIR-V (looked up by shader name in the generated
//    shader table), specialization constants (uint32 each, ids 0..n-1), a push-constant size and N
//    storage-buffer bindings (set 0, bindings 0..N-1). Pipelines share one VkPipelineCache that is
//    loaded from and saved to ${TROVE_HOME:-~/.cache/trove}/vk-pipeline-cache/<vendor>-<device>.bin.
//  - CommandStream: records dispatches, inserts a compute→compute memory barrier when asked
//    (barrier()), writes timestamps, then submit_and_wait(). One stream is used by one thread at a
//    time. After submit_and_wait() the stream can be reused; its command pool, command buffers, fence,
//    query pool and descriptor sets live as long as the stream (make one and keep it).
//    Descriptors (how a dispatch's buffers reach the shader), one mode per device (Descriptors):
//      kCached: a descriptor set per (pipeline, buffer ranges) is allocated and written the first
//        time the pair is dispatched and bound again on every later dispatch of the same pair; the
//        key names buffers by Buffer::serial(), a number never reused, so a destroyed buffer's set can
//        never be bound for a new buffer that got the same VkBuffer handle. Bounded: past
//        kMaxCachedSets sets the stream drops them all after its next wait (a step's worth is rebuilt
//        the next time).
//      kPush: VK_KHR_push_descriptor — the descriptors are written into the command buffer.
//      kPerDispatch: a set allocated and written for every dispatch (the old path; A/B).
//    Submission in pieces (StreamOptions::chunk_dispatches > 0): barrier() submits what was recorded
//    so far without waiting once the piece holds enough dispatches, so the GPU runs the first layers
//    while the host records the next ones; submit_and_wait() submits the last piece and waits for all.
//    Pieces are cut only right after a full barrier, whose second scope reaches every later command
//    in submission order (also in later submissions), so the pieces see each other's writes exactly
//    as one command buffer would. CAUTION with pieces: host writes to mapped memory must be done before
//    recording starts — a piece may run before submit_and_wait() is called.
//    counters() says what the stream recorded and how long the host spent (TROVE_PROFILE reads it).
// Thread-safety: Device is safe to share for creating objects; the queue is used from one thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <vulkan/vulkan.h>

#include "common/status.h"

namespace trove::vk {

struct DeviceFeatures {
  std::string name;             // VkPhysicalDeviceProperties::deviceName
  std::string driver;           // driver name + info, e.g. "NVIDIA 550.54"
  uint32_t vendor_id = 0;
  uint32_t device_id = 0;
  bool discrete = false;
  bool is_cpu = false;          // lavapipe / swiftshader
  uint32_t api_version = 0;
  bool fp16_arithmetic = false;    // shaderFloat16
  bool storage_16bit = false;      // storageBuffer16BitAccess
  bool storage_8bit = false;       // storageBuffer8BitAccess
  bool int8_arithmetic = false;    // shaderInt8
  bool integer_dot_product = false;  // VK_KHR_shader_integer_dot_product
  // The driver says its packed signed 4 × int8 dot product (dotPacked4x8EXT, the q8 matvecs') is faster
  // than an emulation (integerDotProduct4x8BitPackedSignedAccelerated).
  bool integer_dot_4x8_accelerated = false;
  uint32_t subgroup_size = 0;
  bool subgroup_arithmetic = false;  // VK_SUBGROUP_FEATURE_ARITHMETIC_BIT in compute
  bool subgroup_shuffle = false;
  bool cooperative_matrix = false;   // VK_KHR_cooperative_matrix extension offered by the device
  // Shapes, filled only when the runtime was built with headers that know the extension and the
  // device could enable it (with the Vulkan memory model, fp16 and 16-bit storage): then usable.
  struct CoopMatShape {
    uint32_t m, n, k;
    // VkComponentTypeKHR / VkScopeKHR values, kept as integers so that this header also compiles
    // against system Vulkan headers that predate VK_KHR_cooperative_matrix.
    uint32_t a, b, c, result, scope;
  };
  std::vector<CoopMatShape> coopmat_shapes;
  // VK_NV_cooperative_matrix2 (NVIDIA): true when the device was created with its workgroup scope,
  // flexible dimensions, tensor addressing and block loads, buffer device address and Vulkan 1.3
  // (SPIR-V 1.6 shaders). Never under validation: Debian 12's layer (1.3.239) predates it, so a
  // validated run takes the KHR path (docs/kernels.md). TROVE_VK_NO_CM2=1 also leaves it off.
  bool cooperative_matrix2 = false;
  bool cooperative_matrix2_offered = false;  // the extension is listed (whether or not enabled)
  bool coopmat2_per_element = false;         // cooperativeMatrixPerElementOperations enabled too
  bool coopmat2_reductions = false;          // cooperativeMatrixReductions enabled too (coopMatReduceNV)
  bool coopmat2_conversions = false;         // cooperativeMatrixConversions enabled too (accumulator -> A)
  struct FlexShape {  // VkCooperativeMatrixFlexibleDimensionsPropertiesNV, as integers
    uint32_t m_granularity, n_granularity, k_granularity;
    uint32_t a, b, c, result, scope, invocations;
  };
  std::vector<FlexShape> coopmat2_flexible;
  uint32_t coopmat2_max_dimension = 0;        // cooperativeMatrixFlexibleDimensionsMaxDimension
  uint32_t coopmat2_max_workgroup = 0;        // cooperativeMatrixWorkgroupScopeMaxWorkgroupSize
  uint32_t coopmat2_reserved_shared = 0;      // shared memory the driver keeps for workgroup matrices
  uint32_t max_compute_shared_memory = 0;     // maxComputeSharedMemorySize (bytes)
  uint64_t max_storage_buffer_range = 0;
  uint64_t max_memory_allocation_size = 0;
  uint32_t max_push_constants_size = 0;
  uint32_t max_compute_workgroup_count[3] = {0, 0, 0};
  uint32_t max_compute_workgroup_invocations = 0;
  bool push_descriptors = false;     // VK_KHR_push_descriptor offered (and enabled)
  uint32_t max_push_descriptors = 0;
  float timestamp_period_ns = 0;     // 0: no timestamp support on the compute queue
  uint64_t device_local_bytes = 0;
};

// How a dispatch's buffers are bound (see the contract above). kAuto: TROVE_VK_DESCRIPTORS
// (cached|push|pool) if set, else kCached.
enum class Descriptors { kAuto, kCached, kPush, kPerDispatch };
const char* descriptors_name(Descriptors d);

struct DeviceOptions {
  // Overrides for testing the chunking logic on small devices; 0 = use the device's limit.
  uint64_t max_buffer_bytes_override = 0;
  bool validation = false;           // in addition to TROVE_VK_VALIDATION=1 / Debug
  bool pipeline_cache_on_disk = true;
  Descriptors descriptors = Descriptors::kAuto;  // kPush on a device without the extension: an error
};

class Device;

// kHostCached: host-visible memory the CPU reads fast (HOST_CACHED when the device has it; otherwise
// plain host-visible). Use it for buffers the GPU fills and the CPU reads in bulk (KV blocks going to
// the store); write-combined kHostVisible memory reads an order of magnitude slower on discrete GPUs.
enum class Memory { kDeviceLocal, kHostVisible, kHostCached };

class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&&) noexcept;
  Buffer& operator=(Buffer&&) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  VkBuffer handle() const { return buffer_; }
  // A number unique among the device's buffers for the device's life (never reused, unlike a
  // destroyed buffer's VkBuffer handle); 0 for an empty Buffer. Descriptor caches key on it.
  uint64_t serial() const { return serial_; }
  uint64_t size() const { return size_; }
  Memory memory() const { return kind_; }
  // Host-visible buffers only: persistently mapped pointer (nullptr for device-local).
  void* mapped() const { return mapped_; }

  // Copies bytes in/out (through staging for device-local buffers). Blocks until complete.
  Status upload(const void* src, uint64_t bytes, uint64_t offset = 0);
  Status download(void* dst, uint64_t bytes, uint64_t offset = 0) const;
  // Fills the whole buffer with a repeated 32-bit pattern (vkCmdFillBuffer), e.g. a NaN poison.
  Status fill(uint32_t pattern);

 private:
  friend class Device;
  void release();  // frees the Vulkan objects (the destructor and the move assignment)
  Device* device_ = nullptr;
  VkBuffer buffer_ = VK_NULL_HANDLE;
  VkDeviceMemory mem_ = VK_NULL_HANDLE;
  uint64_t serial_ = 0;
  uint64_t size_ = 0;
  Memory kind_ = Memory::kDeviceLocal;
  void* mapped_ = nullptr;
};

// A logical buffer of `size` bytes split into chunks of at most Device::max_buffer_bytes(), each
// chunk a multiple of `align` (except the last).
class BufferSet {
 public:
  struct Chunk {
    uint64_t offset;  // logical offset of the chunk's first byte
    Buffer buffer;
  };
  uint64_t size() const { return size_; }
  uint64_t align() const { return align_; }
  const std::vector<Chunk>& chunks() const { return chunks_; }
  // Chunk holding logical byte `offset`, and the offset inside it.
  std::pair<const Chunk*, uint64_t> locate(uint64_t offset) const;
  // Copies across chunk boundaries transparently.
  Status upload(const void* src, uint64_t bytes, uint64_t offset = 0);
  Status download(void* dst, uint64_t bytes, uint64_t offset = 0) const;

  // Pure planning function (testable without a device): chunk sizes for `size` bytes with at most
  // `max_chunk` per chunk, each a multiple of `align`. Error when align > max_chunk.
  static Result<std::vector<uint64_t>> plan(uint64_t size, uint64_t align, uint64_t max_chunk);

 private:
  friend class Device;
  uint64_t size_ = 0;
  uint64_t align_ = 1;
  std::vector<Chunk> chunks_;
};

struct PipelineDesc {
  std::string shader;                 // name in the embedded shader table, e.g. "add_f32"
  std::vector<uint32_t> spec_constants;  // constant_id 0..n-1, uint32 each
  uint32_t push_constant_bytes = 0;
  uint32_t bindings = 0;              // storage buffers at set 0, bindings 0..bindings-1
  uint32_t local_size_x = 0;          // informational (for dispatch math); the shader defines it
};

class Pipeline {
 public:
  Pipeline() = default;
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;
  ~Pipeline();
  const PipelineDesc& desc() const { return desc_; }
  VkPipeline handle() const { return pipeline_; }
  VkPipelineLayout layout() const { return layout_; }
  VkDescriptorSetLayout set_layout() const { return set_layout_; }
  uint64_t serial() const { return serial_; }  // unique for the device's life (descriptor cache key)
  // The driver's statistics of the compiled pipeline ("name = value", e.g. NVIDIA's register count,
  // shared memory and local memory bytes; lavapipe's instruction counts), captured when the device
  // was opened with TROVE_PIPELINE_STATS=1 (VK_KHR_pipeline_executable_properties); empty otherwise.
  const std::vector<std::string>& statistics() const { return statistics_; }

 private:
  friend class Device;
  void release();  // frees the Vulkan objects (the destructor and the move assignment)
  Device* device_ = nullptr;
  uint64_t serial_ = 0;
  PipelineDesc desc_;
  std::vector<std::string> statistics_;
  VkShaderModule module_ = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  VkPipeline pipeline_ = VK_NULL_HANDLE;
};

// A view of a buffer range bound to one binding. `serial` is the buffer's Buffer::serial() (0 for a
// range not made from a Buffer: such a dispatch is never served from the descriptor cache).
struct BufferRange {
  VkBuffer buffer = VK_NULL_HANDLE;
  uint64_t offset = 0;
  uint64_t size = VK_WHOLE_SIZE;
  uint64_t serial = 0;
  BufferRange() = default;
  BufferRange(const Buffer& b) : buffer(b.handle()), offset(0), size(b.size()), serial(b.serial()) {}  // NOLINT
  BufferRange(const Buffer& b, uint64_t off, uint64_t sz)
      : buffer(b.handle()), offset(off), size(sz), serial(b.serial()) {}
};

struct StreamOptions {
  // Submission in pieces: once the piece being recorded holds at least this many dispatches, the next
  // barrier() submits it (no wait) and recording goes on in a fresh command buffer. The threshold
  // doubles after each piece, up to max_chunk_dispatches (0: no growth): a small first piece starts
  // the GPU early, larger later ones keep the submits few. 0: one submission per submit_and_wait().
  uint32_t chunk_dispatches = 0;
  uint32_t max_chunk_dispatches = 0;
  // Measurement only (TROVE_VK_SKIP_BARRIERS=1 in the engine): barrier() records nothing (pieces are
  // still cut there), so dispatches overlap and read what earlier ones have not finished writing.
  // The results are wrong; the time saved is what the barriers cost (bench_engine, docs/performance.md).
  bool skip_barriers = false;
};

// What a stream recorded and how long the host spent, summed over the stream's life (subtract two
// readings for one step). A "submission" is everything between two submit_and_wait() calls.
struct StreamCounters {
  uint64_t dispatches = 0;
  uint64_t barriers = 0;
  uint64_t copies = 0;
  uint64_t submits = 0;        // vkQueueSubmit calls: the pieces and the final one
  uint64_t waits = 0;          // submit_and_wait() calls that had something to wait for
  uint64_t sets_written = 0;   // descriptor sets allocated and written (kCached: cache misses)
  double record_ns = 0;        // host: first command of a submission recorded → its final vkQueueSubmit
  double lead_ns = 0;          // host: first command → first vkQueueSubmit (the GPU has nothing to do yet)
  double wait_ns = 0;          // host: the final vkQueueSubmit + waiting for the fence
};

class CommandStream {
 public:
  CommandStream(CommandStream&&) noexcept;
  CommandStream& operator=(CommandStream&&) = delete;
  CommandStream(const CommandStream&) = delete;
  ~CommandStream();  // waits for pieces still in flight

  // Records a dispatch of (gx, gy, gz) workgroups with `push` (size must equal the pipeline's
  // push_constant_bytes) and `buffers` bound to bindings 0..n-1.
  Status dispatch(const Pipeline& p, std::span<const BufferRange> buffers, const void* push,
                  uint32_t push_bytes, uint32_t gx, uint32_t gy = 1, uint32_t gz = 1);
  // Compute/transfer writes before → compute/transfer reads after. With StreamOptions::chunk_dispatches
  // it may submit the piece recorded so far (see the contract). Recorded only where the piece's last
  // command (timestamps aside) is not a barrier already: two in a row order no more than one.
  void barrier();
  void copy(const Buffer& src, uint64_t src_off, const Buffer& dst, uint64_t dst_off, uint64_t bytes);
  // Writes a timestamp; returns its index (read with timestamps_ns() after submit_and_wait()).
  uint32_t timestamp();
  // Submits what is recorded so far without waiting; later commands see everything before it (the
  // piece ends with a full barrier unless the last command recorded was one).
  Status flush();
  // How submit_and_wait() waits for the fence: kBlock sleeps in vkWaitForFences; kSpin polls
  // vkGetFenceStatus (a core busy for the wait, the host back within a poll of the GPU's end instead of
  // a wake-up), falling back to vkWaitForFences after kMaxSpinMs.
  enum class Wait { kBlock, kSpin };
  static constexpr int kMaxSpinMs = 100;
  Status submit_and_wait(Wait wait = Wait::kBlock);

  // Replay: a submission recorded once and submitted again as it is (the groundwork of one submit per
  // decode token, issue 15). begin_capture(), before the first command of a submission, records it
  // into a command buffer of its own, as one piece (no chunking); its submit_and_wait() runs it as
  // usual and keeps it under the id last_capture() returns. replay(id) submits it again and waits:
  // the same pipelines, buffer ranges, push constants and grid sizes, so whatever must change between
  // submissions has to be read from buffers. Descriptor sets must come from the cache (kCached: every
  // range's buffer has a serial) or be pushed (kPush): a submission that needed another set runs once
  // and is not kept (last_capture() stays as it was); kPerDispatch is refused by begin_capture(). A
  // capture lives until drop_captures() or the stream's end, and is valid while the cache keeps its
  // sets (it is emptied past kMaxCachedSets) and while its buffers and pipelines live (the caller's part).
  Status begin_capture();
  static constexpr uint32_t kNoCapture = 0xffffffffu;
  uint32_t last_capture() const;  // kNoCapture before the first captured submission
  bool capture_valid(uint32_t id) const;
  Status replay(uint32_t id, Wait wait = Wait::kBlock);
  void drop_captures();
  // Nanoseconds since the first timestamp of the last submission, one per timestamp() call.
  std::vector<double> timestamps_ns() const;
  const StreamCounters& counters() const;
  // Descriptor sets the stream's cache holds now (kCached).
  size_t cached_sets() const;
  // Past this many cached sets, the cache is emptied after the next wait.
  static constexpr size_t kMaxCachedSets = 8192;

 private:
  friend class Device;
  struct State;
  explicit CommandStream(Device* d, const StreamOptions& o);
  Status begin_if_needed();
  Status submit_piece();
  // Submits `cmd` (if any) with the fence and waits as submit_and_wait() does; sets `waited`.
  Status submit_with_fence(VkCommandBuffer cmd, Wait wait, Status result, bool& waited);
  Device* device_;
  std::unique_ptr<State> st_;
};

class Device {
 public:
  static Result<std::unique_ptr<Device>> open(const DeviceOptions& opts = {});
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceFeatures& features() const { return features_; }
  // Largest single buffer the runtime will create (min of the two device limits and the override).
  uint64_t max_buffer_bytes() const { return max_buffer_bytes_; }
  uint64_t validation_errors() const { return validation_errors_; }

  Result<Buffer> buffer(uint64_t bytes, Memory kind = Memory::kDeviceLocal);
  Result<BufferSet> buffer_set(uint64_t bytes, uint64_t align);
  Result<Pipeline> pipeline(const PipelineDesc& desc);
  // Pipelines created so far (each a driver compile unless the pipeline cache had it): a step that
  // created some paid for them on the host, which TROVE_PROFILE=ops leaves out of its per-op times.
  uint64_t pipelines_created() const { return pipelines_created_.load(std::memory_order_relaxed); }
  Result<CommandStream> stream(const StreamOptions& opts = {});
  // The descriptor mode every pipeline and stream of this device uses (never kAuto).
  Descriptors descriptors() const { return descriptors_; }
  // TROVE_PIPELINE_STATS=1 and the device has VK_KHR_pipeline_executable_properties: every pipeline is
  // created with its statistics captured (Pipeline::statistics) and logged once at info level.
  bool pipeline_statistics() const { return pipeline_stats_; }
  Status save_pipeline_cache();

  VkDevice handle() const { return device_; }
  // The process's VkInstance for this device's layer set, shared by every device opened with it.
  VkInstance instance() const { return instance_; }
  VkPhysicalDevice physical() const { return physical_; }
  VkQueue queue() const { return queue_; }
  uint32_t queue_family() const { return queue_family_; }

 private:
  Device() = default;
  friend class Buffer;
  friend class CommandStream;
  Result<uint32_t> memory_type(uint32_t type_bits, VkMemoryPropertyFlags want) const;
  Status one_shot(const std::function<void(VkCommandBuffer)>& record);
  std::vector<std::string> executable_statistics(VkPipeline pipeline) const;  // pipeline_stats_ only

  VkInstance instance_ = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  uint32_t queue_family_ = 0;
  VkPipelineCache cache_ = VK_NULL_HANDLE;
  std::string cache_path_;
  VkCommandPool transfer_pool_ = VK_NULL_HANDLE;
  DeviceFeatures features_;
  VkPhysicalDeviceMemoryProperties mem_props_{};
  uint64_t max_buffer_bytes_ = 0;
  uint64_t validation_errors_ = 0;
  std::atomic<uint64_t> pipelines_created_{0};
  Descriptors descriptors_ = Descriptors::kCached;
  PFN_vkCmdPushDescriptorSetKHR push_descriptor_set_ = nullptr;
  bool pipeline_stats_ = false;
  PFN_vkGetPipelineExecutablePropertiesKHR exec_props_ = nullptr;
  PFN_vkGetPipelineExecutableStatisticsKHR exec_stats_ = nullptr;
  std::atomic<uint64_t> next_serial_{1};  // Buffer and Pipeline serials
 public:
  // Called from the debug messenger callback.
  void count_validation_error() { ++validation_errors_; }
};

// Embedded SPIR-V lookup (generated at build time from kernels/shaders/*.comp).
struct ShaderBlob {
  const uint32_t* words;
  size_t word_count;
};
// nullptr-words blob if unknown.
ShaderBlob find_shader(std::string_view name);
std::vector<std::string> shader_names();

}  // namespace trove::vk
