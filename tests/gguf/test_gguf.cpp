// The GGUF reader and writer: every value type round-trips; truncated, corrupt and hostile files get
// an error naming the field and byte offset, never a crash (this test runs under ASan + UBSan).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/gguf/synthetic.h"
#include "tests/gguf/gguf_test_files.h"

namespace fs = std::filesystem;
using trove::StatusCode;
using trove::gguf::GgufFile;
using trove::gguf::GgufWriter;
using trove::gguf::ValueType;
using trove::quant::GgmlType;

namespace {

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("trove-gguf-test-" + std::to_string(getpid()) + "-" + name)).string();
}

class EveryTypeFile : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = temp_path("every.gguf");
    bytes_ = trove::gguf::testing::write_every_type_file(path_);
  }
  void TearDown() override { fs::remove(path_); }
  std::string path_;
  std::vector<uint8_t> bytes_;
};

template <class T>
void poke(std::vector<uint8_t>& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}

// Byte offset of the first occurrence of `needle` in `b`.
size_t find(const std::vector<uint8_t>& b, std::string_view needle) {
  auto it = std::search(b.begin(), b.end(), needle.begin(), needle.end());
  EXPECT_NE(it, b.end()) << needle;
  return static_cast<size_t>(it - b.begin());
}

// Byte offset just after the length-prefixed string `name` (a key or a tensor name) in `b`.
size_t after_name(const std::vector<uint8_t>& b, const std::string& name) {
  std::string pattern(8, '\0');
  const uint64_t len = name.size();
  std::memcpy(pattern.data(), &len, 8);
  pattern += name;
  return find(b, pattern) + pattern.size();
}

// Where the last tensor's data ends: bytes after it are alignment padding the reader never needs.
size_t end_of_tensor_data(const std::vector<uint8_t>& b) {
  auto f = GgufFile::parse(b);
  EXPECT_TRUE(f.ok());
  const auto& last = (*f)->tensors().back();
  return static_cast<size_t>(last.data - b.data()) + last.n_bytes;
}

}  // namespace

TEST_F(EveryTypeFile, EveryScalarTypeReadsBackExactly) {
  auto f = GgufFile::open(path_);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.find("t.u8")->u, 200u);
  EXPECT_EQ(g.find("t.i8")->i, -100);
  EXPECT_EQ(g.find("t.u16")->u, 60000u);
  EXPECT_EQ(g.find("t.i16")->i, -30000);
  EXPECT_EQ(*g.get_u32("t.u32"), 4000000000u);
  EXPECT_EQ(*g.get_i64("t.i32"), -2000000000);
  EXPECT_EQ(*g.get_f32("t.f32"), 1.5f);
  EXPECT_EQ(*g.get_bool("t.bool"), true);
  EXPECT_EQ(*g.get_string("t.string"), "héllo\nwörld");
  EXPECT_EQ(*g.get_u64("t.u64"), 18000000000000000000ull);
  EXPECT_EQ(*g.get_i64("t.i64"), -9000000000000000000ll);
  EXPECT_EQ(*g.get_f64("t.f64"), -2.25);
  EXPECT_EQ(*g.get_int_array("t.i32s"), (std::vector<int64_t>{1, -2, 3}));
  const auto strings = *g.get_string_array("t.strings");
  ASSERT_EQ(strings.size(), 3u);
  EXPECT_EQ(strings[0], "a");
  EXPECT_EQ(strings[1], "");
  EXPECT_EQ(strings[2], "ccc");
  const auto* f32s = g.find("t.f32s");
  ASSERT_EQ(f32s->items.size(), 2u);
  EXPECT_EQ(f32s->items[1].f, -0.25);
}

TEST_F(EveryTypeFile, NestedArraysKeepTheirStructure) {
  auto f = GgufFile::open(path_);
  ASSERT_TRUE(f.ok());
  const auto* v = (*f)->find("t.nested");
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->elem_type, ValueType::kArray);
  ASSERT_EQ(v->items.size(), 2u);
  ASSERT_EQ(v->items[0].items.size(), 2u);
  EXPECT_EQ(v->items[0].items[1].u, 2u);
  ASSERT_EQ(v->items[1].items.size(), 1u);
  EXPECT_EQ(v->items[1].items[0].u, 3u);
}

TEST_F(EveryTypeFile, TensorTableShapesTypesAndDataAreExact) {
  auto f = GgufFile::open(path_);
  ASSERT_TRUE(f.ok());
  const auto& ts = (*f)->tensors();
  ASSERT_EQ(ts.size(), 7u);
  const auto* q6 = (*f)->find_tensor("q6_k");
  ASSERT_NE(q6, nullptr);
  EXPECT_EQ(q6->type, GgmlType::Q6_K);
  EXPECT_EQ(q6->ne[0], 256u);
  EXPECT_EQ(q6->ne[1], 2u);
  EXPECT_EQ(q6->n_bytes, 420u);
  for (size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(ts[i].offset % (*f)->alignment(), 0u);
    EXPECT_EQ((ts[i].data - bytes_.data() + 0) >= 0, true);
    for (size_t k = 0; k < ts[i].n_bytes; ++k) {
      ASSERT_EQ(ts[i].data[k], static_cast<uint8_t>(i * 31 + k)) << ts[i].name << " byte " << k;
    }
  }
}

TEST_F(EveryTypeFile, Version2FilesAreRead) {
  poke<uint32_t>(bytes_, 4, 2);
  auto f = GgufFile::parse(bytes_);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->version(), 2u);
}

TEST_F(EveryTypeFile, Version1IsRefusedWithAMessage) {
  poke<uint32_t>(bytes_, 4, 1);
  auto f = GgufFile::parse(bytes_, "old.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(f.status().message().find("version 1"), std::string::npos) << f.status().message();
}

TEST_F(EveryTypeFile, EveryTruncationIsAnErrorNeverACrash) {
  const size_t end = end_of_tensor_data(bytes_);
  ASSERT_GT(end, bytes_.size() - 32);
  for (size_t k = 0; k < end; ++k) {
    std::vector<uint8_t> cut(bytes_.begin(), bytes_.begin() + static_cast<long>(k));
    auto f = GgufFile::parse(cut, "cut.gguf");
    ASSERT_FALSE(f.ok()) << "a file cut to " << k << " of " << bytes_.size() << " bytes parsed";
    const auto& m = f.status().message();
    ASSERT_TRUE(m.find("byte") != std::string::npos || m.find("empty") != std::string::npos ||
                m.find("not a GGUF") != std::string::npos)
        << m;
  }
}

TEST_F(EveryTypeFile, TruncatedTensorDataNamesTheTensor) {
  std::vector<uint8_t> cut(bytes_.begin(), bytes_.begin() + static_cast<long>(end_of_tensor_data(bytes_)) - 10);
  auto f = GgufFile::parse(cut, "cut.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("tensor 'q6_k'"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("truncated"), std::string::npos);
}

TEST_F(EveryTypeFile, HostileArrayCountIsRefusedBeforeAllocating) {
  // The count of t.strings sits right after its key, type (9) and element type (8).
  const size_t at = after_name(bytes_, "t.strings") + 4 + 4;
  poke<uint64_t>(bytes_, at, 0xFFFFFFFFFFFFull);
  auto f = GgufFile::parse(bytes_, "hostile.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'t.strings'"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("cannot fit"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("at byte " + std::to_string(at)), std::string::npos) << f.status().message();
}

TEST_F(EveryTypeFile, HostileStringLengthIsRefused) {
  const size_t at = after_name(bytes_, "t.string") + 4;  // length of the value of t.string
  poke<uint64_t>(bytes_, at, ~0ull);
  auto f = GgufFile::parse(bytes_, "hostile.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("runs past the end"), std::string::npos) << f.status().message();
}

TEST_F(EveryTypeFile, UnknownValueTypeIsRefused) {
  const size_t at = after_name(bytes_, "t.u32");
  poke<uint32_t>(bytes_, at, 77);
  auto f = GgufFile::parse(bytes_, "bad.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("unknown value type 77"), std::string::npos) << f.status().message();
}

TEST_F(EveryTypeFile, UnsupportedTensorTypeNamesTypeAndTensor) {
  // The tensor info of "q4_k": name, n_dims (u32), 2 dims (u64), type (u32).
  const size_t at = after_name(bytes_, "q4_k") + 4 + 16;
  poke<uint32_t>(bytes_, at, 16);  // IQ2_XXS
  auto f = GgufFile::parse(bytes_, "iq.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kUnsupported);
  EXPECT_NE(f.status().message().find("tensor q4_k has type IQ2_XXS"), std::string::npos) << f.status().message();
  EXPECT_NE(f.status().message().find("F32 F16 BF16 Q8_0 Q4_K Q5_K Q6_K"), std::string::npos);
}

TEST_F(EveryTypeFile, TooManyDimensionsAndMisalignedOffsetsAreRefused) {
  {
    auto b = bytes_;
    poke<uint32_t>(b, after_name(b, "f16"), 5);
    auto f = GgufFile::parse(b);
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("5 dimensions"), std::string::npos) << f.status().message();
  }
  {
    auto b = bytes_;
    const size_t at = after_name(b, "bf16") + 4 + 16 + 4;  // offset of bf16
    uint64_t off;
    std::memcpy(&off, b.data() + at, 8);
    poke<uint64_t>(b, at, off + 1);
    auto f = GgufFile::parse(b);
    ASSERT_FALSE(f.ok());
    EXPECT_NE(f.status().message().find("not a multiple of the alignment"), std::string::npos) << f.status().message();
  }
}

TEST_F(EveryTypeFile, DimensionProductOverflowIsRefused) {
  auto b = bytes_;
  const size_t at = after_name(b, "f32") + 4;  // ne0 of "f32"
  poke<uint64_t>(b, at, 1ull << 39);
  poke<uint64_t>(b, at + 8, 1ull << 39);
  auto f = GgufFile::parse(b);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("out of range"), std::string::npos) << f.status().message();
}

TEST(GgufReader, NotAGgufFileSaysSo) {
  const std::string text = "{\"hello\": \"this is JSON\"}";
  std::vector<uint8_t> b(text.begin(), text.end());
  auto f = GgufFile::parse(b, "model.json");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'model.json' is not a GGUF file"), std::string::npos);
}

TEST(GgufReader, MissingFileNamesThePath) {
  auto f = GgufFile::open("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kIoError);
  EXPECT_NE(f.status().message().find("/nonexistent/dir/model.gguf"), std::string::npos);
}

TEST(GgufReader, TypedAccessorsRefuseWrongTypes) {
  const std::string path = temp_path("acc.gguf");
  trove::gguf::testing::write_every_type_file(path);
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->get_u32("t.i32").status().code(), StatusCode::kInvalidArgument);     // negative
  EXPECT_EQ((*f)->get_u32("t.u64").status().code(), StatusCode::kInvalidArgument);     // > 32 bits
  EXPECT_EQ((*f)->get_string("t.u8").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*f)->get_u32("no.such.key").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(*(*f)->get_u32_or("no.such.key", 7), 7u);
  fs::remove(path);
}

TEST(GgufWriter, UnfinishedFileLeavesNothingBehind) {
  const std::string path = temp_path("unfinished.gguf");
  {
    GgufWriter w;
    w.set_u32("a", 1);
    w.add_tensor("x", {32}, GgmlType::F32);
    ASSERT_TRUE(w.begin(path).ok());
    EXPECT_TRUE(fs::exists(path + ".partial"));
  }
  EXPECT_FALSE(fs::exists(path + ".partial"));
  EXPECT_FALSE(fs::exists(path));
}

TEST(GgufWriter, FinishRefusesMissingTensors) {
  const std::string path = temp_path("missing.gguf");
  GgufWriter w;
  w.add_tensor("x", {32}, GgmlType::F32);
  w.add_tensor("y", {32}, GgmlType::F32);
  ASSERT_TRUE(w.begin(path).ok());
  std::vector<uint8_t> bytes(128);
  ASSERT_TRUE(w.write_tensor(0, bytes).ok());
  auto st = w.finish();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("only 1 of 2 tensors"), std::string::npos);
}

TEST(Q4KMMix, FollowsLlamaCppUseMoreBits) {
  using trove::gguf::tensor_type_for;
  // 48 layers (Qwen3-30B-A3B): layers 0-5 and 42-47 and every third from 8 get Q6_K.
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.0.attn_v.weight", 2, 48, false), GgmlType::Q6_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.6.attn_v.weight", 2, 48, false), GgmlType::Q4_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.8.ffn_down_exps.weight", 3, 48, false), GgmlType::Q6_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.9.ffn_down_exps.weight", 3, 48, false), GgmlType::Q4_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.47.ffn_down.weight", 2, 48, false), GgmlType::Q6_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.9.attn_q.weight", 2, 48, false), GgmlType::Q4_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "output.weight", 2, 48, false), GgmlType::Q6_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "token_embd.weight", 2, 48, false), GgmlType::Q4_K);
  EXPECT_EQ(tensor_type_for("Q4_K_M", "token_embd.weight", 2, 28, true), GgmlType::Q6_K);  // tied head
  EXPECT_EQ(tensor_type_for("Q4_K_M", "blk.3.ffn_gate_inp.weight", 2, 48, false), GgmlType::F32);
  EXPECT_EQ(tensor_type_for("Q8_0", "blk.3.attn_norm.weight", 1, 48, false), GgmlType::F32);
  int q6 = 0;
  for (uint32_t i = 0; i < 48; ++i) q6 += trove::gguf::use_more_bits(i, 48);
  EXPECT_EQ(q6, 24);  // 6 + 6 + every third of the 36 in between
}
