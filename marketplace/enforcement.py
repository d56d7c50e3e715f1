"""Licence terms enforced where memory is used: the use gate and the use meter the vault and inference call.

`vault.hooks.use_refusals` asks `use_gate` before installation memory is searched, listed, read, put in a
prompt, served from a KV prefix or through an adapter; `vault.hooks.use_record` asks `use_meter` to count
what was used. Both are registered in `MarketplaceConfig.ready()`, so the vault never imports us.

The gate checks at the moment of use, not only when the sweep runs: the licence's status and dates, the
caller's seat (organization licences), the form (plaintext, KV, LoRA; a licence with no forms listed
covers all), and the retrieval quota of the current period. Only people are gated: the platform itself
(installs, sweeps) reads what it must, and remote peers go by their MIP grants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.utils import timezone

from accounts.models import Namespace
from core.errors import ApplicationError
from governance.policy import Subject, SubjectKind
from marketplace.models import Installation, Licence, LicenceUsage, SeatAssignment
from marketplace.services.licences import licence_refusal, licence_usable, pack_label
from marketplace.services.metering import COUNTERS, period_start, usage_add


def _installations(namespace_ids: Iterable[Any]) -> dict[Any, Installation]:
    rows = Installation.objects.filter(namespace_id__in=list(namespace_ids)).select_related(
        "licence__pack__publisher", "pack__publisher", "release__pack__publisher"
    )
    return {i.namespace_id: i for i in rows}


def _is_person(actor: Any) -> bool:
    return isinstance(actor, Subject) and actor.kind == SubjectKind.USER and actor.is_user


def _licence_for(inst: Installation, user: Any) -> tuple[Licence | None, ApplicationError | None]:
    """The licence an installation is used under: its own, else (an installation made before it was
    linked) any licence of the user for the pack. (None, None): a free pack with no licence to enforce."""
    if inst.licence is not None:
        return inst.licence, None
    pack = inst.pack or inst.release.pack
    try:
        return licence_usable(user=user, pack=pack), None
    except ApplicationError as exc:
        if pack.is_free:
            return None, None
        return None, exc


def use_gate(*, actor: Any, namespaces: Iterable[Namespace], form: str) -> dict[Any, Exception]:
    """{namespace id: the 402 refusing it} for the installation namespaces `actor` may not use in `form`."""
    if not _is_person(actor):
        return {}
    namespaces = list(namespaces)
    installs = _installations(ns.pk for ns in namespaces)
    if not installs:
        return {}
    now = timezone.now()
    user = actor.user
    licence_ids = {i.licence_id for i in installs.values() if i.licence_id}
    retrievals = dict(
        LicenceUsage.objects.filter(licence_id__in=licence_ids, period_start=period_start(now)).values_list(
            "licence_id", "retrievals"
        )
    )
    seated = set(
        SeatAssignment.objects.filter(licence_id__in=licence_ids, user=user).values_list(
            "licence_id", flat=True
        )
    )
    refused: dict[Any, Exception] = {}
    for ns in namespaces:
        inst = installs.get(ns.pk)
        if inst is None:
            continue  # an installation namespace with no installation row: nothing licensed in it
        if inst.removed_at is not None:
            refused[ns.pk] = ApplicationError(
                f"{pack_label(inst.release.pack)} was uninstalled; install it again to use it.",
                status=402,
                code="licence_required",
            )
            continue
        licence, error = _licence_for(inst, user)
        if error is not None:
            refused[ns.pk] = error
            continue
        if licence is None:
            continue
        refusal = licence_refusal(
            licence=licence,
            user=user,
            form=form,
            now=now,
            seated=(licence.pk in seated and licence.holder_org_id in actor.roles)
            if licence.holder_org_id
            else None,
            retrievals=retrievals.get(licence.pk, 0),
        )
        if refusal is not None:
            refused[ns.pk] = refusal
    return refused


def use_meter(*, actor: Any, counts: Mapping[Any, int], kind: str) -> dict[Any, int]:
    """Count `kind` uses per installation namespace on its licence; retrievals are granted only as far as
    the quota goes. Namespaces with no licence (not installations, free legacy installs) are granted all."""
    if kind not in COUNTERS:
        raise ValueError(f"unknown use kind {kind!r}; expected one of {', '.join(COUNTERS)}")
    granted = dict(counts)
    if not _is_person(actor) or not counts:
        return granted
    for ns_id, inst in _installations(counts).items():
        licence, _ = _licence_for(inst, actor.user)
        if licence is None:
            continue
        n = counts[ns_id]
        if kind == "retrievals":
            granted[ns_id] = usage_add(licence=licence, retrievals=n)
        else:
            usage_add(
                licence=licence,
                chats=n if kind == "chats" else 0,
                kv_uses=n if kind == "kv_uses" else 0,
                adapter_uses=n if kind == "adapter_uses" else 0,
            )
    return granted


def register() -> None:
    from vault.hooks import register_use_gate, register_use_meter

    register_use_gate(use_gate)
    register_use_meter(use_meter)
