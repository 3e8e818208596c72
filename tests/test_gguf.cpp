// GGUF reader/writer: round trips, real vocab-only files, and corrupt input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fp16.h"
#include "formats/gguf.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

std::string temp_file(const std::string& name) {
  return (fs::path(::testing::TempDir()) / ("tessera_gguf_" + std::to_string(::getpid()) + "_" + name)).string();
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b, size_t n = SIZE_MAX) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(std::min(n, b.size())));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Builds GGUF bytes field by field, so tests can produce any (in)valid layout.
struct Raw {
  std::vector<uint8_t> b;
  template <typename T>
  Raw& put(T v) {
    const size_t n = b.size();
    b.resize(n + sizeof(T));
    std::memcpy(b.data() + n, &v, sizeof(T));
    return *this;
  }
  Raw& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return put<uint32_t>(0x46554747).put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  }
  Raw& key(const std::string& k, gguf::ValueType t) { return str(k).put<uint32_t>(uint32_t(t)); }
  Raw& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(uint32_t(ne.size()));
    for (uint64_t d : ne) put<uint64_t>(d);
    return put<uint32_t>(type).put<uint64_t>(offset);
  }
  Raw& pad(size_t a = 32) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
  Raw& fill(size_t n, uint8_t v) {
    b.insert(b.end(), n, v);
    return *this;
  }
};

// A small valid file: two KVs, an f32 (2, 4) tensor at 0 and a q8_0 (32) tensor at 32.
Raw small_valid() {
  Raw r;
  r.header(2, 2);
  r.key("general.architecture", gguf::ValueType::STRING).str("llama");
  r.key("llama.block_count", gguf::ValueType::UINT32).put<uint32_t>(2);
  r.tensor("a", {4, 2}, 0, 0);
  r.tensor("b", {32}, 8, 32);
  r.pad().fill(32, 0x11).fill(34, 0x22);
  return r;
}

// Expects opening the bytes to throw a tessera::Error whose message contains every needle.
void expect_error(const std::vector<uint8_t>& bytes, std::initializer_list<std::string> needles) {
  const std::string path = temp_file("bad.gguf");
  write_bytes(path, bytes);
  try {
    gguf::File::open(path);
    ADD_FAILURE() << "expected an error containing '" << *needles.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
  fs::remove(path);
}

}  // namespace

TEST(GgufRoundTrip, MetadataOfEveryWriterType) {
  gguf::Writer w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 12);
  w.set_i32("test.neg", -7);
  w.set_f32("llama.rope.freq_base", 10000.5f);
  w.set_bool("test.flag", true);
  w.set_string_array("tokenizer.ggml.tokens", {"<unk>", "", "h\xc3\xa9llo", std::string("a\0b", 3)});
  w.set_f32_array("tokenizer.ggml.scores", {0.f, -1.5f, 3.25f});
  w.set_i32_array("tokenizer.ggml.token_type", {2, 1, -1});
  w.set_u32("llama.block_count", 13);  // replaces the value, keeps the position
  const std::string path = temp_file("meta.gguf");
  w.write(path);

  auto f = gguf::File::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->metadata().size(), 8u);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.block_count"), 13);
  EXPECT_EQ(f->find("llama.block_count")->type, gguf::ValueType::UINT32);
  EXPECT_EQ(f->get_int("test.neg"), -7);
  EXPECT_EQ(f->get_float("llama.rope.freq_base"), 10000.5);
  EXPECT_EQ(f->get_float("llama.block_count"), 13.0);  // integers widen to float
  EXPECT_TRUE(f->get_bool("test.flag"));
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"<unk>", "", "h\xc3\xa9llo", std::string("a\0b", 3)}));
  EXPECT_EQ(f->get_num_array("tokenizer.ggml.scores"), (std::vector<double>{0, -1.5, 3.25}));
  EXPECT_EQ(f->get_num_array("tokenizer.ggml.token_type"), (std::vector<double>{2, 1, -1}));
  EXPECT_EQ(f->find("tokenizer.ggml.token_type")->elem_type, gguf::ValueType::INT32);

  // Keys are written in insertion order: the first key follows the 24-byte header.
  const std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data() + 24, 8);
  EXPECT_EQ(std::string(bytes.begin() + 32, bytes.begin() + 32 + long(len)), "general.architecture");
  fs::remove(path);
}

TEST(GgufGetters, DefaultsAndTypeErrors) {
  gguf::Writer w;
  w.set_string("s", "x");
  w.set_u32("n", 5);
  w.set_bool("b", false);
  const std::string path = temp_file("getters.gguf");
  w.write(path);
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->get_int_or("missing", 42), 42);
  EXPECT_EQ(f->get_float_or("missing", 0.5), 0.5);
  EXPECT_EQ(f->get_string_or("missing", "d"), "d");
  EXPECT_TRUE(f->get_bool_or("missing", true));
  EXPECT_EQ(f->get_int_or("n", 42), 5);
  EXPECT_FALSE(f->get_bool_or("b", true));
  EXPECT_EQ(f->find("missing"), nullptr);
  EXPECT_EQ(f->find_tensor("missing"), nullptr);
  EXPECT_THROW(f->get_int("missing"), Error);
  EXPECT_THROW(f->get_int_or("s", 1), Error);
  EXPECT_THROW(f->get_string("n"), Error);
  EXPECT_THROW(f->get_bool("n"), Error);
  EXPECT_THROW(f->get_float("s"), Error);
  EXPECT_THROW(f->get_string_array("s"), Error);
  EXPECT_THROW(f->get_num_array("n"), Error);
  EXPECT_THROW(f->tensor("nope"), Error);
  try {
    f->get_string("n");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("metadata key 'n' has type u32, expected string"), std::string::npos)
        << e.what();
  }
  fs::remove(path);
}

TEST(GgufReader, ReadsEveryValueType) {
  using VT = gguf::ValueType;
  Raw r;
  r.header(0, 16, 2);  // version 2 has the same layout as 3
  r.key("u8", VT::UINT8).put<uint8_t>(200);
  r.key("i8", VT::INT8).put<int8_t>(-100);
  r.key("u16", VT::UINT16).put<uint16_t>(60000);
  r.key("i16", VT::INT16).put<int16_t>(-30000);
  r.key("u32", VT::UINT32).put<uint32_t>(4000000000u);
  r.key("i32", VT::INT32).put<int32_t>(-2000000000);
  r.key("f32", VT::FLOAT32).put<float>(0.25f);
  r.key("bool", VT::BOOL).put<uint8_t>(1);
  r.key("str", VT::STRING).str("hi");
  r.key("u64", VT::UINT64).put<uint64_t>(uint64_t(1) << 40);
  r.key("i64", VT::INT64).put<int64_t>(-(int64_t(1) << 40));
  r.key("f64", VT::FLOAT64).put<double>(-2.5);
  r.key("big", VT::UINT64).put<uint64_t>(UINT64_MAX);
  r.key("arr_u8", VT::ARRAY).put<uint32_t>(uint32_t(VT::UINT8)).put<uint64_t>(3).put<uint8_t>(1).put<uint8_t>(2).put<uint8_t>(255);
  r.key("arr_bool", VT::ARRAY).put<uint32_t>(uint32_t(VT::BOOL)).put<uint64_t>(2).put<uint8_t>(0).put<uint8_t>(1);
  r.key("arr_f64", VT::ARRAY).put<uint32_t>(uint32_t(VT::FLOAT64)).put<uint64_t>(1).put<double>(1e300);
  const std::string path = temp_file("types.gguf");
  write_bytes(path, r.b);
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->get_int("u8"), 200);
  EXPECT_EQ(f->get_int("i8"), -100);
  EXPECT_EQ(f->get_int("u16"), 60000);
  EXPECT_EQ(f->get_int("i16"), -30000);
  EXPECT_EQ(f->get_int("u32"), 4000000000LL);
  EXPECT_EQ(f->get_int("i32"), -2000000000);
  EXPECT_EQ(f->get_float("f32"), 0.25);
  EXPECT_TRUE(f->get_bool("bool"));
  EXPECT_EQ(f->get_string("str"), "hi");
  EXPECT_EQ(f->get_int("u64"), int64_t(1) << 40);
  EXPECT_EQ(f->get_int("i64"), -(int64_t(1) << 40));
  EXPECT_EQ(f->get_float("f64"), -2.5);
  EXPECT_EQ(f->find("big")->u, UINT64_MAX);
  EXPECT_THROW(f->get_int("big"), Error);  // does not fit in int64
  EXPECT_EQ(f->get_num_array("arr_u8"), (std::vector<double>{1, 2, 255}));
  EXPECT_EQ(f->get_num_array("arr_bool"), (std::vector<double>{0, 1}));
  EXPECT_EQ(f->get_num_array("arr_f64"), (std::vector<double>{1e300}));
  fs::remove(path);
}

TEST(GgufRoundTrip, TensorsOfEveryDtype) {
  std::vector<float> f32(2 * 3 * 4 * 5);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = float(i) * 0.5f - 7.f;
  std::vector<uint16_t> f16(7), bf16(8);
  for (size_t i = 0; i < f16.size(); ++i) f16[i] = f32_to_f16(float(i) - 3.f);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = f32_to_bf16(float(i) * 1.25f);
  // Q8_0 (2, 64): 4 blocks; Q4_0 (3, 32): 3 blocks. Bytes built directly.
  std::vector<BlockQ8_0> q8(4);
  for (size_t k = 0; k < q8.size(); ++k) {
    q8[k].d = f32_to_f16(0.01f * float(k + 1));
    for (int j = 0; j < kQK; ++j) q8[k].qs[j] = int8_t(j * 4 - 64 + int(k));
  }
  std::vector<BlockQ4_0> q4(3);
  for (size_t k = 0; k < q4.size(); ++k) {
    q4[k].d = f32_to_f16(0.5f);
    for (int j = 0; j < kQK / 2; ++j) q4[k].qs[j] = uint8_t(j * 17 + int(k));
  }
  gguf::Writer w;
  w.set_string("general.architecture", "test");
  w.add_tensor("t.f32", make_view(DType::F32, {2, 3, 4, 5}, f32.data()));
  w.add_tensor("t.f16", make_view(DType::F16, {7}, f16.data()));
  w.add_tensor("t.bf16", make_view(DType::BF16, {2, 2, 2}, bf16.data()));
  w.add_tensor("t.q8_0", make_view(DType::Q8_0, {2, 64}, q8.data()));
  w.add_tensor("t.q4_0", make_view(DType::Q4_0, {3, 32}, q4.data()));
  EXPECT_THROW(w.add_tensor("t.f32", make_view(DType::F32, {1}, f32.data())), Error);  // duplicate
  EXPECT_THROW(w.add_tensor("bad.q8", make_view(DType::Q8_0, {2, 48}, q8.data())), Error);  // row % 32
  EXPECT_THROW(w.add_tensor("bad.q8g", make_view(DType::Q8_G, {4}, q8.data())), Error);
  const std::string path = temp_file("tensors.gguf");
  w.write(path);

  auto f = gguf::File::open(path);
  ASSERT_EQ(f->tensors().size(), 5u);
  struct Expect {
    const char* name;
    DType dtype;
    uint32_t ggml;
    std::vector<int64_t> shape;
    const void* data;
  };
  const Expect expects[] = {
      {"t.f32", DType::F32, 0, {2, 3, 4, 5}, f32.data()},  {"t.f16", DType::F16, 1, {7}, f16.data()},
      {"t.bf16", DType::BF16, 30, {2, 2, 2}, bf16.data()}, {"t.q8_0", DType::Q8_0, 8, {2, 64}, q8.data()},
      {"t.q4_0", DType::Q4_0, 2, {3, 32}, q4.data()},
  };
  const auto* base = static_cast<const uint8_t*>(f->tensors()[0].view.data);
  for (const Expect& e : expects) {
    SCOPED_TRACE(e.name);
    const gguf::TensorInfo& t = f->tensor(e.name);
    EXPECT_EQ(t.dtype, e.dtype);
    EXPECT_EQ(t.ggml_type, e.ggml);
    EXPECT_EQ(t.shape, e.shape);
    EXPECT_EQ(t.view.ndim, int(e.shape.size()));
    for (size_t d = 0; d < e.shape.size(); ++d) EXPECT_EQ(t.view.shape[d], e.shape[d]);
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(static_cast<const uint8_t*>(t.view.data) - base, ptrdiff_t(t.offset));
    EXPECT_EQ(std::memcmp(t.view.data, e.data, t.view.nbytes()), 0);
  }
  EXPECT_EQ(f->tensor("t.q8_0").view.row_bytes(), 68u);
  EXPECT_EQ(f->tensor("t.q4_0").view.nbytes(), 54u);
  // No padding after the last tensor: the file ends with its bytes (t.q4_0 is written last).
  const std::vector<uint8_t> bytes = read_bytes(path);
  ASSERT_GE(bytes.size(), 54u);
  EXPECT_EQ(std::memcmp(bytes.data() + bytes.size() - 54, q4.data(), 54), 0);
  fs::remove(path);
}

TEST(GgufReader, ShapeIsOutermostFirst) {
  Raw r;
  r.header(1, 0).tensor("w", {64, 3}, 8, 0).pad().fill(3 * 68, 1);  // ne = [64, 3]: 3 rows of 64
  const std::string path = temp_file("shape.gguf");
  write_bytes(path, r.b);
  auto f = gguf::File::open(path);
  const gguf::TensorInfo& t = f->tensor("w");
  EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 64}));
  EXPECT_EQ(t.view.rows(), 3);
  EXPECT_EQ(t.view.cols(), 64);
  EXPECT_EQ(t.view.row_bytes(), 68u);
  fs::remove(path);
}

TEST(GgufReader, CustomAlignment) {
  Raw r;
  r.header(1, 1).key("general.alignment", gguf::ValueType::UINT32).put<uint32_t>(64);
  r.tensor("x", {4}, 0, 0).pad(64).fill(16, 0);
  const std::string path = temp_file("align.gguf");
  write_bytes(path, r.b);
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f->tensor("x").view.data) % 64, 0u);  // mmap is page-aligned
  fs::remove(path);
}

TEST(GgufVocab, LlamaSpm) {
  const std::string path = std::string(TESSERA_SHARED_DIR) + "/tokenizers/llama.cpp-vectors/ggml-vocab-llama-spm.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found (../shared is not available)";
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "llama");
  const auto tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 32000u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(f->get_num_array("tokenizer.ggml.scores").size(), 32000u);
  EXPECT_EQ(f->get_num_array("tokenizer.ggml.token_type").size(), 32000u);
  EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f->get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GgufVocab, Gpt2) {
  const std::string path = std::string(TESSERA_SHARED_DIR) + "/tokenizers/llama.cpp-vectors/ggml-vocab-gpt-2.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found (../shared is not available)";
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->get_string("general.architecture"), "gpt2");
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "gpt2");
  const auto tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 50257u);
  EXPECT_EQ(tokens[0], "!");
  EXPECT_EQ(tokens[50256], "<|endoftext|>");
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges").size(), 50000u);
}

TEST(GgufBad, TruncatedAtEveryByte) {
  const std::vector<uint8_t> full = small_valid().b;
  const std::string path = temp_file("trunc.gguf");
  write_bytes(path, full);
  ASSERT_NO_THROW(gguf::File::open(path));
  for (size_t n = 0; n < full.size(); ++n) {
    write_bytes(path, full, n);
    EXPECT_THROW(gguf::File::open(path), Error) << "truncated to " << n << " of " << full.size() << " bytes";
  }
  fs::remove(path);
}

TEST(GgufBad, TruncatedWriterOutputAtEveryByte) {
  std::vector<float> x(40, 1.f);
  gguf::Writer w;
  w.set_string_array("a", {"x", "yy"});
  w.set_f32_array("b", {1, 2});
  w.add_tensor("t0", make_view(DType::F32, {3}, x.data()));
  w.add_tensor("t1", make_view(DType::F32, {5, 2}, x.data()));
  const std::string path = temp_file("trunc2.gguf");
  w.write(path);
  const std::vector<uint8_t> full = read_bytes(path);
  for (size_t n = 0; n < full.size(); ++n) {
    write_bytes(path, full, n);
    EXPECT_THROW(gguf::File::open(path), Error) << "truncated to " << n << " of " << full.size() << " bytes";
  }
  fs::remove(path);
}

TEST(GgufBad, WrongMagic) {
  Raw r = small_valid();
  std::memcpy(r.b.data(), "GGML", 4);
  expect_error(r.b, {"not a GGUF file", "GGML"});
  expect_error({}, {"not a GGUF file"});
}

TEST(GgufBad, UnsupportedVersion) {
  Raw r = small_valid();
  r.b[4] = 1;
  expect_error(r.b, {"version 1"});
  r.b[4] = 4;
  expect_error(r.b, {"unsupported GGUF version 4"});
  r.b[4] = 0;
  r.b[7] = 3;
  expect_error(r.b, {"big-endian"});
}

TEST(GgufBad, HugeStringLength) {
  Raw r;
  r.header(0, 1).put<uint64_t>(UINT64_MAX - 3).fill(64, 'x');
  expect_error(r.b, {"metadata entry #0 key", "string length"});
  Raw s;
  s.header(0, 1).key("k", gguf::ValueType::STRING).put<uint64_t>(uint64_t(1) << 62).fill(64, 'x');
  expect_error(s.b, {"metadata key 'k'", "string length"});
}

TEST(GgufBad, HugeCounts) {
  Raw r = small_valid();
  const uint64_t huge = uint64_t(1) << 60;
  std::memcpy(r.b.data() + 8, &huge, 8);
  expect_error(r.b, {"tensor_count"});
  r = small_valid();
  std::memcpy(r.b.data() + 16, &huge, 8);
  expect_error(r.b, {"metadata_kv_count"});
  Raw a;
  a.header(0, 1).key("arr", gguf::ValueType::ARRAY).put<uint32_t>(uint32_t(gguf::ValueType::STRING)).put<uint64_t>(huge);
  expect_error(a.b, {"metadata key 'arr'", "array of"});
  Raw b;
  b.header(0, 1).key("arr", gguf::ValueType::ARRAY).put<uint32_t>(uint32_t(gguf::ValueType::UINT64)).put<uint64_t>(3);
  b.put<uint64_t>(1).put<uint64_t>(2);
  expect_error(b.b, {"metadata key 'arr'", "cannot fit"});
}

TEST(GgufBad, BadValues) {
  using VT = gguf::ValueType;
  Raw r;
  r.header(0, 1).key("k", VT(13)).put<uint32_t>(0);
  expect_error(r.b, {"metadata key 'k'", "unknown value type 13"});
  r = Raw();
  r.header(0, 1).key("k", VT::ARRAY).put<uint32_t>(uint32_t(VT::ARRAY)).put<uint64_t>(1);
  r.put<uint32_t>(0).put<uint64_t>(0);
  expect_error(r.b, {"metadata key 'k'", "nested arrays"});
  r = Raw();
  r.header(0, 1).key("k", VT::BOOL).put<uint8_t>(7);
  expect_error(r.b, {"metadata key 'k'", "invalid bool"});
  r = Raw();
  r.header(0, 2).key("k", VT::UINT8).put<uint8_t>(1).key("k", VT::UINT8).put<uint8_t>(2);
  expect_error(r.b, {"duplicate metadata key 'k'"});
  r = Raw();
  r.header(0, 1).key("general.alignment", VT::UINT32).put<uint32_t>(48);
  expect_error(r.b, {"general.alignment", "power of two"});
  r = Raw();
  r.header(0, 1).key("general.alignment", VT::STRING).str("32");
  expect_error(r.b, {"general.alignment", "expected u32"});
}

TEST(GgufBad, BadTensorInfos) {
  Raw r;
  r.header(1, 0).tensor("blk.0.w", {2, 2, 2, 2, 2}, 0, 0).pad().fill(128, 0);
  expect_error(r.b, {"tensor 'blk.0.w'", "n_dims 5"});
  r = Raw();
  r.header(1, 0).tensor("w", {}, 0, 0).pad().fill(4, 0);
  expect_error(r.b, {"tensor 'w'", "n_dims 0"});
  r = Raw();
  r.header(1, 0).tensor("w", {4, 0}, 0, 0).pad().fill(16, 0);
  expect_error(r.b, {"tensor 'w'", "ne[1] = 0"});
  r = Raw();
  r.header(1, 0).tensor("w", {uint64_t(1) << 40, uint64_t(1) << 40}, 0, 0).pad().fill(16, 0);
  expect_error(r.b, {"tensor 'w'", "overflow"});
  r = Raw();
  r.header(1, 0).tensor("w", {48}, 8, 0).pad().fill(68, 0);
  expect_error(r.b, {"tensor 'w'", "not a multiple of the block size 32"});
  r = Raw();
  r.header(2, 0).tensor("w", {4}, 0, 0).tensor("w", {4}, 0, 32).pad().fill(48, 0);
  expect_error(r.b, {"duplicate tensor name 'w'"});
}

TEST(GgufBad, UnknownTensorType) {
  Raw r;
  r.header(1, 0).tensor("blk.0.attn_q.weight", {256, 2}, 16, 0).pad().fill(132, 0);
  expect_error(r.b, {"tensor 'blk.0.attn_q.weight'", "unsupported ggml type 16 (iq2_xxs)", "supported: f32",
                     "q4_k", "iq4_nl"});
  r = Raw();
  r.header(1, 0).tensor("w", {32}, 1000, 0).pad().fill(64, 0);
  expect_error(r.b, {"tensor 'w'", "unsupported ggml type 1000 (unknown)"});
}

TEST(GgufBad, TensorOffsets) {
  Raw r;
  r.header(1, 0).tensor("w", {4}, 0, 1024).pad().fill(16, 0);
  expect_error(r.b, {"tensor 'w'", "past the end of the file"});
  r = Raw();
  r.header(1, 0).tensor("w", {4}, 0, 16).pad().fill(64, 0);
  expect_error(r.b, {"tensor 'w'", "offset 16 is not a multiple of the alignment 32"});
  r = Raw();
  r.header(1, 0).tensor("w", {4}, 0, UINT64_MAX - 31).pad().fill(16, 0);
  expect_error(r.b, {"tensor 'w'", "past the end of the file"});
  r = Raw();
  r.header(1, 0).tensor("w", {4}, 0, 0).pad().fill(15, 0);  // one byte short
  expect_error(r.b, {"tensor 'w'", "past the end of the file"});
  r = Raw();  // alignment 2 lets an f32 tensor start at an address that is not 4-byte aligned
  r.header(1, 1).key("general.alignment", gguf::ValueType::UINT32).put<uint32_t>(2);
  r.tensor("w", {4}, 0, 0).pad(2);
  ASSERT_EQ(r.b.size() % 4, 2u);
  r.fill(16, 0);
  expect_error(r.b, {"tensor 'w'", "4-byte aligned"});
}
