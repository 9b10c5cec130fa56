"""Command line: `llmbot run` serves, `llmbot check` validates the config and asks both servers.

Exit codes, for a supervisor (sysexits.h where one fits):
    0   a clean stop (SIGTERM/SIGINT), or `check` found nothing wrong
    1   `check` found problems (one line each on stderr)
    2   invalid settings, a missing --env-file, a plugin or prompt that cannot be loaded
    75  EX_TEMPFAIL: Mattermost could not be reached at start (passing: start again later)
    78  EX_CONFIG: Mattermost refuses the token, at start or later, or its TLS certificate is not
        trusted (permanent: do not restart)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import stat
import sys
from importlib import metadata
from pathlib import Path

from .checks import TOKEN_HINT, check
from .errors import ChatAuthError, ChatError, ChatForbidden, ChatTLSError, ConfigError, PromptError
from .llm import OpenAIChat
from .logs import configure_logging
from .mattermost import MattermostChat
from .plugin_access import unknown_plugins
from .plugins.api import Plugin
from .plugins.loader import BUILT_IN, load_plugins
from .prompts import load_system_prompt
from .settings import Settings, load_settings, read_env_file, unknown_variables

log = logging.getLogger("llmbot")

EXIT_PROBLEMS = 1
EXIT_SETTINGS = 2
EX_TEMPFAIL = 75
EX_CONFIG = 78
DEFAULT_ENV_FILE = ".env"
SECRETS = ("MATTERMOST_TOKEN", "OPENAI_API_KEY")
# Written in the env file, these must reach the process environment, where their readers look:
# tiktoken (its cache), the TLS and proxy set-up of every connection (llmbot/network.py).
PROCESS_VARIABLES = frozenset({
    "TIKTOKEN_CACHE_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY",
})


def version() -> str:
    try:
        return metadata.version("llmbot")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _environment(env_file: str | None) -> dict[str, str] | None:
    """The settings' variables: the environment over the env file. A --env-file that names no file
    stops the start (None); the default .env may be absent, when everything is in the environment."""
    path = DEFAULT_ENV_FILE if env_file is None else env_file
    if env_file is not None and not Path(env_file).is_file():
        print(f"config: --env-file {env_file}: no such file", file=sys.stderr)
        return None
    from_file = read_env_file(path)
    env = from_file | dict(os.environ)
    for warning in unknown_variables(env, from_file, path):
        print(f"warning: {warning}", file=sys.stderr)
    if any(from_file.get(name) for name in SECRETS):
        _warn_if_readable(path)
    return env


def _warn_if_readable(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if sys.platform != "win32" and mode & 0o077:
        print(f"warning: {path} holds secrets and other users may read it (mode {mode:04o}): chmod 600 {path}", file=sys.stderr)


def _settings(env_file: str | None) -> Settings | None:
    env = _environment(env_file)
    if env is None:
        return None
    for name, value in env.items():  # read from the environment by libraries and the network set-up, not settings
        if name.upper() in PROCESS_VARIABLES and value and name not in os.environ:
            os.environ[name] = value
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


def cmd_run(env_file: str | None) -> int:
    settings = _settings(env_file)
    if settings is None:
        return EXIT_SETTINGS
    plugins = _plugins(settings)
    if plugins is None:
        return EXIT_SETTINGS
    configure_logging(settings.log_level, settings.secrets(), settings.log_format)
    try:
        prompt = load_system_prompt(settings.system_prompt_file)
    except PromptError as exc:
        print(f"config: LLMBOT_SYSTEM_PROMPT_FILE: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    from .app import Bot  # imported late so `check` and config errors stay fast

    async def serve() -> None:
        bot = Bot(settings, MattermostChat(settings), OpenAIChat(settings), prompt)
        for plugin in plugins:
            bot.add_plugin(plugin)
        await bot.run()

    try:
        asyncio.run(serve())
    except ConfigError as exc:  # found when the clients are built (SSL_CERT_FILE, a proxy variable)
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_SETTINGS
    except (ChatAuthError, ChatForbidden) as exc:  # permanent: a restart would be refused the same way
        log.error("Mattermost refuses MATTERMOST_TOKEN (%s): a revoked token, a deactivated bot account or personal access "
                  "tokens turned off; %s; exiting with %d (EX_CONFIG), not to be restarted",
                  str(exc).rstrip("."), TOKEN_HINT, EX_CONFIG)
        return EX_CONFIG
    except ChatTLSError as exc:  # a certificate not trusted: it won't pass by itself (a CA bundle must be set)
        log.error("cannot start: Mattermost's %s (MATTERMOST_URL=%s); exiting with %d (EX_CONFIG), not to be restarted",
                  exc, settings.mattermost_url, EX_CONFIG)
        return EX_CONFIG
    except ChatError as exc:  # only start-up lets these out (later, the bot reconnects): it may pass
        log.error("cannot start: %s (MATTERMOST_URL=%s); exiting with %d (EX_TEMPFAIL), to be started again later",
                  exc, settings.mattermost_url, EX_TEMPFAIL)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        pass
    return 0


def cmd_check(env_file: str | None) -> int:
    settings = _settings(env_file)
    if settings is None or _plugins(settings) is None:
        return EXIT_SETTINGS
    configure_logging("ERROR", settings.secrets())
    # Each problem is told once, in check's own line: not also as the driver's log line of the same 401.
    for name in ("mattermostautodriver.websocket", "mattermostautodriver.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        report = asyncio.run(check(settings))
    except ConfigError as exc:  # found when the clients are built (SSL_CERT_FILE, a proxy variable)
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_SETTINGS
    for line in report.ok:
        print(f"ok: {line}")
    for problem in report.problems:
        print(problem, file=sys.stderr)
    return EXIT_PROBLEMS if report.problems else 0


def _parser() -> argparse.ArgumentParser:
    # The options go before or after the command (`llmbot --env-file x run`, `llmbot run --env-file x`):
    # SUPPRESS keeps an absent one from overwriting one given on the other side.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--env-file", default=argparse.SUPPRESS, metavar="PATH",
        help=f"file of settings, which must exist (default: {DEFAULT_ENV_FILE} if present; the environment wins)",
    )
    parser = argparse.ArgumentParser(
        prog="llmbot", description="An LLM colleague in Mattermost threads.", parents=[options],
        epilog="exit codes: 0 stopped cleanly / check passed, 1 check found problems, 2 invalid settings, "
        "75 Mattermost unreachable at start (try again later), 78 the token is refused (do not restart)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,check}")
    sub.add_parser("run", parents=[options], help="serve: answer in threads until SIGTERM")
    sub.add_parser("check", parents=[options], help="validate the settings and ask Mattermost and the LLM server")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env_file: str | None = getattr(args, "env_file", None)
    if args.command == "run":
        return cmd_run(env_file)
    return cmd_check(env_file)


if __name__ == "__main__":
    sys.exit(main())
