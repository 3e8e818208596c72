// Tokenizer from a GGUF file's tokenizer.ggml.* metadata (vocab-only or full model files).
#pragma once
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

// tokenizer.ggml.model "llama" -> SentencePiece-style BPE, "gpt2" -> byte-level
// BPE; reads tokens, scores, token_type, merges, bos/eos/unk/padding/eot/eom ids,
// add_bos_token / add_eos_token, add_space_prefix and pre. Throws Error naming the
// file and key on anything missing or inconsistent.
VocabData gguf_vocab_data(const gguf::File& f);
Tokenizer load_gguf_tokenizer(const gguf::File& f);

}  // namespace tessera
