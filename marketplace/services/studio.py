"""Marketplace writes (studio): publisher profiles and members, listings with price and terms, explicit
pack content (PackItem rows referencing MemCubes), uploads turned into memories, covers, previews.

Authorization is the marketplace's own (`require_publisher_admin`: the `marketplace` and
`memories:write` scopes and a role for the publisher). Pack content is then written with
`vault.services.memory_import_batch`, the vault's system write: a `PublisherMember` who is not a member
of the publisher's organization may author for it although the namespace policy would not let them
write there, and every memory still goes through the vault's own validation, versioning and index
outbox. The version rows and the audit entries name the human who authored them.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from accounts.models import ALL_SCOPES, NamespaceKind, Organization, Role, User
from accounts.services import namespace_create
from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject, SubjectKind
from marketplace.hooks import PackEvent, run_pack_hooks
from marketplace.ingest import adapters as adapter_ingest
from marketplace.ingest import safety
from marketplace.ingest.chunking import MAX_BUDGET, MIN_BUDGET, chunk_sections, default_budget, heading_label
from marketplace.ingest.documents import detect_type, document_sections
from marketplace.ingest.images import check_image
from marketplace.ingest.jsonl import parse_jsonl
from marketplace.models import (
    ALL_FORMS,
    Form,
    Pack,
    PackItem,
    PackUpload,
    PriceModel,
    Publisher,
    PublisherMember,
    PublisherRole,
    UploadKind,
    UploadStatus,
)
from marketplace.services.catalog import catalog_sync_enqueue
from marketplace.services.common import publisher_role, require_marketplace, require_publisher_admin
from vault.models import MemCube, MemoryKind
from vault.services import CONTENT_FIELDS, GOVERNANCE_FIELDS, memory_import_batch

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")

LISTING_FIELDS = ("title", "summary", "description", "readme", "category", "tags", "base_models", "listed")
PRICE_FIELDS = ("price_model", "price_cents", "currency")
TERMS_FIELDS = (
    "licence",
    "seats",
    "seat_limit",
    "licence_days",
    "quota_per_period",
    "forms",
    "federation_allowed",
)
PACK_EDITABLE = (*LISTING_FIELDS, *PRICE_FIELDS, *TERMS_FIELDS)
PUBLISHER_EDITABLE = ("display_name", "bio", "website")
ITEM_FIELDS = frozenset((*CONTENT_FIELDS, *GOVERNANCE_FIELDS))
MAX_PRICE_CENTS = 10_000_000  # 100,000.00 in major units: a typo guard, not a business rule
MAX_SEATS = 100_000
MAX_LIST = 20
MAX_README_CHARS = 200_000
IMPORT_SLICE = 1000
UPLOAD_KINDS = (UploadKind.JSONL, UploadKind.DOCUMENT, UploadKind.ADAPTER)
ORIGINAL = "original"


def _invalid(field: str, message: str, **extra: Any) -> ApplicationError:
    return ApplicationError(message, {"field": field, **extra}, code="invalid")


def _enqueue_catalog(pack: Pack) -> None:
    pack_id = pack.id
    transaction.on_commit(lambda: catalog_sync_enqueue(pack_id))


def _raise_model_errors(exc: ValidationError) -> None:
    """A model's full_clean() failure as the house 400, naming the first field."""
    errors = getattr(exc, "message_dict", None) or {"__all__": exc.messages}
    field, messages = next(iter(errors.items()))
    raise _invalid(field, f"{field}: {messages[0]}" if field != "__all__" else messages[0]) from exc


# --- publishers ----------------------------------------------------------------------------------------


@transaction.atomic
def publisher_create(
    *,
    actor: Subject,
    slug: str,
    display_name: str = "",
    organization: Organization | None = None,
    bio: str = "",
    website: str = "",
) -> Publisher:
    """A publisher for an organization (its owners and admins register it) or, without `organization`,
    a personal one owned by the caller. Its memories live in `publisher:<slug>`."""
    require_marketplace(actor)
    if not isinstance(slug, str) or not SLUG.match(slug):
        raise _invalid(
            "slug",
            "A publisher slug is 1-64 lowercase letters, digits, '-' and '_' (starting with a letter or "
            "digit).",
        )
    if organization is not None:
        if actor.kind != SubjectKind.SYSTEM:
            role = actor.roles.get(organization.pk) if actor.is_user else None
            if role is None:
                raise NotFound("Organization not found.")
            if role not in (Role.OWNER, Role.ADMIN):
                raise PermissionDenied(
                    "Only the organization's owners and admins register it as a publisher."
                )
        if Publisher.objects.filter(organization=organization).exists():
            raise Conflict(f"Organization '{organization.slug}' already has a publisher profile.")
        owner_user = None
    else:
        if not actor.is_user:
            raise PermissionDenied("A personal publisher belongs to a user.")
        # An organization's name is its own: nobody else publishes under it.
        if Organization.objects.filter(slug=slug).exists():
            raise Conflict(f"'{slug}' is an organization's name; choose another publisher slug.")
        owner_user = actor.user
    if Publisher.objects.filter(slug=slug).exists():
        raise Conflict(f"Publisher '{slug}' exists.")
    ns = namespace_create(
        kind=NamespaceKind.PUBLISHER,
        slug=slug,
        organization=organization,
        owner_user=owner_user,
        title=display_name or slug,
    )
    publisher = Publisher(
        slug=slug,
        display_name=(display_name or slug)[:200],
        bio=bio,
        website=website,
        organization=organization,
        owner_user=owner_user,
        namespace=ns,
    )
    try:
        publisher.full_clean(exclude=["namespace", "organization", "owner_user"])
    except ValidationError as exc:
        _raise_model_errors(exc)
    publisher.save()
    audit_record(
        actor=actor,
        operation="publisher.create",
        namespace=ns,
        object_type="publisher",
        object_ids=[str(publisher.id)],
        details={"slug": slug, "organization": getattr(organization, "slug", None)},
    )
    return publisher


@transaction.atomic
def publisher_update(*, actor: Subject, publisher: Publisher, **fields: Any) -> Publisher:
    require_publisher_admin(actor=actor, publisher=publisher, owner=True)
    unknown = sorted(set(fields) - set(PUBLISHER_EDITABLE))
    if unknown:
        raise _invalid(unknown[0], f"'{unknown[0]}' cannot be changed here.")
    if "display_name" in fields and not str(fields["display_name"]).strip():
        raise _invalid("display_name", "display_name must not be empty.")
    for name, value in fields.items():
        setattr(publisher, name, value)
    try:
        publisher.full_clean(exclude=["namespace", "organization", "owner_user"])
    except ValidationError as exc:
        _raise_model_errors(exc)
    publisher.save(update_fields=list(fields) or None)
    audit_record(
        actor=actor,
        operation="publisher.update",
        namespace=publisher.namespace,
        object_type="publisher",
        object_ids=[str(publisher.id)],
        details={"fields": sorted(fields)},
    )
    for pack in publisher.packs.all():
        _enqueue_catalog(pack)
    return publisher


@transaction.atomic
def publisher_member_set(
    *, actor: Subject, publisher: Publisher, username: str, role: str = PublisherRole.PUBLISHER
) -> tuple[PublisherMember, bool]:
    """Add a member who may publish (or change their role); owners only. Returns (member, created)."""
    require_publisher_admin(actor=actor, publisher=publisher, owner=True)
    if role not in PublisherRole.values:
        raise _invalid("role", f"Unknown role '{role}'; expected one of {', '.join(PublisherRole.values)}.")
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"User '{username}' not found.", extra={"field": "username"})
    member, created = PublisherMember.objects.get_or_create(
        publisher=publisher,
        user=user,
        defaults={"role": role, "added_by": actor.user if actor.is_user else None},
    )
    if not created and member.role != role:
        member.role = role
        member.save(update_fields=["role"])
    audit_record(
        actor=actor,
        operation="publisher.member.set",
        namespace=publisher.namespace,
        object_type="publisher_member",
        object_ids=[str(user.pk)],
        details={"username": username, "role": role, "created": created},
    )
    return member, created


@transaction.atomic
def publisher_member_remove(*, actor: Subject, publisher: Publisher, username: str) -> None:
    """Owners remove members; a member may remove themselves."""
    require_marketplace(actor)
    member = PublisherMember.objects.filter(publisher=publisher, user__username=username).first()
    is_self = actor.is_user and actor.user.username == username
    if not is_self:
        require_publisher_admin(actor=actor, publisher=publisher, owner=True)
    if member is None:
        raise NotFound(f"'{username}' is not a member of publisher '{publisher.slug}'.")
    member.delete()
    audit_record(
        actor=actor,
        operation="publisher.member.remove",
        namespace=publisher.namespace,
        object_type="publisher_member",
        object_ids=[str(member.user_id)],
        details={"username": username},
    )


# --- listings, prices and terms ------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str_list(field: str, value: Any, *, max_len: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(field, f"{field} must be a list of strings.")
    if len(value) > MAX_LIST:
        raise _invalid(field, f"{field} takes at most {MAX_LIST} entries.")
    for v in value:
        if not v.strip() or len(v) > max_len or any(ord(c) < 32 for c in v):
            raise _invalid(field, f"{field}: '{v[:40]}' must be 1-{max_len} printable characters.")
    return list(dict.fromkeys(v.strip() for v in value))


def _optional_positive(pack: Pack, field: str, *, maximum: int) -> None:
    value = getattr(pack, field)
    if value is None:
        return
    if not _is_int(value) or not 1 <= value <= maximum:
        raise _invalid(field, f"{field} must be a whole number from 1 to {maximum}, or null for none.")


def _check_pack(pack: Pack) -> None:
    """The listing, price and terms rules, each refusal naming its field (nothing is saved before)."""
    if not isinstance(pack.title, str) or not pack.title.strip():
        raise _invalid("title", "title must not be empty.")
    if len(pack.title) > 200:
        raise _invalid("title", "title takes at most 200 characters.")
    for name, limit in (("summary", 300), ("description", 20_000), ("readme", MAX_README_CHARS)):
        value = getattr(pack, name)
        if not isinstance(value, str) or len(value) > limit:
            raise _invalid(name, f"{name} must be text of at most {limit} characters.")
    if pack.category and not SLUG.match(pack.category):
        raise _invalid("category", "category is a slug: lowercase letters, digits, '-' and '_'.")
    pack.tags = _check_str_list("tags", pack.tags, max_len=64)
    pack.base_models = _check_str_list("base_models", pack.base_models, max_len=200)
    if pack.price_model not in PriceModel.values:
        raise _invalid(
            "price_model",
            f"Unknown price model '{pack.price_model}'; expected one of {', '.join(PriceModel.values)}.",
        )
    if not _is_int(pack.price_cents):
        raise _invalid("price_cents", "price_cents must be a whole number of cents.")
    if pack.price_cents < 0:
        raise _invalid("price_cents", "price_cents must not be negative.")
    if pack.price_cents > MAX_PRICE_CENTS:
        raise _invalid("price_cents", f"price_cents takes at most {MAX_PRICE_CENTS}.")
    if pack.price_model == PriceModel.FREE and pack.price_cents:
        raise _invalid(
            "price_cents", "A free pack has no price: set price_cents to 0, or choose a paid price_model."
        )
    if pack.price_model != PriceModel.FREE and not pack.price_cents:
        raise _invalid(
            "price_cents", f"A {pack.price_model} pack needs a price above 0 (or choose price_model 'free')."
        )
    if not isinstance(pack.currency, str) or not re.fullmatch(r"[a-z]{3}", pack.currency):
        raise _invalid("currency", "currency is a three-letter ISO 4217 code in lowercase (e.g. 'usd').")
    if not isinstance(pack.licence, str) or not pack.licence.strip() or len(pack.licence) > 64:
        raise _invalid("licence", "licence names the terms in 1-64 characters.")
    if not _is_int(pack.seats) or not 1 <= pack.seats <= MAX_SEATS:
        raise _invalid("seats", f"seats (per licence) must be at least 1 and at most {MAX_SEATS}.")
    if pack.seat_limit is not None:
        if not _is_int(pack.seat_limit) or pack.seat_limit < 1:
            raise _invalid("seat_limit", "seat_limit must be at least 1, or null for no cap.")
        if pack.seat_limit < pack.seats_sold:
            raise _invalid(
                "seat_limit",
                f"seat_limit {pack.seat_limit} is below the {pack.seats_sold} seats already sold.",
                seats_sold=pack.seats_sold,
            )
        if pack.seat_limit < pack.seats:
            raise _invalid(
                "seat_limit", f"seat_limit {pack.seat_limit} is below the {pack.seats} seats of one licence."
            )
    _optional_positive(pack, "licence_days", maximum=36_500)
    _optional_positive(pack, "quota_per_period", maximum=2**31 - 1)
    if not isinstance(pack.forms, list) or not all(isinstance(f, str) for f in pack.forms):
        raise _invalid("forms", f"forms is a list of {', '.join(ALL_FORMS)}.")
    unknown = [f for f in pack.forms if f not in ALL_FORMS]
    if unknown:
        raise _invalid("forms", f"Unknown form '{unknown[0]}'; expected some of {', '.join(ALL_FORMS)}.")
    pack.forms = list(dict.fromkeys(pack.forms))
    for name in ("federation_allowed", "listed"):
        if not isinstance(getattr(pack, name), bool):
            raise _invalid(name, f"{name} must be true or false.")


def _save_pack(pack: Pack, *, update_fields: list[str] | None = None) -> None:
    try:
        pack.full_clean(exclude=["publisher"])
    except ValidationError as exc:
        if "__all__" in getattr(exc, "message_dict", {}) and pack._state.adding:
            raise Conflict(f"Pack '{pack.slug}' exists.") from exc
        _raise_model_errors(exc)
    try:
        with transaction.atomic():
            pack.save(update_fields=update_fields)
    except IntegrityError as exc:
        raise Conflict(f"Pack '{pack.slug}' exists.") from exc


@transaction.atomic
def pack_create(
    *,
    actor: Subject,
    publisher: Publisher,
    slug: str,
    title: str,
    description: str = "",
    tags: list[str] | None = None,
    price_cents: int = 0,
    licence: str = "",
    price_model: str | None = None,
    **fields: Any,
) -> Pack:
    """A new pack with its listing, price and terms. Without `price_model`, a price above 0 means a
    one-time price (the older call)."""
    require_publisher_admin(actor=actor, publisher=publisher)
    unknown = sorted(set(fields) - set(PACK_EDITABLE))
    if unknown:
        raise _invalid(unknown[0], f"Unknown pack field '{unknown[0]}'.")
    if not isinstance(slug, str) or not SLUG.match(slug[:80]) or len(slug) > 80:
        raise _invalid("slug", "A pack slug is lowercase letters, digits, '-' and '_' (at most 80).")
    if price_model is None:
        price_model = PriceModel.ONE_TIME if _is_int(price_cents) and price_cents > 0 else PriceModel.FREE
    pack = Pack(
        publisher=publisher,
        slug=slug,
        title=title,
        description=description,
        tags=list(tags or []),
        price_cents=price_cents,
        price_model=price_model,
        licence=licence or "memhub-standard-1.0",
    )
    for name, value in fields.items():
        setattr(pack, name, [] if value is None and name in ("tags", "base_models", "forms") else value)
    _check_pack(pack)
    if Pack.objects.filter(publisher=publisher, slug=slug).exists():
        raise Conflict(f"Pack '{slug}' exists.")
    _save_pack(pack)
    audit_record(
        actor=actor,
        operation="pack.create",
        namespace=publisher.namespace,
        object_type="pack",
        object_ids=[str(pack.id)],
        details={"slug": slug, "price_model": pack.price_model, "price_cents": pack.price_cents},
    )
    _enqueue_catalog(pack)
    return pack


@transaction.atomic
def pack_update(*, actor: Subject, pack: Pack, **fields: Any) -> Pack:
    """Change a pack's listing, price or terms; all the rules are checked again on the result."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    unknown = sorted(set(fields) - set(PACK_EDITABLE))
    if unknown:
        raise _invalid(unknown[0], f"'{unknown[0]}' cannot be changed here.")
    # The row is locked: seats_sold moves under checkouts, and seat_limit is checked against it.
    locked = Pack.objects.select_for_update().select_related("publisher").get(pk=pack.pk)
    was_listed = locked.listed
    before = {name: getattr(locked, name) for name in (*PRICE_FIELDS, *TERMS_FIELDS)}
    for name, value in fields.items():
        setattr(locked, name, [] if value is None and name in ("tags", "base_models", "forms") else value)
    _check_pack(locked)
    if fields:
        _save_pack(locked, update_fields=[*fields, "updated_at"])
        _pack_events(locked, before=before, was_listed=was_listed)
        audit_record(
            actor=actor,
            operation="pack.update",
            namespace=locked.publisher.namespace,
            object_type="pack",
            object_ids=[str(locked.id)],
            details={"fields": sorted(fields)},
        )
        _enqueue_catalog(locked)
    return locked


def _pack_events(pack: Pack, *, before: dict[str, Any], was_listed: bool) -> None:
    """Tell the pack's feed, in this transaction: terms (or price) changed, or the pack was withdrawn."""
    changed = {k: getattr(pack, k) for k, v in before.items() if getattr(pack, k) != v}
    if changed:
        run_pack_hooks(PackEvent(kind="terms.changed", pack_id=str(pack.pk), details=changed))
    if was_listed and not pack.listed:
        run_pack_hooks(PackEvent(kind="pack.withdrawn", pack_id=str(pack.pk)))


# --- content -------------------------------------------------------------------------------------------


def pack_max_items() -> int:
    return int(getattr(settings, "MEMHUB_PACK_MAX_ITEMS", 50_000))


def pack_item_prepare(pack: Pack, raw: Mapping[str, Any], index: int) -> dict[str, Any]:
    """One item as the vault imports it: known fields only, the pack's licence, a source naming the
    publisher and the pack (a caller may add to the source, not change who published it)."""
    if not isinstance(raw, Mapping):
        raise ApplicationError(f"Item {index}: expected an object.", {"index": index})
    if raw.get("provenance_id") is not None:
        raise ApplicationError(
            f"Item {index}: 'provenance_id' is assigned by the server; leave it out.",
            {"index": index, "field": "provenance_id"},
            code="read_only_field",
        )
    unknown = sorted(set(raw) - ITEM_FIELDS - {"provenance_id"})
    if unknown:
        raise ApplicationError(
            f"Item {index}: unknown field '{unknown[0]}'.", {"index": index, "field": unknown[0]}
        )
    item = dict(raw)
    kind = item.get("kind", MemoryKind.PLAINTEXT)
    text = item.get("text", "")
    if kind == MemoryKind.PLAINTEXT and (not isinstance(text, str) or not text.strip()):
        raise ApplicationError(
            f"Item {index}: a plaintext memory needs non-empty 'text'.", {"index": index, "field": "text"}
        )
    if isinstance(text, str) and len(text) > settings.VAULT_MAX_TEXT_CHARS:
        raise ApplicationError(
            f"Item {index}: text is {len(text)} characters; the limit is {settings.VAULT_MAX_TEXT_CHARS}.",
            {"index": index, "field": "text"},
            code="too_large",
        )
    source = item.get("source") or {}
    if not isinstance(source, Mapping):
        raise ApplicationError(
            f"Item {index}: 'source' must be an object.", {"index": index, "field": "source"}
        )
    item["source"] = {**source, "publisher": pack.publisher.slug, "pack": pack.slug}
    item.setdefault("licence", pack.licence)
    item["tags"] = list(item.get("tags") or [])
    return item


def pack_author(
    *, actor: Subject, pack: Pack, items: list[dict[str, Any]], upload: PackUpload | None = None
) -> list[MemCube]:
    """Write the items into the publisher's namespace and make them the pack's content (the caller has
    checked the actor's role). All or nothing: the caller's transaction."""
    if not items:
        raise ApplicationError("Add at least one memory.", {"field": "items"})
    have = pack.items.count()
    if have + len(items) > pack_max_items():
        raise ApplicationError(
            f"The pack would hold {have + len(items)} items; the limit is {pack_max_items()} "
            "(MEMHUB_PACK_MAX_ITEMS).",
            {"field": "items", "limit": pack_max_items()},
            code="too_large",
        )
    prepared = [pack_item_prepare(pack, raw, i) for i, raw in enumerate(items)]
    namespace = pack.publisher.namespace
    cubes: list[MemCube] = []
    reason = f"pack {pack.publisher.slug}/{pack.slug}" + (f" upload {upload.id}" if upload else "")
    for start in range(0, len(prepared), IMPORT_SLICE):
        batch = prepared[start : start + IMPORT_SLICE]
        try:
            cubes.extend(memory_import_batch(actor=actor, namespace=namespace, items=batch, reason=reason))
        except ApplicationError as exc:
            raise ApplicationError(
                f"Items {start}-{start + len(batch) - 1}: {exc.message}",
                exc.extra,
                status=exc.status,
                code=exc.code,
            ) from exc
        except ValidationError as exc:
            raise ApplicationError(f"Items {start}-{start + len(batch) - 1}: {exc.messages[0]}") from exc
    position = (pack.items.aggregate(m=Max("position"))["m"] or 0) + (1 if have else 0)
    PackItem.objects.bulk_create(
        [PackItem(pack=pack, cube=c, upload=upload, position=position + i) for i, c in enumerate(cubes)]
    )
    ids = [str(c.id) for c in cubes]
    # The vault's system write does not audit; this entry names the human who authored the memories.
    audit_record(
        actor=actor,
        operation="memory.create",
        namespace=namespace,
        object_type="memory",
        object_ids=ids,
        memory_kind=cubes[0].kind if len({c.kind for c in cubes}) == 1 else "",
        details={"count": len(ids), "pack": f"{pack.publisher.slug}/{pack.slug}", "via": "pack"},
    )
    audit_record(
        actor=actor,
        operation="pack.items.add",
        namespace=namespace,
        object_type="pack",
        object_ids=[str(pack.id)],
        details={"count": len(ids), "upload": str(upload.id) if upload else None},
    )
    _enqueue_catalog(pack)
    return cubes


@transaction.atomic
def pack_add_memories(*, actor: Subject, pack: Pack, items: list[dict]) -> list[MemCube]:
    """Author memories for a pack: MemCubes in the publisher's namespace, each a `PackItem` of the pack."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    return pack_author(actor=actor, pack=pack, items=list(items))


@transaction.atomic
def pack_item_remove(*, actor: Subject, pack: Pack, cube_id: Any) -> None:
    """Take a memory out of the pack's content (the memory stays in the publisher's namespace, and in
    the releases that already ship it: releases are immutable)."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    item = PackItem.objects.filter(pack=pack, cube_id=cube_id).first()
    if item is None:
        raise NotFound(f"Memory {cube_id} is not an item of this pack.")
    item.delete()
    audit_record(
        actor=actor,
        operation="pack.items.remove",
        namespace=pack.publisher.namespace,
        object_type="memory",
        object_ids=[str(cube_id)],
        details={"pack": f"{pack.publisher.slug}/{pack.slug}"},
    )
    _enqueue_catalog(pack)


# --- uploads -------------------------------------------------------------------------------------------

UploadFile = bytes | IO[bytes]


def inline_max_bytes() -> int:
    """Uploads up to this size are processed in the request; larger ones by the worker."""
    return int(getattr(settings, "MEMHUB_PACK_INLINE_BYTES", 1024 * 1024))


def _options(kind: str, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    raw = dict(raw or {})
    allowed = {"tags", "name"} | ({"chunk_tokens"} if kind == UploadKind.DOCUMENT else set())
    if kind == UploadKind.ADAPTER:
        allowed |= {"base_model_fingerprint"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _invalid(unknown[0], f"Option '{unknown[0]}' does not apply to a {kind} upload.")
    out: dict[str, Any] = {}
    if "tags" in raw and raw["tags"] is not None:
        out["tags"] = _check_str_list("tags", raw["tags"], max_len=64)
    if raw.get("name"):
        name = raw["name"]
        if not isinstance(name, str) or len(name) > 200 or any(ord(c) < 32 for c in name):
            raise _invalid("name", "name takes at most 200 printable characters.")
        out["name"] = name
    if raw.get("chunk_tokens") is not None:
        budget = raw["chunk_tokens"]
        if not _is_int(budget) or not MIN_BUDGET <= budget <= MAX_BUDGET:
            raise _invalid("chunk_tokens", f"chunk_tokens must be between {MIN_BUDGET} and {MAX_BUDGET}.")
        out["chunk_tokens"] = budget
    if raw.get("base_model_fingerprint"):
        fp = raw["base_model_fingerprint"]
        if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{64}", fp):
            raise _invalid("base_model_fingerprint", "base_model_fingerprint is 64 lowercase hex digits.")
        out["base_model_fingerprint"] = fp
    return out


def _read_files(kind: str, files: Mapping[str, UploadFile]) -> tuple[str, dict[str, bytes]]:
    """(filename, {stored name: bytes}) of an upload, bounded by the cap in total."""
    limit = safety.upload_max_bytes()
    if kind == UploadKind.ADAPTER:
        names = set(files)
        if names == {"file"}:
            content = files["file"]
            filename = safety.safe_filename(getattr(content, "name", "") or "adapter.zip")
            data = safety.read_capped(content, field="file", limit=limit)
            if not data.startswith(b"PK\x03\x04"):
                raise ApplicationError(
                    "An adapter upload is one zip ('file') or two files ('adapter_config' and "
                    "'adapter_model'); this 'file' is not a zip archive.",
                    {"field": "file"},
                    code="invalid_adapter",
                )
            return filename, adapter_ingest.read_zip(data, max_total=limit)
        if names != {"adapter_config", "adapter_model"}:
            raise _invalid(
                "file",
                "An adapter upload is one zip ('file') or two files ('adapter_config' and 'adapter_model').",
            )
        config = safety.read_capped(files["adapter_config"], field="adapter_config", limit=limit)
        weights = safety.read_capped(files["adapter_model"], field="adapter_model", limit=limit - len(config))
        return adapter_ingest.WEIGHTS, {adapter_ingest.CONFIG: config, adapter_ingest.WEIGHTS: weights}
    if set(files) != {"file"}:
        raise _invalid("file", f"A {kind} upload is one file, sent as 'file'.")
    content = files["file"]
    filename = safety.safe_filename(getattr(content, "name", "") or f"upload.{kind}")
    return filename, {ORIGINAL: safety.read_capped(content, field="file", limit=limit)}


def _precheck(kind: str, filename: str, data: dict[str, bytes]) -> dict[str, Any]:
    """The checks cheap enough to answer in the request, whatever the size: type, structure."""
    if kind == UploadKind.ADAPTER:
        spec = adapter_ingest.check_adapter(data)
        return {"adapter": spec.as_meta()}
    if kind == UploadKind.DOCUMENT:
        return {"document_type": detect_type(data[ORIGINAL], filename)}
    if not data[ORIGINAL].strip():
        raise ApplicationError("The JSONL file holds no memories.", {"field": "file"}, code="invalid_line")
    return {}


def _upload_dir(upload: PackUpload) -> Path:
    return safety.market_dir("uploads", str(upload.pack_id), str(upload.id))


def _store(upload: PackUpload, data: dict[str, bytes]) -> None:
    target = _upload_dir(upload)
    for name, content in data.items():
        safety.write_atomic(target / name, content)
    upload.path = safety.relative_to_data(target)


def _load(upload: PackUpload) -> dict[str, bytes]:
    root = safety.resolve_stored(upload.path)
    names = (
        (adapter_ingest.CONFIG, adapter_ingest.WEIGHTS) if upload.kind == UploadKind.ADAPTER else (ORIGINAL,)
    )
    try:
        files = {n: (root / n).read_bytes() for n in names}
        if upload.kind == UploadKind.ADAPTER and (root / adapter_ingest.SIDECAR).is_file():
            files[adapter_ingest.SIDECAR] = (root / adapter_ingest.SIDECAR).read_bytes()
        return files
    except OSError as exc:
        raise ApplicationError(
            f"The stored upload cannot be read ({exc.strerror}).", code="upload_missing"
        ) from exc


@transaction.atomic
def pack_upload_create(
    *,
    actor: Subject,
    pack: Pack,
    kind: str,
    files: Mapping[str, UploadFile],
    options: Mapping[str, Any] | None = None,
    inline: bool | None = None,
) -> PackUpload:
    """Check an upload and record it. Small uploads (`MEMHUB_PACK_INLINE_BYTES`, or `inline=True`) are
    turned into memories now: bad content is a 400 and nothing at all is written. Larger ones answer
    `pending` after the cheap checks and are processed by the worker (`marketplace.tasks.ingest`), which
    records `failed` with the error, or `done` with the result, on the upload."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    if kind not in UPLOAD_KINDS:
        raise _invalid("kind", f"Unknown upload kind '{kind}'; expected one of {', '.join(UPLOAD_KINDS)}.")
    opts = _options(kind, options)
    filename, data = _read_files(kind, files)
    checked = _precheck(kind, filename, data)
    if kind == UploadKind.ADAPTER and pack.forms and Form.LORA not in pack.forms:
        raise _invalid(
            "forms", "This pack's terms do not offer the LoRA form; add 'lora' to its forms first."
        )
    size = sum(len(v) for v in data.values())
    digest = safety.sha256_hex(b"".join(data[n] for n in sorted(data)))
    first = getattr(files.get("file") or files.get("adapter_model"), "content_type", "") or ""
    upload = PackUpload(
        pack=pack,
        uploaded_by=actor.user if actor.is_user else None,
        kind=kind,
        filename=filename,
        content_type=str(first)[:100],
        size_bytes=size,
        sha256=digest,
        options={**opts, "scopes": sorted(actor.scopes) if actor.is_user else list(ALL_SCOPES)},
        result=checked,
    )
    upload.id = uuid.uuid4()
    try:
        _store(upload, data)
        upload.full_clean(exclude=["pack", "uploaded_by"])
        upload.save()
        audit_record(
            actor=actor,
            operation="pack.upload",
            namespace=pack.publisher.namespace,
            object_type="pack_upload",
            object_ids=[str(upload.id)],
            details={
                "pack": str(pack.id),
                "kind": kind,
                "filename": filename,
                "bytes": size,
                "sha256": digest,
            },
        )
        run_now = inline if inline is not None else size <= inline_max_bytes()
        if run_now:
            with transaction.atomic():
                _ingest(upload=upload, actor=actor, data=data)
        else:
            upload_id = upload.id
            transaction.on_commit(lambda: _enqueue_ingest(upload_id))
    except BaseException:
        shutil.rmtree(_upload_dir(upload), ignore_errors=True)
        raise
    return upload


def _enqueue_ingest(upload_id: Any) -> None:
    from marketplace.tasks.ingest import pack_upload_process_task

    pack_upload_process_task.delay(str(upload_id))


def _ingest(*, upload: PackUpload, actor: Subject, data: dict[str, bytes]) -> None:
    """Turn a checked upload into pack items; raises ApplicationError (nothing written) on bad content."""
    pack = upload.pack
    opts = upload.options
    tags = list(opts.get("tags") or [])
    result: dict[str, Any] = dict(upload.result or {})
    if upload.kind == UploadKind.JSONL:
        remaining = max(0, pack_max_items() - pack.items.count())
        memories = parse_jsonl(data[ORIGINAL], max_items=max(1, remaining))
        items = []
        for line, memory in memories:
            memory["tags"] = list(dict.fromkeys([*(memory.get("tags") or []), *tags]))
            memory["source"] = {
                **(memory.get("source") or {}),
                "file": upload.filename,
                "line": line,
                "upload": str(upload.id),
            }
            items.append(memory)
        cubes = pack_author(actor=actor, pack=pack, items=items, upload=upload)
        result.update({"memories": len(cubes), "lines": len(memories)})
    elif upload.kind == UploadKind.DOCUMENT:
        doc_type, sections = document_sections(data[ORIGINAL], upload.filename)
        budget = int(opts.get("chunk_tokens") or default_budget())
        chunks = chunk_sections(sections, budget=budget)
        cap = min(int(getattr(settings, "MEMHUB_UPLOAD_MAX_CHUNKS", 10_000)), pack_max_items())
        if len(chunks) > cap:
            raise ApplicationError(
                f"'{upload.filename}' makes {len(chunks)} chunks; at most {cap} per upload.",
                {"field": "file", "chunks": len(chunks)},
                code="too_large",
            )
        items = []
        for i, chunk in enumerate(chunks):
            source: dict[str, Any] = {
                "file": upload.filename,
                "upload": str(upload.id),
                "section": list(chunk.heading_path),
                "section_path": heading_label(chunk.heading_path),
                "chunk": i,
            }
            if chunk.page is not None:
                source["page"] = chunk.page
            title = chunk.heading_path[-1] if chunk.heading_path else upload.filename
            if chunk.page is not None:
                title = f"{title} (page {chunk.page})"
            items.append(
                {
                    "text": chunk.text,
                    "title": title[:300],
                    "tags": tags,
                    "source": source,
                    "metadata": {"tokens": chunk.tokens, "document_type": doc_type},
                }
            )
        cubes = pack_author(actor=actor, pack=pack, items=items, upload=upload)
        pages = sorted({c.page for c in chunks if c.page is not None})
        result.update(
            {
                "document_type": doc_type,
                "sections": len(sections),
                "chunks": len(chunks),
                "memories": len(cubes),
                "token_budget": budget,
                **({"pages": pages[-1]} if pages else {}),
            }
        )
    else:
        cube = _adapter_item(upload=upload, actor=actor, data=data)
        result.update({"memories": 1, "blob_sha256": cube.blob_sha256})
    upload.status = UploadStatus.DONE
    upload.error = ""
    upload.result = result
    upload.finished_at = timezone.now()
    upload.save(update_fields=["status", "error", "result", "finished_at"])


def _adapter_item(*, upload: PackUpload, actor: Subject, data: dict[str, bytes]) -> MemCube:
    spec = adapter_ingest.check_adapter(data)
    weights_sha = safety.sha256_hex(data[adapter_ingest.WEIGHTS])
    # Content-addressed: the same weights uploaded twice are stored once.
    final = safety.market_dir("adapters", weights_sha)
    kept = [n for n in (adapter_ingest.CONFIG, adapter_ingest.WEIGHTS, adapter_ingest.SIDECAR) if n in data]
    for name in kept:
        if not (final / name).is_file():
            safety.write_atomic(final / name, data[name])
    fingerprint = (
        upload.options.get("base_model_fingerprint")
        or spec.sidecar.get("base_model_fingerprint")
        or f"name:{spec.base_model}"[:128]
    )
    name = upload.options.get("name") or f"LoRA adapter for {spec.base_model}"
    item = {
        "kind": MemoryKind.PARAMETER,
        "title": name[:300],
        "text": (
            f"LoRA adapter (r={spec.rank}, alpha={spec.alpha:g}) for {spec.base_model}, adapting "
            f"{', '.join(spec.target_modules)}."
        ),
        "tags": list(upload.options.get("tags") or []),
        "blob_uri": f"file://{final}",
        "blob_sha256": weights_sha,
        "model_fingerprint": fingerprint,
        "blob_meta": {
            **spec.as_meta(),
            "path": safety.relative_to_data(final),
            "files": {n: {"bytes": len(data[n]), "sha256": safety.sha256_hex(data[n])} for n in kept},
        },
        "source": {"file": upload.filename, "upload": str(upload.id)},
    }
    return pack_author(actor=actor, pack=upload.pack, items=[item], upload=upload)[0]


def pack_upload_process(*, upload_id: Any) -> PackUpload:
    """The worker's side of a pending upload (idempotent: an upload already claimed, done or failed is
    returned as it is). Bad content marks the upload `failed` with the message; nothing else is written."""
    with transaction.atomic():
        upload = (
            PackUpload.objects.select_for_update(of=("self",))
            .select_related("pack__publisher__namespace", "uploaded_by")
            .filter(pk=upload_id)
            .first()
        )
        if upload is None:
            raise NotFound(f"Upload {upload_id} not found.")
        if upload.status != UploadStatus.PENDING:
            return upload
        upload.status = UploadStatus.PROCESSING
        upload.save(update_fields=["status"])
    try:
        with transaction.atomic():
            if upload.uploaded_by is None:
                raise PermissionDenied("The uploader's account is gone.")
            actor = Subject(
                user=upload.uploaded_by,
                scopes=frozenset(upload.options.get("scopes") or ()),
            ).with_context(operation="pack.upload")
            # Still allowed? A member removed since the upload no longer authors for the publisher.
            require_publisher_admin(actor=actor, publisher=upload.pack.publisher)
            _ingest(upload=upload, actor=actor, data=_load(upload))
    except ApplicationError as exc:
        upload.status = UploadStatus.FAILED
        upload.error = exc.message
        upload.result = {
            **(upload.result or {}),
            "error": {"code": exc.code, "message": exc.message, **exc.extra},
        }
        upload.finished_at = timezone.now()
        upload.save(update_fields=["status", "error", "result", "finished_at"])
    return upload


# --- cover ---------------------------------------------------------------------------------------------


@transaction.atomic
def pack_cover_set(*, actor: Subject, pack: Pack, file: UploadFile) -> Pack:
    """Check and store a cover image (PNG, JPEG or WebP by content); the pack's `cover_image` is its
    path relative to the data directory."""
    require_publisher_admin(actor=actor, publisher=pack.publisher)
    data = safety.read_capped(file, field="file")
    info = check_image(data)
    digest = safety.sha256_hex(data)
    target = safety.market_dir("covers", str(pack.id), f"{digest}.{info.ext}")
    if not target.is_file():
        safety.write_atomic(target, data)
    locked = Pack.objects.select_for_update().select_related("publisher").get(pk=pack.pk)
    locked.cover_image = safety.relative_to_data(target)
    locked.meta = {
        **(locked.meta or {}),
        "cover": {"mime": info.mime, "width": info.width, "height": info.height},
    }
    locked.save(update_fields=["cover_image", "meta", "updated_at"])
    PackUpload.objects.create(
        pack=locked,
        uploaded_by=actor.user if actor.is_user else None,
        kind=UploadKind.COVER,
        filename=safety.safe_filename(getattr(file, "name", "") or f"cover.{info.ext}"),
        content_type=info.mime,
        size_bytes=len(data),
        sha256=digest,
        path=locked.cover_image,
        status=UploadStatus.DONE,
        result={"mime": info.mime, "width": info.width, "height": info.height},
        finished_at=timezone.now(),
    )
    audit_record(
        actor=actor,
        operation="pack.cover",
        namespace=locked.publisher.namespace,
        object_type="pack",
        object_ids=[str(locked.id)],
        details={"sha256": digest, "mime": info.mime},
    )
    _enqueue_catalog(locked)
    return locked


# --- preview -------------------------------------------------------------------------------------------


def pack_item_preview(*, actor: Subject, pack: Pack, cube_id: Any) -> dict[str, Any]:
    """A pack memory exactly as a buyer's installation will hold it: its current text (de-identified by
    any redaction or pseudonymisation already applied), the provenance an installed copy carries, and
    the watermark transform of `governance.watermarking` applied for a preview installation id (no
    assignment is recorded, no canaries are added). Publisher members only."""
    from governance.models import WatermarkAssignment
    from governance.watermarking import watermark_embed

    require_publisher_admin(actor=actor, publisher=pack.publisher, write=False)
    cube = MemCube.objects.filter(pack_items__pack=pack, pk=cube_id).select_related("namespace").first()
    if cube is None:
        raise NotFound(f"Memory {cube_id} is not an item of this pack.")
    release = pack.releases.order_by("-created_at").first()
    preview_id = f"preview-{pack.id.hex[:12]}"
    item: dict[str, Any] = {
        "kind": cube.kind,
        "text": cube.text,
        "title": cube.title,
        "tags": cube.tags,
        "metadata": cube.metadata,
        # What pack_install adds to an installed copy's source.
        "source": {**cube.source, "release": release.version if release else "", "installation": preview_id},
        "semantic_type": cube.semantic_type,
        "language": cube.language,
        "entities": cube.entities,
        "valid_from": cube.valid_from,
        "valid_to": cube.valid_to,
        "licence": pack.licence,
    }
    # An unsaved assignment: the transform is keyed exactly as an install's, but nothing is recorded.
    assignment = WatermarkAssignment(
        watermark_id=preview_id, source_namespace=pack.publisher.namespace, canaries=0
    )
    marked = watermark_embed(assignment=assignment, items=[item])[0]
    return {
        **marked,
        "id": cube.id,
        "provenance_id": cube.provenance_id,
        "version": cube.version,
        "content_sha256": cube.content_sha256,
        "watermark_id": preview_id,
        "original_text": cube.text,
        "watermarked": marked.get("text") != cube.text,
        "blob_sha256": cube.blob_sha256,
        "model_fingerprint": cube.model_fingerprint,
        "role": publisher_role(actor=actor, publisher=pack.publisher),
    }
