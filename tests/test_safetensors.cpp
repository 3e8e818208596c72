// safetensors reader/writer/collection: round trips, sharded directories, corrupt input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fp16.h"
#include "formats/safetensors.h"

using namespace tessera;
namespace fs = std::filesystem;
namespace st = tessera::safetensors;

namespace {

// A fresh directory per test, removed at the end.
struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& name) {
    dir = fs::path(::testing::TempDir()) / ("tessera_st_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
  std::string operator/(const std::string& f) const { return (dir / f).string(); }
};

void write_bytes(const std::string& path, const std::string& b, size_t n = SIZE_MAX) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(b.data(), std::streamsize(std::min(n, b.size())));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// u64 header length + header + data.
std::string raw_file(const std::string& header, const std::string& data, uint64_t len_override = 0) {
  const uint64_t n = len_override ? len_override : header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << *needles.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

void expect_open_error(const std::string& bytes, std::initializer_list<std::string> needles) {
  TempDir d("bad");
  const std::string path = d / "bad.safetensors";
  write_bytes(path, bytes);
  expect_error([&] { st::File::open(path); }, needles);
  expect_error([&] { st::File::open(path); }, {path});
}

}  // namespace

TEST(SafetensorsRoundTrip, AllDtypesAndMetadata) {
  TempDir d("rt");
  std::vector<float> a(6), s{3.5f};
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) - 2.f;
  std::vector<uint16_t> h(5), b(4);
  for (size_t i = 0; i < h.size(); ++i) h[i] = f32_to_f16(float(i) * 0.5f);
  for (size_t i = 0; i < b.size(); ++i) b[i] = f32_to_bf16(float(i) * -3.f);
  st::Writer w;
  w.set_metadata("format", "pt");
  w.set_metadata("note", "h\xc3\xa9");
  w.add_tensor("model.h", make_view(DType::F16, {5}, h.data()));  // odd byte count before an f32
  w.add_tensor("model.a", make_view(DType::F32, {2, 3}, a.data()));
  w.add_tensor("model.b", make_view(DType::BF16, {2, 1, 2}, b.data()));
  w.add_tensor("scalar", make_view(DType::F32, {}, s.data()));
  w.add_tensor("empty", make_view(DType::F32, {0, 3}, nullptr));
  EXPECT_THROW(w.add_tensor("model.a", make_view(DType::F32, {1}, a.data())), Error);
  EXPECT_THROW(w.add_tensor("q", make_view(DType::Q8_0, {32}, a.data())), Error);
  const std::string path = d / "model.safetensors";
  w.write(path);

  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');

  auto f = st::File::open(path);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "h\xc3\xa9");
  ASSERT_EQ(f->tensors().size(), 5u);
  struct Expect {
    const char* name;
    const char* dtype_name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
    size_t nbytes;
  };
  const Expect expects[] = {
      {"model.a", "F32", DType::F32, {2, 3}, a.data(), 24},  {"model.h", "F16", DType::F16, {5}, h.data(), 10},
      {"model.b", "BF16", DType::BF16, {2, 1, 2}, b.data(), 8}, {"scalar", "F32", DType::F32, {}, s.data(), 4},
      {"empty", "F32", DType::F32, {0, 3}, nullptr, 0},
  };
  for (const Expect& e : expects) {
    SCOPED_TRACE(e.name);
    const st::TensorInfo* t = f->find(e.name);
    ASSERT_NE(t, nullptr);
    EXPECT_TRUE(t->supported);
    EXPECT_EQ(t->dtype_name, e.dtype_name);
    EXPECT_EQ(t->dtype, e.dtype);
    EXPECT_EQ(t->shape, e.shape);
    EXPECT_EQ(t->view.ndim, int(e.shape.size()));
    EXPECT_EQ(t->view.nbytes(), e.nbytes);
    EXPECT_EQ(t->data_end - t->data_begin, e.nbytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->view.data) % dtype_block_bytes(e.dtype), 0u);
    if (e.nbytes) {
      EXPECT_EQ(std::memcmp(t->view.data, e.data, e.nbytes), 0);
    }
  }
  EXPECT_EQ(f->find("missing"), nullptr);

  // The same file through a Collection: by directory and by file path.
  for (const std::string& p : {d.dir.string(), path}) {
    st::Collection c = st::Collection::open(p);
    EXPECT_EQ(c.names(), (std::vector<std::string>{"empty", "model.a", "model.b", "model.h", "scalar"}));
    EXPECT_EQ(c.tensor("model.a").view.f32()[5], 3.f);
    EXPECT_EQ(c.path(), p);
  }
}

TEST(SafetensorsReader, ParsesHandWrittenHeader) {
  // Header without padding, tensors in an order other than their data order, and an
  // unsupported I64 tensor between them.
  const std::string header =
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
      R"("ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"__metadata__":{"k":"v"}})";
  std::string data(24, '\0');
  const float vals[2] = {1.5f, -2.f};
  std::memcpy(data.data() + 16, vals, 8);
  // Pad the header so the f32 data is 4-byte aligned in the file.
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const std::string bytes = raw_file(padded, data);
  TempDir d("hand");
  write_bytes(d / "x.safetensors", bytes);
  auto f = st::File::open(d / "x.safetensors");
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "ids");  // data order
  EXPECT_EQ(f->metadata().at("k"), "v");
  const st::TensorInfo* b = f->find("b");
  ASSERT_TRUE(b && b->supported);
  EXPECT_EQ(b->view.f32()[0], 1.5f);
  EXPECT_EQ(b->view.f32()[1], -2.f);
  const st::TensorInfo* ids = f->find("ids");
  ASSERT_TRUE(ids);
  EXPECT_FALSE(ids->supported);
  EXPECT_TRUE(ids->view.empty());
}

TEST(SafetensorsReader, UnsupportedDtypesParseButCannotBeUsed) {
  const std::string header =
      R"({"i64":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
      R"("f64":{"dtype":"F64","shape":[1],"data_offsets":[16,24]},)"
      R"("u8":{"dtype":"U8","shape":[3],"data_offsets":[24,27]},)"
      R"("bool":{"dtype":"BOOL","shape":[1],"data_offsets":[27,28]},)"
      R"("f8":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[28,32]},)"
      R"("i8":{"dtype":"I8","shape":[2,2],"data_offsets":[32,36]},)"
      R"("new":{"dtype":"Q99","shape":[7],"data_offsets":[36,40]},)"
      R"("r5":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[40,44]},)"
      R"("ok":{"dtype":"F32","shape":[1],"data_offsets":[44,48]}})";
  TempDir d("unsup");
  write_bytes(d / "model.safetensors", raw_file(header + std::string((8 - header.size() % 8) % 8, ' '),
                                                std::string(48, '\0')));
  st::Collection c = st::Collection::open(d.dir.string());
  EXPECT_EQ(c.names().size(), 9u);
  for (const char* name : {"i64", "f64", "u8", "bool", "f8", "i8", "new", "r5"}) {
    SCOPED_TRACE(name);
    const st::TensorInfo* t = c.find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_FALSE(t->supported);
    EXPECT_FALSE(t->why_unsupported.empty());
    expect_error([&] { c.tensor(name); }, {std::string("tensor '") + name + "'", t->dtype_name});
  }
  expect_error([&] { c.tensor("i64"); }, {"dtype I64", "supported: F32, F16, BF16"});
  expect_error([&] { c.tensor("r5"); }, {"rank 5"});
  expect_error([&] { c.tensor("nope"); }, {"no tensor named 'nope'", d.dir.string()});
  EXPECT_TRUE(c.tensor("ok").supported);
}

TEST(SafetensorsCollection, ShardedIndex) {
  TempDir d("sharded");
  std::vector<float> x{1, 2, 3, 4}, y{5, 6};
  st::Writer w1, w2;
  w1.add_tensor("layers.0.w", make_view(DType::F32, {2, 2}, x.data()));
  w2.add_tensor("layers.1.w", make_view(DType::F32, {2}, y.data()));
  w2.add_tensor("lm_head", make_view(DType::F32, {1, 2}, y.data()));
  w1.write(d / "model-00001-of-00002.safetensors");
  w2.write(d / "model-00002-of-00002.safetensors");
  write_bytes(d / "model.safetensors.index.json",
              R"({"metadata":{"total_size":24},"weight_map":{)"
              R"("layers.0.w":"model-00001-of-00002.safetensors",)"
              R"("layers.1.w":"model-00002-of-00002.safetensors",)"
              R"("lm_head":"model-00002-of-00002.safetensors"}})");
  st::Collection c = st::Collection::open(d.dir.string());
  EXPECT_EQ(c.names(), (std::vector<std::string>{"layers.0.w", "layers.1.w", "lm_head"}));
  EXPECT_EQ(c.tensor("layers.0.w").view.f32()[3], 4.f);
  EXPECT_EQ(c.tensor("lm_head").view.f32()[1], 6.f);
  EXPECT_EQ(c.tensor("lm_head").shape, (std::vector<int64_t>{1, 2}));
  // The index file itself may be passed too.
  EXPECT_EQ(st::Collection::open(d / "model.safetensors.index.json").names().size(), 3u);
  // The collection may be moved; views stay valid.
  st::Collection moved = std::move(c);
  EXPECT_EQ(moved.tensor("layers.1.w").view.f32()[0], 5.f);
}

TEST(SafetensorsCollection, Errors) {
  TempDir d("collerr");
  expect_error([&] { st::Collection::open(d.dir.string()); },
               {d.dir.string(), "neither model.safetensors nor model.safetensors.index.json"});
  expect_error([&] { st::Collection::open(d / "nothing-here"); }, {"nothing-here", "no such file"});

  std::vector<float> x{1, 2};
  st::Writer w;
  w.add_tensor("a", make_view(DType::F32, {2}, x.data()));
  w.write(d / "shard1.safetensors");
  const std::string index = d / "model.safetensors.index.json";
  write_bytes(index, R"({"weight_map":{"a":"shard1.safetensors","b":"shard2.safetensors"}})");
  expect_error([&] { st::Collection::open(d.dir.string()); },
               {index, "shard 'shard2.safetensors'", "tensor 'b'", "missing"});
  write_bytes(index, R"({"weight_map":{"a":"shard1.safetensors","b":"shard1.safetensors"}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {"tensor 'b'", "does not contain it"});
  write_bytes(index, R"({"weight_map":{"a":"../shard1.safetensors"}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {"'../shard1.safetensors'"});
  write_bytes(index, R"({"weight_map":{"a":"/etc/passwd"}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {"'/etc/passwd'"});
  write_bytes(index, R"({"weight_map":{"a":1}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {"tensor 'a'", "not a string"});
  write_bytes(index, R"({"metadata":{}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {index, "weight_map"});
  write_bytes(index, R"({"weight_map":{}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {index, "no tensors"});
  write_bytes(index, "{");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {index, "invalid JSON"});
  // Two shards holding the same tensor.
  w.write(d / "shard2.safetensors");
  write_bytes(index, R"({"weight_map":{"a":"shard1.safetensors","b":"shard2.safetensors"}})");
  expect_error([&] { st::Collection::open(d.dir.string()); }, {"tensor 'a'", "more than one file"});
}

TEST(SafetensorsBad, HeaderLength) {
  expect_open_error("", {"too short"});
  expect_open_error(std::string(7, '\0'), {"too short"});
  expect_open_error(raw_file("{}", "", 1000), {"header length 1000", "past the end"});
  expect_open_error(raw_file("{}", "", uint64_t(1) << 62), {"exceeds the limit"});
  expect_open_error(raw_file("{}", "", UINT64_MAX), {"exceeds the limit"});
}

TEST(SafetensorsBad, InvalidJson) {
  expect_open_error(raw_file(R"({"a":)", ""), {"invalid JSON"});
  expect_open_error(raw_file("[1,2]", ""), {"not a JSON object"});
  expect_open_error(raw_file(std::string(100, '[') + std::string(100, ']'), ""), {"nested deeper"});
  expect_open_error(raw_file(R"({"__metadata__":{"k":1}})", ""), {"__metadata__", "'k'", "not a string"});
  expect_open_error(raw_file(R"({"__metadata__":[]})", ""), {"__metadata__"});
  expect_open_error(raw_file(R"({"a":5})", ""), {"tensor 'a'", "not a JSON object"});
  expect_open_error(raw_file(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, 0)), {"tensor 'a'", "dtype"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, 0)), {"tensor 'a'", "shape"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", std::string(4, 0)), {"tensor 'a'", "data_offsets"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, 0)),
                    {"tensor 'a' shape entry", "non-negative integer"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", std::string(4, 0)),
                    {"tensor 'a' shape entry"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", std::string(8, 0)),
                    {"tensor 'a'", "data_offsets"});
}

TEST(SafetensorsBad, Offsets) {
  const std::string data(16, '\0');
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", data),
                    {"tensor 'a'", "past the end of the data section"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,8]}})", data),
                    {"tensor 'a'", "begin > end"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", data),
                    {"tensor 'a'", "needs 12 bytes", "hold 16"});
  expect_open_error(raw_file(R"({"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", data),
                    {"tensor 'a'", "needs 8 bytes"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", data),
                    {"tensor 'a'"});
  expect_open_error(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                             data),
                    {"'a'", "'b'", "overlap"});
}

TEST(SafetensorsBad, TruncatedAtEveryByte) {
  std::vector<float> x{1, 2, 3};
  std::vector<uint16_t> y{1, 2};
  st::Writer w;
  w.set_metadata("format", "pt");
  w.add_tensor("x", make_view(DType::F32, {3}, x.data()));
  w.add_tensor("y", make_view(DType::F16, {2}, y.data()));
  TempDir d("trunc");
  const std::string path = d / "t.safetensors";
  w.write(path);
  const std::string full = read_bytes(path);
  ASSERT_NO_THROW(st::File::open(path));
  for (size_t n = 0; n < full.size(); ++n) {
    write_bytes(path, full, n);
    EXPECT_THROW(st::File::open(path), Error) << "truncated to " << n << " of " << full.size() << " bytes";
  }
}
