// tessera: the command-line front end. Dispatches to one subcommand; every
// subcommand catches tessera::Error and prints it to stderr with exit code 1.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "commands.h"
#include "core/error.h"
#include "kernels/blas_env.h"

namespace {

struct Command {
  const char* name;
  int (*fn)(int, char**);
  const char* help;
};

const Command kCommands[] = {
    {"generate", tessera::cli::cmd_generate, "generate text from a prompt (streams to stdout)"},
    {"serve", tessera::cli::cmd_serve, "OpenAI-compatible HTTP server with continuous batching and a web chat page"},
    {"chat", tessera::cli::cmd_chat, "multi-turn chat in the terminal through the model's chat template"},
    {"chat-template", tessera::cli::cmd_chat_template, "print a conversation rendered by a chat template"},
    {"perplexity", tessera::cli::cmd_perplexity, "NLL and perplexity of a text file"},
    {"info", tessera::cli::cmd_info, "architecture, sizes and memory of a model"},
    {"bench", tessera::cli::cmd_bench, "prefill/decode speed vs the machine's measured limits"},
    {"convert", tessera::cli::cmd_convert, "convert between GGUF, safetensors and llama2.c"},
    {"tokenize", tessera::cli::cmd_tokenize, "show the tokens of a text"},
    {"tokenizer", tessera::cli::cmd_tokenizer, "tokenizer tools: 'tokenizer train'"},
    {"data", tessera::cli::cmd_data, "training data: 'data prepare' tokenizes text into shards"},
    {"train", tessera::cli::cmd_train, "train a model (from scratch, --init MODEL, or --resume DIR)"},
    {"finetune", tessera::cli::cmd_finetune, "fine-tune a model with a LoRA adapter (--init MODEL; only the adapter trains)"},
    {"distill", tessera::cli::cmd_distill, "train a student on data and a teacher model's distribution (KD)"},
    {"prune", tessera::cli::cmd_prune, "prune a model: sparsity, 2:4, or heads / FFN channels / layers removed"},
    {"train-reward", tessera::cli::cmd_train_reward, "train a reward model (scalar head, Bradley-Terry) on preference pairs"},
    {"reward", tessera::cli::cmd_reward, "score texts with a reward model"},
    {"export", tessera::cli::cmd_export, "write a training checkpoint as GGUF or safetensors"},
    {"plot", tessera::cli::cmd_plot, "loss curves of several training runs in one SVG"},
    {"demo", tessera::cli::cmd_demo, "train a tokenizer and a small model on fortunes, then sample"},
    {"logits", tessera::cli::cmd_logits, "logits at every position of a token-id file (reference layout)"},
    {"memory", tessera::cli::cmd_memory, "training memory per device: weights, grads, Adam states, ZeRO, activations"},
};

void usage(FILE* f) {
  std::fprintf(f, "usage: tessera COMMAND [options]   (tessera COMMAND --help for its options)\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(f, "  %-12s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  // Before any BLAS call: OpenBLAS on its AVX-512 kernels even if the
  // environment says OPENBLAS_CORETYPE=Haswell (see kernels/blas_env.h).
  tessera::ensure_openblas_coretype(argc, argv);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) {
      try {
        return c.fn(argc - 1, argv + 1);
      } catch (const tessera::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
      } catch (const std::bad_alloc&) {
        std::fprintf(stderr,
                     "error: out of memory (a buffer sized by the options did not fit; lower -c, --batch or --seq)\n");
        return 1;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
      }
    }
  }
  std::fprintf(stderr, "tessera: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
