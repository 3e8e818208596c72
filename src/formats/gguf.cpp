// GGUF v2/v3 reader and v3 writer. Layout (llama.cpp docs/gguf.md), all little-endian:
//   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x { string key | u32 value_type | value }         string = u64 len + bytes
//   tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32) | tensor data (offsets relative to here)
// Every count, length and offset is checked against the bytes left in the file before it
// is used, so a corrupt file produces an Error, never a crash or a huge allocation.
#include "formats/gguf.h"

#include <bit>
#include <cstring>
#include <limits>

#include "core/error.h"

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace tessera::gguf {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
constexpr uint32_t kValueTypeCount = 13;

// ggml type ids (ggml.h) of the types Tessera reads and writes.
struct GgmlType {
  uint32_t id;
  DType dtype;
};
constexpr GgmlType kGgmlTypes[] = {
    {0, DType::F32},    {1, DType::F16},     {2, DType::Q4_0},  {3, DType::Q4_1},  {6, DType::Q5_0},
    {7, DType::Q5_1},   {8, DType::Q8_0},    {10, DType::Q2_K}, {11, DType::Q3_K}, {12, DType::Q4_K},
    {13, DType::Q5_K},  {14, DType::Q6_K},   {15, DType::Q8_K}, {20, DType::IQ4_NL}, {30, DType::BF16}};

std::optional<DType> dtype_from_ggml(uint32_t t) {
  for (const GgmlType& g : kGgmlTypes)
    if (g.id == t) return g.dtype;
  return std::nullopt;
}

// Q8_G (llama2.c int8) and the R4 layouts have no ggml type: converted or repacked at load only.
std::optional<uint32_t> ggml_from_dtype(DType t) {
  for (const GgmlType& g : kGgmlTypes)
    if (g.dtype == t) return g.id;
  return std::nullopt;
}

// "f32, f16, q4_0, ..." for error messages.
std::string supported_types() {
  std::string s;
  for (const GgmlType& g : kGgmlTypes) s += std::string(s.empty() ? "" : ", ") + dtype_name(g.dtype);
  return s;
}

// Names of ggml's tensor types (ggml.h), for error messages only.
const char* ggml_type_name(uint32_t t) {
  static constexpr const char* kNames[] = {
      "f32",     "f16",     "q4_0",    "q4_1",   "q4_2 (removed)", "q4_3 (removed)", "q5_0",
      "q5_1",    "q8_0",    "q8_1",    "q2_K",   "q3_K",           "q4_K",           "q5_K",
      "q6_K",    "q8_K",    "iq2_xxs", "iq2_xs", "iq3_xxs",        "iq1_s",          "iq4_nl",
      "iq3_s",   "iq2_s",   "iq4_xs",  "i8",     "i16",            "i32",            "i64",
      "f64",     "iq1_m",   "bf16",    "q4_0_4_4 (removed)", "q4_0_4_8 (removed)",
      "q4_0_8_8 (removed)", "tq1_0", "tq2_0", "iq4_nl_4_4 (removed)", "iq4_nl_4_8 (removed)",
      "iq4_nl_8_8 (removed)", "mxfp4"};
  return t < std::size(kNames) ? kNames[t] : "unknown";
}

const char* value_type_name(ValueType t) {
  static constexpr const char* kNames[kValueTypeCount] = {
      "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = uint32_t(t);
  return i < kValueTypeCount ? kNames[i] : "unknown";
}

// Size in bytes of a scalar of this type (0 for string and array, which vary).
size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
    case ValueType::UINT16: case ValueType::INT16: return 2;
    case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
    case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
    case ValueType::STRING: case ValueType::ARRAY: return 0;
  }
  return 0;
}

bool is_integer(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::UINT16: case ValueType::INT16:
    case ValueType::UINT32: case ValueType::INT32: case ValueType::UINT64: case ValueType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_unsigned(ValueType t) {
  return t == ValueType::UINT8 || t == ValueType::UINT16 || t == ValueType::UINT32 ||
         t == ValueType::UINT64;
}

bool is_float(ValueType t) { return t == ValueType::FLOAT32 || t == ValueType::FLOAT64; }

std::string type_desc(const Value& v) {
  if (v.type == ValueType::ARRAY) return std::string("array of ") + value_type_name(v.elem_type);
  return value_type_name(v.type);
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Reader

struct Parser {
  const std::string& path;
  const uint8_t* data;
  size_t size;
  size_t pos = 0;

  size_t left() const { return size - pos; }

  [[noreturn]] void truncated(std::string_view what, uint64_t need) const {
    fail(path, ": truncated file: ", what, " at offset ", pos, " needs ", need, " bytes but only ",
         left(), " remain (file size ", size, ")");
  }
  void need(uint64_t n, std::string_view what) const {
    if (n > left()) truncated(what, n);
  }
  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v = load<T>(data + pos);
    pos += sizeof(T);
    return v;
  }
  std::string read_string(std::string_view what) {
    const uint64_t n = read<uint64_t>(what);
    if (n > left())
      fail(path, ": ", what, ": string length ", n, " at offset ", pos - 8, " exceeds the ", left(),
           " bytes left in the file");
    std::string s(reinterpret_cast<const char*>(data + pos), size_t(n));
    pos += size_t(n);
    return s;
  }
  ValueType read_type(std::string_view what) {
    const uint32_t t = read<uint32_t>(what);
    if (t >= kValueTypeCount)
      fail(path, ": ", what, ": unknown value type ", t, " at offset ", pos - 4, " (valid: 0..12)");
    return ValueType(t);
  }

  // One scalar of type t stored into v (every integer lands in both i and u).
  void read_scalar(ValueType t, Value& v, std::string_view what) {
    switch (t) {
      case ValueType::UINT8: set_unsigned(v, read<uint8_t>(what)); break;
      case ValueType::UINT16: set_unsigned(v, read<uint16_t>(what)); break;
      case ValueType::UINT32: set_unsigned(v, read<uint32_t>(what)); break;
      case ValueType::UINT64: set_unsigned(v, read<uint64_t>(what)); break;
      case ValueType::INT8: set_signed(v, read<int8_t>(what)); break;
      case ValueType::INT16: set_signed(v, read<int16_t>(what)); break;
      case ValueType::INT32: set_signed(v, read<int32_t>(what)); break;
      case ValueType::INT64: set_signed(v, read<int64_t>(what)); break;
      case ValueType::FLOAT32: v.f = read<float>(what); break;
      case ValueType::FLOAT64: v.f = read<double>(what); break;
      case ValueType::BOOL: {
        const uint8_t b = read<uint8_t>(what);
        if (b > 1) fail(path, ": ", what, ": invalid bool byte ", int(b), " at offset ", pos - 1);
        v.b = b != 0;
        break;
      }
      case ValueType::STRING: v.s = read_string(what); break;
      case ValueType::ARRAY: fail(path, ": ", what, ": internal error, array read as a scalar");
    }
  }
  static void set_unsigned(Value& v, uint64_t x) {
    v.u = x;
    v.i = int64_t(x);  // wraps above INT64_MAX; get_int() checks the range
  }
  static void set_signed(Value& v, int64_t x) {
    v.i = x;
    v.u = uint64_t(x);
  }

  void read_array(Value& v, std::string_view what) {
    v.elem_type = read_type(what);
    const uint64_t n = read<uint64_t>(what);
    if (v.elem_type == ValueType::ARRAY)
      fail(path, ": ", what, ": nested arrays are not supported");
    // Smallest encoding of one element: the u64 length of a string, else the scalar size.
    const size_t min_elem = v.elem_type == ValueType::STRING ? 8 : scalar_size(v.elem_type);
    if (n > left() / min_elem)
      fail(path, ": ", what, ": array of ", n, " ", value_type_name(v.elem_type), " elements at offset ",
           pos - 12, " cannot fit in the ", left(), " bytes left in the file");
    if (v.elem_type == ValueType::STRING) {
      v.strs.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) {
        const uint64_t len = read<uint64_t>(what);
        if (len > left())
          fail(path, ": ", what, ": element ", k, " of ", n, ": string length ", len, " at offset ",
               pos - 8, " exceeds the ", left(), " bytes left in the file");
        v.strs.emplace_back(reinterpret_cast<const char*>(data + pos), size_t(len));
        pos += size_t(len);
      }
      return;
    }
    v.nums.reserve(size_t(n));
    Value e;
    for (uint64_t k = 0; k < n; ++k) {
      read_scalar(v.elem_type, e, what);
      if (is_float(v.elem_type)) v.nums.push_back(e.f);
      else if (v.elem_type == ValueType::BOOL) v.nums.push_back(e.b ? 1.0 : 0.0);
      else if (is_unsigned(v.elem_type)) v.nums.push_back(double(e.u));
      else v.nums.push_back(double(e.i));
    }
  }

  void parse_header(File& f, uint64_t& n_tensors, uint64_t& n_kv) {
    if (size < 4) fail(path, ": not a GGUF file: only ", size, " bytes, too short for the magic");
    const uint32_t magic = read<uint32_t>("magic");
    if (magic != kMagic) {
      char m[5] = {};
      std::memcpy(m, data, 4);
      for (char& c : m) if (c && (c < 32 || c > 126)) c = '?';
      fail(path, ": not a GGUF file: magic is '", m, "', expected 'GGUF'");
    }
    f.version_ = read<uint32_t>("version");
    if (f.version_ == 1) fail(path, ": GGUF version 1 is not supported (supported: 2, 3)");
    if (f.version_ != 2 && f.version_ != 3) {
      const uint32_t swapped = __builtin_bswap32(f.version_);
      if (swapped == 2 || swapped == 3)
        fail(path, ": big-endian GGUF files are not supported (version field ", f.version_, ")");
      fail(path, ": unsupported GGUF version ", f.version_, " (supported: 2, 3)");
    }
    n_tensors = read<uint64_t>("tensor_count");
    n_kv = read<uint64_t>("metadata_kv_count");
    // Smallest possible key/value: u64 key length + u32 type + 1 byte of value.
    if (n_kv > left() / 13)
      fail(path, ": metadata_kv_count ", n_kv, " cannot fit in the ", left(), " bytes left in the file");
    // Smallest possible tensor info: u64 name length + u32 n_dims + u64 ne + u32 type + u64 offset.
    if (n_tensors > left() / 32)
      fail(path, ": tensor_count ", n_tensors, " cannot fit in the ", left(), " bytes left in the file");
  }

  void parse_metadata(File& f, uint64_t n_kv) {
    for (uint64_t k = 0; k < n_kv; ++k) {
      const std::string what0 = "metadata entry #" + std::to_string(k);
      std::string key = read_string(what0 + " key");
      const std::string what = "metadata key '" + key + "'";
      Value v;
      v.type = read_type(what + " type");
      if (v.type == ValueType::ARRAY) read_array(v, what);
      else read_scalar(v.type, v, what);
      if (!f.kv_.emplace(std::move(key), std::move(v)).second) fail(path, ": duplicate ", what);
    }
    if (auto it = f.kv_.find("general.alignment"); it != f.kv_.end()) {
      const Value& a = it->second;
      if (a.type != ValueType::UINT32)
        fail(path, ": metadata key 'general.alignment' has type ", type_desc(a), ", expected u32");
      if (a.u == 0 || !std::has_single_bit(a.u))
        fail(path, ": metadata key 'general.alignment' is ", a.u, ", expected a power of two");
      f.alignment_ = uint32_t(a.u);
    }
  }

  void parse_tensor_info(File& f, uint64_t index) {
    TensorInfo t;
    t.name = read_string("tensor #" + std::to_string(index) + " name");
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = read<uint32_t>(what + " n_dims");
    if (n_dims == 0 || n_dims > kMaxDims)
      fail(path, ": ", what, " has n_dims ", n_dims, " (supported: 1..", kMaxDims, ")");
    uint64_t ne[kMaxDims] = {};
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ne[d] = read<uint64_t>(what + " ne");
      if (ne[d] == 0 || ne[d] > uint64_t(std::numeric_limits<int64_t>::max()))
        fail(path, ": ", what, " has invalid dimension ne[", d, "] = ", ne[d]);
      if (int64_t(ne[d]) > std::numeric_limits<int64_t>::max() / numel)
        fail(path, ": ", what, " has too many elements (overflow at ne[", d, "])");
      numel *= int64_t(ne[d]);
    }
    t.ggml_type = read<uint32_t>(what + " type");
    const std::optional<DType> dt = dtype_from_ggml(t.ggml_type);
    if (!dt)
      fail(path, ": ", what, " has unsupported ggml type ", t.ggml_type, " (", ggml_type_name(t.ggml_type),
           "); supported: ", supported_types());
    t.dtype = *dt;
    if (int64_t(ne[0]) % dtype_block_elems(t.dtype) != 0)
      fail(path, ": ", what, " of type ", dtype_name(t.dtype), " has row length ne[0] = ", ne[0],
           ", not a multiple of the block size ", dtype_block_elems(t.dtype));
    t.offset = read<uint64_t>(what + " offset");
    if (t.offset % f.alignment_ != 0)
      fail(path, ": ", what, " data offset ", t.offset, " is not a multiple of the alignment ",
           f.alignment_);
    t.shape.assign(n_dims, 0);
    t.view.dtype = t.dtype;
    t.view.ndim = int(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.shape[n_dims - 1 - d] = int64_t(ne[d]);  // GGUF ne is innermost-first
      t.view.shape[n_dims - 1 - d] = int64_t(ne[d]);
    }
    f.tensors_.push_back(std::move(t));
  }

  // Points every view into the data section after checking its byte range.
  void place_tensors(File& f) {
    const uint64_t a = f.alignment_;
    const uint64_t data_start = (uint64_t(pos) + a - 1) / a * a;
    for (TensorInfo& t : f.tensors_) {
      const uint64_t nbytes = dtype_row_bytes(t.dtype, t.view.numel());
      const uint64_t avail = data_start <= size ? size - data_start : 0;
      if (data_start > size || t.offset > avail || nbytes > avail - t.offset)
        fail(path, ": tensor '", t.name, "' data [", t.offset, ", +", nbytes, ") at file offset ",
             data_start, " + ", t.offset, " runs past the end of the file (size ", size, ")");
      const uint64_t abs = data_start + t.offset;
      const uint64_t elem_align = t.dtype == DType::F32 || t.dtype == DType::Q8_K ? 4 : 2;
      if (abs % elem_align != 0)
        fail(path, ": tensor '", t.name, "' data at file offset ", abs, " is not ", elem_align,
             "-byte aligned");
      t.view.data = data + abs;
    }
  }

  void parse(File& f) {
    uint64_t n_tensors = 0, n_kv = 0;
    parse_header(f, n_tensors, n_kv);
    parse_metadata(f, n_kv);
    if (n_tensors > left() / 32)
      fail(path, ": tensor_count ", n_tensors, " cannot fit in the ", left(), " bytes left in the file");
    f.tensors_.reserve(size_t(n_tensors));
    for (uint64_t k = 0; k < n_tensors; ++k) parse_tensor_info(f, k);
    for (size_t k = 0; k < f.tensors_.size(); ++k)
      if (!f.tensor_index_.emplace(f.tensors_[k].name, k).second)
        fail(path, ": duplicate tensor name '", f.tensors_[k].name, "'");
    place_tensors(f);
  }
};

std::unique_ptr<File> File::open(const std::string& path) {
  auto f = std::make_unique<File>();
  f->map_ = MappedFile(path);
  Parser p{f->map_.path(), f->map_.data(), f->map_.size()};
  p.parse(*f);
  return f;
}

const Value* File::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (!t) fail(path(), ": no tensor named '", name, "' (the file has ", tensors_.size(), " tensors)");
  return *t;
}

namespace {

const Value& require(const File& f, std::string_view key) {
  const Value* v = f.find(key);
  if (!v) fail(f.path(), ": metadata key '", key, "' is missing");
  return *v;
}

[[noreturn]] void wrong_type(const File& f, std::string_view key, const Value& v, const char* expected) {
  fail(f.path(), ": metadata key '", key, "' has type ", type_desc(v), ", expected ", expected);
}

std::string as_string(const File& f, std::string_view key, const Value& v) {
  if (v.type != ValueType::STRING) wrong_type(f, key, v, "string");
  return v.s;
}

int64_t as_int(const File& f, std::string_view key, const Value& v) {
  if (!is_integer(v.type)) wrong_type(f, key, v, "an integer");
  if (v.type == ValueType::UINT64 && v.u > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(f.path(), ": metadata key '", key, "' value ", v.u, " does not fit in int64");
  return v.i;
}

double as_float(const File& f, std::string_view key, const Value& v) {
  if (is_float(v.type)) return v.f;
  if (is_integer(v.type)) return is_unsigned(v.type) ? double(v.u) : double(v.i);
  wrong_type(f, key, v, "a number");
}

bool as_bool(const File& f, std::string_view key, const Value& v) {
  if (v.type != ValueType::BOOL) wrong_type(f, key, v, "bool");
  return v.b;
}

}  // namespace

std::string File::get_string(std::string_view key) const { return as_string(*this, key, require(*this, key)); }
int64_t File::get_int(std::string_view key) const { return as_int(*this, key, require(*this, key)); }
double File::get_float(std::string_view key) const { return as_float(*this, key, require(*this, key)); }
bool File::get_bool(std::string_view key) const { return as_bool(*this, key, require(*this, key)); }

std::vector<std::string> File::get_string_array(std::string_view key) const {
  const Value& v = require(*this, key);
  if (v.type != ValueType::ARRAY || v.elem_type != ValueType::STRING)
    wrong_type(*this, key, v, "array of string");
  return v.strs;
}

std::vector<double> File::get_num_array(std::string_view key) const {
  const Value& v = require(*this, key);
  if (v.type != ValueType::ARRAY || v.elem_type == ValueType::STRING)
    wrong_type(*this, key, v, "numeric array");
  return v.nums;
}

int64_t File::get_int_or(std::string_view key, int64_t def) const {
  const Value* v = find(key);
  return v ? as_int(*this, key, *v) : def;
}
double File::get_float_or(std::string_view key, double def) const {
  const Value* v = find(key);
  return v ? as_float(*this, key, *v) : def;
}
std::string File::get_string_or(std::string_view key, std::string def) const {
  const Value* v = find(key);
  return v ? as_string(*this, key, *v) : def;
}
bool File::get_bool_or(std::string_view key, bool def) const {
  const Value* v = find(key);
  return v ? as_bool(*this, key, *v) : def;
}

// ---------------------------------------------------------------------------------------
// Writer

// A key with its value already serialized (u32 type + payload).
struct Writer::Entry {
  std::string key;
  std::vector<uint8_t> bytes;
};

namespace {

template <typename T>
void put(std::vector<uint8_t>& b, T v) {
  const size_t n = b.size();
  b.resize(n + sizeof(T));
  std::memcpy(b.data() + n, &v, sizeof(T));
}

void put_string(std::vector<uint8_t>& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

void put_type(std::vector<uint8_t>& b, ValueType t) { put<uint32_t>(b, uint32_t(t)); }

// Replaces the value of an existing key in place (keeping its position) or appends it.
template <typename Entry>
void upsert(std::vector<std::shared_ptr<Entry>>& kv, const std::string& key, std::vector<uint8_t> bytes) {
  for (auto& e : kv)
    if (e->key == key) {
      e->bytes = std::move(bytes);
      return;
    }
  auto e = std::make_shared<Entry>();
  e->key = key;
  e->bytes = std::move(bytes);
  kv.push_back(std::move(e));
}
}  // namespace

void Writer::set_string(const std::string& key, const std::string& v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::STRING);
  put_string(b, v);
  upsert(kv_, key, std::move(b));
}

void Writer::set_u32(const std::string& key, uint32_t v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::UINT32);
  put(b, v);
  upsert(kv_, key, std::move(b));
}

void Writer::set_i32(const std::string& key, int32_t v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::INT32);
  put(b, v);
  upsert(kv_, key, std::move(b));
}

void Writer::set_f32(const std::string& key, float v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::FLOAT32);
  put(b, v);
  upsert(kv_, key, std::move(b));
}

void Writer::set_bool(const std::string& key, bool v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::BOOL);
  put<uint8_t>(b, v ? 1 : 0);
  upsert(kv_, key, std::move(b));
}

void Writer::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::ARRAY);
  put_type(b, ValueType::STRING);
  put<uint64_t>(b, v.size());
  for (const std::string& s : v) put_string(b, s);
  upsert(kv_, key, std::move(b));
}

void Writer::set_f32_array(const std::string& key, const std::vector<float>& v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::ARRAY);
  put_type(b, ValueType::FLOAT32);
  put<uint64_t>(b, v.size());
  for (float x : v) put(b, x);
  upsert(kv_, key, std::move(b));
}

void Writer::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<uint8_t> b;
  put_type(b, ValueType::ARRAY);
  put_type(b, ValueType::INT32);
  put<uint64_t>(b, v.size());
  for (int32_t x : v) put(b, x);
  upsert(kv_, key, std::move(b));
}

void Writer::add_tensor(const std::string& name, const TensorView& view) {
  if (!ggml_from_dtype(view.dtype))
    fail("gguf writer: tensor '", name, "' has dtype ", dtype_name(view.dtype),
         ", which GGUF cannot store (supported: ", supported_types(), ")");
  if (view.ndim < 1 || view.ndim > int(kMaxDims))
    fail("gguf writer: tensor '", name, "' has ", view.ndim, " dimensions (supported: 1..4)");
  for (int d = 0; d < view.ndim; ++d)
    if (view.shape[d] <= 0)
      fail("gguf writer: tensor '", name, "' has non-positive dimension ", d, " in shape ", shape_str(view));
  if (view.cols() % dtype_block_elems(view.dtype) != 0)
    fail("gguf writer: tensor '", name, "' of dtype ", dtype_name(view.dtype), " has row length ",
         view.cols(), ", not a multiple of the block size ", dtype_block_elems(view.dtype));
  if (!view.data) fail("gguf writer: tensor '", name, "' has no data");
  for (const auto& [n, v] : tensors_)
    if (n == name) fail("gguf writer: duplicate tensor name '", name, "'");
  tensors_.emplace_back(name, view);
}

void Writer::write(const std::string& path) const {
  std::vector<uint8_t> head;
  put<uint32_t>(head, kMagic);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& e : kv_) {
    put_string(head, e->key);
    head.insert(head.end(), e->bytes.begin(), e->bytes.end());
  }
  uint64_t offset = 0;  // relative to the data section; every tensor starts aligned
  for (const auto& [name, v] : tensors_) {
    put_string(head, name);
    put<uint32_t>(head, uint32_t(v.ndim));
    for (int d = v.ndim - 1; d >= 0; --d) put<uint64_t>(head, uint64_t(v.shape[d]));  // innermost first
    put<uint32_t>(head, *ggml_from_dtype(v.dtype));
    offset = (offset + kDefaultAlignment - 1) / kDefaultAlignment * kDefaultAlignment;
    put<uint64_t>(head, offset);
    offset += v.nbytes();
  }
  AtomicFileWriter out(path);
  out.write(head.data(), head.size());
  // No padding after the last tensor (or after the header of a file without tensors):
  // the file ends exactly where its last byte of data does.
  for (const auto& [name, v] : tensors_) {
    out.pad_to(kDefaultAlignment);
    out.write(v.data, v.nbytes());
  }
  out.commit();
}

}  // namespace tessera::gguf
