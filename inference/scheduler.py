"""MemScheduler: per request, which installed memories go in which form within the context budget.

Policy (each choice is recorded as a decision with its reason):
1. LoRA: a pack (installation namespace) with a ready adapter for the served base model is served by
   that adapter. One adapter per request (peft activates one at a time here); others are logged as
   skipped. A pack served by its adapter is not also put in the prompt.
2. KV: packs used at least `MEMHUB_KV_PROMOTE_AFTER` times with this model are *hot*. The ordered set of
   hot packs that fits `MEMHUB_KV_MAX_PREFIX_TOKENS` (and half the context) forms the prefix. If a ready
   artifact exists for exactly that content (and the active adapter) it is injected; otherwise a build is
   requested (promotion) and the packs go in as plaintext this time.
3. Plaintext: everything else (personal and org namespaces, cold packs) is retrieved from the vault with
   the MemReader's filters, re-ranked towards the entities asked about, and added in rank order until the
   context budget is spent. A time range that matches nothing is widened rather than answering blind.
Watermark canaries never enter a prompt in any form (`selectors.pack_memories` and retrieval drop them).
Licences: a pack reaches the scheduler only if its licence lets the caller use it (chat asks the use gate
first); its adapter is used only if the licence covers LoRA and its KV prefix only if it covers KV, else
the pack goes in as plaintext and the decision says why.
Demotion of cold prefixes back to plaintext is `services.kv_artifacts_demote_cold` (a periodic task).
The scheduler itself writes nothing: `services` persists its decisions, usage counts and build requests.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from accounts.models import Namespace
from governance.policy import Subject
from inference import conf
from inference.models import ArtifactStatus, BaseModel, DecisionAction, Form, InstalledAdapter, KVArtifact
from inference.prompting import MemoryBlock, Message
from inference.reader import MemoryCall
from inference.selectors import (
    adapters_ready,
    block_for,
    is_pack,
    kv_artifact_find,
    pack_memories,
    pack_usage_counts,
    packs_content_key,
)
from vault.hooks import use_refusals
from vault.models import MemCube

BLOCK_OVERHEAD_TOKENS = 8


def estimate_tokens(text: str) -> int:
    """Without a tokenizer in the web process: about four characters per token, rounded up."""
    return math.ceil(len(text) / 4) + BLOCK_OVERHEAD_TOKENS


@dataclass
class Decision:
    form: str
    action: str
    reason: str
    namespace: Namespace | None = None
    memory: MemCube | None = None
    kv_artifact: KVArtifact | None = None
    adapter: InstalledAdapter | None = None
    tokens: int = 0
    score: float | None = None


@dataclass
class UsedMemory:
    memory: MemCube
    form: str
    score: float | None
    tokens: int
    reason: str


@dataclass
class Promotion:
    namespaces: list[Namespace]
    content_key: str
    adapter_sha256: str
    tokens: int


@dataclass
class Schedule:
    request_id: uuid.UUID
    memory_call: MemoryCall
    base_model: BaseModel | None
    prefix_blocks: list[MemoryBlock] = field(default_factory=list)
    context_blocks: list[MemoryBlock] = field(default_factory=list)
    used: list[UsedMemory] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    kv_artifact: KVArtifact | None = None
    adapter: InstalledAdapter | None = None
    promotion: Promotion | None = None
    packs_used: list[Namespace] = field(default_factory=list)
    budget: dict[str, int] = field(default_factory=dict)

    def note(self, **kwargs: Any) -> None:
        self.decisions.append(Decision(**kwargs))


def _message(error: Exception) -> str:
    return str(getattr(error, "message", error))


def _mentions(cube: MemCube, entities: list[str]) -> list[str]:
    haystack = f"{cube.title}\n{cube.text}".lower()
    listed = {str(e).lower() for e in (cube.entities or [])}
    return [e for e in entities if e.lower() in haystack or e.lower() in listed]


def schedule_request(
    *,
    subject: Subject,
    base_model: BaseModel | None,
    namespaces: list[Namespace],
    memory_call: MemoryCall,
    messages: list[Message],
    max_new_tokens: int,
    top_k: int,
    dtype: str = "float32",
) -> Schedule:
    plan = Schedule(request_id=uuid.uuid4(), memory_call=memory_call, base_model=base_model)
    context = min(conf.context_tokens(), base_model.max_positions) if base_model else conf.context_tokens()
    conversation = sum(estimate_tokens(m.content) for m in messages)
    available = context - max_new_tokens - conversation
    plan.budget = {
        "context_tokens": context,
        "conversation_tokens": conversation,
        "max_new_tokens": max_new_tokens,
        "memory_tokens": max(available, 0),
    }
    if available <= 0:
        plan.note(
            form=Form.NONE,
            action=DecisionAction.SKIP,
            reason="the conversation and max_tokens fill the context: no room for memories",
        )
        return plan

    packs = [ns for ns in namespaces if is_pack(ns)]
    in_prompt_packs = list(packs)

    # 1. LoRA
    if base_model is not None and packs:
        adapters = adapters_ready(base_model=base_model, namespaces=packs)
        unlicensed = use_refusals(actor=subject, namespaces=[a.namespace for a in adapters], form=Form.LORA)
        for refused in [a for a in adapters if a.namespace_id in unlicensed]:
            plan.note(
                form=Form.LORA,
                action=DecisionAction.SKIP,
                namespace=refused.namespace,
                adapter=refused,
                reason=f"{_message(unlicensed[refused.namespace_id])} Served as plaintext instead.",
            )
        adapters = [a for a in adapters if a.namespace_id not in unlicensed]
        if adapters:
            plan.adapter = adapters[0]
            in_prompt_packs = [ns for ns in in_prompt_packs if ns.id != plan.adapter.namespace_id]
            plan.packs_used.append(plan.adapter.namespace)
            plan.note(
                form=Form.LORA,
                action=DecisionAction.USE,
                namespace=plan.adapter.namespace,
                adapter=plan.adapter,
                reason=f"pack has a ready adapter (rank {plan.adapter.rank})",
            )
            for other in adapters[1:]:
                plan.note(
                    form=Form.LORA,
                    action=DecisionAction.SKIP,
                    namespace=other.namespace,
                    adapter=other,
                    reason="one adapter per request; an earlier namespace's adapter is active",
                )

    # 2. KV
    kv_packs: list[Namespace] = []
    if base_model is not None and in_prompt_packs:
        uses = pack_usage_counts(base_model=base_model, namespaces=in_prompt_packs)
        threshold = conf.kv_promote_after()
        limit = min(conf.kv_max_prefix_tokens(), available // 2)
        hot: list[tuple[Namespace, list[MemCube], int]] = []
        spent = 0
        no_kv = use_refusals(actor=subject, namespaces=in_prompt_packs, form=Form.KV)
        for ns in sorted(in_prompt_packs, key=lambda n: n.key):
            if ns.id in no_kv:
                plan.note(
                    form=Form.PLAINTEXT,
                    action=DecisionAction.SKIP,
                    namespace=ns,
                    reason=f"{_message(no_kv[ns.id])} Served as plaintext instead.",
                )
                continue
            cubes = pack_memories(namespace=ns)
            if not cubes:
                continue
            tokens = sum(estimate_tokens(c.title + c.text) for c in cubes)
            count = uses.get(ns.id, 0) + 1  # this request counts
            if count < threshold:
                plan.note(
                    form=Form.PLAINTEXT,
                    action=DecisionAction.SKIP,
                    namespace=ns,
                    tokens=tokens,
                    reason=f"pack used {count}/{threshold} times: not hot enough for KV yet",
                )
                continue
            if spent + tokens > limit:
                plan.note(
                    form=Form.PLAINTEXT,
                    action=DecisionAction.SKIP,
                    namespace=ns,
                    tokens=tokens,
                    reason=f"hot pack does not fit the KV budget ({spent + tokens} > {limit} tokens)",
                )
                continue
            hot.append((ns, cubes, tokens))
            spent += tokens
        if hot:
            key = packs_content_key(packs=[(ns, cubes) for ns, cubes, _ in hot])
            adapter_sha = plan.adapter.sha256 if plan.adapter else ""
            artifact = kv_artifact_find(
                base_model=base_model, content_key=key, adapter_sha256=adapter_sha, dtype=dtype
            )
            # A prefix built before the model's files changed belongs to another model: rebuild it.
            current = artifact is not None and artifact.model_fingerprint == base_model.fingerprint
            if artifact is not None and current and artifact.status == ArtifactStatus.READY:
                plan.kv_artifact = artifact
                kv_packs = [ns for ns, _, _ in hot]
                for ns, cubes, tokens in hot:
                    plan.packs_used.append(ns)
                    plan.note(
                        form=Form.KV,
                        action=DecisionAction.USE,
                        namespace=ns,
                        kv_artifact=artifact,
                        tokens=tokens,
                        reason=f"hot pack served from stored KV prefix ({artifact.num_tokens} tokens)",
                    )
                    for cube in cubes:
                        plan.prefix_blocks.append(block_for(cube))
                        plan.used.append(
                            UsedMemory(
                                cube, Form.KV, None, estimate_tokens(cube.text), "installed pack (KV prefix)"
                            )
                        )
                available -= artifact.num_tokens or spent
            elif artifact is not None and current and artifact.status == ArtifactStatus.FAILED:
                for ns, _, tokens in hot:
                    plan.note(
                        form=Form.PLAINTEXT,
                        action=DecisionAction.FALLBACK,
                        namespace=ns,
                        kv_artifact=artifact,
                        tokens=tokens,
                        reason=f"KV build failed earlier: {artifact.error[:200]}",
                    )
            else:
                plan.promotion = Promotion([ns for ns, _, _ in hot], key, adapter_sha, spent)
                state = artifact.status if artifact is not None else "new"
                for ns, _, tokens in hot:
                    plan.note(
                        form=Form.PLAINTEXT,
                        action=DecisionAction.PROMOTE,
                        namespace=ns,
                        kv_artifact=artifact,
                        tokens=tokens,
                        reason=f"hot pack: KV prefix build requested ({state}); plaintext until it is ready",
                    )

    # 3. Plaintext retrieval over everything not already installed in another form
    served = {ns.id for ns in kv_packs} | ({plan.adapter.namespace_id} if plan.adapter else set())
    searchable = [ns for ns in namespaces if ns.id not in served]
    if searchable and memory_call.query:
        _retrieve(plan, subject=subject, namespaces=searchable, top_k=top_k, budget=available)
    for ns in searchable:
        if is_pack(ns) and any(u.memory.namespace_id == ns.id for u in plan.used):
            plan.packs_used.append(ns)
    return plan


def _retrieve(
    plan: Schedule, *, subject: Subject, namespaces: list[Namespace], top_k: int, budget: int
) -> None:
    from vault.selectors import memory_search

    call = plan.memory_call
    keys = [ns.key for ns in namespaces]
    filters = call.filters()
    # Chat meters what it actually puts in the prompt (`services.chat`), not every hit considered.
    results = memory_search(
        actor=subject,
        query=call.query,
        namespace_keys=keys,
        filters=filters or None,
        top_k=top_k,
        meter=False,
    ).results
    if not results and filters:
        results = memory_search(
            actor=subject, query=call.query, namespace_keys=keys, top_k=top_k, meter=False
        ).results
        plan.note(
            form=Form.PLAINTEXT,
            action=DecisionAction.FALLBACK,
            reason=f"time range '{call.time_range.label if call.time_range else ''}' matched nothing; "
            "searched all dates",
        )
    # The index leaves watermark canaries out of retrieval; a stale index must not put one in a prompt.
    ranked = [r for r in results if not r.memory.is_canary]
    if call.entities:
        # Stable: memories naming an entity asked about come first, rank order kept within each group.
        ranked.sort(key=lambda r: not _mentions(r.memory, call.entities))
    spent = 0
    for result in ranked:
        cube = result.memory
        tokens = estimate_tokens(cube.title + cube.text)
        if spent + tokens > budget:
            plan.note(
                form=Form.PLAINTEXT,
                action=DecisionAction.SKIP,
                namespace=cube.namespace,
                memory=cube,
                tokens=tokens,
                score=result.score,
                reason=f"over the context budget ({spent + tokens} > {budget} tokens)",
            )
            continue
        spent += tokens
        mentioned = _mentions(cube, call.entities)
        reason = f"retrieved (rank {result.rank}, score {result.score:.3f})"
        if mentioned:
            reason += f"; mentions {', '.join(mentioned[:3])}"
        plan.context_blocks.append(block_for(cube))
        plan.used.append(UsedMemory(cube, Form.PLAINTEXT, result.score, tokens, reason))
        plan.note(
            form=Form.PLAINTEXT,
            action=DecisionAction.USE,
            namespace=cube.namespace,
            memory=cube,
            tokens=tokens,
            score=result.score,
            reason=reason,
        )
