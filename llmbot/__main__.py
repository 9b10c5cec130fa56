"""Command line: `llmbot run` serves, `llmbot check` validates the config and reaches both servers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .errors import ChatAuthError, ChatError, ConfigError, PromptError
from .llm import OpenAIChat
from .logs import configure_logging
from .mattermost import MattermostChat
from .plugin_access import unknown_plugins
from .plugins.api import Plugin
from .plugins.loader import BUILT_IN, load_plugins
from .prompts import load_system_prompt
from .settings import Settings, load_settings, read_environment

log = logging.getLogger("llmbot")


def _settings(env_file: str) -> Settings | None:
    env = read_environment(env_file)
    if env.get("TIKTOKEN_CACHE_DIR"):  # read by tiktoken itself, so it must reach the process environment
        os.environ["TIKTOKEN_CACHE_DIR"] = env["TIKTOKEN_CACHE_DIR"]
    try:
        return load_settings(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return None


def _plugins(settings: Settings) -> list[Plugin] | None:
    """The plugins LLMBOT_PLUGINS names; None (and one line per problem) when one cannot be loaded."""
    if os.getcwd() not in sys.path:  # module:Class names resolve from where llmbot is started, like python -m
        sys.path.insert(0, os.getcwd())
    try:
        plugins = load_plugins(settings.plugins)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return None
    loaded = {plugin.name for plugin in plugins} | ({BUILT_IN} if BUILT_IN in settings.plugins else set())
    problems = unknown_plugins(settings, loaded)
    for problem in problems:
        print(f"config: {problem}", file=sys.stderr)
    return None if problems else plugins


def cmd_run(env_file: str) -> int:
    settings = _settings(env_file)
    if settings is None:
        return 2
    plugins = _plugins(settings)
    if plugins is None:
        return 2
    configure_logging(settings.log_level, settings.secrets())
    try:
        prompt = load_system_prompt(settings.system_prompt_file)
    except PromptError as exc:
        print(f"config: LLMBOT_SYSTEM_PROMPT_FILE: {exc}", file=sys.stderr)
        return 2
    from .app import Bot  # imported late so `check` and config errors stay fast

    async def serve() -> None:
        bot = Bot(settings, MattermostChat(settings), OpenAIChat(settings), prompt)
        for plugin in plugins:
            bot.add_plugin(plugin)
        await bot.run()

    try:
        asyncio.run(serve())
    except ChatAuthError as exc:
        log.error("%s: check MATTERMOST_TOKEN (is the bot account enabled and the token not revoked?)", exc)
        return 1
    except ChatError as exc:
        log.error("cannot start: %s (MATTERMOST_URL=%s)", exc, settings.mattermost_url)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _check(settings: Settings) -> list[str]:
    problems: list[str] = []
    try:
        load_system_prompt(settings.system_prompt_file)
    except PromptError as exc:
        problems.append(f"prompt: {exc}")
    chat = MattermostChat(settings)
    try:
        me = await chat.login()
        print(f"ok: Mattermost at {settings.mattermost_url} knows the bot as @{me.username}")
    except ChatAuthError:
        problems.append("Mattermost: the token was rejected (MATTERMOST_TOKEN): create a new one for the bot account")
    except ChatError as exc:
        problems.append(f"Mattermost: cannot reach {settings.mattermost_url} (MATTERMOST_URL): {exc}")
    finally:
        await chat.close()
    llm = OpenAIChat(settings, retries=0)
    try:
        problem = await llm.check()
        if problem:
            problems.append(problem)
        else:
            print(f"ok: the LLM server answers for model {settings.model}")
    finally:
        await llm.close()
    return problems


def cmd_check(env_file: str) -> int:
    settings = _settings(env_file)
    if settings is None or _plugins(settings) is None:
        return 2
    configure_logging("ERROR", settings.secrets())
    problems = asyncio.run(_check(settings))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmbot", description="An LLM colleague in Mattermost threads.")
    parser.add_argument("--env-file", default=".env", help="optional file of settings (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve: answer in threads until SIGTERM")
    sub.add_parser("check", help="validate the settings and reach Mattermost and the LLM")
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args.env_file)
    return cmd_check(args.env_file)


if __name__ == "__main__":
    sys.exit(main())
