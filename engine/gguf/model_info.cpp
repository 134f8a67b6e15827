#include "engine/gguf/model_info.h"

#include <fmt/format.h>

namespace trove::gguf {

TemplateFamily detect_template_family(std::string_view t) {
  if (t.empty()) return TemplateFamily::kNone;
  // Qwen3-Coder: the XML tool-call format and its render_item_list macro.
  if (t.find("<function=") != t.npos && t.find("render_item_list") != t.npos) return TemplateFamily::kQwen3Coder;
  // Qwen3 (hybrid thinking): JSON tool calls and the enable_thinking switch.
  if (t.find("enable_thinking") != t.npos && t.find("<tool_call>\\n{\"name\": ") != t.npos) {
    return TemplateFamily::kQwen3;
  }
  return TemplateFamily::kUnknown;
}

std::string_view template_family_name(TemplateFamily f) {
  switch (f) {
    case TemplateFamily::kNone: return "none";
    case TemplateFamily::kQwen3: return "qwen3";
    case TemplateFamily::kQwen3Coder: return "qwen3-coder";
    case TemplateFamily::kUnknown: return "unknown";
  }
  return "unknown";
}

Result<ModelInfo> describe_model(const GgufFile& f) {
  ModelInfo m;
  auto arch = f.get_string("general.architecture");
  if (!arch.ok()) return arch.status();
  m.architecture = std::string(*arch);
  if (m.architecture != "qwen3" && m.architecture != "qwen3moe") {
    return Status::Unsupported(fmt::format(
        "model '{}' has architecture '{}'; trove runs Qwen3 models only (architectures qwen3, qwen3moe)", f.path(),
        m.architecture));
  }
  if (auto n = f.get_string("general.name"); n.ok()) m.name = std::string(*n);
  if (auto s = f.get_bool("trove.synthetic"); s.ok()) m.synthetic = *s;
  const std::string a = m.architecture + ".";
  auto u32 = [&](const std::string& key, uint32_t* out, bool required) -> Status {
    auto r = f.get_u32(key);
    if (r.ok()) {
      *out = *r;
      return Status::Ok();
    }
    if (!required && r.status().code() == StatusCode::kNotFound) return Status::Ok();
    return r.status();
  };
  TROVE_RETURN_IF_ERROR(u32(a + "context_length", &m.n_ctx, true));
  TROVE_RETURN_IF_ERROR(u32(a + "embedding_length", &m.n_embd, true));
  TROVE_RETURN_IF_ERROR(u32(a + "block_count", &m.n_layer, true));
  TROVE_RETURN_IF_ERROR(u32(a + "feed_forward_length", &m.n_ff, false));
  TROVE_RETURN_IF_ERROR(u32(a + "attention.head_count", &m.n_head, true));
  TROVE_RETURN_IF_ERROR(u32(a + "attention.head_count_kv", &m.n_head_kv, true));
  m.head_dim = m.n_head ? m.n_embd / m.n_head : 0;
  TROVE_RETURN_IF_ERROR(u32(a + "attention.key_length", &m.head_dim, false));
  TROVE_RETURN_IF_ERROR(u32(a + "expert_count", &m.n_expert, false));
  TROVE_RETURN_IF_ERROR(u32(a + "expert_used_count", &m.n_expert_used, false));
  TROVE_RETURN_IF_ERROR(u32(a + "expert_feed_forward_length", &m.n_ff_exp, false));
  if (auto r = f.get_f64(a + "rope.freq_base"); r.ok()) m.rope_base = *r;
  if (auto r = f.get_f64(a + "attention.layer_norm_rms_epsilon"); r.ok()) m.rms_eps = *r;
  m.tied_embeddings = f.find_tensor("output.weight") == nullptr;

  if (auto r = f.get_string("tokenizer.ggml.model"); r.ok()) m.tokenizer_model = std::string(*r);
  if (auto r = f.get_string("tokenizer.ggml.pre"); r.ok()) m.tokenizer_pre = std::string(*r);
  if (const Value* v = f.find("tokenizer.ggml.tokens")) m.vocab_size = v->items.size();
  if (const Value* v = f.find("tokenizer.ggml.merges")) m.merges = v->items.size();
  if (auto r = f.get_i64("tokenizer.ggml.bos_token_id"); r.ok()) m.bos_id = *r;
  if (auto r = f.get_i64("tokenizer.ggml.eos_token_id"); r.ok()) m.eos_id = *r;
  if (auto r = f.get_i64("tokenizer.ggml.padding_token_id"); r.ok()) m.pad_id = *r;
  if (auto r = f.get_string("tokenizer.chat_template"); r.ok()) m.template_family = detect_template_family(*r);

  m.tensor_count = f.tensors().size();
  for (const auto& t : f.tensors()) {
    m.parameters += t.n_elements;
    m.tensor_bytes += t.n_bytes;
    auto& slot = m.by_type[std::string(quant::traits(t.type)->name)];
    slot.first += 1;
    slot.second += t.n_bytes;
  }
  return m;
}

}  // namespace trove::gguf
