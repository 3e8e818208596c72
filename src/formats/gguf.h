// GGUF v2/v3 reader (memory-mapped, fully validated) and writer.
// Spec: llama.cpp's docs/gguf.md. Tensor shapes are converted from GGUF's
// innermost-first `ne` order to Tessera's outermost-first order.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/mmap.h"
#include "core/tensor.h"

namespace tessera::gguf {

enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
  BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// One metadata value. Scalars: the matching field is set (integers in i / u,
// floats in f, bools in b). Arrays: elem_type plus strs (string arrays) or
// nums (numeric/bool arrays, every element as double; exact for |x| < 2^53).
struct Value {
  ValueType type = ValueType::UINT8;
  ValueType elem_type = ValueType::UINT8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<std::string> strs;
  std::vector<double> nums;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  uint32_t ggml_type = 0;
  std::vector<int64_t> shape;  // outermost first
  uint64_t offset = 0;         // relative to the data section
  TensorView view;             // points into the mapped file
};

class File {
 public:
  // Maps and parses PATH; throws Error naming the file and the field on any problem:
  // bad magic / version, truncation, counts or string lengths past the end of file,
  // unknown value or tensor types, tensor data past the end of file, misalignment.
  static std::unique_ptr<File> open(const std::string& path);

  const std::string& path() const { return map_.path(); }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::map<std::string, Value>& metadata() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  const Value* find(std::string_view key) const;
  const TensorInfo* find_tensor(std::string_view name) const;
  // Typed getters: throw Error("<file>: metadata key '<key>' ...") when missing or of the wrong type.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<double> get_num_array(std::string_view key) const;
  // With defaults when the key is absent (still throw on a wrong type).
  int64_t get_int_or(std::string_view key, int64_t def) const;
  double get_float_or(std::string_view key, double def) const;
  std::string get_string_or(std::string_view key, std::string def) const;
  bool get_bool_or(std::string_view key, bool def) const;
  // The tensor with this name; throws Error naming the file and tensor when absent.
  const TensorInfo& tensor(std::string_view name) const;

 private:
  MappedFile map_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;  // name -> index into tensors_
  friend struct Parser;
};

// Builds a GGUF v3 file. Metadata keys are written in insertion order; tensor
// data pointers must stay valid until write() returns. write() goes through
// AtomicFileWriter (temporary name, then rename).
class Writer {
 public:
  void set_string(const std::string& key, const std::string& v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_tensor(const std::string& name, const TensorView& view);
  void write(const std::string& path) const;

 private:
  struct Entry;
  std::vector<std::shared_ptr<Entry>> kv_;
  std::vector<std::pair<std::string, TensorView>> tensors_;
};

}  // namespace tessera::gguf
