// Subcommands of the tessera CLI. Each parses its own flags (CLI11) from
// argv (argv[0] is the subcommand name) and returns the process exit code.
#pragma once

namespace tessera::cli {

int cmd_generate(int argc, char** argv);
int cmd_serve(int argc, char** argv);
int cmd_chat(int argc, char** argv);
int cmd_chat_template(int argc, char** argv);
int cmd_perplexity(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_tokenizer(int argc, char** argv);  // "tokenizer train ..."
int cmd_train(int argc, char** argv);
int cmd_finetune(int argc, char** argv);  // train with a LoRA adapter
int cmd_distill(int argc, char** argv);   // train with a teacher's distribution
int cmd_prune(int argc, char** argv);
int cmd_train_reward(int argc, char** argv);
int cmd_reward(int argc, char** argv);
int cmd_data(int argc, char** argv);       // "data prepare ..."
int cmd_export(int argc, char** argv);
int cmd_plot(int argc, char** argv);
int cmd_demo(int argc, char** argv);
int cmd_memory(int argc, char** argv);
int cmd_logits(int argc, char** argv);

}  // namespace tessera::cli
