"""What the thread reads when an LLM answer fails: a passing fault asks to try again; a setting only
an admin can fix says so (the LLM adapter logged it as an ERROR naming the setting), as trying
again would not help."""

from __future__ import annotations

from .errors import AnswerCut, LLMError, LLMMisconfigured

MISCONFIGURED = "⚠️ I can't answer right now: I'm not set up correctly ({reason}). An admin has been told."
FAILED = "⚠️ I could not finish this answer: {reason}. Please try again."
CUT = "⚠️ Cut short: {reason}."


def llm_failed(exc: LLMError) -> str:
    """The notice (or the status line under a partial answer) for a failed LLM answer."""
    if isinstance(exc, AnswerCut):
        return CUT.format(reason=exc.reason)
    if isinstance(exc, LLMMisconfigured):
        return MISCONFIGURED.format(reason=exc.reason)
    return FAILED.format(reason=exc.reason)
