"""LoRA adapters as pack content, checked without torch.

An adapter is `adapter_config.json` + `adapter_model.safetensors` (two files, or one zip holding them).
The config must be a peft LoRA config naming its rank, alpha, target modules and base model. The
safetensors file is checked from its header alone: an 8-byte little-endian header length, then a JSON
header of at most `MAX_HEADER_BYTES`; every tensor a float dtype, two-dimensional, its byte range inside
the file, ranges contiguous and covering the data exactly; every name a LoRA A or B weight of a target
module, A of shape [r, in] and B of shape [out, r], each A with its B. Whether the adapter fits a
particular served model is checked again by the inference worker when it is installed.

A zip is opened with its entries bounded (count, total uncompressed size counted as it is read, not as
the archive claims), and refused if an entry is encrypted, a link, an absolute path or climbs out with
`..`, or is any file other than the adapter's.
"""

from __future__ import annotations

import io
import json
import re
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from core.errors import ApplicationError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
SIDECAR = "memhub_adapter.json"
ALLOWED_FILES = (CONFIG, WEIGHTS, SIDECAR, "README.md")
MAX_CONFIG_BYTES = 64 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_TENSORS = 10_000
MAX_RANK = 256
MAX_ZIP_ENTRIES = 16
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>[A-Za-z0-9_.]+?)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$"
)


@dataclass
class AdapterSpec:
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str
    tensors: int
    dtypes: list[str]
    parameters: int
    modules: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    sidecar: dict[str, Any] = field(default_factory=dict)

    def as_meta(self) -> dict[str, Any]:
        return {
            "format": "peft-lora",
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "base_model_name_or_path": self.base_model,
            "tensors": self.tensors,
            "dtypes": self.dtypes,
            "parameters": self.parameters,
            "adapted_modules": len(self.modules),
        }


def _bad(message: str, *, what: str, **extra: Any) -> ApplicationError:
    return ApplicationError(message, {"file": what, **extra}, code="invalid_adapter")


def check_config(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_CONFIG_BYTES:
        raise _bad(f"{CONFIG} is larger than {MAX_CONFIG_BYTES} bytes.", what=CONFIG)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"{CONFIG} is not valid JSON ({exc}).", what=CONFIG) from None
    if not isinstance(config, dict):
        raise _bad(f"{CONFIG} must be a JSON object.", what=CONFIG)
    if config.get("peft_type") != "LORA":
        raise _bad(
            f"{CONFIG}: peft_type must be 'LORA' (got {config.get('peft_type')!r}).",
            what=CONFIG,
            key="peft_type",
        )
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= MAX_RANK:
        raise _bad(
            f"{CONFIG}: r must be an integer between 1 and {MAX_RANK} (got {r!r}).", what=CONFIG, key="r"
        )
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0:
        raise _bad(
            f"{CONFIG}: lora_alpha must be a positive number (got {alpha!r}).", what=CONFIG, key="lora_alpha"
        )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9_.]{1,100}", t) for t in targets)
    ):
        raise _bad(
            f"{CONFIG}: target_modules must be a non-empty list of module names.",
            what=CONFIG,
            key="target_modules",
        )
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base.strip() or len(base) > 200:
        raise _bad(
            f"{CONFIG}: base_model_name_or_path must name the base model (1-200 characters).",
            what=CONFIG,
            key="base_model_name_or_path",
        )
    if config.get("modules_to_save"):
        raise _bad(
            f"{CONFIG}: adapters that replace whole modules (modules_to_save) are not accepted.",
            what=CONFIG,
            key="modules_to_save",
        )
    config["target_modules"] = sorted(set(targets))
    return config


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _rank_for(module: str, config: dict[str, Any]) -> int:
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, dict):
        for name, r in pattern.items():
            if isinstance(r, int) and (module == name or module.endswith(f".{name}")):
                return r
    return int(config["r"])


def check_weights(data: bytes, config: dict[str, Any]) -> AdapterSpec:
    """The safetensors header checked against the config (no tensor is loaded)."""
    if len(data) < 8:
        raise _bad(f"{WEIGHTS} is too short to be a safetensors file.", what=WEIGHTS)
    (length,) = struct.unpack("<Q", data[:8])
    if length < 2 or length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise _bad(
            f"{WEIGHTS}: the header length {length} is not plausible (file of {len(data)} bytes, "
            f"header at most {MAX_HEADER_BYTES}).",
            what=WEIGHTS,
        )
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(f"{WEIGHTS}: the header is not valid JSON.", what=WEIGHTS) from None
    if not isinstance(header, dict):
        raise _bad(f"{WEIGHTS}: the header must be a JSON object.", what=WEIGHTS)
    meta = header.pop("__metadata__", None)
    if meta is not None and (
        not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())
    ):
        raise _bad(f"{WEIGHTS}: __metadata__ must map strings to strings.", what=WEIGHTS)
    if not header:
        raise _bad(f"{WEIGHTS} holds no tensors.", what=WEIGHTS)
    if len(header) > MAX_TENSORS:
        raise _bad(f"{WEIGHTS} holds more than {MAX_TENSORS} tensors.", what=WEIGHTS)
    data_len = len(data) - 8 - length
    targets = set(config["target_modules"])
    ranges: list[tuple[int, int, str]] = []
    pairs: dict[str, dict[str, list[int]]] = {}
    dtypes: set[str] = set()
    parameters = 0
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _bad(f"{WEIGHTS}: tensor '{name}' has no description.", what=WEIGHTS, tensor=name)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' has dtype {dtype!r}; LoRA weights are F16, BF16, F32 or F64.",
                what=WEIGHTS,
                tensor=name,
            )
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1_000_000 for d in shape)
        ):
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' has shape {shape!r}; a LoRA weight is a 2-D matrix.",
                what=WEIGHTS,
                tensor=name,
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' has data offsets outside the file.", what=WEIGHTS, tensor=name
            )
        if offsets[1] - offsets[0] != _numel(shape) * DTYPE_BYTES[dtype]:
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' holds {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs "
                f"{_numel(shape) * DTYPE_BYTES[dtype]}.",
                what=WEIGHTS,
                tensor=name,
            )
        m = LORA_KEY.match(name)
        if m is None:
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' is not a LoRA weight (<module>.lora_A.weight / .lora_B.weight).",
                what=WEIGHTS,
                tensor=name,
            )
        module = m.group("module")
        if module.rsplit(".", 1)[-1] not in targets and module not in targets:
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' adapts '{module}', which is not among the target_modules "
                f"({', '.join(sorted(targets))}).",
                what=WEIGHTS,
                tensor=name,
            )
        kind = "A" if m.group("ab") == "A" else "B"
        if kind in pairs.setdefault(module, {}):
            raise _bad(
                f"{WEIGHTS}: module '{module}' has two lora_{kind} weights.", what=WEIGHTS, tensor=name
            )
        pairs[module][kind] = shape
        ranges.append((offsets[0], offsets[1], name))
        dtypes.add(dtype)
        parameters += _numel(shape)
    ranges.sort()
    position = 0
    for begin, end, name in ranges:
        if begin != position:
            raise _bad(
                f"{WEIGHTS}: tensor '{name}' does not start where the previous one ends (overlap or gap).",
                what=WEIGHTS,
                tensor=name,
            )
        position = end
    if position != data_len:
        raise _bad(
            f"{WEIGHTS}: {data_len - position} bytes after the last tensor belong to none.", what=WEIGHTS
        )
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise _bad(
                f"{WEIGHTS}: module '{module}' lacks its {missing} weight.", what=WEIGHTS, module=module
            )
        r = _rank_for(module, config)
        a, b = ab["A"], ab["B"]
        if a[0] != r or b[1] != r:
            raise _bad(
                f"{WEIGHTS}: module '{module}' has lora_A {a} and lora_B {b}; with r={r} they must be "
                f"[{r}, in] and [out, {r}].",
                what=WEIGHTS,
                module=module,
            )
    return AdapterSpec(
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        target_modules=list(config["target_modules"]),
        base_model=str(config["base_model_name_or_path"]),
        tensors=len(ranges),
        dtypes=sorted(dtypes),
        parameters=parameters,
        modules=sorted(pairs),
        config=config,
    )


def _zip_member_name(info: zipfile.ZipInfo) -> str | None:
    """The adapter file an entry is, or None for a directory; refuses anything unsafe."""
    raw = info.filename
    if info.flag_bits & 0x1:
        raise _bad(f"The zip entry '{raw}' is encrypted.", what="zip")
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        raise _bad(f"The zip entry '{raw}' is a symbolic link; links are not accepted.", what="zip")
    if "\\" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\x00" in raw:
        raise _bad(f"The zip entry '{raw}' has an absolute or non-portable path.", what="zip")
    parts = PurePosixPath(raw).parts
    if ".." in parts:
        raise _bad(f"The zip entry '{raw}' climbs out of the archive ('..').", what="zip")
    if info.is_dir():
        return None
    if len(parts) > 2:
        raise _bad(
            f"The zip entry '{raw}' is nested too deeply; put the adapter files at the top.", what="zip"
        )
    name = parts[-1]
    if name.startswith("._") or parts[0] == "__MACOSX":
        return ""  # resource forks some archivers add: ignored
    if name not in ALLOWED_FILES:
        raise _bad(
            f"The zip holds '{raw}'; an adapter zip holds only {CONFIG} and {WEIGHTS} "
            "(pickle formats such as .bin or .pt are refused).",
            what="zip",
        )
    return name


def read_zip(data: bytes, *, max_total: int) -> dict[str, bytes]:
    """The adapter files of a zip, each read with the running total bounded."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _bad(f"The upload is not a readable zip archive ({exc}).", what="zip") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise _bad(f"The zip holds {len(infos)} entries; at most {MAX_ZIP_ENTRIES}.", what="zip")
        files: dict[str, bytes] = {}
        total = 0
        for info in infos:
            name = _zip_member_name(info)
            if not name:
                continue
            if name in files:
                raise _bad(f"The zip holds '{name}' twice.", what="zip")
            if info.file_size > max_total or total + info.file_size > max_total:
                raise _bad(
                    f"The zip expands to more than {max_total} bytes (MEMHUB_PACK_UPLOAD_MAX_BYTES).",
                    what="zip",
                )
            out = bytearray()
            try:
                with archive.open(info) as fh:
                    while chunk := fh.read(1024 * 1024):
                        out += chunk
                        if total + len(out) > max_total:  # the header may understate the size
                            raise _bad(
                                f"The zip expands to more than {max_total} bytes "
                                "(MEMHUB_PACK_UPLOAD_MAX_BYTES).",
                                what="zip",
                            )
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
                raise _bad(f"The zip entry '{info.filename}' cannot be read ({exc}).", what="zip") from None
            total += len(out)
            files[name] = bytes(out)
    for required in (CONFIG, WEIGHTS):
        if required not in files:
            raise _bad(f"The zip lacks {required}; an adapter is {CONFIG} + {WEIGHTS}.", what="zip")
    return files


def check_sidecar(raw: bytes) -> dict[str, Any]:
    """`memhub_adapter.json` (written by MemHub's distillation): a small JSON object; a
    `base_model_fingerprint` in it must be 64 lowercase hex digits."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise _bad(f"{SIDECAR} is larger than {MAX_CONFIG_BYTES} bytes.", what=SIDECAR)
    try:
        sidecar = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"{SIDECAR} is not valid JSON ({exc}).", what=SIDECAR) from None
    if not isinstance(sidecar, dict):
        raise _bad(f"{SIDECAR} must be a JSON object.", what=SIDECAR)
    fp = sidecar.get("base_model_fingerprint")
    if fp is not None and not (isinstance(fp, str) and re.fullmatch(r"[0-9a-f]{64}", fp)):
        raise _bad(f"{SIDECAR}: base_model_fingerprint must be 64 lowercase hex digits.", what=SIDECAR)
    return sidecar


def check_adapter(files: dict[str, bytes]) -> AdapterSpec:
    for required in (CONFIG, WEIGHTS):
        if required not in files:
            raise _bad(f"The adapter lacks {required}; an adapter is {CONFIG} + {WEIGHTS}.", what=required)
    config = check_config(files[CONFIG])
    spec = check_weights(files[WEIGHTS], config)
    if SIDECAR in files:
        spec.sidecar = check_sidecar(files[SIDECAR])
    return spec
