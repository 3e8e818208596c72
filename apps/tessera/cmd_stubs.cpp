// Temporary: commands whose implementation lands in its own file replace these.
#include <cstdio>

#include "commands.h"

namespace tessera::cli {
static int not_yet(const char* name) {
  std::fprintf(stderr, "tessera %s: not available in this build yet\n", name);
  return 2;
}
int cmd_generate(int, char**) { return not_yet("generate"); }
int cmd_perplexity(int, char**) { return not_yet("perplexity"); }
int cmd_info(int, char**) { return not_yet("info"); }
int cmd_bench(int, char**) { return not_yet("bench"); }
int cmd_convert(int, char**) { return not_yet("convert"); }
}  // namespace tessera::cli
