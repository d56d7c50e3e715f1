"""KV prefixes: equality with prompt injection, immutability of the stored cache, refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.prompting import MemoryBlock, Message, PromptPlan
from inference.runtime.errors import KVCacheRefused
from inference.runtime.fingerprint import token_ids_sha256
from inference.runtime.generate import greedy_generate
from inference.runtime.kv import kv_build, kv_build_and_save, kv_load, read_kv_metadata
from inference.runtime.prompt import encode_prompt
from inference.runtime.registry import load_model

PACK = MemoryBlock(
    memory_id="pack-1",
    title="Harbour facts",
    text="The harbour of Port Elin opens at six. Ferries to Tarsk leave every forty minutes. "
    "The lighthouse keeper is Mara Voss, who has kept it since 2019. " * 6,
)


def _plan(question: str = "When do ferries leave for Tarsk?") -> PromptPlan:
    return PromptPlan(prefix_blocks=[PACK], messages=[Message("user", question)])


def _artifact(qwen, tmp_path: Path) -> tuple[Path, list[int]]:  # type: ignore[no-untyped-def]
    prompt = encode_prompt(qwen.tokenizer, _plan())
    path = tmp_path / "prefix.safetensors"
    kv_build_and_save(qwen, prompt.prefix_ids, path)
    return path, prompt.prefix_ids


def test_kv_injection_equals_prompt_injection_token_for_token(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _artifact(qwen, tmp_path)
    prompt = encode_prompt(qwen.tokenizer, _plan())

    in_prompt = greedy_generate(qwen, prompt.ids, max_new_tokens=32, stop_ids=set())
    injected = greedy_generate(
        qwen, prompt.ids, max_new_tokens=32, stop_ids=set(), kv=kv_load(path, handle=qwen)
    )

    assert injected.kv_used and injected.kv_tokens == len(prompt.prefix_ids)
    assert not in_prompt.kv_used
    assert len(in_prompt.token_ids) == 32
    assert injected.token_ids == in_prompt.token_ids


def test_the_stored_cache_is_unchanged_after_requests(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, prefix_ids = _artifact(qwen, tmp_path)
    on_disk = path.read_bytes()
    prefix = kv_load(path, handle=qwen)
    snapshot = [(k.clone(), v.clone()) for k, v in zip(prefix.keys, prefix.values, strict=True)]
    prompt = encode_prompt(qwen.tokenizer, _plan())

    first = greedy_generate(qwen, prompt.ids, max_new_tokens=16, kv=prefix, stop_ids=set())
    second = greedy_generate(qwen, prompt.ids, max_new_tokens=16, kv=prefix, stop_ids=set())

    # MemOS's cache grew with every turn; here the prefix keeps its length and values, and a repeated
    # request gives the same answer.
    assert prefix.num_tokens == len(prefix_ids)
    for (k, v), (k0, v0) in zip(zip(prefix.keys, prefix.values, strict=True), snapshot, strict=True):
        assert k.shape[-2] == len(prefix_ids)
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert first.token_ids == second.token_ids
    assert path.read_bytes() == on_disk


def test_a_cache_built_for_another_model_is_refused(qwen, other_qwen_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _artifact(qwen, tmp_path)
    other = load_model(other_qwen_dir)
    with pytest.raises(KVCacheRefused, match="built for another model") as exc:
        kv_load(path, handle=other)
    assert exc.value.extra["model_fingerprint"] == other.fingerprint.fingerprint


def test_a_cache_for_other_tokens_is_refused_or_not_used(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, prefix_ids = _artifact(qwen, tmp_path)
    with pytest.raises(KVCacheRefused, match="other tokens"):
        kv_load(path, handle=qwen, expected_token_ids_sha256=token_ids_sha256([*prefix_ids, 7]))

    # A request whose tokens differ from the prefix anywhere does not use it, and still answers.
    prefix = kv_load(path, handle=qwen)
    other = PromptPlan(
        prefix_blocks=[MemoryBlock("pack-1", "Harbour facts", PACK.text.replace("six", "seven"))],
        messages=[Message("user", "When do ferries leave for Tarsk?")],
    )
    ids = encode_prompt(qwen.tokenizer, other).ids
    result = greedy_generate(qwen, ids, max_new_tokens=4, kv=prefix, stop_ids=set())
    assert not result.kv_used
    assert "do not start with the cached token ids" in result.kv_skipped_reason
    assert result.token_ids == greedy_generate(qwen, ids, max_new_tokens=4, stop_ids=set()).token_ids


def test_a_prompt_equal_to_the_prefix_does_not_use_it(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, prefix_ids = _artifact(qwen, tmp_path)
    result = greedy_generate(
        qwen, prefix_ids, max_new_tokens=2, kv=kv_load(path, handle=qwen), stop_ids=set()
    )
    assert not result.kv_used  # no uncached token left to produce the first logits from


def test_the_artifact_is_safetensors_with_identity_metadata(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, prefix_ids = _artifact(qwen, tmp_path)
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])  # a JSON header, not a pickle
    meta = header["__metadata__"]
    assert meta == read_kv_metadata(path)
    assert meta["format"] == "memhub-kv/1"
    assert meta["model_fingerprint"] == qwen.fingerprint.fingerprint
    assert meta["token_ids_sha256"] == token_ids_sha256(prefix_ids)
    assert meta["dtype"] == "float32" and meta["num_tokens"] == str(len(prefix_ids))
    layout = qwen.layout
    assert header["layers.0.keys"]["shape"] == [layout.num_kv_heads, len(prefix_ids), layout.head_dim]
    assert load_file(str(path))["token_ids"].tolist() == prefix_ids


def test_a_tampered_artifact_is_refused(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _artifact(qwen, tmp_path)
    tensors = load_file(str(path))
    tensors["token_ids"] = tensors["token_ids"].flip(0).contiguous()
    save_file(tensors, str(path), metadata=read_kv_metadata(path))
    with pytest.raises(KVCacheRefused, match="do not match their recorded hash"):
        kv_load(path, handle=qwen)


def test_a_cache_in_another_dtype_is_refused(qwen, tiny_qwen_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = _artifact(qwen, tmp_path)
    half = load_model(tiny_qwen_dir, dtype="bfloat16")
    with pytest.raises(KVCacheRefused, match="bfloat16"):
        kv_load(path, handle=half)


def test_a_not_safetensors_file_is_refused(qwen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cache.safetensors"
    path.write_bytes(b"\x80\x04\x95 pickle bytes")
    with pytest.raises(KVCacheRefused, match="not a readable safetensors"):
        kv_load(path, handle=qwen)


def test_an_empty_prefix_is_refused(qwen) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KVCacheRefused, match="at least one token"):
        kv_build(qwen, [])
