"""Every error llmbot raises on purpose. Foreign exceptions are translated at the edges.

    LlmbotError
     ├── ConfigError          bad settings; lists every problem at once
     ├── PromptError          a prompt template names an unknown variable
     ├── ChatError            Mattermost said no or could not be reached
     │    ├── ChatAuthError       401: token invalid or revoked
     │    ├── ChatForbidden       403: not a member, no permission
     │    ├── ChatNotFound        404: e.g. the root post was deleted
     │    ├── ChatRateLimited     429: wait what Retry-After says
     │    ├── ChatBadRequest      400: the server rejected what we sent
     │    └── ChatUnavailable     transport errors, timeouts, 5xx
     │         └── ChatTLSError       the TLS handshake failed (an untrusted certificate): says so and how to fix it
     ├── LLMError             the LLM server failed; `reason` is safe to show users
     │    ├── ContextTooLong      the prompt did not fit the model's window
     │    ├── LLMMisconfigured    a rejected key, unknown model or address, untrusted certificate: a setting to fix
     │    └── AnswerCut           raised after all the text: the server stopped the answer at its length limit
     ├── StateError           a handler's state is not a JSON object or is over 32 KB (a bug in the handler)
     └── TurnAborted          the thread can no longer be answered (its root was deleted): unbind it
          └── ConversationOver    the handler ended the conversation itself (e.g. the turn cap)
"""

from __future__ import annotations


class LlmbotError(Exception):
    """Base of all llmbot errors."""


class ConfigError(LlmbotError):
    """Settings are invalid. `problems` has one line per bad setting, each naming it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class PromptError(LlmbotError):
    """A prompt template cannot be rendered."""


class ChatError(LlmbotError):
    """Mattermost refused a call or could not be reached."""

    status: int | None = None

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ChatAuthError(ChatError):
    status = 401


class ChatForbidden(ChatError):
    status = 403


class ChatNotFound(ChatError):
    status = 404


class ChatRateLimited(ChatError):
    status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the server asked for, when it said


class ChatBadRequest(ChatError):
    status = 400


class ChatUnavailable(ChatError):
    """No usable answer: connection refused, timeout, 5xx."""


class ChatTLSError(ChatUnavailable):
    """Mattermost's certificate was not accepted (or the handshake failed); the message names the fix."""


class LLMError(LlmbotError):
    """The LLM call failed. `reason` is short and safe to post in a thread."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable

    logged = False  # the LLM adapter logged it with its cause (and the thread): callers need not repeat it


class ContextTooLong(LLMError):
    """The server says the prompt exceeds the model's context window."""


class LLMMisconfigured(LLMError):
    """The LLM server refuses the bot's set-up: no retry helps until an admin fixes `setting`.
    `reason` is safe to show users; `fix` tells the admin what to change."""

    def __init__(self, reason: str, *, setting: str, fix: str) -> None:
        super().__init__(reason)
        self.setting = setting
        self.fix = fix


class AnswerCut(LLMError):
    """The server cut the answer at its length limit (finish_reason "length"); all of its text was yielded."""


class TurnAborted(LlmbotError):
    """The thread can no longer be answered (e.g. its root was deleted): unbind it."""


class ConversationOver(TurnAborted):
    """The handler closed the conversation itself (e.g. the turn cap) and said so in the thread."""


class NothingOpened(ConversationOver):
    """A call that opened no conversation after all (a one-shot listener): nothing to tell the plugin."""


class StateError(LlmbotError):
    """A handler's state cannot be kept in the thread: not a JSON object, or larger than 32 KB."""


class StoreUnavailable(LlmbotError):
    """The shared store (Redis) does not answer: no turn is taken until it does (no doubles)."""
