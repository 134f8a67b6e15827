// Weight formats trove reads and writes: the GGML tensor types of Qwen3 GGUF files, their block
// layouts, and plain C++ reference conversions to and from f32.
//
// This is the single definition of each format on the C++ side. The GGUF reader and writer use it for
// sizes, `trove mkmodel` to quantize, the shader tests as the reference the GPU dequantization must
// match, and the engine for CPU fallbacks. No Vulkan here.
//
// Layouts are GGML's, byte for byte (a file written with them loads in llama.cpp, and a file from
// llama.cpp reads back here). Quantization is round-to-nearest from each block's min/max: simpler
// than llama.cpp's iterative scale search (so its error is slightly larger for K-quants), but
// deterministic and producing valid blocks of the same format. See docs/gguf.md.
//
// All functions are pure and thread-safe. `n` is a count of values and must be a multiple of the
// type's block size (TROVE_CHECKed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace trove::quant {

// Numeric ids are GGML's `ggml_type` values, as stored in GGUF tensor infos.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};

inline constexpr int kQK8_0 = 32;   // values per Q8_0 block
inline constexpr int kQK_K = 256;   // values per K-quant super-block
inline constexpr int kKScaleSize = 12;

using f16_bits = uint16_t;
using bf16_bits = uint16_t;

// 34 bytes: one f16 scale, 32 signed 8-bit values. x = d * qs[i].
struct BlockQ8_0 {
  f16_bits d;
  int8_t qs[kQK8_0];
};
// 144 bytes: 8 sub-blocks of 32 with 6-bit scale and min each (packed in `scales`), 4-bit values.
// x = d * sc[j] * q - dmin * m[j].
struct BlockQ4_K {
  f16_bits d;
  f16_bits dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
// 176 bytes: as Q4_K with a fifth bit per value in `qh`.
struct BlockQ5_K {
  f16_bits d;
  f16_bits dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
// 210 bytes: 16 sub-blocks of 16 with a signed 8-bit scale each, 6-bit values stored as
// 4 low bits (ql) + 2 high bits (qh), offset by 32. x = d * scales[j] * (q - 32).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  f16_bits d;
};

static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);

struct TypeTraits {
  GgmlType type;
  std::string_view name;  // "Q4_K", as llama.cpp prints it
  int block_values;       // values per block (1 for float types)
  int block_bytes;        // bytes per block
};

// The traits of a supported type; nullopt for any other id (GGUF readers report it by name).
std::optional<TypeTraits> traits(GgmlType type);
std::optional<TypeTraits> traits_of_id(uint32_t ggml_type_id);
// GGML's name of any type id, supported or not ("IQ2_XXS"); "type#77" for unknown ids.
std::string ggml_type_name(uint32_t ggml_type_id);
// Parses "Q4_K", "q4_k", "F16"…; nullopt when not a supported type.
std::optional<GgmlType> parse_type(std::string_view name);
// "F32 F16 BF16 Q8_0 Q4_K Q5_K Q6_K" — for error messages.
std::string_view supported_type_names();

// Bytes of `n` values of `type` (n a multiple of the block size).
size_t row_bytes(GgmlType type, int64_t n);

float f16_to_f32(f16_bits h);
f16_bits f32_to_f16(float f);  // round to nearest even; overflow to inf; NaN kept NaN
float bf16_to_f32(bf16_bits h);
bf16_bits f32_to_bf16(float f);  // round to nearest even

// Converts n f32 values to `type` (dst has row_bytes(type, n) bytes).
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n);
// Converts n values of `type` to f32.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// Q4_K / Q5_K sub-block j (0..7) scale and min from the packed 12-byte `scales` array.
void unpack_scale_min_k4(int j, const uint8_t* scales, uint8_t* scale, uint8_t* min);

}  // namespace trove::quant
