"""The loopback fakes behave like the reference, checked through the REAL clients.

mattermostautodriver's AsyncTypedDriver (REST and websocket) and openai.AsyncOpenAI
talk to FakeMattermost / FakeOpenAI exactly as they would to the real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import openai
import pytest
from mattermostautodriver import AsyncTypedDriver
from mattermostautodriver.exceptions import (
    InvalidOrMissingParameters,
    NoAccessTokenProvided,
    NotEnoughPermissions,
    ResourceNotFound,
    TooManyRequests,
    UnknownMattermostError,
)

from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI

# mattermostautodriver passes ssl=None to aiohttp's ws_connect for ws:// URLs;
# aiohttp >= 3.10 warns about that, and under filterwarnings=error the driver
# would swallow the exception and retry its websocket forever.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
async def no_lingering_tasks():
    """Torn down last: servers, drivers and websocket tasks must all be gone."""
    yield
    current = asyncio.current_task()
    for _ in range(50):
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not leftover:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"lingering tasks: {leftover}")


@pytest.fixture
async def mm():
    fake = FakeMattermost()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def world(mm):
    """alice and the bot in an open channel; bob exists but is not a member."""
    alice = mm.add_user("alice")
    bob = mm.add_user("bob")
    town = mm.add_channel("town-square", members=(alice, mm.bot), display_name="Town Square")
    return alice, bob, town


@pytest.fixture
async def make_driver(mm):
    drivers = []

    async def make(token=None, **options):
        driver = AsyncTypedDriver({
            "url": mm.host, "scheme": "http", "port": mm.port, "token": token or mm.bot_token,
            "request_timeout": 5, "max_retries": 0, "keepalive_delay": 0.1, **options,
        })
        drivers.append(driver)
        # The token only reaches the HTTP client through login().
        await driver.login()
        return driver

    yield make
    for driver in drivers:
        await driver.close()


@pytest.fixture
async def bot(make_driver):
    return await make_driver()


@pytest.fixture
async def ws_frames(mm, bot):
    """Run the bot's driver websocket in a task; yields the parsed frames it receives."""
    frames = []

    async def handler(message: str) -> None:
        frames.append(json.loads(message))

    task = asyncio.create_task(bot.init_websocket(handler))
    await mm.wait_for(lambda: mm.ws_clients == 1, message="driver websocket authenticated")
    yield frames
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def oai():
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(oai):
    c = openai.AsyncOpenAI(api_key="sk-test", base_url=oai.base_url, max_retries=0)
    yield c
    await c.close()


def events(frames, name):
    return [f for f in frames if f.get("event") == name]


# ------------------------------------------------------------------------- REST basics
async def test_get_me_returns_the_bot_user_as_a_dict(bot, mm):
    me = await bot.users.get_user("me")
    assert isinstance(me, dict)
    assert me["id"] == mm.bot["id"] and me["username"] == "llmbot" and me["is_bot"] is True
    assert len(me["id"]) == 26 and me["id"].isalnum() and me["id"].islower()


async def test_responses_have_exact_json_content_type_and_mattermost_headers(bot):
    response = await bot.client.make_request("get", "/api/v4/users/me")
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Request-Id"] and response.headers["X-Version-Id"]


async def test_bad_token_raises_no_access_token_provided(make_driver):
    with pytest.raises(NoAccessTokenProvided) as exc:
        await make_driver(token="wrong")
    assert exc.value.error_id == "api.context.session_expired.app_error"
    assert exc.value.request_id


async def test_unknown_route_answers_with_an_app_error(bot):
    with pytest.raises(ResourceNotFound) as exc:
        await bot.client.get("/api/v4/nothing/here")
    assert exc.value.error_id == "api.context.404.app_error"


async def test_users_by_ids_and_channel_lookup(bot, mm, world):
    alice, bob, town = world
    users = await bot.users.get_users_by_ids([alice["id"], bob["id"], "x" * 26])
    assert sorted(u["username"] for u in users) == ["alice", "bob"]
    channel = await bot.channels.get_channel(town["id"])
    assert (channel["name"], channel["display_name"], channel["type"]) == ("town-square", "Town Square", "O")
    private = mm.add_channel("secret", type="P", members=(alice,))
    with pytest.raises(NotEnoughPermissions):
        await bot.channels.get_channel(private["id"])


async def test_dm_channel_is_named_after_both_sorted_ids(mm, world):
    alice, _, _ = world
    dm = mm.dm_channel(alice, mm.bot)
    a, b = sorted((alice["id"], mm.bot["id"]))
    assert (dm["type"], dm["name"], dm["team_id"], dm["display_name"]) == ("D", f"{a}__{b}", "", "")
    assert mm.dm_channel(mm.bot, alice)["id"] == dm["id"]


# ------------------------------------------------------------------------- create post
async def test_create_post_returns_201_and_the_post_marked_from_bot(bot, mm, world):
    _, _, town = world
    response = await bot.client.make_request(
        "post", "/api/v4/posts", options={"channel_id": town["id"], "message": "raw", "props": {"k": "v"}})
    assert response.status_code == 201
    post = await bot.posts.create_post(town["id"], "hello", props={"handler": "chat"})
    assert isinstance(post, dict)
    assert post["message"] == "hello" and post["root_id"] == "" and post["user_id"] == mm.bot["id"]
    assert post["props"] == {"handler": "chat", "from_bot": "true"}
    assert mm.posts[post["id"]]["message"] == "hello"
    assert [p["message"] for p in mm.posts_by(mm.bot)] == ["raw", "hello"]


async def test_replying_to_a_reply_is_rejected_with_the_root_id_error(bot, mm, world):
    alice, _, town = world
    root = await mm.post_as(alice, town, "root")
    reply = await bot.posts.create_post(town["id"], "reply", root_id=root["id"])
    assert mm.posts[root["id"]]["reply_count"] == 1
    with pytest.raises(InvalidOrMissingParameters) as exc:
        await bot.posts.create_post(town["id"], "nested", root_id=reply["id"])
    assert exc.value.error_id == "api.post.create_post.root_id.app_error"


async def test_root_from_another_channel_or_deleted_root_is_rejected(bot, mm, world):
    alice, _, town = world
    other = mm.add_channel("other", members=(alice, mm.bot))
    foreign = await mm.post_as(alice, other, "elsewhere")
    with pytest.raises(InvalidOrMissingParameters):
        await bot.posts.create_post(town["id"], "x", root_id=foreign["id"])
    gone = await mm.post_as(alice, town, "to be deleted")
    await mm.delete_post(gone["id"])
    with pytest.raises(InvalidOrMissingParameters):
        await bot.posts.create_post(town["id"], "x", root_id=gone["id"])


async def test_message_length_is_counted_in_runes_up_to_16383(bot, world):
    _, _, town = world
    ok = await bot.posts.create_post(town["id"], "é" * 16383)  # 32766 bytes but 16383 runes
    assert len(ok["message"]) == 16383
    with pytest.raises(InvalidOrMissingParameters) as exc:
        await bot.posts.create_post(town["id"], "a" * 16384)
    assert exc.value.error_id == "model.post.is_valid.message_length.app_error"


async def test_posting_without_channel_membership_is_forbidden(bot, mm):
    lonely = mm.add_channel("lonely")
    with pytest.raises(NotEnoughPermissions):
        await bot.posts.create_post(lonely["id"], "hi")
    assert mm.posts == {}


async def test_create_at_comes_from_the_clock_and_strictly_increases():
    fake = FakeMattermost(clock=lambda: 1000.0)  # frozen clock
    alice = fake.add_user("alice")
    town = fake.add_channel("town", members=(alice,))
    first = await fake.post_as(alice, town, "a")
    second = await fake.post_as(alice, town, "b")
    assert first["create_at"] >= 1_000_000
    assert second["create_at"] == first["create_at"] + 1


async def test_a_pending_post_id_is_deduplicated_for_30_seconds_then_forgotten():
    now = [500.0]
    fake = FakeMattermost(dedupe_clock=lambda: now[0])
    await fake.start()
    driver = AsyncTypedDriver({"url": fake.host, "scheme": "http", "port": fake.port, "token": fake.bot_token,
                               "request_timeout": 5, "max_retries": 0})
    try:
        await driver.login()
        channel = fake.add_channel("town", members=(fake.bot,))
        body = {"channel_id": channel["id"], "message": "answer", "pending_post_id": "bot:turn-1"}
        first = await driver.client.post("/api/v4/posts", options=body)
        now[0] += 29.9
        again = await driver.client.post("/api/v4/posts", options={**body, "message": "answer, second try"})
        assert again["id"] == first["id"] and again["message"] == "answer"  # the server's answer: the first post
        now[0] += 0.1  # 30 s after the post was saved: the server's cache has let the id go
        late = await driver.client.post("/api/v4/posts", options={**body, "message": "answer, late try"})
        assert late["id"] != first["id"]
        assert [p["message"] for p in fake.posts_by(fake.bot)] == ["answer", "answer, late try"]
        assert fake.pending_post_ids == {"bot:turn-1": late["id"]}  # remembered anew from the late create
    finally:
        await driver.close()
        await fake.stop()


# ---------------------------------------------------------------------------- reactions
async def test_a_reaction_is_stored_answered_with_200_and_broadcast(bot, mm, world, ws_frames):
    alice, _, town = world
    post = await mm.post_as(alice, town, "nice")
    body = {"user_id": mm.bot["id"], "post_id": post["id"], "emoji_name": "white_check_mark"}
    response = await bot.client.make_request("post", "/api/v4/reactions", options=body)
    assert response.status_code == 200  # saveReaction writes no 201, whatever the API spec says
    reaction = response.json()
    assert {k: reaction[k] for k in body} == body and reaction["channel_id"] == town["id"]
    assert mm.reactions == [reaction]
    assert mm.posts[post["id"]]["has_reactions"] is True and mm.posts[post["id"]]["update_at"] == reaction["create_at"]
    await mm.wait_for(lambda: events(ws_frames, "reaction_added"))
    assert json.loads(events(ws_frames, "reaction_added")[0]["data"]["reaction"]) == reaction
    await bot.reactions.save_reaction(options=body)  # the same reaction again: one row, as the store upserts
    assert len(mm.reactions) == 1


@pytest.mark.parametrize(("name", "status", "error_id"), [
    ("", 400, "api.reaction.save_reaction.invalid.app_error"),
    ("x" * 65, 400, "api.reaction.save_reaction.invalid.app_error"),
    ("thumbs up!", 404, "app.emoji.get_by_name.no_result"),  # no emoji has that name: the lookup fails
])
async def test_an_impossible_emoji_name_is_refused(bot, mm, world, name, status, error_id):
    alice, _, town = world
    post = await mm.post_as(alice, town, "nice")
    response = await bot.client.client.post(
        f"{mm.url}/api/v4/reactions", headers=bot.client.auth_header(),
        json={"user_id": mm.bot["id"], "post_id": post["id"], "emoji_name": name})
    assert (response.status_code, response.json()["id"]) == (status, error_id)
    assert mm.reactions == []


async def test_reacting_outside_ones_channels_or_for_someone_else_is_forbidden(bot, mm, world):
    alice, bob, town = world
    elsewhere = mm.add_channel("elsewhere", members=(alice, bob))
    post = await mm.post_as(alice, elsewhere, "not for bots")
    with pytest.raises(NotEnoughPermissions):
        await bot.reactions.save_reaction(options={"user_id": mm.bot["id"], "post_id": post["id"], "emoji_name": "eyes"})
    mine = await mm.post_as(alice, town, "in town")
    with pytest.raises(NotEnoughPermissions) as exc:
        await bot.reactions.save_reaction(options={"user_id": alice["id"], "post_id": mine["id"], "emoji_name": "eyes"})
    assert exc.value.error_id == "api.reaction.save_reaction.user_id.app_error"
    assert mm.reactions == []


# ------------------------------------------------------------------------------ thread
async def make_thread(mm, alice, town, replies):
    root = await mm.post_as(alice, town, "root")
    for i in range(replies):
        await mm.post_as(alice if i % 2 else mm.bot, town, f"reply {i}", root_id=root["id"])
    return root


async def test_thread_without_direction_puts_requested_post_first(bot, mm, world):
    alice, _, town = world
    root = await make_thread(mm, alice, town, 5)
    expected = [p["id"] for p in mm.thread(root["id"])]
    result = await bot.posts.get_post_thread(root["id"])
    assert result["order"][0] == root["id"]
    assert sorted(result["order"]) == sorted(expected) and set(result["posts"]) == set(expected)
    assert result["order"] != expected  # no defined order: clients must sort
    assert result["has_next"] is False
    # Asked with a reply's id, the reply comes first and the root is among the rest.
    reply_id = expected[3]
    by_reply = await bot.posts.get_post_thread(reply_id)
    assert by_reply["order"][0] == reply_id and sorted(by_reply["order"]) == sorted(expected)


async def test_paging_down_walks_the_whole_thread_exactly_once_in_order(bot, mm, world):
    alice, _, town = world
    root = await make_thread(mm, alice, town, 7)
    seen, from_post, from_create_at, pages = [], None, None, 0
    while True:
        page = await bot.posts.get_post_thread(
            root["id"], perPage=2, direction="down", fromPost=from_post, fromCreateAt=from_create_at)
        pages += 1
        assert page["order"][0] == root["id"]
        new = [i for i in page["order"] if i != root["id"]]
        assert len(new) <= 2
        seen += new
        if not page["has_next"]:
            break
        from_post = new[-1]
        from_create_at = page["posts"][from_post]["create_at"]
    assert [root["id"], *seen] == [p["id"] for p in mm.thread(root["id"])]
    assert pages == 4  # the root eats a row of the first page: 1 + 2 + 2 + 2


async def test_paging_up_returns_newest_first_below_the_cursor(bot, mm, world):
    alice, _, town = world
    root = await make_thread(mm, alice, town, 4)
    ids = [p["id"] for p in mm.thread(root["id"])]
    last = mm.posts[ids[-1]]
    page = await bot.posts.get_post_thread(
        root["id"], perPage=2, direction="up", fromPost=last["id"], fromCreateAt=last["create_at"])
    assert page["order"] == [root["id"], ids[-2], ids[-3]]
    assert page["has_next"] is True


async def test_deleting_the_root_removes_the_whole_thread(bot, mm, world):
    alice, _, town = world
    root = await make_thread(mm, alice, town, 2)
    reply_id = mm.thread(root["id"])[1]["id"]
    await mm.delete_post(root["id"])
    assert mm.thread(root["id"]) == []
    with pytest.raises(ResourceNotFound):
        await bot.posts.get_post_thread(reply_id)
    with pytest.raises(ResourceNotFound):
        await bot.posts.get_post(root["id"])


async def test_system_posts_are_part_of_the_thread(bot, mm, world):
    alice, _, town = world
    root = await mm.post_as(alice, town, "root")
    system = await mm.add_system_post(town, root_id=root["id"], message="alice joined")
    assert system["type"] == "system_join_channel" and system["user_id"] == alice["id"]
    result = await bot.posts.get_post_thread(root["id"])
    assert result["posts"][system["id"]]["type"] == "system_join_channel"


# ------------------------------------------------------------------------------- patch
async def test_patch_changes_message_sets_edit_at_and_replaces_props(bot, mm, world):
    _, _, town = world
    post = await bot.posts.create_post(town["id"], "draft", props={"a": "1"})
    assert post["edit_at"] == 0
    patched = await bot.posts.patch_post(post["id"], message="final", props={"b": "2"})
    assert patched["message"] == "final"
    assert patched["edit_at"] > post["create_at"] and patched["update_at"] == patched["edit_at"]
    assert patched["props"] == {"b": "2", "from_bot": "true"}
    assert (await bot.posts.get_post(post["id"]))["message"] == "final"
    assert [(pid, msg) for pid, msg, _ in mm.edits] == [(post["id"], "final")]


async def test_patching_someone_elses_post_is_forbidden(bot, mm, world):
    alice, _, town = world
    post = await mm.post_as(alice, town, "mine")
    with pytest.raises(NotEnoughPermissions):
        await bot.posts.patch_post(post["id"], message="hijacked")
    assert mm.posts[post["id"]]["message"] == "mine"


# ---------------------------------------------------------- observability and faults
async def test_requests_and_rest_typing_are_recorded(bot, mm, world):
    _, _, town = world
    mm.reset_requests()
    await bot.users.publish_user_typing("me", town["id"], parent_id="p1")
    with pytest.raises(ResourceNotFound):
        await bot.posts.get_post_thread("x" * 26, perPage=5)  # failed calls are recorded too
    assert mm.typing == [(mm.bot["id"], town["id"], "p1", "rest")]
    assert mm.requests[0] == ("POST", "/api/v4/users/me/typing", {}, {"channel_id": town["id"], "parent_id": "p1"})
    assert mm.requests[1] == ("GET", f"/api/v4/posts/{'x' * 26}/thread", {"perPage": "5"}, None)
    assert len(mm.requests) == 2


async def test_injected_429_is_plain_text_with_retry_after(bot, mm):
    mm.fail_next("GET", r"/users/me$", 429)
    response = await bot.client.client.get(f"{mm.url}/api/v4/users/me", headers=bot.client.auth_header())
    assert response.status_code == 429 and response.text == "limit exceeded\n"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Retry-After"] == "1" and response.headers["X-RateLimit-Remaining"] == "0"
    mm.fail_next("GET", r"/users/me$", 429)
    with pytest.raises(TooManyRequests) as exc:
        await bot.users.get_user("me")
    assert exc.value.retry_after == 1.0
    assert (await bot.users.get_user("me"))["username"] == "llmbot"  # only `times` calls fail


async def test_driver_retries_an_injected_429_honouring_retry_after(make_driver, mm):
    driver = await make_driver(max_retries=2)
    mm.fail_next("POST", r"/api/v4/posts$", 429, times=2, headers={"Retry-After": "0"})
    mm.reset_requests()
    town = mm.add_channel("t", members=(mm.bot,))
    post = await driver.posts.create_post(town["id"], "after retries")
    assert post["message"] == "after retries"
    assert [r[0:2] for r in mm.requests] == [("POST", "/api/v4/posts")] * 3
    assert len(mm.posts_by(mm.bot)) == 1


async def test_injected_500_uses_an_app_error_body(bot, mm):
    mm.fail_next("*", r"/users/", 500)
    with pytest.raises(UnknownMattermostError) as exc:
        await bot.users.get_user("me")
    assert exc.value.status_code == 500 and exc.value.error_id == "fake.injected.app_error"


async def test_wait_for_raises_assertion_error_on_timeout(mm):
    with pytest.raises(AssertionError, match="never"):
        await mm.wait_for(lambda: False, timeout=0.05, message="never")
    assert await mm.wait_for(lambda: 42) == 42


# ---------------------------------------------------------------------------- websocket
async def test_websocket_sends_hello_then_posted_with_post_as_json_string(mm, world, ws_frames):
    alice, _, town = world
    await mm.wait_for(lambda: any(f.get("seq_reply") == 1 for f in ws_frames))
    hello = ws_frames[0]
    assert hello["event"] == "hello" and hello["seq"] == 0
    assert hello["broadcast"]["user_id"] == mm.bot["id"] and hello["data"]["server_version"]
    assert ws_frames[1] == {"status": "OK", "seq_reply": 1}

    plain = await mm.post_as(alice, town, "just chatting, no ping for llmbot")
    await mm.wait_for(lambda: len(events(ws_frames, "posted")) == 1)
    frame = events(ws_frames, "posted")[0]
    assert isinstance(frame["data"]["post"], str) and json.loads(frame["data"]["post"])["id"] == plain["id"]
    assert "mentions" not in frame["data"]
    assert frame["data"]["sender_name"] == "@alice" and frame["data"]["channel_type"] == "O"
    assert frame["data"]["team_id"] == "team1" and frame["broadcast"]["channel_id"] == town["id"]

    await mm.post_as(alice, town, "hey @llmbot, a question")
    await mm.wait_for(lambda: len(events(ws_frames, "posted")) == 2)
    mentioned = events(ws_frames, "posted")[1]
    assert json.loads(mentioned["data"]["mentions"]) == [mm.bot["id"]]
    assert [f["seq"] for f in ws_frames if "seq" in f] == [0, 1, 2]


async def test_bot_sees_its_own_posts_and_dm_posts_always_carry_mentions(mm, world, bot, ws_frames):
    alice, _, _ = world
    dm = mm.dm_channel(alice, mm.bot)
    await mm.post_as(alice, dm, "no at-mention here")
    own = await bot.posts.create_post(dm["id"], "bot answer")
    await mm.wait_for(lambda: len(events(ws_frames, "posted")) == 2)
    from_alice, from_bot = events(ws_frames, "posted")
    assert json.loads(from_alice["data"]["mentions"]) == [mm.bot["id"]]
    assert from_alice["data"]["team_id"] == "" and from_alice["data"]["channel_type"] == "D"
    assert json.loads(from_bot["data"]["post"])["id"] == own["id"]
    assert "mentions" not in from_bot["data"]  # the author is not "mentioned" by its own DM


async def test_posted_goes_to_channel_members_only_unless_built_silently(mm, world, ws_frames):
    alice, bob, town = world
    elsewhere = mm.add_channel("elsewhere", members=(alice, bob))
    await mm.post_as(alice, elsewhere, "@llmbot you cannot see this")
    await mm.post_as(alice, town, "history built silently", broadcast=False)
    await mm.post_as(alice, town, "but this")
    await mm.wait_for(lambda: events(ws_frames, "posted"))
    await asyncio.sleep(0.05)
    assert [json.loads(f["data"]["post"])["message"] for f in events(ws_frames, "posted")] == ["but this"]


async def test_edits_and_deletes_are_broadcast(mm, world, bot, ws_frames):
    alice, _, town = world
    post = await mm.post_as(alice, town, "typo")
    await mm.edit_as(post["id"], "fixed")
    await bot.posts.patch_post((await bot.posts.create_post(town["id"], "x"))["id"], message="y")
    await mm.delete_post(post["id"])
    await mm.wait_for(lambda: events(ws_frames, "post_deleted"))
    edited = [json.loads(f["data"]["post"])["message"] for f in events(ws_frames, "post_edited")]
    assert edited == ["fixed", "y"]
    assert json.loads(events(ws_frames, "post_deleted")[0]["data"]["post"])["id"] == post["id"]


async def test_driver_websocket_reconnects_after_server_drops_it(mm, world, ws_frames):
    alice, _, town = world
    await mm.drop_websockets()
    assert mm.ws_clients == 0
    await mm.wait_for(lambda: mm.ws_clients == 1, message="driver reconnected")
    await mm.post_as(alice, town, "after reconnect")
    await mm.wait_for(lambda: events(ws_frames, "posted"))
    assert len(events(ws_frames, "hello")) == 2


async def raw_socket(session, mm, token):
    ws = await session.ws_connect(f"ws://{mm.host}:{mm.port}/api/v4/websocket")
    await ws.send_json({"seq": 1, "action": "authentication_challenge", "data": {"token": token}})
    return ws


async def test_websocket_bad_token_closes_the_socket(mm):
    async with aiohttp.ClientSession() as session:
        ws = await raw_socket(session, mm, "wrong")
        msg = await ws.receive(timeout=2)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        await ws.close()
    assert mm.ws_clients == 0


async def test_malformed_frames_do_not_break_the_socket_and_typing_is_recorded(mm, world):
    _, _, town = world
    async with aiohttp.ClientSession() as session:
        ws = await raw_socket(session, mm, mm.bot_token)
        assert json.loads((await ws.receive(timeout=2)).data)["event"] == "hello"
        assert json.loads((await ws.receive(timeout=2)).data) == {"status": "OK", "seq_reply": 1}
        for junk in ("not json", "[1, 2]", '{"action": 5, "data": "x"}'):
            await ws.send_str(junk)
        await ws.send_bytes(b"\x00\x01")
        await ws.send_json({"action": "user_typing", "seq": 7, "data": {"channel_id": town["id"], "parent_id": ""}})
        replies: list[dict] = []
        while not any(r.get("seq_reply") == 7 for r in replies):
            replies.append(json.loads((await ws.receive(timeout=2)).data))
        assert {"status": "OK", "seq_reply": 7} in replies
        assert mm.typing == [(mm.bot["id"], town["id"], "", "ws")]
        await mm.send_raw("raw frame")
        assert (await ws.receive(timeout=2)).data == "raw frame"
        await ws.close()


# ------------------------------------------------------------------------------ openai
async def test_stream_yields_the_enqueued_chunks_in_order(oai, client):
    oai.enqueue(["Hel", "lo", " world"], delay=0.01)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    deltas, finish = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert deltas == ["Hel", "lo", " world"] and finish == "stop"
    assert oai.requests[0]["messages"] == [{"role": "user", "content": "hi"}] and oai.requests[0]["stream"] is True
    assert oai.headers_seen[0]["Authorization"] == "Bearer sk-test"


async def test_stream_with_include_usage_ends_with_a_usage_chunk(oai, client):
    oai.enqueue(["a", "b"])
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2


async def test_non_stream_request_gets_the_joined_text(oai, client):
    oai.responder = lambda body: ["echo: ", body["messages"][-1]["content"]]
    result = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
    assert result.choices[0].message.content == "echo: ping"
    assert result.choices[0].finish_reason == "stop"


async def test_enqueued_status_500_raises_internal_server_error(oai, client):
    oai.enqueue([], status=500)
    with pytest.raises(openai.InternalServerError) as exc:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    assert exc.value.status_code == 500


async def test_enqueued_429_carries_retry_after(oai, client):
    oai.enqueue([], status=429, headers={"Retry-After": "7"})
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert exc.value.response.headers["Retry-After"] == "7"
    assert exc.value.code == "rate_limit_exceeded"


async def test_fail_after_breaks_the_stream_while_iterating(oai, client):
    oai.enqueue(["one", "two", "three"], fail_after=2)
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError):  # httpx: incomplete chunked read
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["one", "two"]


async def test_models_are_listed_and_a_wrong_key_is_rejected(oai, client):
    oai.models = ["gpt-4o-mini", "other"]
    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini", "other"]
    async with openai.AsyncOpenAI(api_key="sk-wrong", base_url=oai.base_url, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()


async def test_slow_default_replies_are_served_concurrently(oai, client):
    oai.default_first_delay = 0.5
    oai.responder = lambda body: [body["messages"][0]["content"]]

    async def ask(i):
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": str(i)}], stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    started = time.monotonic()
    answers = await asyncio.gather(*(ask(i) for i in range(200)))
    assert answers == [str(i) for i in range(200)]
    assert time.monotonic() - started < 3.0  # 200 x 0.5 s in series would be 100 s
