"""`llmbot check`: the usual set-up mistakes, each found by asking the servers, each told in one line with the fix.

Mattermost: the token is refused; it belongs to a person, not a bot account (users/me has no is_bot); the
bot is in no team, or in no channel. The LLM server: the API key is refused; OPENAI_BASE_URL lacks its /v1
(the server answers 404 where `<base>/v1` answers); the model is not in the server's list (the closest
names are given). A trigger with a control character never gets here: the settings refuse it (exit 2).

The adapters offer no call for users/me's is_bot, a model list or a probe of another base URL, so those
calls are made here, through the adapters' own client objects (MattermostChat's driver, OpenAIChat's
AsyncOpenAI): a check then goes through the same transport, TLS and proxy set-up as the bot itself.
Errors are translated by the adapters' own functions, so a check says what the bot would.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import openai

from .errors import ChatAuthError, ChatError, ChatForbidden, ChatUnavailable, PromptError
from .llm import OpenAIChat
from .llm_failures import FAILURES, translate
from .mattermost import MattermostChat
from .mattermost import translate as translate_chat
from .prompts import load_system_prompt
from .settings import Settings

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"
TOKEN_HINT = (
    "make a new token under Integrations → Bot Accounts, and make sure System Console → Integrations → "
    "Integration Management → Enable Personal Access Tokens is on (bot tokens need it)"
)


@dataclass
class Report:
    """What `llmbot check` prints: `ok` lines on stdout, `problems` (one line each, with the fix) on stderr."""

    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def check(settings: Settings) -> Report:
    report = Report()
    try:
        load_system_prompt(settings.system_prompt_file)
    except PromptError as exc:
        report.problems.append(f"prompt: LLMBOT_SYSTEM_PROMPT_FILE: {exc}")
    await check_mattermost(settings, report)
    await check_llm(settings, report)
    return report


# --- Mattermost


async def check_mattermost(settings: Settings, report: Report) -> None:
    chat = MattermostChat(settings)
    try:
        try:
            me = await _users_me(chat)
        except (ChatAuthError, ChatForbidden) as exc:
            report.problems.append(f"Mattermost: MATTERMOST_TOKEN was refused (HTTP {exc.status}): {TOKEN_HINT}")
            return
        except ChatError as exc:  # unreachable, a TLS handshake refused, a 5xx: the error says which
            report.problems.append(f"Mattermost: {_without_name(exc)} (MATTERMOST_URL={settings.mattermost_url})")
            return
        name = f"@{me.get('username')}"
        if me.get("is_bot") is True:
            report.ok.append(f"Mattermost at {settings.mattermost_url} knows the bot as {name}")
        else:
            report.problems.append(
                f"Mattermost: MATTERMOST_TOKEN belongs to {name}, a person's account, not a bot: create a bot account "
                "(Integrations → Bot Accounts → Add Bot Account) and use its token"
            )
        try:
            teams = await chat.teams()
            channels = [c for c in await chat.channels() if c.type in ("O", "P")]  # not DMs or group messages
        except ChatError as exc:
            report.problems.append(f"Mattermost: cannot list the teams and channels of {name}: {_without_name(exc)}")
            return
        if not teams:
            report.problems.append(
                f"Mattermost: {name} is in no team: add it to one (System Console → User Management → Teams → "
                f"the team → Add Members), then /invite {name} in a channel"
            )
        elif not channels:
            report.problems.append(f"Mattermost: {name} is in no channel: /invite {name} in a channel where people should use it")
        else:
            report.ok.append(f"{name} is in {_count(len(teams), 'team')} and {_count(len(channels), 'channel')}")
    finally:
        await chat.close()


async def _users_me(chat: MattermostChat) -> dict[str, Any]:
    """users/me as the server sends it (MattermostChat.login() keeps only the id and the name; is_bot is
    wanted here): the driver's own login, which sets the token and asks users/me."""
    try:
        me = await chat._driver.login()
    except Exception as exc:  # translated below; re-raised unchanged when it is a bug
        error = translate_chat(exc)
        if error is None:
            raise  # a bug, not the server's answer
        raise error from exc
    if not isinstance(me, dict) or not isinstance(me.get("username"), str):
        raise ChatUnavailable("users/me returned no user")
    return me


def _without_name(exc: ChatError) -> str:
    """"could not be reached: ..." rather than "Mattermost: Mattermost could not be reached: ..."."""
    return str(exc).removeprefix("Mattermost ")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


# --- the LLM server


async def check_llm(settings: Settings, report: Report) -> None:
    llm = OpenAIChat(settings, retries=0)
    client = llm._client
    base = settings.openai_base_url or OPENAI_DEFAULT_BASE
    try:
        try:
            models: list[str] | None = [m.id async for m in client.models.list()]
        except openai.NotFoundError:
            models = None  # a wrong base URL, or a server without a model list: the probes below tell
        except FAILURES as exc:
            report.problems.append(_llm_problem(exc, settings, base))
            return
        if models is None and await _answers_with_v1(client, base):
            report.problems.append(_missing_v1(base))
            return
        if models:
            if settings.model in models:
                report.ok.append(f"the LLM server at {base} lists the model {settings.model}")
            else:
                closest = difflib.get_close_matches(settings.model, models, n=3, cutoff=0.0)
                report.problems.append(
                    f"LLM: the server at {base} has no model {settings.model!r} (LLMBOT_MODEL): "
                    f"the closest of its {_count(len(models), 'model')}: {', '.join(closest)}"
                )
            return
        # No list to read: one chat request of one token says whether the model answers.
        try:
            await client.chat.completions.create(
                model=settings.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
            )
        except openai.BadRequestError:
            pass  # it knows the endpoint and took the model; only the probe's parameters displeased it
        except FAILURES as exc:
            report.problems.append(_llm_problem(exc, settings, base))
            return
        report.ok.append(f"the LLM server at {base} answers for the model {settings.model}")
    finally:
        await llm.close()


async def _answers_with_v1(client: openai.AsyncOpenAI, base: str) -> bool:
    """Does `<base>/v1` serve the model list, when `base` itself answered 404? (Ollama, vLLM and
    llama.cpp serve the API under /v1, and a base URL without it is the usual slip.)"""
    if base.rstrip("/").endswith("/v1"):
        return False
    try:
        await client.with_options(base_url=base.rstrip("/") + "/v1").models.list()
    except (openai.AuthenticationError, openai.PermissionDeniedError):
        return True  # there is an API there; the key is another matter
    except FAILURES:
        return False
    return True


def _missing_v1(base: str) -> str:
    fixed = base.rstrip("/") + "/v1"
    return f"LLM: OPENAI_BASE_URL={base} answers 404 where {fixed} answers: add /v1 (OPENAI_BASE_URL={fixed})"


def _llm_problem(exc: Exception, settings: Settings, base: str) -> str:
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return (
            f"LLM: the server at {base} refused OPENAI_API_KEY (HTTP {exc.status_code}): set the key it expects "
            "(a server that checks none takes any value)"
        )
    if isinstance(exc, openai.NotFoundError):
        return (
            f"LLM: the server at {base} answers 404 for the model {settings.model!r} (LLMBOT_MODEL): set a model it "
            "serves, and check that OPENAI_BASE_URL is its API's base (usually ending in /v1)"
        )
    error = translate(exc, settings.model, base)
    fix = getattr(error, "fix", "")  # the adapter's fix for a setting (an untrusted certificate...), when it has one
    return f"LLM: {error.reason}: {fix}" if fix else f"LLM: {error.reason} (OPENAI_BASE_URL={base})"
