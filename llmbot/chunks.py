"""The streamed chat.completion.chunk objects of an OpenAI-compatible server, read as plain JSON:
their text, their finish_reason, and the usage chunk that `stream_options.include_usage` asks for.
Compatible servers vary, so anything unexpected reads as nothing rather than failing."""

from __future__ import annotations


def chunk_text(chunk: object) -> str:
    """The text of one streamed chunk; "" for anything else."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


def chunk_finish(chunk: object) -> str | None:
    """The finish_reason of one streamed chunk, if it has one."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if isinstance(reason, str) and reason:
            return reason
    return None


def chunk_usage(chunk: object) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) when the chunk reports them: the usage chunk OpenAI
    sends last for include_usage (choices empty), or the last content chunk, as some servers do."""
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0:  # not bools
        return prompt, completion
    return None
