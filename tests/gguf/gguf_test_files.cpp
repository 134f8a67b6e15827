#include "tests/gguf/gguf_test_files.h"

#include <fstream>
#include <iterator>

#include "common/status.h"
#include "engine/gguf/gguf_writer.h"

namespace trove::gguf::testing {

namespace {
template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof v);
}
}  // namespace

std::vector<uint8_t> write_every_type_file(const std::string& path) {
  GgufWriter w;
  w.set_u8("t.u8", 200);
  std::vector<uint8_t> raw;
  put<int8_t>(raw, -100);
  w.set_raw("t.i8", 1, raw);
  raw.clear();
  put<uint16_t>(raw, 60000);
  w.set_raw("t.u16", 2, raw);
  raw.clear();
  put<int16_t>(raw, -30000);
  w.set_raw("t.i16", 3, raw);
  w.set_u32("t.u32", 4000000000u);
  w.set_i32("t.i32", -2000000000);
  w.set_f32("t.f32", 1.5f);
  w.set_bool("t.bool", true);
  w.set_string("t.string", "héllo\nwörld");
  w.set_u64("t.u64", 18000000000000000000ull);
  raw.clear();
  put<int64_t>(raw, -9000000000000000000ll);
  w.set_raw("t.i64", 11, raw);
  w.set_f64("t.f64", -2.25);
  w.set_i32_array("t.i32s", {1, -2, 3});
  w.set_f32_array("t.f32s", {0.5f, -0.25f});
  w.set_string_array("t.strings", {"a", "", "ccc"});
  // Nested: array of 2 arrays of u16 ({1,2}, {3}).
  raw.clear();
  put<uint32_t>(raw, 9);   // element type: array
  put<uint64_t>(raw, 2);   // two inner arrays
  put<uint32_t>(raw, 2);   // inner element type u16
  put<uint64_t>(raw, 2);
  put<uint16_t>(raw, 1);
  put<uint16_t>(raw, 2);
  put<uint32_t>(raw, 2);
  put<uint64_t>(raw, 1);
  put<uint16_t>(raw, 3);
  w.set_raw("t.nested", 9, raw);

  struct T {
    const char* name;
    quant::GgmlType type;
    uint64_t ne0, ne1;
  };
  const T tensors[] = {{"f32", quant::GgmlType::F32, 4, 2},     {"f16", quant::GgmlType::F16, 8, 1},
                       {"bf16", quant::GgmlType::BF16, 2, 3},   {"q8_0", quant::GgmlType::Q8_0, 32, 2},
                       {"q4_k", quant::GgmlType::Q4_K, 256, 1}, {"q5_k", quant::GgmlType::Q5_K, 256, 1},
                       {"q6_k", quant::GgmlType::Q6_K, 256, 2}};
  for (const auto& t : tensors) w.add_tensor(t.name, {t.ne0, t.ne1}, t.type);
  TROVE_CHECK(w.begin(path).ok());
  for (size_t i = 0; i < w.tensor_count(); ++i) {
    std::vector<uint8_t> bytes(w.tensor_bytes(i));
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<uint8_t>(i * 31 + k);
    TROVE_CHECK(w.write_tensor(i, bytes).ok());
  }
  TROVE_CHECK(w.finish().ok());
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

}  // namespace trove::gguf::testing
