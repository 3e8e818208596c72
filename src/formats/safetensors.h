// Hugging Face safetensors reader (memory-mapped, validated) and writer,
// single files and sharded directories (model.safetensors.index.json).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mmap.h"
#include "core/tensor.h"

namespace tessera::safetensors {

struct TensorInfo {
  std::string name;
  std::string dtype_name;      // as in the header: "F32", "F16", "BF16", ...
  DType dtype = DType::F32;    // valid when supported is true
  bool supported = false;      // F32 / F16 / BF16, rank <= 4, element-aligned data
  std::vector<int64_t> shape;  // outermost first
  TensorView view;             // points into the mapped file; empty unless supported
  uint64_t data_begin = 0;     // data_offsets [begin, end), relative to the data section
  uint64_t data_end = 0;
  std::string why_unsupported;  // set when supported is false: dtype, rank > 4 or misalignment
};

class File {
 public:
  // Throws Error naming the file and field: header length past EOF, invalid JSON,
  // offsets out of order / overlapping / past EOF, byte count != shape * dtype size.
  static std::unique_ptr<File> open(const std::string& path);
  const std::string& path() const { return map_.path(); }
  const std::map<std::string, std::string>& metadata() const { return meta_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;

 private:
  MappedFile map_;
  std::map<std::string, std::string> meta_;
  std::vector<TensorInfo> tensors_;  // in data order
  std::map<std::string, size_t, std::less<>> tensor_index_;  // name -> index into tensors_
  friend struct Parser;
};

// A model's weights: DIR/model.safetensors, or the shards listed by
// DIR/model.safetensors.index.json, or a single .safetensors path.
class Collection {
 public:
  static Collection open(const std::string& path);
  const TensorInfo* find(std::string_view name) const;
  // Throws Error naming the tensor (and the directory) when absent or of an unsupported dtype.
  const TensorInfo& tensor(std::string_view name) const;
  std::vector<std::string> names() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::unique_ptr<File>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> index_;
};

class Writer {
 public:
  void set_metadata(const std::string& key, const std::string& value);
  // F32 / F16 / BF16 only; the data must stay valid until write() returns.
  void add_tensor(const std::string& name, const TensorView& view);
  void write(const std::string& path) const;  // atomic (temporary name, then rename)

 private:
  std::map<std::string, std::string> meta_;
  std::vector<std::pair<std::string, TensorView>> tensors_;
};

}  // namespace tessera::safetensors
