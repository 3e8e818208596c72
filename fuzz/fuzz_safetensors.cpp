// libFuzzer target for the safetensors reader: any input must parse or throw tessera::Error.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "formats/safetensors.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::fuzz::MemFile in(data, size);
  try {
    auto f = tessera::safetensors::File::open(in.path());
    uint64_t sum = 0;
    for (const auto& t : f->tensors()) {
      if (t.supported) sum += tessera::fuzz::touch(t.view.data, t.view.nbytes());
      if (f->find(t.name) == nullptr) __builtin_trap();
    }
    for (const auto& [k, v] : f->metadata()) sum += k.size() + v.size();
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const tessera::Error&) {
  }
  return 0;
}
