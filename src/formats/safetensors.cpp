// Hugging Face safetensors: u64 little-endian header length N | N bytes of JSON | data.
// The JSON maps tensor names to {dtype, shape, data_offsets: [begin, end)} (offsets relative
// to the start of the data) plus an optional "__metadata__" map of strings.
#include "formats/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/error.h"

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace tessera::safetensors {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the limit the reference implementation uses
constexpr uint64_t kMaxIndexBytes = 100'000'000;
constexpr int kMaxJsonDepth = 16;  // real headers nest 3 deep
constexpr int kMaxRank = 4;        // TensorView's limit

struct DTypeDesc {
  const char* name;
  uint64_t bits;  // per element
  std::optional<DType> dtype;
};

constexpr DTypeDesc kDTypes[] = {
    {"F32", 32, DType::F32},   {"F16", 16, DType::F16},   {"BF16", 16, DType::BF16},
    {"F64", 64, std::nullopt}, {"I64", 64, std::nullopt}, {"U64", 64, std::nullopt},
    {"I32", 32, std::nullopt}, {"U32", 32, std::nullopt}, {"I16", 16, std::nullopt},
    {"U16", 16, std::nullopt}, {"I8", 8, std::nullopt},   {"U8", 8, std::nullopt},
    {"BOOL", 8, std::nullopt}, {"F8_E4M3", 8, std::nullopt}, {"F8_E5M2", 8, std::nullopt},
    {"F8_E8M0", 8, std::nullopt}, {"F6_E2M3", 6, std::nullopt}, {"F6_E3M2", 6, std::nullopt},
    {"F4", 4, std::nullopt},   {"C64", 64, std::nullopt},
};

const DTypeDesc* find_dtype(std::string_view name) {
  for (const DTypeDesc& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const char* st_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    default: return nullptr;
  }
}

// Parses JSON text, refusing nesting deeper than kMaxJsonDepth; errors name `what`.
json parse_json(const char* begin, const char* end, const std::string& what) {
  auto depth_guard = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) fail(what, ": JSON nested deeper than ", kMaxJsonDepth, " levels");
    return true;
  };
  try {
    return json::parse(begin, end, depth_guard);
  } catch (const json::exception& e) {
    fail(what, ": invalid JSON: ", e.what());
  }
}

// A non-negative JSON integer, or an Error naming the field.
uint64_t as_u64(const json& j, const std::string& path, const std::string& field) {
  if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0))
    fail(path, ": ", field, " must be a non-negative integer, got ", j.dump());
  return j.get<uint64_t>();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Reader

struct Parser {
  const std::string& path;
  const uint8_t* data;
  size_t size;

  void parse(File& f) {
    if (size < 8) fail(path, ": not a safetensors file: ", size, " bytes, too short for the header length");
    uint64_t n = 0;
    std::memcpy(&n, data, 8);
    if (n > kMaxHeaderBytes)
      fail(path, ": header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes");
    if (n > size - 8)
      fail(path, ": header length ", n, " runs past the end of the file (size ", size, ")");
    const char* text = reinterpret_cast<const char*>(data + 8);
    const json header = parse_json(text, text + n, path + ": header");
    if (!header.is_object()) fail(path, ": header is not a JSON object");
    const uint64_t data_start = 8 + n;
    const uint64_t data_size = size - data_start;

    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        parse_metadata(f, entry);
        continue;
      }
      f.tensors_.push_back(parse_tensor(name, entry, data_start, data_size));
    }
    std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.name < b.name;
    });
    // Non-empty ranges must not overlap (empty tensors may sit anywhere in range).
    const TensorInfo* prev = nullptr;
    for (const TensorInfo& t : f.tensors_) {
      if (t.data_begin == t.data_end) continue;
      if (prev && t.data_begin < prev->data_end)
        fail(path, ": tensors '", prev->name, "' [", prev->data_begin, ", ", prev->data_end, ") and '",
             t.name, "' [", t.data_begin, ", ", t.data_end, ") overlap");
      prev = &t;
    }
    for (size_t k = 0; k < f.tensors_.size(); ++k) f.tensor_index_.emplace(f.tensors_[k].name, k);
  }

  void parse_metadata(File& f, const json& m) {
    if (!m.is_object()) fail(path, ": __metadata__ is not a JSON object");
    for (const auto& [k, v] : m.items()) {
      if (!v.is_string()) fail(path, ": __metadata__ value of '", k, "' is not a string: ", v.dump());
      f.meta_[k] = v.get<std::string>();
    }
  }

  TensorInfo parse_tensor(const std::string& name, const json& e, uint64_t data_start, uint64_t data_size) {
    const std::string what = "tensor '" + name + "'";
    if (!e.is_object()) fail(path, ": ", what, " is not a JSON object");
    TensorInfo t;
    t.name = name;

    auto it = e.find("dtype");
    if (it == e.end() || !it->is_string()) fail(path, ": ", what, " has no string field 'dtype'");
    t.dtype_name = it->get<std::string>();
    const DTypeDesc* desc = find_dtype(t.dtype_name);

    it = e.find("shape");
    if (it == e.end() || !it->is_array()) fail(path, ": ", what, " has no array field 'shape'");
    uint64_t numel = 1;
    for (const json& d : *it) {
      const uint64_t dim = as_u64(d, path, what + " shape entry");
      if (dim > uint64_t(std::numeric_limits<int64_t>::max()))
        fail(path, ": ", what, " has a dimension too large: ", dim);
      if (dim != 0 && numel > uint64_t(std::numeric_limits<int64_t>::max()) / dim)
        fail(path, ": ", what, " has too many elements (shape ", it->dump(), ")");
      numel *= dim;
      t.shape.push_back(int64_t(dim));
    }

    it = e.find("data_offsets");
    if (it == e.end() || !it->is_array() || it->size() != 2)
      fail(path, ": ", what, " has no field 'data_offsets' of two integers");
    t.data_begin = as_u64((*it)[0], path, what + " data_offsets[0]");
    t.data_end = as_u64((*it)[1], path, what + " data_offsets[1]");
    if (t.data_begin > t.data_end)
      fail(path, ": ", what, " data_offsets [", t.data_begin, ", ", t.data_end, ") has begin > end");
    if (t.data_end > data_size)
      fail(path, ": ", what, " data_offsets [", t.data_begin, ", ", t.data_end,
           ") run past the end of the data section (", data_size, " bytes)");

    if (desc) {
      // numel < 2^63 and bits <= 64, so numel * bits cannot overflow after this check.
      if (numel > std::numeric_limits<uint64_t>::max() / desc->bits || numel * desc->bits % 8 != 0)
        fail(path, ": ", what, " has a shape ", e.at("shape").dump(), " whose size is not whole bytes");
      const uint64_t bits = numel * desc->bits;
      if (t.data_end - t.data_begin != bits / 8)
        fail(path, ": ", what, " of dtype ", t.dtype_name, " and shape ", e.at("shape").dump(), " needs ",
             bits / 8, " bytes but data_offsets [", t.data_begin, ", ", t.data_end, ") hold ",
             t.data_end - t.data_begin);
    }

    if (!desc || !desc->dtype) {
      t.why_unsupported = "dtype " + t.dtype_name + (desc ? "" : " (unknown)") +
                          " is not supported (supported: F32, F16, BF16)";
      return t;
    }
    t.dtype = *desc->dtype;
    if (t.shape.size() > size_t(kMaxRank)) {
      t.why_unsupported = "rank " + std::to_string(t.shape.size()) + " is above the supported 4";
      return t;
    }
    const uint64_t abs = data_start + t.data_begin;
    const uint64_t elem_bytes = desc->bits / 8;
    if (abs % elem_bytes != 0) {
      t.why_unsupported = "data at file offset " + std::to_string(abs) + " is not " +
                          std::to_string(elem_bytes) + "-byte aligned";
      return t;
    }
    t.supported = true;
    t.view.dtype = t.dtype;
    t.view.ndim = int(t.shape.size());
    for (size_t d = 0; d < t.shape.size(); ++d) t.view.shape[d] = t.shape[d];
    t.view.data = data + abs;
    return t;
  }
};

std::unique_ptr<File> File::open(const std::string& path) {
  auto f = std::make_unique<File>();
  f->map_ = MappedFile(path);
  Parser p{f->map_.path(), f->map_.data(), f->map_.size()};
  p.parse(*f);
  return f;
}

const TensorInfo* File::find(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------------------------------
// Collection

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Reads model.safetensors.index.json: weight_map tensor -> shard file name, in key order.
std::vector<std::pair<std::string, std::string>> read_weight_map(const std::string& index_path) {
  MappedFile m(index_path);
  if (m.size() > kMaxIndexBytes)
    fail(index_path, ": ", m.size(), " bytes, above the limit of ", kMaxIndexBytes, " for an index");
  const char* text = reinterpret_cast<const char*>(m.data());
  const json j = parse_json(text, text + m.size(), index_path);
  if (!j.is_object()) fail(index_path, ": not a JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) fail(index_path, ": no object field 'weight_map'");
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string())
      fail(index_path, ": weight_map entry for tensor '", tensor, "' is not a string: ", shard.dump());
    std::string s = shard.get<std::string>();
    const fs::path sp(s);
    if (s.empty() || sp.is_absolute() ||
        std::any_of(sp.begin(), sp.end(), [](const fs::path& c) { return c == ".."; }))
      fail(index_path, ": weight_map entry for tensor '", tensor, "' names shard '", s,
           "', expected a file name relative to the index's directory");
    out.emplace_back(tensor, std::move(s));
  }
  return out;
}

}  // namespace

Collection Collection::open(const std::string& path) {
  Collection c;
  c.path_ = path;
  const fs::path p(path);
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (!fs::exists(st)) fail(path, ": no such file or directory");

  fs::path index, single;
  if (fs::is_directory(st)) {
    if (is_file(p / "model.safetensors.index.json")) index = p / "model.safetensors.index.json";
    else if (is_file(p / "model.safetensors")) single = p / "model.safetensors";
    else fail(path, ": directory has neither model.safetensors nor model.safetensors.index.json");
  } else if (p.extension() == ".json") {
    index = p;
  } else {
    single = p;
  }

  auto add_file = [&c](std::unique_ptr<File> f) {
    for (const TensorInfo& t : f->tensors()) {
      auto [it, fresh] = c.index_.emplace(t.name, &t);
      if (!fresh)
        fail(c.path_, ": tensor '", t.name, "' appears in more than one file (", f->path(), ")");
    }
    c.files_.push_back(std::move(f));
  };

  if (!single.empty()) {
    add_file(File::open(single.string()));
    return c;
  }
  const std::string index_str = index.string();
  const auto weight_map = read_weight_map(index_str);
  const fs::path dir = index.parent_path();
  std::map<std::string, const File*> shards;  // each distinct shard opened once
  for (const auto& [tensor, shard] : weight_map) {
    auto it = shards.find(shard);
    if (it == shards.end()) {
      const fs::path sp = dir / shard;
      if (!is_file(sp))
        fail(index_str, ": shard '", shard, "' (listed for tensor '", tensor, "') is missing: ",
             sp.string(), " does not exist");
      std::unique_ptr<File> f = File::open(sp.string());
      const File* raw = f.get();
      add_file(std::move(f));
      it = shards.emplace(shard, raw).first;
    }
    if (!it->second->find(tensor))
      fail(index_str, ": tensor '", tensor, "' is listed in shard '", shard, "', which does not contain it");
  }
  if (c.files_.empty()) fail(index_str, ": weight_map lists no tensors");
  return c;
}

const TensorInfo* Collection::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorInfo& Collection::tensor(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) fail(path_, ": no tensor named '", name, "'");
  if (!t->supported) fail(path_, ": tensor '", name, "' (dtype ", t->dtype_name, "): ", t->why_unsupported);
  return *t;
}

std::vector<std::string> Collection::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

// ---------------------------------------------------------------------------------------
// Writer

void Writer::set_metadata(const std::string& key, const std::string& value) { meta_[key] = value; }

void Writer::add_tensor(const std::string& name, const TensorView& view) {
  if (!st_name(view.dtype))
    fail("safetensors writer: tensor '", name, "' has dtype ", dtype_name(view.dtype),
         " (supported: f32, f16, bf16)");
  if (name == "__metadata__") fail("safetensors writer: '__metadata__' is reserved, not a tensor name");
  if (view.ndim < 0 || view.ndim > kMaxRank)
    fail("safetensors writer: tensor '", name, "' has ", view.ndim, " dimensions (supported: 0..4)");
  for (int d = 0; d < view.ndim; ++d)
    if (view.shape[d] < 0)
      fail("safetensors writer: tensor '", name, "' has a negative dimension in shape ", shape_str(view));
  if (!view.data && view.numel() > 0) fail("safetensors writer: tensor '", name, "' has no data");
  for (const auto& [n, v] : tensors_)
    if (n == name) fail("safetensors writer: duplicate tensor name '", name, "'");
  tensors_.emplace_back(name, view);
}

void Writer::write(const std::string& path) const {
  // Like the reference implementation: wider dtypes first, then by name, so every tensor
  // stays aligned to its element size.
  std::vector<const std::pair<std::string, TensorView>*> order;
  for (const auto& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) {
    const size_t wa = dtype_block_bytes(a->second.dtype), wb = dtype_block_bytes(b->second.dtype);
    return wa != wb ? wa > wb : a->first < b->first;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!meta_.empty()) header["__metadata__"] = meta_;
  uint64_t off = 0;
  for (const auto* t : order) {
    const TensorView& v = t->second;
    std::vector<int64_t> shape(v.shape.begin(), v.shape.begin() + v.ndim);
    const uint64_t n = v.nbytes();
    header[t->first] = {{"dtype", st_name(v.dtype)}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": cannot encode the safetensors header: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t n = text.size();
  AtomicFileWriter out(path);
  out.write(&n, 8);
  out.write(text.data(), text.size());
  for (const auto* t : order) out.write(t->second.data, t->second.nbytes());
  out.commit();
}

}  // namespace tessera::safetensors
