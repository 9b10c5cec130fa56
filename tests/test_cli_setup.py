"""The admin's first hour with the command line: env files as people write them, exit codes a supervisor
can act on, `--version`, and `make run` creating a private .env that names what to fill in."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from llmbot.__main__ import main
from tests.test_cli import env_for, run_cli, write_env

REPO = Path(__file__).resolve().parents[1]
QUIETED = ("mattermostautodriver.websocket", "mattermostautodriver.api", "httpx", "openai", "aiohttp")


@pytest.fixture(autouse=True)
def restore_logging():
    """`llmbot run` and `check` configure logging; give the next test its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestEnvFile:
    def test_a_missing_env_file_given_on_the_command_line_exits_2_in_one_line(self, tmp_path, capsys):
        missing = tmp_path / "prod.env"
        assert main(["--env-file", str(missing), "check"]) == 2
        out, err = capsys.readouterr()
        assert err.splitlines() == [f"config: --env-file {missing}: no such file"]
        assert out == ""

    async def test_without_env_file_and_no_dotenv_the_environment_is_enough(self, mm, llm_server, tmp_path, monkeypatch, capsys):
        mm.add_channel("town", members=(mm.bot,))
        monkeypatch.chdir(tmp_path)  # no .env here: the systemd or container case, all in the environment
        for name, value in env_for(mm, llm_server).items():
            monkeypatch.setenv(name, value)
        assert await run_cli("check") == 0
        assert capsys.readouterr().err == ""

    @pytest.mark.parametrize("where", ["before", "after"])
    async def test_options_go_before_or_after_the_command(self, where, mm, llm_server, tmp_path, capsys):
        mm.add_channel("town", members=(mm.bot,))
        env = write_env(tmp_path / "bot.env", **env_for(mm, llm_server))
        argv = ["--env-file", env, "check"] if where == "before" else ["check", "--env-file", env]
        assert await run_cli(*argv) == 0

    def test_after_the_command_run_takes_it_too(self, tmp_path, capsys):
        assert main(["run", "--env-file", str(tmp_path / "nope.env")]) == 2
        assert capsys.readouterr().err == f"config: --env-file {tmp_path / 'nope.env'}: no such file\n"

    async def test_an_unknown_llmbot_variable_is_a_warning_with_the_closest_name(self, mm, llm_server, tmp_path, monkeypatch, capsys):
        mm.add_channel("town", members=(mm.bot,))
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, LLMBOT_TRIGER="^(gpt|ai)\\b"))
        monkeypatch.setenv("LLMBOT_MAX_TURN", "5")
        assert await run_cli("check", "--env-file", env) == 0  # a warning, not a failure
        assert capsys.readouterr().err.splitlines() == [
            "warning: LLMBOT_MAX_TURN (in the environment) is not a setting of llmbot and is ignored: did you mean LLMBOT_MAX_TURNS?",
            f"warning: LLMBOT_TRIGER (in {env}) is not a setting of llmbot and is ignored: did you mean LLMBOT_TRIGGER?",
        ]

    def test_tls_and_proxy_variables_in_the_env_file_reach_the_network_set_up(self, tmp_path, monkeypatch):
        for name in ("NO_PROXY", "SSL_CERT_DIR", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("SSL_CERT_DIR", "/from/the/environment")  # the environment wins, as for settings
        env = write_env(tmp_path / ".env", NO_PROXY="chat.internal", SSL_CERT_DIR="/from/the/file", LLMBOT_LOG_LEVEL="loud")
        assert main(["check", "--env-file", env]) == 2  # settings refused: the variables are read before that
        assert os.environ["NO_PROXY"] == "chat.internal"
        assert os.environ["SSL_CERT_DIR"] == "/from/the/environment"

    def test_an_env_file_with_secrets_that_others_may_read_is_a_warning(self, tmp_path, capsys):
        env = write_env(tmp_path / ".env", MATTERMOST_URL="http://127.0.0.1:9", MATTERMOST_TOKEN="t" * 26,
                        OPENAI_API_KEY="k", LLMBOT_LOG_LEVEL="loud")
        Path(env).chmod(0o644)
        assert main(["check", "--env-file", env]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0] == f"warning: {env} holds secrets and other users may read it (mode 0644): chmod 600 {env}"


class TestExitCodes:
    async def test_a_token_refused_at_start_exits_78(self, mm, llm_server, tmp_path, capsys):
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, MATTERMOST_TOKEN="not-a-valid-token"))
        assert await run_cli("run", "--env-file", env) == 78
        err = capsys.readouterr().err
        assert "Mattermost refuses MATTERMOST_TOKEN" in err and "exiting with 78 (EX_CONFIG), not to be restarted" in err
        assert "Enable Personal Access Tokens" in err and "not-a-valid-token" not in err

    async def test_mattermost_unreachable_at_start_exits_75(self, mm, llm_server, tmp_path, capsys):
        port = closed_port()
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server, MATTERMOST_URL=f"http://127.0.0.1:{port}"))
        assert await run_cli("run", "--env-file", env) == 75
        err = capsys.readouterr().err
        assert "cannot start: Mattermost could not be reached" in err and f"MATTERMOST_URL=http://127.0.0.1:{port}" in err
        assert "exiting with 75 (EX_TEMPFAIL), to be started again later" in err

    async def test_mattermost_failing_at_start_exits_75(self, mm, llm_server, tmp_path, capsys):
        mm.fail_next("GET", r"/api/v4/users/me$", 503)  # a server restarting behind its proxy
        env = write_env(tmp_path / ".env", **env_for(mm, llm_server))
        assert await run_cli("run", "--env-file", env) == 75

    def test_the_process_exit_code_is_what_main_returns(self, tmp_path):
        env = write_env(tmp_path / ".env", MATTERMOST_URL=f"http://127.0.0.1:{closed_port()}", MATTERMOST_TOKEN="t" * 26,
                        OPENAI_API_KEY="k", LLMBOT_REQUEST_TIMEOUT="2")
        done = subprocess.run([sys.executable, "-m", "llmbot", "run", "--env-file", env],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 75, done.stderr


class TestVersion:
    def test_version_prints_the_installed_version(self, capsys):
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out == f"llmbot {metadata.version('llmbot')}\n"

    def test_the_installed_version_is_the_one_in_pyproject(self):
        text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
        assert f'\nversion = "{metadata.version("llmbot")}"\n' in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
class TestMakeRun:
    def make_env(self, where: Path) -> subprocess.CompletedProcess[str]:
        shutil.copy(REPO / ".env.example", where / ".env.example")
        return subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), ".env"], cwd=where,
                              capture_output=True, text=True, timeout=60, check=False)

    def test_a_missing_env_is_created_from_the_example_readable_by_its_owner_only(self, tmp_path):
        done = self.make_env(tmp_path)
        assert done.returncode == 0, done.stderr
        created = tmp_path / ".env"
        assert stat.S_IMODE(created.stat().st_mode) == 0o600
        assert created.read_text() == (REPO / ".env.example").read_text()
        assert "Created .env" in done.stdout and "mode 600" in done.stdout

    def test_an_existing_env_is_left_alone(self, tmp_path):
        (tmp_path / ".env").write_text("MATTERMOST_URL=https://mine.example.com\n")
        assert self.make_env(tmp_path).returncode == 0
        assert (tmp_path / ".env").read_text() == "MATTERMOST_URL=https://mine.example.com\n"

    def test_the_first_run_names_every_value_to_fill_in(self, tmp_path, capsys):
        self.make_env(tmp_path)
        assert main(["run", "--env-file", str(tmp_path / ".env")]) == 2
        assert capsys.readouterr().err.splitlines() == [
            "config: MATTERMOST_URL is not set: set it to the server's address, e.g. https://chat.example.com",
            "config: MATTERMOST_TOKEN is not set: set it to the bot account's access token "
            "(Integrations → Bot Accounts → Create New Token)",
            "config: OPENAI_API_KEY is not set: set it to sk-... (any non-empty value for servers that do not check)",
        ]

