"""`llmbot check` catches the usual set-up mistakes against the loopback fakes, each in one line with its fix."""

from __future__ import annotations

import socket

import pytest

from tests.test_cli import env_for, restore_logging, run_cli, write_env  # noqa: F401 (autouse: `check` sets up logging)


@pytest.fixture
def town(mm):
    """The bot in one channel of team1: what a finished set-up looks like on the Mattermost side."""
    return mm.add_channel("town", members=(mm.bot,))


async def check(tmp_path, mm, llm_server, capsys, **overrides: str) -> tuple[int, list[str], list[str]]:
    env = write_env(tmp_path / ".env", **env_for(mm, llm_server, **overrides))
    code = await run_cli("check", "--env-file", env)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


class TestTheLLMServer:
    async def test_a_base_url_without_v1_is_told_to_add_it(self, mm, llm_server, town, tmp_path, capsys):
        base = f"http://127.0.0.1:{llm_server.port}"
        code, _, err = await check(tmp_path, mm, llm_server, capsys, OPENAI_BASE_URL=base)
        assert code == 1
        assert err == [f"LLM: OPENAI_BASE_URL={base} answers 404 where {base}/v1 answers: add /v1 (OPENAI_BASE_URL={base}/v1)"]

    async def test_a_base_url_with_a_trailing_slash_and_no_v1_gets_the_same_fix(self, mm, llm_server, town, tmp_path, capsys):
        base = f"http://127.0.0.1:{llm_server.port}"
        code, _, err = await check(tmp_path, mm, llm_server, capsys, OPENAI_BASE_URL=base + "/")
        assert code == 1 and len(err) == 1 and err[0].endswith(f"add /v1 (OPENAI_BASE_URL={base}/v1)")

    async def test_a_model_the_server_does_not_list_is_named_with_the_closest_ones(self, mm, llm_server, town, tmp_path, capsys):
        llm_server.models = ["qwen2.5:7b", "llama3.1:8b", "mistral:7b", "llama3.1:70b", "phi3:mini"]
        code, _, err = await check(tmp_path, mm, llm_server, capsys, LLMBOT_MODEL="llama3.1-8b")
        assert code == 1
        assert err == [
            f"LLM: the server at {llm_server.base_url} has no model 'llama3.1-8b' (LLMBOT_MODEL): "
            "the closest of its 5 models: llama3.1:8b, llama3.1:70b, mistral:7b"
        ]

    async def test_a_rejected_api_key_says_so_and_nothing_else(self, mm, llm_server, town, tmp_path, capsys):
        code, out, err = await check(tmp_path, mm, llm_server, capsys, OPENAI_API_KEY="sk-wrong-key-123")
        assert code == 1
        assert err == [
            f"LLM: the server at {llm_server.base_url} refused OPENAI_API_KEY (HTTP 401): set the key it expects "
            "(a server that checks none takes any value)"
        ]
        assert "sk-wrong-key-123" not in "\n".join(out + err)

    async def test_a_server_with_an_empty_model_list_is_asked_one_tiny_chat_request(self, mm, llm_server, town, tmp_path, capsys):
        llm_server.models = []
        code, out, _ = await check(tmp_path, mm, llm_server, capsys)
        assert code == 0
        assert out[-1] == f"ok: the LLM server at {llm_server.base_url} answers for the model gpt-4o-mini"
        assert [(r["model"], r["max_tokens"], r.get("stream")) for r in llm_server.requests] == [("gpt-4o-mini", 1, None)]

    async def test_a_chat_request_answered_404_names_the_model(self, mm, llm_server, town, tmp_path, capsys):
        llm_server.models = []
        llm_server.enqueue(status=404)
        code, _, err = await check(tmp_path, mm, llm_server, capsys, LLMBOT_MODEL="llama3")
        assert code == 1
        assert err == [
            f"LLM: the server at {llm_server.base_url} answers 404 for the model 'llama3' (LLMBOT_MODEL): set a model "
            "it serves, and check that OPENAI_BASE_URL is its API's base (usually ending in /v1)"
        ]

    async def test_a_listed_model_costs_no_chat_request(self, mm, llm_server, town, tmp_path, capsys):
        code, out, _ = await check(tmp_path, mm, llm_server, capsys)
        assert code == 0 and out[-1] == f"ok: the LLM server at {llm_server.base_url} lists the model gpt-4o-mini"
        assert llm_server.requests == []


class TestMattermost:
    async def test_a_persons_token_is_told_to_become_a_bot_account(self, mm, llm_server, tmp_path, capsys):
        alice = mm.add_user("alice")
        mm.add_channel("town", members=(alice,))
        code, out, err = await check(tmp_path, mm, llm_server, capsys, MATTERMOST_TOKEN=mm.token_for(alice))
        assert code == 1
        assert err == [
            "Mattermost: MATTERMOST_TOKEN belongs to @alice, a person's account, not a bot: create a bot account "
            "(Integrations → Bot Accounts → Add Bot Account) and use its token"
        ]
        assert "ok: @alice is in 1 team and 1 channel" in out

    async def test_a_bot_in_no_team_is_told_to_join_one_and_be_invited(self, mm, llm_server, tmp_path, capsys):
        code, _, err = await check(tmp_path, mm, llm_server, capsys)
        assert code == 1
        assert err == [
            "Mattermost: @llmbot is in no team: add it to one (System Console → User Management → Teams → the team "
            "→ Add Members), then /invite @llmbot in a channel"
        ]

    async def test_a_bot_whose_only_channel_was_archived_is_told_to_be_invited(self, mm, llm_server, tmp_path, capsys):
        old = mm.add_channel("old-project", members=(mm.bot,))
        mm.channels[old["id"]]["delete_at"] = 1  # archived: the bot is still in the team, in no channel
        alice = mm.add_user("alice")
        mm.dm_channel(alice, mm.bot)  # a DM is not a channel people can call it in
        code, _, err = await check(tmp_path, mm, llm_server, capsys)
        assert code == 1
        assert err == ["Mattermost: @llmbot is in no channel: /invite @llmbot in a channel where people should use it"]

    async def test_a_refused_token_names_both_places_to_fix_it(self, mm, llm_server, town, tmp_path, capsys):
        code, _, err = await check(tmp_path, mm, llm_server, capsys, MATTERMOST_TOKEN="revoked-token-xyz")
        assert code == 1
        assert err == [
            "Mattermost: MATTERMOST_TOKEN was refused (HTTP 401): make a new token under Integrations → Bot Accounts, "
            "and make sure System Console → Integrations → Integration Management → Enable Personal Access Tokens "
            "is on (bot tokens need it)"
        ]


    async def test_an_unreachable_server_is_named_with_its_url(self, mm, llm_server, tmp_path, capsys):
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code, _, err = await check(tmp_path, mm, llm_server, capsys, MATTERMOST_URL=url)
        assert code == 1
        assert len(err) == 1 and err[0].startswith("Mattermost: could not be reached: ") and err[0].endswith(f"(MATTERMOST_URL={url})")


class TestSettings:
    async def test_a_trigger_with_a_control_character_stops_check_with_exit_2_and_the_fix(self, mm, llm_server, town, tmp_path, capsys):
        env = tmp_path / ".env"
        write_env(env, **env_for(mm, llm_server))
        with env.open("a") as f:
            f.write('LLMBOT_TRIGGER="^(gpt|ai)\\b"\n')  # what people write: double quotes around |()
        assert await run_cli("check", "--env-file", str(env)) == 2
        assert capsys.readouterr().err.splitlines() == [
            "config: LLMBOT_TRIGGER='^(gpt|ai)\\x08' has a backspace (\\b inside double quotes in .env becomes one): "
            "in .env, write it in single quotes: LLMBOT_TRIGGER='^(gpt|ai)\\b'"
        ]
        assert mm.requests == [] and llm_server.requests == []  # refused before asking anyone

    async def test_every_problem_is_listed_at_once(self, mm, llm_server, tmp_path, capsys):
        alice = mm.add_user("alice")
        llm_server.models = ["llama3.1:8b"]
        code, _, err = await check(tmp_path, mm, llm_server, capsys, MATTERMOST_TOKEN=mm.token_for(alice))
        assert code == 1
        assert [line.split(":")[0] for line in err] == ["Mattermost", "Mattermost", "LLM"]
