"""Prompt text with citations, shared by the web process (retrieval-only answers) and the workers.

Pure Python: the web process renders the same memory sections it would send to a worker without
importing a tokenizer. The prompt has two parts. The *prefix* holds the installed packs the scheduler put
in KV form, in a fixed order, so its token ids are identical on every request and can be served from a
stored cache. The *body* holds retrieved plaintext memories and the conversation. Citation labels run
[M1], [M2], ... across both, prefix first, so a prefix's labels never depend on what was retrieved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX_PREAMBLE = (
    "You are an assistant with installed memory. Use the memories below when they are relevant and cite "
    "them by label, for example [M1]."
)
CONTEXT_HEADING = "Retrieved memories (cite by label):"
PREFIX_HEADING = "Installed memory packs:"


@dataclass(frozen=True)
class MemoryBlock:
    memory_id: str
    title: str
    text: str
    namespace: str = ""

    def render(self, label: str) -> str:
        title = f" {self.title}" if self.title else ""
        return f"[{label}]{title}\n{self.text.strip()}"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class PromptPlan:
    prefix_blocks: list[MemoryBlock] = field(default_factory=list)
    context_blocks: list[MemoryBlock] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def labels(self) -> dict[str, str]:
        """memory id -> citation label."""
        ordered = [*self.prefix_blocks, *self.context_blocks]
        return {block.memory_id: f"M{i}" for i, block in enumerate(ordered, start=1)}

    def prefix_text(self) -> str:
        return render_prefix(self.prefix_blocks)

    def context_text(self) -> str:
        return render_context(self.context_blocks, start=len(self.prefix_blocks) + 1)


def render_prefix(blocks: Sequence[MemoryBlock]) -> str:
    """The cacheable part. Empty when no pack is in KV form (the preamble then goes with the body)."""
    if not blocks:
        return ""
    sections = "\n\n".join(block.render(f"M{i}") for i, block in enumerate(blocks, start=1))
    return f"{PREFIX_PREAMBLE}\n\n{PREFIX_HEADING}\n\n{sections}\n\n"


def render_context(blocks: Sequence[MemoryBlock], *, start: int = 1) -> str:
    if not blocks:
        return ""
    sections = "\n\n".join(block.render(f"M{i}") for i, block in enumerate(blocks, start=start))
    return f"{CONTEXT_HEADING}\n\n{sections}"


def system_text(plan: PromptPlan) -> str:
    """The system message of the body: user-supplied system text plus the retrieved context."""
    parts = [m.content for m in plan.messages if m.role == "system" and m.content]
    if not plan.prefix_blocks and plan.context_blocks:
        parts.insert(0, PREFIX_PREAMBLE)
    context = plan.context_text()
    if context:
        parts.append(context)
    return "\n\n".join(parts)


def render_plain_chat(plan: PromptPlan) -> str:
    """For tokenizers without a chat template."""
    lines = []
    system = system_text(plan)
    if system:
        lines.append(f"System: {system}")
    for message in plan.messages:
        if message.role != "system":
            lines.append(f"{message.role.capitalize()}: {message.content}")
    lines.append("Assistant:")
    return "\n".join(lines)
