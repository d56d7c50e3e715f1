"""Browsing the catalog: search (through the vault's index), facets, filters, sorting; pack pages; reviews.

What is browsable: a listed pack with at least one release that is not yanked. A search query goes
through `vault.selectors.memory_search` as the platform (`Subject.system`) over the `catalog` namespaces
only; each hit is mapped back to its pack by `Pack.catalog_cube_id` and re-checked here (listed, released,
filters), so a stale index entry never shows a pack the database would not.

A hit matches the query when the lexical route found a query term in the listing (BM25 > 0) or the dense
route found it close in meaning (cosine at least `MARKETPLACE_CATALOG_MIN_COSINE`, default 0.3): hybrid
search always returns its nearest neighbours, and an unrelated listing must not answer every query.

Facets are counted over the packs matching the query and every *other* facet's filter (the usual
"disjunctive" counts: picking one category still shows how many packs each other category holds). Within
a facet, several values are alternatives (OR); across facets, all must hold (AND).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Avg, Count, Exists, OuterRef, Prefetch, Q, QuerySet

from accounts.models import Namespace, NamespaceKind
from core.errors import ApplicationError, NotFound
from governance.policy import Subject
from marketplace.models import ALL_FORMS, Form, LicenceStatus, Pack, PackRelease, PriceModel, Review
from vault.models import MemoryKind

SORTS = ("relevance", "newest", "rating", "installs")
FACETS = ("category", "price_model", "form", "base_model", "publisher", "rating")
RATING_BUCKETS = (4, 3, 2, 1)  # "4 stars and up", ...
MAX_QUERY_CHARS = 200
DEFAULT_MIN_COSINE = 0.3

# What each kind of pack content can be put into a model as. KV caches are built at install time from
# the installed (watermarked) text, so plaintext content offers the KV form too.
FORMS_OF_KIND: dict[str, tuple[str, ...]] = {
    MemoryKind.PLAINTEXT: (Form.PLAINTEXT, Form.KV),
    MemoryKind.ACTIVATION: (Form.KV,),
    MemoryKind.PARAMETER: (Form.LORA,),
}


# A licence in these states gives no say about the pack (and a review written with it stops counting).
NOT_REVIEWABLE = (LicenceStatus.REFUNDED, LicenceStatus.REVOKED)


def counted_reviews_q(prefix: str = "") -> Q:
    """A Q over Review: the reviews that count in a pack's rating and that everybody sees."""
    return Q(**{f"{prefix}hidden": False}) & ~Q(**{f"{prefix}licence__status__in": list(NOT_REVIEWABLE)})


def review_visible(*, actor: Subject, review: Review) -> bool:
    """Everybody sees counted reviews; a hidden one (reported, or its licence refunded or revoked) only
    its author and staff."""
    if not review.hidden and review.licence.status not in NOT_REVIEWABLE:
        return True
    if not actor.is_user:
        return False
    return bool(actor.user.is_staff) or review.author_id == actor.user.pk


def _bad(name: str, message: str) -> ApplicationError:
    return ApplicationError(message, extra={"field": name}, code="invalid_filter")


def browsable_packs() -> QuerySet[Pack]:
    """Listed packs with at least one release that is not yanked."""
    live = PackRelease.objects.filter(pack=OuterRef("pk"), yanked=False)
    return Pack.objects.filter(listed=True).filter(Exists(live))


def latest_releases(pack_ids: Iterable[Any]) -> dict[Any, PackRelease]:
    """Each pack's newest release that is not yanked, with its memory count (`memory_count`)."""
    latest: dict[Any, PackRelease] = {}
    releases = (
        PackRelease.objects.filter(pack_id__in=list(pack_ids), yanked=False)
        .annotate(memory_count=Count("memory_versions"))
        .order_by("pack_id", "-created_at", "-id")
    )
    for r in releases:
        latest.setdefault(r.pack_id, r)
    return latest


def forms_offered(pack: Pack, kinds: Iterable[str]) -> list[str]:
    """The forms a buyer can use: what the release's content can become, within what the terms allow
    (`Pack.forms`; empty means every form)."""
    possible = {f for k in kinds for f in FORMS_OF_KIND.get(k, ())}
    allowed = set(pack.forms or ALL_FORMS)
    return [f for f in ALL_FORMS if f in possible and f in allowed]


def release_kinds(release_ids: Iterable[Any]) -> dict[Any, set[str]]:
    """release id -> the memory kinds it ships (one query for all)."""
    through = PackRelease.memory_versions.through
    rows = (
        through.objects.filter(packrelease_id__in=list(release_ids))
        .values_list("packrelease_id", "memcubeversion__kind")
        .distinct()
    )
    kinds: dict[Any, set[str]] = {}
    for rid, kind in rows:
        kinds.setdefault(rid, set()).add(kind)
    return kinds


def price_facet(pack: Pack) -> str:
    """The price model a buyer meets: a priced model at 0 is free."""
    return PriceModel.FREE if pack.is_free else pack.price_model


def _annotate(packs: list[Pack]) -> None:
    """Attach `latest_release` and `forms_offered` to each pack (two queries for the lot)."""
    latest = latest_releases(p.pk for p in packs)
    kinds = release_kinds(r.pk for r in latest.values())
    for p in packs:
        p.latest_release = latest.get(p.pk)  # type: ignore[attr-defined]
        p.forms_offered = forms_offered(  # type: ignore[attr-defined]
            p,
            kinds.get(p.latest_release.pk, set()) if p.latest_release else (),  # type: ignore[attr-defined]
        )


@dataclass
class CatalogFilters:
    category: list[str] = field(default_factory=list)
    price_model: list[str] = field(default_factory=list)
    form: list[str] = field(default_factory=list)
    base_model: list[str] = field(default_factory=list)
    publisher: list[str] = field(default_factory=list)
    rating: int | None = None  # at least this average (of at least one rating)
    tag: list[str] = field(default_factory=list)  # every one of these tags (not a facet)


def parse_catalog_filters(raw: dict[str, Any]) -> CatalogFilters:
    """Check filter values (unknown price model or form, rating outside 1-5: a 400 naming it)."""
    f = CatalogFilters()
    for name in ("category", "price_model", "form", "base_model", "publisher", "tag"):
        values = raw.get(name) or []
        values = [values] if isinstance(values, str) else list(values)
        for v in values:
            if not isinstance(v, str) or not v or len(v) > 100:
                raise _bad(name, f"Filter '{name}' values must be 1-100 characters.")
        setattr(f, name, values)
    for name, choices in (("price_model", list(PriceModel.values)), ("form", ALL_FORMS)):
        unknown = [v for v in getattr(f, name) if v not in choices]
        if unknown:
            raise _bad(name, f"Unknown {name} '{unknown[0]}'; expected one of {', '.join(choices)}.")
    rating = raw.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise _bad("rating", f"Filter 'rating' must be a whole number from 1 to 5, not {rating!r}.")
        f.rating = rating
    return f


def _facet_values(pack: Pack) -> dict[str, set[str]]:
    rating = {str(b) for b in RATING_BUCKETS if pack.rating_count and pack.rating_avg >= b}
    return {
        "category": {pack.category} if pack.category else set(),
        "price_model": {price_facet(pack)},
        "form": set(pack.forms_offered),  # type: ignore[attr-defined]
        "base_model": {str(b) for b in pack.base_models or [] if isinstance(b, str)},
        "publisher": {pack.publisher.slug},
        "rating": rating,
    }


def _wanted(f: CatalogFilters) -> dict[str, set[str]]:
    wanted = {name: set(getattr(f, name)) for name in FACETS if name != "rating"}
    if f.rating is not None:
        wanted["rating"] = {str(f.rating)}
    return {k: v for k, v in wanted.items() if v}


@dataclass
class FacetValue:
    value: str
    count: int
    label: str = ""


@dataclass
class CatalogResult:
    packs: list[Pack]  # ordered; each has latest_release, forms_offered and score (None without q)
    facets: dict[str, list[FacetValue]]
    sort: str
    query: str


def _min_cosine() -> float:
    return float(getattr(settings, "MARKETPLACE_CATALOG_MIN_COSINE", DEFAULT_MIN_COSINE))


def catalog_search_scores(query: str) -> dict[Any, float]:
    """pack id -> relevance, through the vault's hybrid search over the catalog namespaces only."""
    from vault.selectors import memory_search

    keys = list(Namespace.objects.filter(kind=NamespaceKind.CATALOG).values_list("key", flat=True))
    if not keys:
        return {}
    response = memory_search(
        actor=Subject.system("marketplace.catalog", purpose="catalog search"),
        query=query,
        namespace_keys=keys,
        top_k=settings.VAULT_SEARCH_MAX_TOP_K,
    )
    floor = _min_cosine()
    by_cube = {
        str(r.memory.id): r.score
        for r in response.results
        if (r.sparse_score or 0.0) > 0.0 or (r.dense_score or 0.0) >= floor
    }
    scores: dict[Any, float] = {}
    for pack_id, cube_id in Pack.objects.filter(catalog_cube_id__in=list(by_cube)).values_list(
        "pk", "catalog_cube_id"
    ):
        scores[pack_id] = by_cube[str(cube_id)]
    return scores


def _sort_key(sort: str, scores: dict[Any, float]) -> Callable[[Pack], Any]:
    def newest(p: Pack) -> float:
        r = p.latest_release  # type: ignore[attr-defined]
        return -r.created_at.timestamp() if r else 0.0

    keys: dict[str, Callable[[Pack], Any]] = {
        "relevance": lambda p: (-scores.get(p.pk, 0.0), newest(p)),
        "newest": lambda p: (newest(p),),
        "rating": lambda p: (-(p.rating_avg if p.rating_count else -1.0), -p.rating_count, newest(p)),
        "installs": lambda p: (-p.install_count, newest(p)),
    }
    inner = keys[sort]
    return lambda p: (*inner(p), p.publisher.slug, p.slug)


def catalog_browse(
    *, query: str = "", filters: dict[str, Any] | None = None, sort: str = ""
) -> CatalogResult:
    """The browsable packs matching `query` and `filters`, sorted, with facet counts.

    `sort`: relevance (the default with a query; needs one), newest (latest release; the default
    without), rating (average, then number of ratings; unrated last), installs."""
    query = (query or "").strip()
    if len(query) > MAX_QUERY_CHARS:
        raise _bad("q", f"'q' is {len(query)} characters; the limit is {MAX_QUERY_CHARS}.")
    sort = sort or ("relevance" if query else "newest")
    if sort not in SORTS:
        raise _bad("sort", f"Unknown sort '{sort}'; expected one of {', '.join(SORTS)}.")
    if sort == "relevance" and not query:
        raise _bad("sort", "'sort=relevance' needs a search query 'q'.")
    f = parse_catalog_filters(filters or {})
    qs = browsable_packs().select_related("publisher")
    scores: dict[Any, float] = {}
    if query:
        scores = catalog_search_scores(query)
        qs = qs.filter(pk__in=list(scores))
    packs = list(qs)
    _annotate(packs)
    for p in packs:
        p.score = scores.get(p.pk) if query else None  # type: ignore[attr-defined]
    wanted = _wanted(f)
    values = {p.pk: _facet_values(p) for p in packs}

    tags = set(f.tag)

    def passes(p: Pack, skip: str = "") -> bool:
        if tags and not tags <= {t for t in p.tags or [] if isinstance(t, str)}:
            return False
        return all(values[p.pk][name] & want for name, want in wanted.items() if name != skip)

    facets: dict[str, list[FacetValue]] = {}
    for name in FACETS:
        counts: Counter[str] = Counter()
        for p in packs:
            if passes(p, skip=name):
                counts.update(values[p.pk][name])
        if name == "rating":
            facets[name] = [FacetValue(str(b), counts.get(str(b), 0), f"{b}+") for b in RATING_BUCKETS]
        else:
            names = {p.publisher.slug: p.publisher.display_name for p in packs} if name == "publisher" else {}
            facets[name] = [
                FacetValue(v, n, names.get(v, v))
                for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            ]
    matched = sorted((p for p in packs if passes(p)), key=_sort_key(sort, scores))
    return CatalogResult(packs=matched, facets=facets, sort=sort, query=query)


# --- one pack -------------------------------------------------------------------------------------------


@dataclass
class ReviewSummary:
    count: int
    average: float
    histogram: dict[str, int]  # "1".."5" -> count


def review_summary(pack: Pack) -> ReviewSummary:
    rows = dict(
        Review.objects.filter(counted_reviews_q(), pack=pack)
        .values_list("rating")
        .annotate(n=Count("id"))
        .values_list("rating", "n")
    )
    agg = Review.objects.filter(counted_reviews_q(), pack=pack).aggregate(avg=Avg("rating"))
    return ReviewSummary(
        count=sum(rows.values()),
        average=round(float(agg["avg"] or 0.0), 4),
        histogram={str(r): int(rows.get(r, 0)) for r in range(1, 6)},
    )


def pack_detail(*, publisher_slug: str, slug: str) -> Pack:
    """A listed pack's page: listing, price and terms, releases (newest first, with memory counts), the
    latest release's card, forms offered, and the review summary (`review_summary`)."""
    releases = PackRelease.objects.annotate(memory_count=Count("memory_versions")).order_by(
        "-created_at", "-id"
    )
    pack = (
        Pack.objects.select_related("publisher")
        .prefetch_related(Prefetch("releases", queryset=releases, to_attr="release_list"))
        .filter(publisher__slug=publisher_slug, slug=slug, listed=True)
        .first()
    )
    if pack is None:
        raise NotFound(f"Pack '{publisher_slug}/{slug}' not found.")
    _annotate([pack])
    pack.review_summary = review_summary(pack)  # type: ignore[attr-defined]
    return pack


# --- reviews --------------------------------------------------------------------------------------------


def review_list(*, actor: Subject, pack: Pack) -> QuerySet[Review]:
    """A pack's reviews, newest first: the counted ones, plus the caller's own hidden ones (all, for
    staff)."""
    qs = Review.objects.filter(pack=pack).select_related("author", "licence")
    if not (actor.is_user and actor.user.is_staff):
        visible = counted_reviews_q()
        if actor.is_user:
            visible |= Q(author=actor.user)
        qs = qs.filter(visible)
    return qs.order_by("-created_at", "-id")


def review_get(*, actor: Subject, pack: Pack, review_id: Any) -> Review:
    """One review of this pack the caller may see (else 404)."""
    review = (
        Review.objects.filter(pack=pack, pk=review_id).select_related("author", "licence", "pack").first()
    )
    if review is None or not review_visible(actor=actor, review=review):
        raise NotFound("Review not found.")
    return review
