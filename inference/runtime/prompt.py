"""Token ids for a `PromptPlan`: prefix and body tokenised separately, then concatenated.

Tokenising the prefix on its own is what makes a KV prefix reusable: the ids of "prefix + body" tokenised
together could merge across the boundary and differ from request to request. Prompt and KV modes use the
same ids, so they are the same computation and greedy outputs agree token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from inference.prompting import PromptPlan, render_plain_chat, system_text


@dataclass(frozen=True)
class EncodedPrompt:
    prefix_ids: list[int]
    ids: list[int]

    @property
    def body_tokens(self) -> int:
        return len(self.ids) - len(self.prefix_ids)


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before any text (a BOS or CLS), found by tokenising a probe."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    if not plain or plain[0] not in full:
        return []
    return list(full[: full.index(plain[0])])


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def render_body(tokenizer: PreTrainedTokenizerBase, plan: PromptPlan) -> str:
    if not getattr(tokenizer, "chat_template", None):
        return render_plain_chat(plan)
    messages = []
    system = system_text(plan)
    if system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": m.role, "content": m.content} for m in plan.messages if m.role != "system"]
    text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    bos = tokenizer.bos_token
    # The BOS belongs at the very start, which is the prefix's; the template must not repeat it mid-prompt.
    if bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def encode_prompt(tokenizer: PreTrainedTokenizerBase, plan: PromptPlan) -> EncodedPrompt:
    prefix_ids = leading_special_ids(tokenizer) + _encode(tokenizer, plan.prefix_text())
    body_ids = _encode(tokenizer, render_body(tokenizer, plan))
    return EncodedPrompt(prefix_ids=prefix_ids, ids=prefix_ids + body_ids)


def encode_prefix(tokenizer: PreTrainedTokenizerBase, plan: PromptPlan) -> list[int]:
    """Just the prefix ids (what a KV build job needs)."""
    return leading_special_ids(tokenizer) + _encode(tokenizer, plan.prefix_text())
