"""Builders of the files a publisher uploads: PDFs (pypdf), LoRA adapters (safetensors), images, zips."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
from pypdf import PdfWriter
from pypdf.generic import (
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    StreamObject,
)
from safetensors.numpy import save as st_save


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[list[str]], *, password: str | None = None) -> bytes:
    """A PDF whose page i holds the lines pages[i] (Helvetica, one text line each)."""
    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
        for line in lines:
            ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("latin-1"))
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        page[NameObject("/Contents")] = writer._add_object(stream)
    if password:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_bomb(inflated_bytes: int = 200 * 1024 * 1024) -> bytes:
    """One page whose content stream is a small Flate stream that inflates to `inflated_bytes`."""
    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    compressor = zlib.compressobj(9)
    chunk = b" " * (1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes // len(chunk))]
    parts.append(compressor.flush())
    stream = StreamObject()
    stream._data = b"".join(parts)
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def lora_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "tiny-qwen2",
        "task_type": "CAUSAL_LM",
    }
    config.update(overrides)
    return config


def lora_tensors(
    r: int = 4, hidden: int = 16, layers: int = 2, targets: tuple[str, ...] = ("q_proj", "v_proj")
):
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            base = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{base}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(np.float32)
            tensors[f"{base}.lora_B.weight"] = np.zeros((hidden, r), dtype=np.float32)
    return tensors


def safetensors_bytes(tensors: dict[str, np.ndarray] | None = None) -> bytes:
    return st_save(tensors if tensors is not None else lora_tensors())


def raw_safetensors(header: dict[str, Any], data: bytes) -> bytes:
    """A safetensors file with exactly this header (for malformed cases the library would not write)."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def adapter_files(config: dict[str, Any] | None = None, weights: bytes | None = None) -> dict[str, bytes]:
    return {
        "adapter_config.json": json.dumps(config if config is not None else lora_config()).encode(),
        "adapter_model.safetensors": weights if weights is not None else safetensors_bytes(),
    }


def zip_bytes(entries: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = 0o120777 << 16
            archive.writestr(info, data)
    return out.getvalue()


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def jpeg_bytes(width: int = 8, height: int = 8) -> bytes:
    """A JPEG header (SOI, APP0, SOF0 with the size) and EOI: enough for a header check."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def webp_bytes(width: int = 10, height: int = 20) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
