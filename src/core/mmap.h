// Read-only memory-mapped files (RAII owner). Weights are views into these.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace tessera {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws Error naming the path
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// The whole file as a string; Error naming the path when it cannot be read.
std::string read_file(const std::string& path);

// Writes a file crash-safely: to PATH.tmp.<pid>, fsync, then rename over PATH.
// The callback receives the open FILE*. On any failure the temporary is removed
// and an Error naming the path is thrown; an existing PATH is left untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();  // removes the temporary if commit() was not reached
  void write(const void* p, size_t n);
  void pad_to(size_t alignment);  // zero-pad the file to a multiple of alignment
  size_t offset() const { return off_; }
  void commit();

 private:
  std::string path_, tmp_;
  void* fp_ = nullptr;
  size_t off_ = 0;
  bool done_ = false;
};

}  // namespace tessera
