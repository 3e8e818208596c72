// Temporary: commands whose implementation lands in its own file replace these.
#include <cstdio>

#include "commands.h"

namespace tessera::cli {
static int not_yet(const char* name) {
  std::fprintf(stderr, "tessera %s: not available in this build yet\n", name);
  return 2;
}
int cmd_tokenize(int, char**) { return not_yet("tokenize"); }
int cmd_tokenizer(int, char**) { return not_yet("tokenizer"); }
}  // namespace tessera::cli
