"""Reads from the vault. Every read is restricted to the namespaces the policy lets the caller read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.query import ModelIterable

from accounts.models import Namespace, NamespaceKind, User
from core.errors import ApplicationError, NotFound
from core.exceptions import deny_target
from governance.policy import (
    Action,
    Subject,
    authorize,
    namespace_actions,
    readable_memories_q,
    readable_namespaces_q,
)
from vault.filters import MemoryFilter, parse_filters
from vault.hooks import use_record, use_refusals
from vault.models import (
    LIVE_STATES,
    IndexOutbox,
    MemCube,
    MemCubeVersion,
    MemoryState,
    VersionOperation,
)

SEARCH_MODES = ("hybrid", "dense", "sparse")
SEARCH_MAX_FETCH = 1_000  # the index's own top_k limit


def namespaces_readable(*, actor: Subject) -> QuerySet[Namespace]:
    return Namespace.objects.filter(readable_namespaces_q(actor)).order_by("key")


def namespaces_resolve(
    *, actor: Subject, keys: list[str] | None, action: Action = Action.READ
) -> list[Namespace]:
    """Named namespaces (each must exist and be readable: else 404), or every readable one."""
    if not keys:
        return list(namespaces_readable(actor=actor))
    found = {ns.key: ns for ns in Namespace.objects.filter(key__in=keys)}
    result = []
    for key in dict.fromkeys(keys):
        ns = found.get(key)
        if ns is None:
            raise NotFound(f"Namespace '{key}' not found.")
        authorize(subject=actor, action=action, namespace=ns)
        result.append(ns)
    return result


def _visible(actor: Subject) -> QuerySet[MemCube]:
    """Memories the policy lets the caller read: its namespaces' and those shared with it by ACL."""
    return MemCube.objects.filter(readable_memories_q(actor)).select_related("namespace", "owner")


def memories_visible(*, actor: Subject) -> QuerySet[MemCube]:
    return _visible(actor)


# --- licensed (installation) memory: checked and metered where it is used -----------------------------


def licensed_use_filter(
    *, actor: Subject, namespaces: list[Namespace], explicit: bool, form: str = "plaintext"
) -> tuple[list[Namespace], list[dict[str, Any]]]:
    """The namespaces the caller may use now, and those refused (key, code, message). A refused
    namespace the caller named explicitly is its 402; a default read leaves it out and says so, unless
    nothing is left, when the first refusal is raised (an empty answer would hide why)."""
    refusals = use_refusals(actor=actor, namespaces=namespaces, form=form)
    if not refusals:
        return namespaces, []
    if explicit:
        raise next(refusals[ns.pk] for ns in namespaces if ns.pk in refusals)
    kept = [ns for ns in namespaces if ns.pk not in refusals]
    if not kept:
        raise next(iter(refusals.values()))
    refused = [
        {
            "namespace": ns.key,
            "code": getattr(refusals[ns.pk], "code", "refused"),
            "message": getattr(refusals[ns.pk], "message", str(refusals[ns.pk])),
        }
        for ns in namespaces
        if ns.pk in refusals
    ]
    return kept, refused


def licensed_meter(*, actor: Subject, cubes: list[MemCube]) -> list[MemCube]:
    """Count one retrieval per installation memory returned, and keep only those the licences' quotas
    granted (a quota running out mid-page ends that namespace's share of the page). Order is kept."""
    counts: dict[Any, int] = {}
    for cube in cubes:
        if cube.namespace.kind == NamespaceKind.INSTALLATION:
            counts[cube.namespace_id] = counts.get(cube.namespace_id, 0) + 1
    if not counts:
        return cubes
    granted = use_record(actor=actor, counts=counts, kind="retrievals")
    kept = []
    for cube in cubes:
        if cube.namespace_id in counts:
            if granted.get(cube.namespace_id, 0) <= 0:
                continue
            granted[cube.namespace_id] -= 1
        kept.append(cube)
    return kept


class _MeteredQuerySet(QuerySet):  # type: ignore[type-arg]
    """A memory list that meters the rows it actually returns: the page a caller fetches, not the whole
    list (a count or an `exists()` meters nothing)."""

    _meter_actor: Subject | None = None

    def _clone(self) -> Any:
        clone = super()._clone()  # type: ignore[misc]
        clone._meter_actor = self._meter_actor
        return clone

    def _fetch_all(self) -> None:
        fresh = self._result_cache is None
        super()._fetch_all()  # type: ignore[misc]
        if fresh and self._meter_actor is not None and self._iterable_class is ModelIterable:
            rows: list[Any] = list(self._result_cache or [])
            self._result_cache = licensed_meter(actor=self._meter_actor, cubes=rows)  # type: ignore[assignment]


def _metered(qs: QuerySet[MemCube], actor: Subject) -> QuerySet[MemCube]:
    hints = qs._hints  # type: ignore[attr-defined]
    metered: Any = _MeteredQuerySet(model=qs.model, query=qs.query.chain(), using=qs.db, hints=hints)
    metered._prefetch_related_lookups = qs._prefetch_related_lookups  # type: ignore[attr-defined]
    metered._meter_actor = actor
    return metered


def _refused_readable(actor: Subject) -> list[Any]:
    """Ids of the caller's installation namespaces it may not use now (for reads across namespaces)."""
    installed = list(namespaces_readable(actor=actor).filter(kind=NamespaceKind.INSTALLATION))
    return list(use_refusals(actor=actor, namespaces=installed))


def _acl_namespaces(actor: Subject, exclude: list[Namespace]) -> list[Namespace]:
    """Namespaces the caller cannot read that hold memories shared with it one by one."""
    shared = MemCube.objects.filter(readable_memories_q(actor)).exclude(namespace__in=exclude)
    return list(Namespace.objects.filter(pk__in=shared.values("namespace_id")))


def memory_get(*, actor: Subject, cube_id: Any, include_deleted: bool = False) -> MemCube:
    qs = _visible(actor).filter(pk=cube_id)
    if not include_deleted:
        qs = qs.exclude(state=MemoryState.DELETED)
    cube = qs.first()
    if cube is None:
        raise deny_target(
            NotFound("Memory not found."),
            namespace=_hidden_namespace(actor, cube_id),
            object_type="memory",
            object_ids=[cube_id],
        )
    if cube.namespace.kind == NamespaceKind.INSTALLATION:
        # Asking for one memory by id names its namespace: a licence that does not cover it is a 402.
        licensed_use_filter(actor=actor, namespaces=[cube.namespace], explicit=True)
        if not licensed_meter(actor=actor, cubes=[cube]):
            # The quota ran out between the check and the count (a concurrent request took the last).
            licensed_use_filter(actor=actor, namespaces=[cube.namespace], explicit=True)
            raise ApplicationError(
                "The licence's retrieval quota is used up.", status=402, code="quota_exhausted"
            )
    return cube


def _hidden_namespace(actor: Subject, cube_id: Any) -> Namespace | None:
    """The namespace of a memory that exists but that the actor may not see: the refusal is audited in
    that namespace's log, so its owners learn of the attempt (the caller still gets a plain 404)."""
    if _visible(actor).filter(pk=cube_id).exists():
        return None  # visible to the caller, only deleted: nothing was refused
    hidden = MemCube.objects.filter(pk=cube_id).select_related("namespace").first()
    return hidden.namespace if hidden else None


def _owner_ids(usernames: list[str]) -> list[Any]:
    return list(User.objects.filter(username__in=usernames).values_list("pk", flat=True))


def _tags_q(tag: str) -> Q:
    if connection.vendor == "postgresql":
        return Q(tags__contains=[tag])
    # SQLite has no JSON containment; match the JSON-encoded string exactly, quotes included.
    import json

    return Q(tags__icontains=json.dumps(tag))


def apply_filter(qs: QuerySet[MemCube], f: MemoryFilter) -> QuerySet[MemCube]:
    if f.tags_any:
        any_q = Q()
        for tag in f.tags_any:
            any_q |= _tags_q(tag)
        qs = qs.filter(any_q)
    for tag in f.tags_all:
        qs = qs.filter(_tags_q(tag))
    if f.kinds:
        qs = qs.filter(kind__in=f.kinds)
    if f.states:
        qs = qs.filter(state__in=f.states)
    if f.semantic_types:
        qs = qs.filter(semantic_type__in=f.semantic_types)
    if f.owners:
        qs = qs.filter(owner_id__in=_owner_ids(f.owners))
    if f.created_after:
        qs = qs.filter(created_at__gte=f.created_after)
    if f.created_before:
        qs = qs.filter(created_at__lt=f.created_before)
    if f.valid_at:
        qs = qs.filter(Q(valid_from__isnull=True) | Q(valid_from__lte=f.valid_at)).filter(
            Q(valid_to__isnull=True) | Q(valid_to__gt=f.valid_at)
        )
    return qs


def memory_list(
    *,
    actor: Subject,
    namespace_keys: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    shared_with_me: bool = False,
) -> QuerySet[MemCube]:
    """The caller's memories, newest first. Memories other users shared one by one (ACL) are included
    only when asked for (`shared_with_me`): nobody can push memory into a user's lists unasked."""
    f = parse_filters(filters)
    qs = _visible(actor)
    if namespace_keys:
        named = namespaces_resolve(actor=actor, keys=namespace_keys)
        licensed_use_filter(actor=actor, namespaces=named, explicit=True)
        qs = qs.filter(namespace__in=named)
    else:
        if not shared_with_me:
            qs = qs.filter(namespace__in=namespaces_readable(actor=actor))
        refused = _refused_readable(actor)
        if refused:  # installed packs whose licence does not cover this use now drop out of the list
            qs = qs.exclude(namespace_id__in=refused)
    if not f.states:
        qs = qs.exclude(state=MemoryState.DELETED)
    elif MemoryState.DELETED in f.states:
        # Deleted text is history: listed only in the namespaces the caller may write.
        holding = Namespace.objects.filter(pk__in=qs.filter(state=MemoryState.DELETED).values("namespace_id"))
        writable = [ns.pk for ns in holding if history_visible(actor=actor, namespace=ns)]
        qs = qs.exclude(Q(state=MemoryState.DELETED) & ~Q(namespace_id__in=writable))
    # Installed memories count against their licence as they are fetched (the page, not the list).
    return _metered(apply_filter(qs, f).order_by("-created_at", "id"), actor)


def history_visible(*, actor: Subject, namespace: Namespace) -> bool:
    """Superseded and deleted text is for those who may write the namespace (they could restore it);
    a reader sees what the memory says now, nothing it said before."""
    return Action.WRITE in namespace_actions(actor, namespace)


def memories_purged(*, namespace: Namespace) -> set[str]:
    """Ids of the namespace's erased memories: nothing may bring their content (a tombstone) back."""
    return {
        str(cid)
        for cid in MemCubeVersion.objects.filter(
            cube__namespace=namespace, operation=VersionOperation.PURGE
        ).values_list("cube_id", flat=True)
    }


def memory_history(*, actor: Subject, cube_id: Any) -> QuerySet[MemCubeVersion]:
    """Every version for the namespace's writers; the current version only for readers (a reader of a
    deleted memory finds nothing)."""
    cube = memory_get(actor=actor, cube_id=cube_id, include_deleted=True)
    versions = MemCubeVersion.objects.filter(cube=cube).select_related("actor").order_by("version")
    if history_visible(actor=actor, namespace=cube.namespace):
        return versions
    if cube.state == MemoryState.DELETED:
        raise NotFound("Memory not found.")
    return versions.filter(version=cube.version)


def memory_provenance(*, actor: Subject, provenance_id: Any) -> list[MemCube]:
    """Every memory the caller can read that descends from one origin (across versions and installs)."""
    qs = _visible(actor).filter(provenance_id=provenance_id)
    refused = _refused_readable(actor)
    if refused:
        qs = qs.exclude(namespace_id__in=refused)
    cubes = [
        c
        for c in qs.order_by("created_at")
        # deleted text is history: only for those who may write its namespace
        if c.state != MemoryState.DELETED or history_visible(actor=actor, namespace=c.namespace)
    ]
    cubes = licensed_meter(actor=actor, cubes=cubes)
    if not cubes:
        raise NotFound("No memory with that provenance id is visible to you.")
    return cubes


@dataclass
class SearchResult:
    memory: MemCube
    score: float
    rank: int
    dense_score: float | None = None
    sparse_score: float | None = None


@dataclass
class SearchResponse:
    results: list[SearchResult]
    mode: str
    namespaces: list[str]
    took_ms: float
    stats: dict[str, Any] = field(default_factory=dict)


# An index field a refused value came from -> the search input the caller sent it in.
_SEARCH_INPUT_FOR = {
    "tag": "filters.tags",
    "tags_any": "filters.tags",
    "tags_all": "filters.tags",
    "semantic_type": "filters.semantic_type",
    "semantic_types": "filters.semantic_type",
    "kind": "filters.kind",
    "kinds": "filters.kind",
    "state": "filters.state",
    "states": "filters.state",
    "owner": "filters.owner",
    "owners": "filters.owner",
    "created_from_ts": "filters.created_after",
    "created_to_ts": "filters.created_before",
    "valid_at_ts": "filters.valid_at",
}


def _index_filter(namespaces: list[Namespace], f: MemoryFilter, owner_ids: list[Any] | None = None) -> Any:
    from vault.index import IndexFilter

    def ts(value: Any) -> int | None:
        return int(value.timestamp()) if value else None

    states = [s for s in (f.states or list(LIVE_STATES)) if s in LIVE_STATES]
    return IndexFilter(
        namespaces=[str(ns.id) for ns in namespaces],
        kinds=f.kinds or None,
        states=states,
        owners=[str(o) for o in owner_ids] if owner_ids else None,
        tags_any=f.tags_any or None,
        tags_all=f.tags_all or None,
        semantic_types=f.semantic_types or None,
        created_from_ts=ts(f.created_after),
        created_to_ts=ts(f.created_before),
        valid_at_ts=ts(f.valid_at),
    )


def _refused(exc: Any) -> ApplicationError:
    name = _SEARCH_INPUT_FOR.get(exc.field, exc.field)
    if exc.field.endswith("_ts"):  # the index keeps epoch seconds; the caller gave a date
        message = f"'{name}' must be 1970-01-01T00:00:00Z or later (the index's range)."
    else:  # the index's message, in the caller's words
        message = f"'{name}': {str(exc).replace(exc.field, 'value', 1)}."
    return ApplicationError(message, extra={"field": name}, code="invalid_filter")


def memory_search(
    *,
    actor: Subject,
    query: str,
    namespace_keys: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    top_k: int = 10,
    mode: str | None = None,
    dense_weight: float | None = None,
    min_score: float | None = None,
    shared_with_me: bool = False,
    meter: bool = True,
) -> SearchResponse:
    """Hybrid retrieval (dense + BM25 + metadata filters, fused) within what the caller may read.

    The index only proposes candidates; every hit is re-checked against the database (the source of
    truth) for visibility, state and filters before it is returned, and canaries are never returned.
    Scores lie in [0, 1] and are comparable across queries; `min_score` drops weaker hits. A value the
    index cannot filter on is a 400 naming the filter; an unavailable index is a 503, never a 500.

    Installed packs are searched only while their licence covers it: a named one that does not is a
    402; in a search of every namespace it is left out and listed in `stats["refused"]`. Each installed
    memory returned counts one retrieval on its licence (`meter=False`: the caller meters what it uses,
    as chat does), and a quota running out ends that pack's share of the results.
    """
    from vault.index import IndexValueError, build_filter_expr, get_index

    started = time.perf_counter()
    mode = mode or settings.VAULT_SEARCH_MODE
    if mode not in SEARCH_MODES:
        raise ApplicationError(f"Unknown search mode '{mode}'; expected one of {', '.join(SEARCH_MODES)}.")
    if not query or not query.strip():
        raise ApplicationError("'query' must not be empty.")
    if not 1 <= top_k <= settings.VAULT_SEARCH_MAX_TOP_K:
        raise ApplicationError(f"'top_k' must be between 1 and {settings.VAULT_SEARCH_MAX_TOP_K}.")
    if min_score is not None and not (isinstance(min_score, int | float) and 0.0 <= min_score <= 1.0):
        raise ApplicationError("'min_score' must be a number from 0 to 1.", extra={"field": "min_score"})
    f = parse_filters(filters)
    if f.states and not set(f.states) & set(LIVE_STATES):
        raise ApplicationError(
            "Search covers live memories only; list archived or expired ones instead.", code="invalid_filter"
        )
    namespaces = namespaces_resolve(actor=actor, keys=namespace_keys)
    namespaces, refused = licensed_use_filter(
        actor=actor, namespaces=namespaces, explicit=bool(namespace_keys)
    )
    # Memories shared by ACL live in namespaces the caller cannot read: search those partitions too and
    # let the database re-check below keep only the shared memories.
    # Only when asked for: an ACL grant must not push memory into someone's results unasked.
    acl_namespaces = _acl_namespaces(actor, namespaces) if shared_with_me and not namespace_keys else []
    owner_ids = _owner_ids(f.owners) if f.owners else None
    searched = namespaces + acl_namespaces
    index_filter = _index_filter(searched, f, owner_ids) if searched else None
    if index_filter is not None:
        try:
            build_filter_expr(index_filter)  # the index's own rules, before anything is searched
        except IndexValueError as exc:
            raise _refused(exc) from exc
    # No namespace to search, or only owners nobody is called: nothing can match (as in lists).
    if index_filter is None or (f.owners and not owner_ids):
        return SearchResponse([], mode, [ns.key for ns in namespaces], 0.0, {"refused": refused})

    fetch_k = min(top_k * 2 + 5, settings.VAULT_SEARCH_MAX_TOP_K * 2)
    if acl_namespaces:
        fetch_k = settings.VAULT_SEARCH_MAX_TOP_K * 2
    index = get_index()
    results: list[SearchResult] = []
    candidates = dropped = 0
    while True:
        try:
            hits = index.search(
                query=query, filters=index_filter, top_k=fetch_k, mode=mode, dense_weight=dense_weight
            )
        except IndexValueError as exc:
            raise _refused(exc) from exc
        except Exception as exc:
            import logging

            logging.getLogger(__name__).exception("memory search failed in the index")
            raise ApplicationError(
                "Search is unavailable right now; please try again shortly.",
                status=503,
                code="index_unavailable",
            ) from exc
        visible = _visible(actor).filter(
            pk__in=[h.id for h in hits], state__in=LIVE_STATES, namespace__in=searched, is_canary=False
        )
        by_id = {str(c.id): c for c in apply_filter(visible, f)}
        results = []
        for hit in hits:
            cube = by_id.get(hit.id)
            if cube is None:
                continue  # stale index entry, filtered by the database, or a canary: the database wins
            if min_score is not None and hit.score < min_score:
                break  # hits come best first
            results.append(SearchResult(cube, hit.score, len(results) + 1, hit.dense_score, hit.sparse_score))
            if len(results) == top_k:
                break
        candidates, dropped = len(hits), len(hits) - len(by_id)
        # The database dropped so many that top_k is not filled while the index has more: look deeper.
        short = (
            len(results) < top_k
            and len(hits) == fetch_k
            and (min_score is None or hits[-1].score >= min_score)
        )
        if not short or fetch_k >= SEARCH_MAX_FETCH:
            break
        fetch_k = min(fetch_k * 4, SEARCH_MAX_FETCH)
    if meter:
        kept = {id(c) for c in licensed_meter(actor=actor, cubes=[r.memory for r in results])}
        if len(kept) < len(results):
            results = [r for r in results if id(r.memory) in kept]
            for rank, r in enumerate(results, start=1):
                r.rank = rank
    took = (time.perf_counter() - started) * 1000
    return SearchResponse(
        results,
        mode,
        [ns.key for ns in namespaces],
        took,
        {"candidates": candidates, "dropped": dropped, "refused": refused},
    )


def index_dead_letters() -> QuerySet[IndexOutbox]:
    """Outbox rows that failed `VAULT_OUTBOX_MAX_ATTEMPTS` times and wait for an operator (newest first)."""
    return IndexOutbox.objects.filter(processed_at__isnull=True, dead_lettered_at__isnull=False).order_by(
        "-dead_lettered_at", "-id"
    )
