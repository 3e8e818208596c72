#include "core/mmap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace tessera {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(path, ": is a directory, expected a file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail(path, ": cannot mmap: ", std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() { reset(); }

MappedFile::MappedFile(MappedFile&& o) noexcept : path_(std::move(o.path_)), data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    reset();
    path_ = std::move(o.path_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

void MappedFile::reset() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path, ": cannot open: ", std::strerror(errno));
  std::string s;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err) fail(path, ": read error");
  return s;
}

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  fp_ = std::fopen(tmp_.c_str(), "wb");
  if (!fp_) fail(path_, ": cannot create temporary file ", tmp_, ": ", std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!done_) {
    if (fp_) std::fclose(static_cast<FILE*>(fp_));
    std::remove(tmp_.c_str());
  }
}

void AtomicFileWriter::write(const void* p, size_t n) {
  if (n == 0) return;
  if (std::fwrite(p, 1, n, static_cast<FILE*>(fp_)) != n)
    fail(path_, ": write failed at offset ", off_, ": ", std::strerror(errno));
  off_ += n;
}

void AtomicFileWriter::pad_to(size_t alignment) {
  static const char zeros[64] = {};
  size_t pad = (alignment - off_ % alignment) % alignment;
  while (pad > 0) {
    size_t k = pad < sizeof(zeros) ? pad : sizeof(zeros);
    write(zeros, k);
    pad -= k;
  }
}

void AtomicFileWriter::commit() {
  FILE* f = static_cast<FILE*>(fp_);
  if (std::fflush(f) != 0 || ::fsync(fileno(f)) != 0)
    fail(path_, ": flush failed: ", std::strerror(errno));
  if (std::fclose(f) != 0) {
    fp_ = nullptr;
    fail(path_, ": close failed: ", std::strerror(errno));
  }
  fp_ = nullptr;
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail(path_, ": cannot rename ", tmp_, " into place: ", std::strerror(errno));
  done_ = true;
}

}  // namespace tessera
