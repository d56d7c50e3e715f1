"""Server-rendered pages. Views are thin: they call the same selectors and services as the API."""

from __future__ import annotations

import hashlib
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from core import views as core_views
from core.errors import ApplicationError, NotFound
from core.requests import current_user
from governance.policy import Subject
from marketplace import selectors as market_selectors
from marketplace import services as market_services
from marketplace.selectors.orders import ledger_order_for_session
from marketplace.services.orders import checkout_create, ledger_order_action
from vault import selectors as vault_selectors
from vault import services as vault_services


@login_required
def home(request: HttpRequest) -> HttpResponse:
    subject = Subject(user=current_user(request))
    recent = list(vault_selectors.memory_list(actor=subject)[:10])
    vault_services.memory_reads_record(
        actor=subject, cubes=recent, operation="memory.list", details={"door": "page"}
    )
    return render(
        request,
        "frontend/home.html",
        {
            "namespaces": vault_selectors.namespaces_readable(actor=subject),
            "installations": market_selectors.installation_list(user=current_user(request)),
            "recent": recent,
        },
    )


@login_required
def memories(request: HttpRequest) -> HttpResponse:
    subject = Subject(user=current_user(request))
    query = request.GET.get("q", "").strip()[:500]
    namespace = request.GET.get("namespace") or None
    context: dict[str, object] = {
        "query": query,
        "namespace": namespace or "",
        "namespaces": vault_selectors.namespaces_readable(actor=subject),
    }
    try:
        if query:
            results = vault_selectors.memory_search(
                actor=subject, query=query, namespace_keys=[namespace] if namespace else None, top_k=20
            ).results
            vault_services.memory_reads_record(
                actor=subject,
                cubes=[r.memory for r in results],
                operation="memory.search",
                hit=True,
                details={"query_sha256": hashlib.sha256(query.encode()).hexdigest(), "door": "page"},
            )
            context["results"] = results
        else:
            listing = list(
                vault_selectors.memory_list(actor=subject, namespace_keys=[namespace] if namespace else None)[
                    :50
                ]
            )
            vault_services.memory_reads_record(
                actor=subject, cubes=listing, operation="memory.list", details={"door": "page"}
            )
            context["listing"] = listing
    except ApplicationError as exc:
        context["error"] = exc.message
    return render(request, "frontend/memories.html", context)


@login_required
def memory_detail(request: HttpRequest, cube_id: UUID) -> HttpResponse:
    subject = Subject(user=current_user(request))
    try:
        cube = vault_selectors.memory_get(actor=subject, cube_id=cube_id)
        history = list(vault_selectors.memory_history(actor=subject, cube_id=cube_id))
    except NotFound as exc:
        raise Http404(exc.message) from exc
    vault_services.memory_reads_record(
        actor=subject, cubes=[cube], operation="memory.read", details={"door": "page"}
    )
    return render(request, "frontend/memory_detail.html", {"memory": cube, "history": history})


@login_required
@require_http_methods(["GET", "POST"])
def packs(request: HttpRequest) -> HttpResponse:
    """The catalog. Installing a free pack (or one you hold a licence for) is one click; a paid pack you
    have no licence for goes to checkout, and the licence arrives from the gateway's verified webhook."""
    if request.method == "POST":
        actor = Subject.from_request(request)
        try:
            pack = market_selectors.pack_get(
                publisher_slug=request.POST.get("publisher", ""), slug=request.POST.get("slug", "")
            )
            release = market_selectors.release_get(pack=pack, version=None)
            try:
                installation = market_services.pack_install(actor=actor, release=release)
            except ApplicationError as exc:
                if exc.status != 402 or pack.is_free:
                    raise
                order = checkout_create(actor=actor, pack=pack)
                if order.gateway == "ledger":  # this instance's own checkout page, on whatever host serves it
                    return redirect("ledger-checkout", session_id=order.checkout_session_id)
                return redirect(order.checkout_url)
            messages.success(
                request, f"Installed {pack.title} {release.version} into {installation.namespace.key}."
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        return redirect("packs")
    installed = {i.release.pack_id for i in market_selectors.installation_list(user=current_user(request))}
    return render(
        request,
        "frontend/packs.html",
        {
            "packs": market_selectors.pack_catalog(query=request.GET.get("q", "")[:200]),
            "installed": installed,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def ledger_checkout(request: HttpRequest, session_id: str) -> HttpResponse:
    """The built-in test ledger's checkout page (the embedded default's stand-in for Stripe Checkout):
    the buyer pays or declines; the ledger then signs and delivers the events to the same webhook path
    Stripe's take, and that is what grants the licence."""
    actor = Subject.from_request(request)
    order = ledger_order_for_session(actor=actor, session_id=session_id)
    if order is None:
        raise Http404("No such checkout.")
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            order = ledger_order_action(actor=actor, order_id=order.pk, action=action)
        except ApplicationError as exc:
            messages.error(request, exc.message)
            return redirect("ledger-checkout", session_id=session_id)
        if order.licence_id:
            messages.success(request, f"Paid: your licence for {order.pack.title} is active. Install it now.")
        else:
            outcome = order.get_status_display().lower()
            messages.error(request, f"The payment for {order.pack.title} did not go through ({outcome}).")
        return redirect("packs")
    return render(request, "frontend/ledger_checkout.html", {"order": order})


API_PREFIXES = ("/api/", "/v1/", "/.well-known/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for the whole site: API callers get the API's JSON error, people get a page."""
    if request.path.startswith(API_PREFIXES):
        return core_views.not_found(request, exception)
    return render(request, "frontend/404.html", status=404)
