"""Pack content from files: JSONL, documents (Markdown, text, HTML, PDF) chunked within a token budget,
LoRA adapters checked without torch, cover images; inline and background processing; every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from core.errors import ApplicationError
from governance.policy import Subject
from marketplace.ingest import adapters as adapter_ingest
from marketplace.ingest.chunking import Section, chunk_sections, count_tokens
from marketplace.ingest.documents import html_sections, markdown_sections
from marketplace.ingest.safety import data_dir
from marketplace.models import Pack, PackItem, PackUpload
from marketplace.selectors.studio import pack_items
from marketplace.services import studio
from tests.marketplace.files import samples

pytestmark = pytest.mark.django_db

BASE = "/api/v1/marketplace"
UPLOADS = f"{BASE}/packs/acme/tips/uploads"

GUIDE_MD = """# Harbour guide

The harbour office opens at six and closes at nine.

## Ferries

Ferries to Tarsk leave every forty minutes from pier 3.

```
# not a heading: a comment in a code block
schedule --pier 3
```

### Winter

In winter the last ferry leaves at eight.

Tides
-----

High tide is announced on the board by the office.
"""


@pytest.fixture
def pack(make_pack) -> Pack:  # type: ignore[no-untyped-def]
    return make_pack("tips", texts=())


@pytest.fixture
def client(expert, api_for, pack):  # type: ignore[no-untyped-def]
    return api_for(expert)


def upload(client, kind: str, name: str, data: bytes, **fields):  # type: ignore[no-untyped-def]
    body = {"kind": kind, "file": SimpleUploadedFile(name, data), **fields}
    return client.post(UPLOADS, body, format="multipart")


def nothing_written(pack: Pack) -> None:
    assert not PackItem.objects.filter(pack=pack).exists()
    assert not PackUpload.objects.filter(pack=pack).exists()
    uploads = data_dir() / "marketplace" / "uploads" / str(pack.id)
    assert not uploads.exists() or not any(uploads.iterdir())


# --- chunking ------------------------------------------------------------------------------------------


def test_tokens_are_counted_with_the_embedders_tokenizer():
    assert count_tokens("hello world") == 2
    assert count_tokens("unbelievably") > 1  # WordPiece pieces, not words
    assert count_tokens("") == 0


def test_chunks_follow_sections_and_stay_within_the_budget():
    para = " ".join(f"Sentence number {i} talks about the harbour." for i in range(40))
    sections = [Section(("Guide",), "Short intro."), Section(("Guide", "Ferries"), para + "\n\n" + para)]
    chunks = chunk_sections(sections, budget=64)
    assert chunks[0].text == "Short intro." and chunks[0].heading_path == ("Guide",)
    assert len(chunks) > 3 and all(c.tokens <= 64 for c in chunks)
    assert {c.heading_path for c in chunks[1:]} == {("Guide", "Ferries")}
    assert all(count_tokens(c.text) == c.tokens for c in chunks)
    huge = chunk_sections([Section((), "x" * 5000)], budget=32)
    assert all(c.tokens <= 32 for c in huge)


def test_markdown_headings_make_the_section_path():
    sections = markdown_sections(GUIDE_MD)
    paths = [s.heading_path for s in sections]
    assert paths == [
        ("Harbour guide",),
        ("Harbour guide", "Ferries"),
        ("Harbour guide", "Ferries", "Winter"),
        ("Harbour guide", "Tides"),
    ]
    assert "# not a heading" in sections[1].text


def test_html_drops_scripts_and_styles_and_keeps_headings():
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<h1>Guide</h1><p>Open at six.</p><script>alert('x')</script>"
        "<h2>Ferries</h2><p>Every <b>forty</b> minutes.</p></body></html>"
    )
    sections = html_sections(html)
    assert [(s.heading_path, s.text) for s in sections] == [
        (("Guide",), "Open at six."),
        (("Guide", "Ferries"), "Every forty minutes."),
    ]


# --- JSONL ---------------------------------------------------------------------------------------------


def test_jsonl_upload_inline(client, pack):
    lines = [
        {"text": "Ferries leave every forty minutes.", "tags": ["ferry"], "semantic_type": "fact"},
        {"text": "The office opens at six.", "valid_from": "2024-01-01T00:00:00Z"},
    ]
    data = ("\n".join(json.dumps(x) for x in lines) + "\n\n").encode()
    resp = upload(client, "jsonl", "facts.jsonl", data, tags=["harbour"])
    assert resp.status_code == 201, resp.json()
    body = resp.json()
    assert body["status"] == "done" and body["result"]["memories"] == 2 and body["kind"] == "jsonl"
    cubes = list(pack_items(pack))
    assert [c.text for c in cubes] == [x["text"] for x in lines]
    assert cubes[0].tags == ["ferry", "harbour"] and cubes[0].semantic_type == "fact"
    assert cubes[1].source["line"] == 2 and cubes[1].source["file"] == "facts.jsonl"
    assert cubes[1].source["publisher"] == "acme" and cubes[1].valid_from is not None
    assert PackItem.objects.filter(pack=pack, upload_id=body["id"]).count() == 2
    listed = client.get(UPLOADS).json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == body["id"]
    assert "scopes" not in listed["results"][0]["options"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"text": "ok"}\n{"text": "ok"\n', "Line 2: not valid JSON"),
        (b'{"text": "ok"}\n\n[1, 2]\n', "Line 3: expected a JSON object"),
        (b'{"text": "ok"}\n{"text": ""}\n', "Line 2, field 'text'"),
        (b'{"text": "ok", "namespace": "user:alice"}\n', "Line 1, field 'namespace'"),
        (
            b'{"text": "ok", "provenance_id": "0b8f1e0a-4a4f-4c3e-9d6c-1f6b1f0b8f1e"}\n',
            "Line 1, field 'provenance_id'",
        ),
        (b'{"text": "ok", "kind": "parameter"}\n', "Line 1, field 'kind'"),
        (b'{"text": "ok", "valid_from": "yesterday"}\n', "Line 1, field 'valid_from'"),
        (b'{"text": "ok", "tags": "not-a-list"}\n', "Line 1, field 'tags'"),
        (
            b'{"text": "a", "valid_from": "2024-02-01T00:00:00Z", "valid_to": "2024-01-01T00:00:00Z"}',
            "valid_to",
        ),
        (b'{"text": "ok"}\n\xff\xfe\n', "Line 2: not UTF-8"),
        (b"\n\n", "holds no memories"),
    ],
)
def test_a_bad_jsonl_line_is_a_400_naming_it_and_nothing_is_written(client, pack, content, needle):
    resp = upload(client, "jsonl", "bad.jsonl", content)
    assert resp.status_code == 400, resp.json()
    assert needle in resp.json()["error"]["message"], resp.json()
    nothing_written(pack)


def test_jsonl_in_the_background_success_and_failure(client, pack):
    good = upload(client, "jsonl", "good.jsonl", b'{"text": "Later."}\n', processing="background")
    assert good.status_code == 202 and good.json()["status"] == "pending"
    bad = upload(client, "jsonl", "bad.jsonl", b'{"text": "fine"}\n{"text": 5}\n', processing="background")
    assert bad.status_code == 202
    assert not PackItem.objects.filter(pack=pack).exists()  # nothing until the worker runs
    from marketplace.tasks.ingest import pack_upload_process_task

    assert pack_upload_process_task(good.json()["id"]) == "done"
    assert pack_upload_process_task(bad.json()["id"]) == "failed"
    assert pack_upload_process_task(good.json()["id"]) == "done"  # idempotent: no second copy
    assert [c.text for c in pack_items(pack)] == ["Later."]
    failed = client.get(f"{UPLOADS}/{bad.json()['id']}").json()
    assert failed["status"] == "failed" and failed["error"].startswith("Line 2, field 'text'")
    assert failed["result"]["error"]["line"] == 2 and failed["finished_at"]


def test_large_uploads_go_to_the_worker_on_commit(settings, client, pack, django_capture_on_commit_callbacks):
    settings.MEMHUB_PACK_INLINE_BYTES = 10
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        resp = upload(client, "jsonl", "big.jsonl", b'{"text": "Queued fact."}\n')
    assert resp.status_code == 202 and resp.json()["status"] == "pending"
    assert len(callbacks) >= 1  # the worker was enqueued after commit (eager in tests: it ran)
    assert client.get(f"{UPLOADS}/{resp.json()['id']}").json()["status"] == "done"
    assert [c.text for c in pack_items(pack)] == ["Queued fact."]


def test_a_removed_member_s_pending_upload_fails(publisher, expert, alice, pack):
    studio.publisher_member_set(actor=Subject(user=expert), publisher=publisher, username="alice")
    up = studio.pack_upload_create(
        actor=Subject(user=alice),
        pack=pack,
        kind="jsonl",
        files={"file": SimpleUploadedFile("a.jsonl", b'{"text": "x"}')},
        inline=False,
    )
    studio.publisher_member_remove(actor=Subject(user=expert), publisher=publisher, username="alice")
    done = studio.pack_upload_process(upload_id=up.id)
    assert done.status == "failed" and "do not publish" in done.error and not pack.items.exists()


# --- documents -----------------------------------------------------------------------------------------


def test_markdown_document_becomes_chunks_with_section_sources(client, pack):
    resp = upload(client, "document", "guide.md", GUIDE_MD.encode(), chunk_tokens=64)
    assert resp.status_code == 201, resp.json()
    result = resp.json()["result"]
    assert result["document_type"] == "markdown" and result["memories"] == result["chunks"] == 4
    cubes = list(pack_items(pack))
    assert cubes[2].source["section"] == ["Harbour guide", "Ferries", "Winter"]
    assert cubes[2].source["section_path"] == "Harbour guide > Ferries > Winter"
    assert cubes[2].source["file"] == "guide.md" and cubes[2].title == "Winter"
    assert all(c.metadata["tokens"] <= 64 for c in cubes)


def test_html_and_text_documents(client, pack):
    html = (
        b"<!doctype html><html><body><h1>Tides</h1><p>High at noon.</p><script>evil()</script></body></html>"
    )
    assert upload(client, "document", "tides.html", html).status_code == 201
    assert upload(client, "document", "notes.txt", b"Plain note one.\n\nPlain note two.").status_code == 201
    texts = [c.text for c in pack_items(pack)]
    assert texts[0] == "High at noon." and "evil" not in " ".join(texts)
    assert "Plain note one." in texts[1]


def test_pdf_document_names_file_and_page(client, pack):
    pdf = samples.pdf_bytes([["Harbour guide. The office opens at six."], ["Ferries leave from pier 3."]])
    resp = upload(client, "document", "guide.pdf", pdf)
    assert resp.status_code == 201, resp.json()
    assert resp.json()["result"]["pages"] == 2 and resp.json()["result"]["document_type"] == "pdf"
    cubes = list(pack_items(pack))
    assert [c.source["page"] for c in cubes] == [1, 2]
    assert "pier 3" in cubes[1].text and cubes[1].source["file"] == "guide.pdf"
    assert cubes[1].title == "guide.pdf (page 2)"


def test_bad_documents_are_refused_and_nothing_is_written(settings, client, pack):
    settings.MEMHUB_PDF_MAX_PAGES = 3
    cases = [
        ("secret.pdf", samples.pdf_bytes([["Hidden."]], password="pw"), "encrypted PDF"),
        ("broken.pdf", b"%PDF-1.7\nthis is not really a pdf", "not a valid PDF"),
        ("bomb.pdf", samples.pdf_bomb(), "decoding limits"),
        ("long.pdf", samples.pdf_bytes([["p"]] * 4), "at most 3 are accepted"),
        ("fake.pdf", b"# just markdown", "is not a PDF"),
        ("real.md", samples.pdf_bytes([["x"]]), "content is a PDF"),
        ("image.md", samples.png_bytes(), "PNG image"),
        ("binary.txt", b"abc\x00def", "binary data"),
        ("latin.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
        ("sheet.xlsx", b"PK\x03\x04....", "not a supported document"),
        ("empty.md", b"   \n\n", "holds no text"),
    ]
    for name, data, needle in cases:
        resp = upload(client, "document", name, data)
        assert resp.status_code == 400, (name, resp.json())
        assert needle in resp.json()["error"]["message"], (name, resp.json())
    nothing_written(pack)


def test_an_oversized_upload_is_a_413(settings, client, pack):
    settings.MEMHUB_PACK_UPLOAD_MAX_BYTES = 1000
    resp = upload(client, "document", "big.md", b"word " * 1000)
    assert resp.status_code == 413 and "MEMHUB_PACK_UPLOAD_MAX_BYTES" in resp.json()["error"]["message"]
    nothing_written(pack)


def test_chunk_count_is_bounded(settings, client, pack):
    settings.MEMHUB_UPLOAD_MAX_CHUNKS = 2
    doc = "\n\n".join(f"# H{i}\n\nParagraph {i}." for i in range(5)).encode()
    resp = upload(client, "document", "many.md", doc)
    assert resp.status_code == 400 and "at most 2 per upload" in resp.json()["error"]["message"]
    nothing_written(pack)


def test_upload_bad_form_input(client, pack):
    assert (
        client.post(
            UPLOADS, {"kind": "video", "file": SimpleUploadedFile("a.md", b"x")}, format="multipart"
        ).status_code
        == 400
    )
    resp = client.post(UPLOADS, {"kind": "document"}, format="multipart")
    assert resp.status_code == 400 and "one file" in resp.json()["error"]["message"]
    resp = upload(client, "document", "a.md", b"# A\n\ntext", chunk_tokens=3)
    assert resp.status_code == 400 and "chunk_tokens" in str(resp.json()["error"])
    resp = upload(client, "jsonl", "a.jsonl", b'{"text":"x"}', base_model_fingerprint="0" * 64)
    assert resp.status_code == 400 and "does not apply" in resp.json()["error"]["message"]
    nothing_written(pack)


def test_upload_throttle(settings, client, pack):
    settings.MEMHUB_THROTTLE_RATES = {**settings.MEMHUB_THROTTLE_RATES, "pack_upload": "1/min"}
    assert upload(client, "jsonl", "a.jsonl", b'{"text": "one"}').status_code == 201
    resp = upload(client, "jsonl", "b.jsonl", b'{"text": "two"}')
    assert resp.status_code == 429 and resp.headers.get("Retry-After")
    assert client.get(UPLOADS).status_code == 200  # listing uploads is not an upload
    assert [c.text for c in pack_items(pack)] == ["one"]


def test_outsider_and_scopeless_uploads_are_refused(client, pack, alice, expert, api_for):
    assert upload(api_for(alice), "jsonl", "a.jsonl", b'{"text": "x"}').status_code == 403
    resp = upload(api_for(expert, scopes=["memories:write"]), "jsonl", "a.jsonl", b'{"text": "x"}')
    assert resp.status_code == 403 and "'marketplace' scope" in resp.json()["error"]["message"]
    nothing_written(pack)


# --- adapters ------------------------------------------------------------------------------------------


def adapter_upload(client, files: dict[str, bytes], **fields):  # type: ignore[no-untyped-def]
    body = {
        "kind": "adapter",
        "adapter_config": SimpleUploadedFile("adapter_config.json", files["adapter_config.json"]),
        "adapter_model": SimpleUploadedFile("adapter_model.safetensors", files["adapter_model.safetensors"]),
        **fields,
    }
    return client.post(UPLOADS, body, format="multipart")


def test_adapter_from_two_files_is_a_parameter_memory(client, pack):
    files = samples.adapter_files()
    resp = adapter_upload(client, files, name="Harbour tone", tags=["lora"])
    assert resp.status_code == 201, resp.json()
    assert resp.json()["result"]["adapter"]["rank"] == 4
    cube = pack_items(pack).get()
    assert cube.kind == "parameter" and cube.title == "Harbour tone" and cube.tags == ["lora"]
    import hashlib

    assert cube.blob_sha256 == hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
    assert cube.model_fingerprint == "name:tiny-qwen2"
    assert cube.blob_meta["target_modules"] == ["q_proj", "v_proj"] and cube.blob_meta["tensors"] == 8
    stored = Path(cube.blob_uri.removeprefix("file://"))
    assert (stored / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"]
    assert (stored / "adapter_config.json").is_file()


def test_adapter_from_a_zip(client, pack):
    files = samples.adapter_files()
    archive = samples.zip_bytes({f"adapter/{k}": v for k, v in files.items()} | {"adapter/": b""})
    resp = upload(client, "adapter", "adapter.zip", archive, base_model_fingerprint="a" * 64)
    assert resp.status_code == 201, resp.json()
    assert pack_items(pack).get().model_fingerprint == "a" * 64


def test_adapter_zip_with_memhubs_sidecar_in_the_background(client, pack):
    files = samples.adapter_files(weights=samples.safetensors_bytes(samples.lora_tensors(hidden=24)))
    files["memhub_adapter.json"] = json.dumps({"base_model_fingerprint": "b" * 64}).encode()
    resp = upload(client, "adapter", "a.zip", samples.zip_bytes(files), processing="background")
    assert resp.status_code == 202, resp.json()
    done = studio.pack_upload_process(upload_id=resp.json()["id"])
    assert done.status == "done", done.error
    cube = pack_items(pack).get()
    assert cube.model_fingerprint == "b" * 64
    assert (Path(cube.blob_uri.removeprefix("file://")) / "memhub_adapter.json").is_file()
    bad = dict(files, **{"memhub_adapter.json": b'{"base_model_fingerprint": "short"}'})
    resp = upload(client, "adapter", "b.zip", samples.zip_bytes(bad))
    assert resp.status_code == 400 and "memhub_adapter.json" in resp.json()["error"]["message"]


def _weights_with(header_change=None, data=None):  # type: ignore[no-untyped-def]
    r, hidden = 4, 16
    a = {"dtype": "F32", "shape": [r, hidden], "data_offsets": [0, r * hidden * 4]}
    b = {"dtype": "F32", "shape": [hidden, r], "data_offsets": [r * hidden * 4, 2 * r * hidden * 4]}
    header = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b,
    }
    if header_change:
        header_change(header)
    return samples.raw_safetensors(header, data if data is not None else b"\x00" * (2 * r * hidden * 4))


KEY_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
KEY_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

BAD_ADAPTERS = [
    ({"config": samples.lora_config(peft_type="IA3")}, "peft_type must be 'LORA'"),
    ({"config": samples.lora_config(r=0)}, "r must be an integer"),
    ({"config": samples.lora_config(lora_alpha="big")}, "lora_alpha"),
    ({"config": samples.lora_config(target_modules=[])}, "target_modules"),
    ({"config": samples.lora_config(base_model_name_or_path="")}, "base_model_name_or_path"),
    ({"config": samples.lora_config(modules_to_save=["lm_head"])}, "modules_to_save"),
    ({"config_raw": b"{not json"}, "adapter_config.json is not valid JSON"),
    ({"weights": b"\x01\x02"}, "too short"),
    ({"weights": b"\xff" * 8 + b"{}"}, "header length"),
    ({"weights": _weights_with(lambda h: h[KEY_A].update(dtype="I64"))}, "dtype 'I64'"),
    ({"weights": _weights_with(lambda h: h[KEY_A].update(shape=[4, 16, 1]))}, "2-D matrix"),
    ({"weights": _weights_with(lambda h: h[KEY_A].update(data_offsets=[0, 9999]))}, "outside the file"),
    ({"weights": _weights_with(lambda h: h[KEY_A].update(shape=[8, 8]))}, "with r=4"),
    ({"weights": _weights_with(lambda h: h.pop(KEY_B), data=b"\x00" * 256)}, "lacks its lora_B"),
    ({"weights": _weights_with(lambda h: h.update({"lm_head.weight": h.pop(KEY_B)}))}, "not a LoRA weight"),
    (
        {"weights": _weights_with(lambda h: h.update({KEY_B.replace("q_proj", "k_proj"): h.pop(KEY_B)}))},
        "not among the target_modules",
    ),
    ({"weights": _weights_with(data=b"\x00" * 600)}, "belong to none"),
    ({"weights": samples.safetensors_bytes({})}, "holds no tensors"),
]


@pytest.mark.parametrize(("case", "needle"), BAD_ADAPTERS)
def test_a_malformed_adapter_is_a_400_naming_the_problem(client, pack, case, needle):
    stored = data_dir() / "marketplace" / "adapters"
    before = sorted(stored.rglob("*")) if stored.exists() else []
    config = case.get("config_raw") or json.dumps(case.get("config") or samples.lora_config()).encode()
    weights = case.get("weights") if "weights" in case else samples.safetensors_bytes()
    resp = adapter_upload(client, {"adapter_config.json": config, "adapter_model.safetensors": weights})
    assert resp.status_code == 400, resp.json()
    assert needle in resp.json()["error"]["message"], resp.json()
    assert resp.json()["error"]["code"] == "invalid_adapter"
    nothing_written(pack)
    assert (sorted(stored.rglob("*")) if stored.exists() else []) == before


BAD_ZIPS = [
    ({"../adapter_config.json": b"{}", "adapter_model.safetensors": b""}, (), "climbs out"),
    ({"/etc/adapter_config.json": b"{}"}, (), "absolute"),
    (
        {"adapter_config.json": b"x", "adapter_model.safetensors": b"x", "model.bin": b"x"},
        (),
        "pickle formats",
    ),
    (
        {"adapter_config.json": b"/etc/passwd", "adapter_model.safetensors": b"x"},
        ("adapter_config.json",),
        "symbolic link",
    ),
    ({"adapter_config.json": b"{}"}, (), "lacks adapter_model.safetensors"),
    ({f"a{i}/README.md": b"x" for i in range(20)}, (), "at most 16"),
    ({"a/b/adapter_config.json": b"{}"}, (), "nested too deeply"),
]


@pytest.mark.parametrize(("entries", "links", "needle"), BAD_ZIPS)
def test_an_unsafe_adapter_zip_is_refused(client, pack, entries, links, needle):
    resp = upload(client, "adapter", "adapter.zip", samples.zip_bytes(entries, symlinks=links))
    assert resp.status_code == 400, resp.json()
    assert needle in resp.json()["error"]["message"], resp.json()
    nothing_written(pack)


def test_a_zip_bomb_adapter_is_refused(settings, client, pack):
    settings.MEMHUB_PACK_UPLOAD_MAX_BYTES = 100_000
    files = samples.adapter_files()
    files["adapter_model.safetensors"] = b"\x00" * 5_000_000  # deflates to a few kilobytes
    archive = samples.zip_bytes(files)
    assert len(archive) < 100_000
    resp = upload(client, "adapter", "bomb.zip", archive)
    assert resp.status_code == 400 and "expands to more than 100000 bytes" in resp.json()["error"]["message"]
    nothing_written(pack)


def test_adapter_form_input(client, pack, make_pack):
    files = samples.adapter_files()
    resp = client.post(
        UPLOADS,
        {"kind": "adapter", "adapter_config": SimpleUploadedFile("c.json", files["adapter_config.json"])},
        format="multipart",
    )
    assert resp.status_code == 400 and "adapter_model" in resp.json()["error"]["message"]
    resp = upload(client, "adapter", "x.zip", b"not a zip at all")
    assert resp.status_code == 400 and "not a zip" in resp.json()["error"]["message"]
    Pack.objects.filter(pk=pack.pk).update(forms=["plaintext"])
    resp = adapter_upload(client, files)
    assert resp.status_code == 400 and "LoRA form" in resp.json()["error"]["message"]
    nothing_written(pack)


def test_adapter_checks_without_the_api():
    spec = adapter_ingest.check_adapter(samples.adapter_files())
    assert spec.rank == 4 and spec.tensors == 8 and spec.modules[0].endswith("q_proj")
    with pytest.raises(ApplicationError, match=r"lacks adapter_config\.json"):
        adapter_ingest.check_adapter({"adapter_model.safetensors": b""})


# --- covers --------------------------------------------------------------------------------------------


def cover(client, name: str, data: bytes):  # type: ignore[no-untyped-def]
    return client.put(
        f"{BASE}/packs/acme/tips/cover", {"file": SimpleUploadedFile(name, data)}, format="multipart"
    )


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (samples.png_bytes(), "image/png"),
        (samples.jpeg_bytes(), "image/jpeg"),
        (samples.webp_bytes(), "image/webp"),
    ],
)
def test_cover_images_by_content(client, pack, data, mime):
    resp = cover(client, "cover.bin", data)
    assert resp.status_code == 200, resp.json()
    pack.refresh_from_db()
    assert pack.meta["cover"]["mime"] == mime and (data_dir() / pack.cover_image).read_bytes() == data
    assert PackUpload.objects.filter(pack=pack, kind="cover", status="done").count() == 1


def test_bad_covers(settings, client, pack):
    for name, data, status, needle in (
        ("cover.png", b"GIF89a....", 400, "PNG, JPEG or WebP"),
        ("cover.png", b"<svg onload=alert(1)>", 400, "PNG, JPEG or WebP"),
        ("huge.png", samples.png_bytes(width=20000, height=10), 400, "pixels"),
        ("cut.jpg", b"\xff\xd8\xff\xd9", 400, "JPEG"),
    ):
        resp = cover(client, name, data)
        assert resp.status_code == status and needle in resp.json()["error"]["message"], resp.json()
    settings.MEMHUB_COVER_MAX_BYTES = 10
    resp = cover(client, "big.png", samples.png_bytes())
    assert resp.status_code == 413
    pack.refresh_from_db()
    assert pack.cover_image == "" and not PackUpload.objects.filter(pack=pack).exists()
