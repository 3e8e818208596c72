// Loaders for SentencePiece-style vocabularies: llama2.c tokenizer.bin and the
// SentencePiece ModelProto (tokenizer.model). Every read is bounds-checked;
// problems throw Error naming the file and the offset or field.
#include <cstring>

#include "core/error.h"
#include "core/mmap.h"
#include "tokenizer/tokenizer.h"

namespace tessera {

namespace {

bool is_byte_piece(const std::string& p) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && hex(p[3]) && hex(p[4]) && p[5] == '>';
}

std::string spaces_to_u2581(const std::string& p) {
  std::string out;
  out.reserve(p.size());
  for (char c : p) {
    if (c == ' ') {
      out += "\xE2\x96\x81";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

// llama2.c's export writes pieces with real spaces, BOS/EOS as "\n<s>\n" and
// "\n</s>\n". They are normalised to SentencePiece form (U+2581, "<s>", "</s>")
// so the one SentencePiece encoder gives llama2.c's ids: BOS, dummy-prefix
// space, highest-score merges, byte fallback to <0xXX> (id byte+3).
VocabData parse_llama2c_tokenizer(const uint8_t* data, size_t size, const std::string& name, int32_t n_vocab) {
  size_t off = 0;
  auto need = [&](size_t n, const char* what) {
    if (size - off < n) fail(name, ": truncated llama2.c tokenizer: ", what, " at offset ", off, " needs ", n, " bytes, ", size - off, " left");
  };
  auto rd_i32 = [&](const char* what) {
    need(4, what);
    int32_t v;
    std::memcpy(&v, data + off, 4);
    off += 4;
    return v;
  };
  int32_t max_len = rd_i32("max_token_length");
  if (max_len <= 0 || max_len > (1 << 20)) fail(name, ": bad llama2.c tokenizer header: max_token_length ", max_len);
  VocabData v;
  v.kind = TokenizerKind::SentencePiece;
  for (int32_t i = 0; n_vocab < 0 ? off < size : i < n_vocab; ++i) {
    need(4, "score");
    float score;
    std::memcpy(&score, data + off, 4);
    off += 4;
    int32_t len = rd_i32("piece length");
    if (len < 0 || len > max_len) fail(name, ": token ", i, " has length ", len, " (max_token_length ", max_len, ")");
    need(size_t(len), "piece bytes");
    std::string p(reinterpret_cast<const char*>(data + off), size_t(len));
    off += size_t(len);
    TokenType t = TokenType::Normal;
    if (i == 0 && p == "<unk>") {
      t = TokenType::Unknown;
    } else if ((i == 1 || i == 2) && p.size() >= 3 && p.front() == '\n' && p.back() == '\n') {
      p = p.substr(1, p.size() - 2);
      t = TokenType::Control;
    } else if ((i == 1 && p == "<s>") || (i == 2 && p == "</s>")) {
      t = TokenType::Control;
    } else if (is_byte_piece(p)) {
      t = TokenType::Byte;
    } else {
      p = spaces_to_u2581(p);
    }
    v.tokens.push_back(std::move(p));
    v.scores.push_back(score);
    v.types.push_back(t);
  }
  // The format has no count: pieces left after the model's n_vocab mean the tokenizer is another model's
  // (tokenizer.bin's 32000 pieces against a 512-token model would otherwise encode into the wrong ids).
  if (n_vocab >= 0 && off < size)
    fail(name, ": llama2.c tokenizer holds more pieces than the model's vocabulary of ", n_vocab, " (", size - off,
         " bytes left after piece ", n_vocab - 1, "); is it this model's tokenizer?");
  if (v.tokens.size() < 3) fail(name, ": llama2.c tokenizer has ", v.tokens.size(), " tokens, need at least 3");
  v.unk_id = v.types[0] == TokenType::Unknown ? 0 : -1;
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

Tokenizer load_llama2c_tokenizer(const std::string& path, int32_t n_vocab) {
  MappedFile f(path);
  VocabData v = parse_llama2c_tokenizer(f.data(), f.size(), path, n_vocab);
  try {
    return Tokenizer(std::move(v));
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

// ---------------------------------------------------------------- protobuf

namespace {

// Minimal protobuf wire-format reader over [p, end).
struct Pb {
  const uint8_t* p;
  const uint8_t* end;
  const std::string& name;

  bool done() const { return p >= end; }
  uint64_t varint(const char* what) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) fail(name, ": truncated protobuf varint in ", what);
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(name, ": protobuf varint too long in ", what);
  }
  std::pair<const uint8_t*, size_t> bytes(const char* what) {
    uint64_t n = varint(what);
    if (n > uint64_t(end - p)) fail(name, ": protobuf field ", what, " of ", n, " bytes runs past the end");
    auto r = std::make_pair(p, size_t(n));
    p += n;
    return r;
  }
  uint32_t fixed32(const char* what) {
    if (end - p < 4) fail(name, ": truncated protobuf fixed32 in ", what);
    uint32_t v;
    std::memcpy(&v, p, 4);
    p += 4;
    return v;
  }
  void skip(uint32_t wire, const char* what) {
    switch (wire) {
      case 0: varint(what); break;
      case 1:
        if (end - p < 8) fail(name, ": truncated protobuf fixed64 in ", what);
        p += 8;
        break;
      case 2: bytes(what); break;
      case 5: fixed32(what); break;
      default: fail(name, ": unsupported protobuf wire type ", wire, " in ", what);
    }
  }
};

}  // namespace

VocabData parse_sentencepiece_model(const uint8_t* data, size_t size, const std::string& name) {
  VocabData v;
  v.kind = TokenizerKind::SentencePiece;
  int64_t unk = 0, bos = 1, eos = 2, pad = -1;
  Pb top{data, data + size, name};
  while (!top.done()) {
    uint64_t key = top.varint("ModelProto");
    uint32_t field = uint32_t(key >> 3), wire = uint32_t(key & 7);
    if (field == 1 && wire == 2) {  // repeated SentencePiece pieces
      auto [pp, pn] = top.bytes("ModelProto.pieces");
      Pb m{pp, pp + pn, name};
      std::string piece;
      float score = 0;
      int64_t type = 1;
      while (!m.done()) {
        uint64_t k = m.varint("SentencePiece");
        uint32_t f = uint32_t(k >> 3), w = uint32_t(k & 7);
        if (f == 1 && w == 2) {
          auto [sp, sn] = m.bytes("SentencePiece.piece");
          piece.assign(reinterpret_cast<const char*>(sp), sn);
        } else if (f == 2 && w == 5) {
          uint32_t bits = m.fixed32("SentencePiece.score");
          std::memcpy(&score, &bits, 4);
        } else if (f == 3 && w == 0) {
          type = int64_t(m.varint("SentencePiece.type"));
        } else {
          m.skip(w, "SentencePiece");
        }
      }
      if (type < 1 || type > 6) fail(name, ": piece ", v.tokens.size(), " '", piece, "' has unknown type ", type);
      v.tokens.push_back(piece);
      v.scores.push_back(score);
      v.types.push_back(TokenType(type));
    } else if (field == 2 && wire == 2) {  // TrainerSpec: special ids
      auto [tp, tn] = top.bytes("ModelProto.trainer_spec");
      Pb t{tp, tp + tn, name};
      while (!t.done()) {
        uint64_t k = t.varint("TrainerSpec");
        uint32_t f = uint32_t(k >> 3), w = uint32_t(k & 7);
        if (w == 0 && f >= 40 && f <= 43) {
          auto val = int64_t(int32_t(uint32_t(t.varint("TrainerSpec id"))));
          (f == 40 ? unk : f == 41 ? bos : f == 42 ? eos : pad) = val;
        } else {
          t.skip(w, "TrainerSpec");
        }
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec: add_dummy_prefix
      auto [np, nn] = top.bytes("ModelProto.normalizer_spec");
      Pb n{np, np + nn, name};
      while (!n.done()) {
        uint64_t k = n.varint("NormalizerSpec");
        uint32_t f = uint32_t(k >> 3), w = uint32_t(k & 7);
        if (f == 3 && w == 0) {
          v.add_space_prefix = n.varint("NormalizerSpec.add_dummy_prefix") != 0;
        } else {
          n.skip(w, "NormalizerSpec");
        }
      }
    } else {
      top.skip(wire, "ModelProto");
    }
  }
  if (v.tokens.empty()) fail(name, ": SentencePiece model has no pieces");
  const auto n = int64_t(v.tokens.size());
  auto id_or_none = [&](int64_t id) { return id >= 0 && id < n ? int32_t(id) : -1; };
  v.unk_id = id_or_none(unk);
  v.bos_id = id_or_none(bos);
  v.eos_id = id_or_none(eos);
  v.pad_id = id_or_none(pad);
  v.add_bos = v.bos_id >= 0;
  return v;
}

Tokenizer load_sentencepiece_model(const std::string& path) {
  MappedFile f(path);
  VocabData v = parse_sentencepiece_model(f.data(), f.size(), path);
  try {
    return Tokenizer(std::move(v));
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

}  // namespace tessera
