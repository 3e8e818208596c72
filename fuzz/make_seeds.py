#!/usr/bin/env python3
"""Writes small valid GGUF and safetensors seed files for the fuzzers into fuzz/corpus/."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


def gguf(kvs, tensors, version=3, alignment=32):
    """tensors: list of (name, ne innermost-first, ggml type, data bytes)."""
    head = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs)) + b"".join(kvs)
    data, off = b"", 0
    for name, ne, typ, payload in tensors:
        off = (off + alignment - 1) // alignment * alignment
        head += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        head += struct.pack("<IQ", typ, off)
        data = data.ljust(off, b"\0") + payload
        off += len(payload)
    if tensors:
        head = head.ljust((len(head) + alignment - 1) // alignment * alignment, b"\0")
    return head + data


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, data bytes)."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def main():
    f32 = lambda *xs: struct.pack(f"<{len(xs)}f", *xs)
    q8 = struct.pack("<H", 0x3C00) + bytes(range(32))
    q4 = struct.pack("<H", 0x3800) + bytes(range(16))
    arr = lambda t, items: struct.pack("<IQ", t, len(items)) + b"".join(items)
    seeds = {
        "gguf/every_type.gguf": gguf(
            [kv("general.architecture", 8, gstr("llama")), kv("u8", 0, b"\x07"), kv("i8", 1, b"\xff"),
             kv("u16", 2, b"\x01\x02"), kv("i16", 3, b"\x01\x80"), kv("u32", 4, struct.pack("<I", 7)),
             kv("i32", 5, struct.pack("<i", -7)), kv("f32", 6, f32(0.5)), kv("b", 7, b"\x01"),
             kv("u64", 10, struct.pack("<Q", 9)), kv("i64", 11, struct.pack("<q", -9)),
             kv("f64", 12, struct.pack("<d", 2.5)),
             kv("tokens", 9, arr(8, [gstr("a"), gstr("bc"), gstr("")])),
             kv("scores", 9, arr(6, [f32(1.0), f32(-1.0)])), kv("flags", 9, arr(7, [b"\x00", b"\x01"]))],
            [("a", [4, 2], 0, f32(*range(8))), ("h", [3], 1, b"\x00\x3c" * 3), ("bf", [2], 30, b"\x80\x3f" * 2),
             ("q8", [32, 2], 8, q8 * 2), ("q4", [32], 2, q4)]),
        "gguf/v2_align64.gguf": gguf([kv("general.alignment", 4, struct.pack("<I", 64))],
                                     [("x", [4], 0, f32(1, 2, 3, 4)), ("y", [2, 1, 1, 1], 0, f32(5, 6))],
                                     version=2, alignment=64),
        "gguf/vocab_only.gguf": gguf([kv("tokenizer.ggml.model", 8, gstr("gpt2")),
                                      kv("tokenizer.ggml.tokens", 9, arr(8, [gstr(t) for t in "abcdef"])),
                                      kv("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", 1)] * 6))], []),
        "safetensors/basic.safetensors": safetensors(
            [("a", "F32", [2, 2], f32(1, 2, 3, 4)), ("h", "F16", [3], b"\x00\x3c" * 3),
             ("b", "BF16", [1], b"\x80\x3f"), ("e", "F32", [0, 4], b""), ("s", "F32", [], f32(1))],
            {"format": "pt"}),
        "safetensors/unsupported.safetensors": safetensors(
            [("i", "I64", [2], b"\x01" * 16), ("u", "U8", [3], b"abc"), ("f8", "F8_E4M3", [1], b"\x01"),
             ("r5", "F32", [1, 1, 1, 1, 1], f32(1)), ("x", "X9", [1], b"\x00")]),
    }
    for rel, data in seeds.items():
        path = os.path.join(HERE, "corpus", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
