// libFuzzer target: any bytes handed to the GGUF parser give a model or an error, never a crash, a
// read out of bounds or undefined behaviour; a parsed file's tensors lie inside the input.
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/gguf/gguf.h"
#include "engine/gguf/model_info.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = trove::gguf::GgufFile::parse(std::span<const uint8_t>(data, size), "fuzz");
  if (!f.ok()) return 0;
  unsigned sink = 0;
  for (const auto& t : (*f)->tensors()) {
    TROVE_CHECK(t.data >= data && t.data + t.n_bytes <= data + size);
    if (t.n_bytes) sink += t.data[0] + t.data[t.n_bytes - 1];
  }
  (void)trove::gguf::describe_model(**f);
  (void)(*f)->get_string_array("tokenizer.ggml.tokens");
  return static_cast<int>(sink & 0);
}
