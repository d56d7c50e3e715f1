"""Streaming chat completions as server-sent events in OpenAI's chunk shape.

The last chunk carries `memhub` (with what the worker actually did, and the namespaces consulted), then
`data: [DONE]`. Scheduling happens before the first byte, so a bad request still gets a plain JSON
error rather than a broken stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from core.errors import ApplicationError
from governance.policy import Subject
from inference import conf
from inference.services.chat import ChatRequest, after_generation, chat_prepare, generate_remote
from inference.services.provenance import memhub_block, retrieval_only_text
from inference.services.registry import worker_module

DONE = "[DONE]"


def sse_event(data: dict[str, Any] | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {body}\n\n"


def chat_completion_stream(*, subject: Subject, request: ChatRequest) -> Iterator[str]:
    prepared = chat_prepare(subject=subject, request=request)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return sse_event(
            {
                "id": prepared.completion_id,
                "object": "chat.completion.chunk",
                "created": prepared.created,
                "model": prepared.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
        )

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        summary: dict[str, Any] = {}
        if prepared.payload is None:
            yield chunk({"content": retrieval_only_text(prepared)})
            finish = "stop"
        elif conf.inline():
            try:
                for delta in worker_module().chat_stream(prepared.payload, on_done=summary.update):
                    yield chunk({"content": delta})
            except ApplicationError as exc:
                yield sse_event({"error": {"code": exc.code, "message": exc.message}})
                return
            finish = summary.get("finish_reason", "stop")
        else:  # queue mode: the worker generates, the text arrives as one delta
            summary = generate_remote(prepared.payload)
            yield chunk({"content": summary["text"]})
            finish = summary["finish_reason"]
        if summary:
            after_generation(prepared, summary)
        usage = (
            {
                "prompt_tokens": summary.get("prompt_tokens", 0),
                "completion_tokens": summary.get("completion_tokens", 0),
            }
            if summary
            else {"prompt_tokens": 0, "completion_tokens": 0}
        )
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        yield chunk({}, finish, usage=usage, memhub=memhub_block(prepared, summary or None))
        yield sse_event(DONE)

    return events()
