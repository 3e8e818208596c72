// Parts common to both tokenizer kinds: vocabulary tables, special-token
// splitting, decoding, streaming decode and the GPT-2 byte alphabet.
#include <algorithm>
#include <array>
#include <cstdio>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace tessera {

// ---------------------------------------------------------------- GPT-2 alphabet

namespace {

// Bytes that are printable stand for themselves; the other 68 are shifted to
// U+0100.. in byte order (GPT-2's bytes_to_unicode).
struct ByteAlphabet {
  std::array<uint16_t, 256> cp{};       // byte -> code point
  std::array<int16_t, 324> byte{};      // code point -> byte (-1: not in the alphabet)
  std::array<std::string, 256> utf8{};  // byte -> UTF-8 of its code point
  ByteAlphabet() {
    byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      cp[size_t(b)] = uint16_t(printable ? b : 256 + n++);
      byte[cp[size_t(b)]] = int16_t(b);
      uint32_t c = cp[size_t(b)];
      std::string& s = utf8[size_t(b)];
      if (c < 0x80) {
        s.push_back(char(c));
      } else {
        s.push_back(char(0xC0 | (c >> 6)));
        s.push_back(char(0x80 | (c & 0x3F)));
      }
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet k;
  return k;
}

}  // namespace

std::string bytes_to_gpt2(std::string_view raw) {
  const auto& a = alphabet();
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) out += a.utf8[c];
  return out;
}

std::string gpt2_to_bytes(std::string_view s) {
  const auto& a = alphabet();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto c = uint8_t(s[i]);
    size_t n = utf8_len(c);
    if (n > s.size() - i) n = 1;
    uint32_t cp = c;
    if (n == 2) cp = (uint32_t(c & 0x1F) << 6) | (uint8_t(s[i + 1]) & 0x3F);
    if ((n == 1 || n == 2) && cp < a.byte.size() && a.byte[cp] >= 0) {
      out.push_back(char(a.byte[cp]));
    } else {
      out.append(s.substr(i, n));  // not in the alphabet: copied through
    }
    i += n;
  }
  return out;
}

// ---------------------------------------------------------------- construction

Tokenizer::Impl::Impl(VocabData data) : d(std::move(data)) {
  const size_t n = d.tokens.size();
  if (n == 0) fail("tokenizer: empty vocabulary");
  if (n > size_t(INT32_MAX)) fail("tokenizer: vocabulary too large");
  if (!d.scores.empty() && d.scores.size() != n)
    fail("tokenizer: ", d.scores.size(), " scores for ", n, " tokens");
  if (!d.types.empty() && d.types.size() != n) fail("tokenizer: ", d.types.size(), " token types for ", n, " tokens");
  for (size_t i = 0; i < d.types.size(); ++i) {
    int t = int(d.types[i]);
    if (t < 1 || t > 6) fail("tokenizer: token ", i, " has invalid type ", t);
  }
  auto check_id = [&](int32_t id, const char* what) {
    if (id < -1 || id >= int32_t(n)) fail("tokenizer: ", what, " id ", id, " out of range (vocabulary of ", n, ")");
  };
  check_id(d.bos_id, "bos");
  check_id(d.eos_id, "eos");
  check_id(d.unk_id, "unk");
  check_id(d.pad_id, "pad");
  for (int32_t id : d.eog_ids) check_id(id, "end-of-generation");
  build_common();
  if (d.kind == TokenizerKind::SentencePiece) {
    build_spm();
  } else {
    build_bpe();
  }
}

void Tokenizer::Impl::build_common() {
  const size_t n = d.tokens.size();
  piece_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) piece_to_id.emplace(d.tokens[i], int32_t(i));  // first id wins
  eog.assign(n, 0);
  if (d.eos_id >= 0) eog[size_t(d.eos_id)] = 1;
  for (int32_t id : d.eog_ids) eog[size_t(id)] = 1;

  const bool spm = d.kind == TokenizerKind::SentencePiece;
  bytes.resize(n);
  byte_id.fill(-1);
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = d.tokens[i];
    TokenType t = type_of(int32_t(i));
    std::string& b = bytes[i];
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) {
      if (!p.empty()) specials_by_first[uint8_t(p[0])].push_back(int32_t(i));
    }
    if (spm) {
      if (t == TokenType::Byte) {
        unsigned v = 0;
        if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>' ||
            std::sscanf(p.c_str() + 3, "%2x", &v) != 1)
          fail("tokenizer: byte token ", i, " '", p, "' is not of the form <0xXX>");
        b.assign(1, char(v));
        if (byte_id[v] < 0) byte_id[v] = int32_t(i);
      } else if (t == TokenType::Control) {
        b.clear();  // <s>, </s> render as nothing, as SentencePiece decodes them
      } else if (t == TokenType::Unknown) {
        b = " \xE2\x81\x87 ";  // SentencePiece's unk surface " ⁇ "
      } else {
        b.reserve(p.size());
        for (size_t k = 0; k < p.size(); ++k) {
          if (p.compare(k, 3, "\xE2\x96\x81") == 0) {
            b.push_back(' ');
            k += 2;
          } else {
            b.push_back(p[k]);
          }
        }
      }
    } else {
      if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) {
        b = p;  // added tokens are stored as raw text
      } else {
        b = gpt2_to_bytes(p);
      }
    }
  }
  for (auto& v : specials_by_first) {
    std::stable_sort(v.begin(), v.end(),
                     [&](int32_t a, int32_t b) { return d.tokens[size_t(a)].size() > d.tokens[size_t(b)].size(); });
  }
}

// Splits raw text at special tokens. At each position the longest special that
// matches wins; without parse_special only user-defined tokens are recognised
// (llama.cpp's rule: those are pre-split even when parse_special is off).
void Tokenizer::Impl::split_specials(std::string_view text, bool parse_special, std::vector<Fragment>& out) const {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const auto& cands = specials_by_first[uint8_t(text[i])];
    int32_t hit = -1;
    for (int32_t id : cands) {
      TokenType t = type_of(id);
      if (!parse_special && t != TokenType::UserDefined) continue;
      const std::string& p = d.tokens[size_t(id)];
      if (text.compare(i, p.size(), p) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    if (i > start) out.push_back({text.substr(start, i - start), -1});
    out.push_back({{}, hit});
    i += d.tokens[size_t(hit)].size();
    start = i;
  }
  if (start < text.size()) out.push_back({text.substr(start), -1});
}

// ---------------------------------------------------------------- Tokenizer

Tokenizer::Tokenizer(VocabData data) : impl_(std::make_unique<Impl>(std::move(data))) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opt) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (opt.add_special && m.d.add_bos && m.d.bos_id >= 0) out.push_back(m.d.bos_id);
  std::vector<Fragment> frags;
  m.split_specials(text, opt.parse_special, frags);
  if (m.d.kind == TokenizerKind::SentencePiece) {
    m.encode_spm(frags, out);
  } else {
    m.encode_bpe(frags, out);
  }
  if (opt.add_special && m.d.add_eos && m.d.eos_id >= 0) out.push_back(m.d.eos_id);
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("token id ", id, " out of range (vocabulary of ", n_vocab(), ")");
  return impl_->bytes[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& m = *impl_;
  std::string out;
  bool strip = m.d.kind == TokenizerKind::SentencePiece && m.d.add_space_prefix;
  for (int32_t id : ids) {
    if (id < 0 || id >= n_vocab()) fail("token id ", id, " out of range (vocabulary of ", n_vocab(), ")");
    const std::string& b = m.bytes[size_t(id)];
    if (id == m.d.bos_id) {
      out += b;
      continue;
    }
    if (strip && !b.empty() && b[0] == ' ') {
      out.append(b, 1);
    } else {
      out += b;
    }
    strip = false;
  }
  return out;
}

const std::string& Tokenizer::piece(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("token id ", id, " out of range (vocabulary of ", n_vocab(), ")");
  return impl_->d.tokens[size_t(id)];
}

int32_t Tokenizer::find_piece(std::string_view p) const {
  auto it = impl_->piece_to_id.find(p);
  return it == impl_->piece_to_id.end() ? -1 : it->second;
}

TokenType Tokenizer::type(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("token id ", id, " out of range (vocabulary of ", n_vocab(), ")");
  return impl_->type_of(id);
}

int32_t Tokenizer::n_vocab() const { return int32_t(impl_->d.tokens.size()); }
int32_t Tokenizer::bos_id() const { return impl_->d.bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->d.eos_id; }
int32_t Tokenizer::unk_id() const { return impl_->d.unk_id; }
int32_t Tokenizer::doc_start_id() const { return impl_->d.bos_id >= 0 ? impl_->d.bos_id : impl_->d.eos_id; }
bool Tokenizer::is_eog(int32_t id) const { return id >= 0 && id < n_vocab() && impl_->eog[size_t(id)]; }
TokenizerKind Tokenizer::kind() const { return impl_->d.kind; }
const VocabData& Tokenizer::data() const { return impl_->d; }

// ---------------------------------------------------------------- StreamDecoder

namespace {

const char kReplacement[] = "\xEF\xBF\xBD";

// Length of the valid UTF-8 character at s[i..], 0 if it is incomplete but
// could still become valid, -1 if s[i] cannot start a valid character here.
int utf8_char_at(const std::string& s, size_t i) {
  auto c = uint8_t(s[i]);
  if (c < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < len; ++k) {
    if (i + size_t(k) >= s.size()) return 0;
    auto b = uint8_t(s[i + size_t(k)]);
    if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return -1;
  }
  return len;
}

}  // namespace

std::string StreamDecoder::push(int32_t id) {
  std::string b = tok_.token_bytes(id);
  if (id != tok_.bos_id()) {
    if (first_ && tok_.kind() == TokenizerKind::SentencePiece && tok_.data().add_space_prefix && !b.empty() &&
        b[0] == ' ')
      b.erase(0, 1);
    first_ = false;
  }
  pending_ += b;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    int n = utf8_char_at(pending_, i);
    if (n == 0) break;  // incomplete: wait for more bytes
    if (n < 0) {
      out += kReplacement;
      ++i;
    } else {
      out.append(pending_, i, size_t(n));
      i += size_t(n);
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = pending_.empty() ? "" : kReplacement;
  pending_.clear();
  return out;
}

}  // namespace tessera
