// libFuzzer target for the GGUF reader: any input must parse or throw tessera::Error.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "formats/gguf.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::fuzz::MemFile in(data, size);
  try {
    auto f = tessera::gguf::File::open(in.path());
    uint64_t sum = 0;
    for (const auto& t : f->tensors()) {
      sum += tessera::fuzz::touch(t.view.data, t.view.nbytes());
      if (f->find_tensor(t.name) == nullptr) __builtin_trap();
    }
    for (const auto& [key, v] : f->metadata()) sum += key.size() + v.s.size() + v.strs.size() + v.nums.size();
    (void)f->get_int_or("general.alignment", 0);
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const tessera::Error&) {
  }
  return 0;
}
