// Errors for anything that comes from outside (files, configs, flags, requests).
// Messages name the file / field / value; front ends print them and exit non-zero.
#pragma once
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera {

class Error : public std::runtime_error {
 public:
  explicit Error(std::string msg) : std::runtime_error(std::move(msg)) {}
};

// Concatenate anything streamable into an Error message.
template <typename... Args>
[[noreturn]] void fail(Args&&... args);

}  // namespace tessera

#include <sstream>
namespace tessera {
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  throw Error(os.str());
}
}  // namespace tessera
