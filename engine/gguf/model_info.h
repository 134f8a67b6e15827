// A summary of a GGUF model: what `trove info` prints and what tests compare with llama.cpp.
// Pure function of the file's metadata and tensor table; thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "common/status.h"
#include "engine/gguf/gguf.h"

namespace trove::gguf {

// The chat template families trove renders natively (engine/chat). Recognised by substrings that
// only that family's official template has.
enum class TemplateFamily { kNone, kQwen3, kQwen3Coder, kUnknown };
TemplateFamily detect_template_family(std::string_view chat_template);
std::string_view template_family_name(TemplateFamily f);

struct ModelInfo {
  std::string architecture;
  std::string name;
  bool synthetic = false;
  uint32_t n_ctx = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  uint32_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0;
  double rope_base = 0, rms_eps = 0;
  bool tied_embeddings = false;
  // Tokenizer.
  std::string tokenizer_model, tokenizer_pre;
  uint64_t vocab_size = 0, merges = 0;
  int64_t bos_id = -1, eos_id = -1, pad_id = -1;
  TemplateFamily template_family = TemplateFamily::kNone;
  // Tensors.
  uint64_t tensor_count = 0, parameters = 0, tensor_bytes = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_type;  // type name → (tensors, bytes)
};

// Reads the summary. Only architectures qwen3 and qwen3moe are accepted; anything else is an error
// that names the architecture and the supported ones.
Result<ModelInfo> describe_model(const GgufFile& f);

}  // namespace trove::gguf
