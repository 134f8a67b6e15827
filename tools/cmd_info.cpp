// `trove info FILE`: what a GGUF model is — architecture, hyper-parameters, tokenizer, chat template
// family, tensors by type, parameter count.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "engine/gguf/gguf.h"
#include "engine/gguf/model_info.h"
#include "tools/command.h"

namespace {

void add_info(CLI::App& sub) {
  auto path = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  sub.add_option("file", *path, "GGUF model file")->required();
  sub.add_flag("--json", *as_json, "Print JSON instead of text");
  sub.callback([path, as_json] {
    auto f = trove::gguf::GgufFile::open(*path);
    if (!f.ok()) trove::cli::fail(f.status().message());
    auto r = trove::gguf::describe_model(**f);
    if (!r.ok()) trove::cli::fail(r.status().message());
    const auto& m = *r;
    const auto family = std::string(trove::gguf::template_family_name(m.template_family));
    if (*as_json) {
      nlohmann::json j;
      j["file"] = *path;
      j["gguf_version"] = (*f)->version();
      j["architecture"] = m.architecture;
      j["name"] = m.name;
      j["synthetic"] = m.synthetic;
      j["context_length"] = m.n_ctx;
      j["embedding_length"] = m.n_embd;
      j["block_count"] = m.n_layer;
      j["feed_forward_length"] = m.n_ff;
      j["head_count"] = m.n_head;
      j["head_count_kv"] = m.n_head_kv;
      j["head_dim"] = m.head_dim;
      j["expert_count"] = m.n_expert;
      j["expert_used_count"] = m.n_expert_used;
      j["expert_feed_forward_length"] = m.n_ff_exp;
      j["rope_freq_base"] = m.rope_base;
      j["rms_eps"] = m.rms_eps;
      j["tied_embeddings"] = m.tied_embeddings;
      j["tokenizer"] = {{"model", m.tokenizer_model}, {"pre", m.tokenizer_pre}, {"vocab_size", m.vocab_size},
                        {"merges", m.merges},         {"bos_id", m.bos_id},   {"eos_id", m.eos_id},
                        {"pad_id", m.pad_id}};
      j["chat_template_family"] = family;
      j["tensor_count"] = m.tensor_count;
      j["parameters"] = m.parameters;
      j["tensor_bytes"] = m.tensor_bytes;
      for (const auto& [type, tb] : m.by_type) j["tensors_by_type"][type] = {{"tensors", tb.first}, {"bytes", tb.second}};
      std::printf("%s\n", j.dump(2).c_str());
      return;
    }
    if (m.synthetic) {
      std::printf("*** SYNTHETIC MODEL: real shapes and tokenizer, random weights — its output is noise ***\n");
    }
    std::printf("file          %s (GGUF v%u, %.2f GB)\n", path->c_str(), (*f)->version(), (*f)->file_size() / 1e9);
    std::printf("architecture  %s%s%s\n", m.architecture.c_str(), m.name.empty() ? "" : "  — ", m.name.c_str());
    std::printf("parameters    %.3f B (%llu)\n", m.parameters / 1e9, static_cast<unsigned long long>(m.parameters));
    std::printf("context       %u tokens\n", m.n_ctx);
    std::printf("layers        %u, hidden %u, heads %u (KV %u), head_dim %u, rope base %g, rms eps %g\n", m.n_layer,
                m.n_embd, m.n_head, m.n_head_kv, m.head_dim, m.rope_base, m.rms_eps);
    if (m.n_expert) {
      std::printf("experts       %u (%u used per token), expert FFN %u\n", m.n_expert, m.n_expert_used, m.n_ff_exp);
    } else {
      std::printf("FFN           %u\n", m.n_ff);
    }
    std::printf("output head   %s\n", m.tied_embeddings ? "tied to token_embd" : "output.weight");
    std::printf("tokenizer     %s/%s, %llu tokens, %llu merges, bos %lld eos %lld pad %lld\n", m.tokenizer_model.c_str(),
                m.tokenizer_pre.c_str(), static_cast<unsigned long long>(m.vocab_size),
                static_cast<unsigned long long>(m.merges), static_cast<long long>(m.bos_id),
                static_cast<long long>(m.eos_id), static_cast<long long>(m.pad_id));
    std::printf("chat template %s\n", family.c_str());
    std::printf("tensors       %llu, %.2f GB\n", static_cast<unsigned long long>(m.tensor_count), m.tensor_bytes / 1e9);
    for (const auto& [type, tb] : m.by_type) {
      std::printf("  %-6s %5llu tensors %10.2f MB\n", type.c_str(), static_cast<unsigned long long>(tb.first),
                  tb.second / 1e6);
    }
  });
}

trove::cli::CommandRegistration reg{"info", "Describe a GGUF model file", add_info};

}  // namespace
