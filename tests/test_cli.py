"""`llmbot check` and `llmbot run` as an admin meets them: one clear line per problem, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmbot.__main__ import main


@pytest.fixture(autouse=True)
def restore_logging():
    """`llmbot run` configures the root logger; give the next test its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_env(path: Path, **values: str) -> str:
    """An env file as `make run` creates it: readable by its owner only."""
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return str(path)


def env_for(mm, llm_server, **overrides: str) -> dict[str, str]:
    values = {
        "MATTERMOST_URL": mm.url,
        "MATTERMOST_TOKEN": mm.bot_token,
        "OPENAI_API_KEY": llm_server.api_key,
        "OPENAI_BASE_URL": llm_server.base_url,
        "LLMBOT_REQUEST_TIMEOUT": "2",
    }
    values.update(overrides)
    return values


async def run_cli(*argv: str) -> int:
    # main() runs its own event loop; the fakes live in this one, so run it in a thread
    return await asyncio.to_thread(main, list(argv))


class TestCheck:
    async def test_a_good_setup_passes_with_ok_lines_only(self, mm, llm_server, tmp_path, capsys):
        mm.add_channel("town", members=(mm.bot,))
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server))
        assert await run_cli("--env-file", env, "check") == 0
        out, err = capsys.readouterr()
        assert out.splitlines() == [
            f"ok: Mattermost at {mm.url} knows the bot as @llmbot",
            "ok: @llmbot is in 1 team and 1 channel",
            f"ok: the LLM server at {llm_server.base_url} lists the model gpt-4o-mini",
        ]
        assert err == ""

    async def test_a_rejected_token_and_an_unknown_model_are_both_reported(self, mm, llm_server, tmp_path, capsys):
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, MATTERMOST_TOKEN="nope-nope", LLMBOT_MODEL="gpt-9"))
        assert await run_cli("--env-file", env, "check") == 1
        err = capsys.readouterr().err
        assert "MATTERMOST_TOKEN" in err
        assert "LLMBOT_MODEL" in err and "gpt-9" in err
        assert "nope-nope" not in err

    async def test_an_unreachable_llm_is_reported(self, mm, llm_server, tmp_path, capsys):
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, OPENAI_BASE_URL="http://127.0.0.1:9/v1"))
        assert await run_cli("--env-file", env, "check") == 1
        assert "could not be reached" in capsys.readouterr().err

    def test_bad_settings_exit_2_naming_every_variable(self, tmp_path, capsys):
        env = write_env(tmp_path / ".env", MATTERMOST_URL="chat.example.com", LLMBOT_CONVERSATION_TTL="soon")
        assert main(["--env-file", env, "check"]) == 2
        err = capsys.readouterr().err.splitlines()
        for name in ("MATTERMOST_URL", "MATTERMOST_TOKEN", "OPENAI_API_KEY", "LLMBOT_CONVERSATION_TTL"):
            assert sum(name in line for line in err) == 1

    def test_an_infinite_or_absurd_number_exits_2_before_connecting(self, tmp_path, capsys):
        env = write_env(
            tmp_path / ".env",
            MATTERMOST_URL="http://127.0.0.1:9",
            MATTERMOST_TOKEN="t" * 26,
            OPENAI_API_KEY="k",
            LLMBOT_CONVERSATION_TTL="inf",
            LLMBOT_MAX_CONTEXT_TOKENS="1000000000",
        )
        assert main(["--env-file", env, "check"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [
            "config: LLMBOT_CONVERSATION_TTL='inf' is not a finite number: it must be from 1 to 2592000",
            "config: LLMBOT_MAX_CONTEXT_TOKENS='1000000000' is too large: it must be at most 2000000",
        ]


class TestRun:
    async def test_a_revoked_token_stops_run_with_a_clear_error_and_no_secret(self, mm, llm_server, tmp_path, capsys):
        overrides = {"MATTERMOST_TOKEN": "revoked-token-xyz", "LLMBOT_LOG_LEVEL": "DEBUG"}
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, **overrides))
        assert await run_cli("--env-file", env, "run") == 78  # EX_CONFIG: permanent, not to be restarted
        gc.collect()  # an HTTP session left open reports itself when collected
        err = capsys.readouterr().err
        assert "Mattermost refuses MATTERMOST_TOKEN" in err and "Integrations → Bot Accounts" in err
        assert "revoked-token-xyz" not in err
        assert "Unclosed" not in err  # the HTTP sessions are closed on the way out

    def test_a_prompt_file_with_an_unknown_variable_stops_run_before_connecting(self, tmp_path, capsys):
        prompt = tmp_path / "prompt.md"
        prompt.write_text("You are $bot_name in $room.")
        env = write_env(
            tmp_path / ".env",
            MATTERMOST_URL="http://127.0.0.1:9",
            MATTERMOST_TOKEN="t" * 26,
            OPENAI_API_KEY="k",
            LLMBOT_SYSTEM_PROMPT_FILE=str(prompt),
        )
        assert main(["--env-file", env, "run"]) == 2
        assert "$room" in capsys.readouterr().err

    @pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
    def test_help_exits_cleanly(self, argv, capsys):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        assert "llmbot" in capsys.readouterr().out


@contextlib.asynccontextmanager
async def bot_process(mm, env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`llmbot run` in a subprocess, connected to the fake; killed on the way out if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmbot", "--env-file", env, "run",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await mm.wait_for(lambda: mm.ws_clients >= 1, timeout=20)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stderr_of(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None  # bot_process pipes it
    return (await proc.stderr.read()).decode()


class TestStopping:
    async def test_sigterm_stops_a_running_bot_with_exit_code_0(self, mm, llm_server, tmp_path):
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server))
        async with bot_process(mm, env) as proc:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 10)
        err = await stderr_of(proc)
        assert code == 0, err
        assert "stopping: no new turns" in err

    async def test_sigterm_mid_answer_exits_0_within_10s_and_marks_the_answer_interrupted(self, mm, llm_server, tmp_path):
        town = mm.add_channel("town", members=(mm.bot, alice := mm.add_user("alice")))
        llm_server.enqueue(["Once upon a time."] + [" and then"] * 200, delay=0.1)  # a 20 s answer
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server))
        async with bot_process(mm, env) as proc:
            await asyncio.sleep(0.3)  # the start-up catch-up
            post = await mm.post_as(alice, town, "gpt tell me a long story")
            await mm.wait_for(lambda: len(mm.thread(post["id"])) == 2, timeout=10)
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = await asyncio.wait_for(proc.wait(), 12)
            took = time.monotonic() - sent
        err = await stderr_of(proc)
        assert code == 0, err
        assert took < 10.0
        answer = mm.thread(post["id"])[-1]["message"]
        assert answer.startswith("Once upon a time.") and "Interrupted" in answer

    async def test_a_token_revoked_while_running_exits_78_with_a_clear_error(self, mm, llm_server, tmp_path):
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server))
        async with bot_process(mm, env) as proc:
            await mm.revoke(mm.bot)
            code = await asyncio.wait_for(proc.wait(), 15)
        err = await stderr_of(proc)
        assert code == 78, err  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops restarting it
        assert "MATTERMOST_TOKEN" in err and "revoked" in err
        assert mm.bot_token not in err and "Traceback" not in err


class TestPlugins:
    async def test_a_plugin_that_cannot_be_loaded_stops_the_start_with_exit_code_2(self, mm, llm_server, tmp_path, capsys):
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, LLMBOT_PLUGINS="gpt,no.such.module:Thing"))
        assert await run_cli("--env-file", env, "run") == 2
        assert await run_cli("--env-file", env, "check") == 2
        err = capsys.readouterr().err
        assert err.count("config: LLMBOT_PLUGINS: cannot load 'no.such.module:Thing'") == 2

    async def test_the_food_example_loads_for_check(self, mm, llm_server, tmp_path, capsys):
        mm.add_channel("town", members=(mm.bot,))
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, LLMBOT_PLUGINS="gpt,examples.food_selection:FoodSelection"))
        assert await run_cli("--env-file", env, "check") == 0
