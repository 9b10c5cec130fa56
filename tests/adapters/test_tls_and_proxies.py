"""Private CAs and proxies: the real clients (driver, aiohttp websocket, openai) against the loopback
fakes served over TLS with a CA made here (trustme), directly and through a loopback CONNECT proxy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from llmbot.errors import ChatTLSError, ConfigError, LLMMisconfigured
from llmbot.llm import OpenAIChat
from llmbot.mattermost import MattermostChat
from llmbot.network import proxy_for, ssl_context
from tests.adapters.conftest import HI, answer, settings_for_llm
from tests.fakes import bot_for, settings_for
from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI

_NETWORK_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_network_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's CA bundle and proxies stay out: each test sets what it tests."""
    for name in _NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="llmbot test CA")


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "internal-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


@pytest.fixture
async def tls_mm(ca: trustme.CA) -> AsyncIterator[FakeMattermost]:
    server = FakeMattermost()
    await server.start(ssl_context=server_context(ca))
    yield server
    await server.stop()


@pytest.fixture
async def tls_llm(ca: trustme.CA) -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start(ssl_context=server_context(ca))
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def serving(mm: FakeMattermost, llm: FakeOpenAI) -> AsyncIterator[object]:
    """The real bot on both fakes, listening, until the block ends."""
    bot = bot_for(settings_for(mm, llm), retry_base=0.01)
    await bot.start()
    listener = asyncio.create_task(bot.chat.listen(bot.on_frame))
    try:
        await mm.wait_for(lambda: mm.ws_clients == 1, message="the bot's websocket")
        await bot.idle()
        yield bot
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await bot.close()


async def one_answer(mm: FakeMattermost, llm: FakeOpenAI) -> dict:
    """A question in a channel answered end to end: REST, websocket and LLM all took part."""
    alice = mm.add_user("alice")
    town = mm.add_channel("town", members=(mm.bot, alice))
    llm.enqueue(["Over ", "TLS."])
    post = await mm.post_as(alice, town, "gpt are you there?")
    await mm.wait_for(lambda: any(p["user_id"] == mm.bot["id"] and p["message"] == "Over TLS." for p in mm.thread(post["id"])),
                      message="the answer")
    return post


class ConnectProxy:
    """A loopback HTTP proxy that only tunnels (CONNECT), recording each tunnel and its credentials."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.credentials: list[str | None] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._tunnel(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:] if line)}
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            self.credentials.append(headers.get("proxy-authorization"))
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    server = ConnectProxy()
    await server.start()
    yield server
    await server.stop()


class TestPrivateCA:
    async def test_with_ssl_cert_file_the_bot_answers_over_tls_on_all_three_connections(
        self, tls_mm, tls_llm, bundle, monkeypatch
    ):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        assert tls_mm.url.startswith("https://") and tls_llm.base_url.startswith("https://")
        async with serving(tls_mm, tls_llm):
            await one_answer(tls_mm, tls_llm)
        assert len(tls_llm.requests) == 1

    async def test_ssl_cert_dir_works_too(self, ca, tls_mm, tls_llm, tmp_path, monkeypatch):
        directory = tmp_path / "certs"
        directory.mkdir()
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        _rehash(directory)
        monkeypatch.setenv("SSL_CERT_DIR", str(directory))
        chat = MattermostChat(settings_for(tls_mm, tls_llm))
        try:
            assert (await chat.login()).username == "llmbot"
        finally:
            await chat.close()

    async def test_without_it_mattermost_says_tls_and_the_fix_never_could_not_be_reached(self, tls_mm, tls_llm):
        chat = MattermostChat(settings_for(tls_mm, tls_llm))
        try:
            with pytest.raises(ChatTLSError) as info:
                await chat.login()
        finally:
            await chat.close()
        text = str(info.value)
        assert text == ("TLS: certificate verify failed: unable to get local issuer certificate; "
                        "set SSL_CERT_FILE to your CA bundle")
        assert "reached" not in text

    async def test_a_bundle_without_the_servers_ca_is_named_in_the_fix(self, tls_mm, tls_llm, tmp_path, monkeypatch):
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        monkeypatch.setenv("SSL_CERT_FILE", str(other))
        chat = MattermostChat(settings_for(tls_mm, tls_llm))
        try:
            with pytest.raises(ChatTLSError, match=f"SSL_CERT_FILE={other} does not hold the CA"):
                await chat.login()
        finally:
            await chat.close()

    async def test_a_certificate_for_another_name_says_so(self, ca, bundle, tls_llm, monkeypatch):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        server = FakeMattermost()
        await server.start(ssl_context=server_context(ca, "chat.example.com"))
        chat = MattermostChat(settings_for(server, tls_llm))
        try:
            with pytest.raises(ChatTLSError, match="use the host name the certificate was issued for"):
                await chat.login()
        finally:
            await chat.close()
            await server.stop()

    async def test_https_to_a_plain_http_port_is_a_tls_handshake_failure(self, mm, tls_llm):
        settings = settings_for(mm, tls_llm, MATTERMOST_URL=mm.url.replace("http://", "https://"))
        chat = MattermostChat(settings)
        try:
            with pytest.raises(ChatTLSError, match=r"TLS: the handshake failed: .*does the server speak HTTPS"):
                await chat.login()
        finally:
            await chat.close()

    async def test_the_websocket_says_tls_once_per_try_and_asks_nothing_about_the_token(self, tls_mm, tls_llm, caplog):
        chat = MattermostChat(settings_for(tls_mm, tls_llm), reconnect_base=0.01, reconnect_cap=0.02)
        asked: list[bool] = []

        async def check_token() -> None:
            asked.append(True)

        chat._check_token = check_token  # type: ignore[method-assign]  # the seam: did it ask?

        async def on_frame(raw: str) -> None:
            raise AssertionError("no frame can arrive over an untrusted connection")

        def tries() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "llmbot.mattermost_socket" and "reconnecting in" in r.getMessage()]

        with caplog.at_level(logging.INFO):
            task = asyncio.create_task(chat.listen(on_frame))
            try:
                await tls_mm.wait_for(lambda: len(tries()) >= 2, message="two tries")
            finally:
                await chat.close()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        line = tries()[0]
        assert line.levelno == logging.WARNING and line.exc_info is None
        assert line.getMessage().startswith(
            "websocket cannot connect to Mattermost (TLS: certificate verify failed: unable to get local issuer "
            "certificate; set SSL_CERT_FILE to your CA bundle); reconnecting in"
        )
        assert asked == []

    async def test_the_llm_says_tls_is_misconfigured_not_retried_with_an_error_line(self, tls_llm, caplog):
        llm = OpenAIChat(settings_for_llm(tls_llm), retries=2)
        try:
            result = await answer(llm, HI)
        finally:
            await llm.close()
        assert isinstance(result.error, LLMMisconfigured) and result.error.setting == "SSL_CERT_FILE"
        assert result.error.reason == "the language model server's TLS certificate was not accepted"
        assert tls_llm.requests == []
        (line,) = [r for r in caplog.records if r.name == "llmbot.llm"]
        assert line.levelno == logging.ERROR
        assert line.getMessage() == (
            "the LLM is not set up correctly: the language model server's TLS certificate was not accepted "
            "(APITimeoutError from ClientConnectorCertificateError): TLS: certificate verify failed: unable to get "
            f"local issuer certificate; set SSL_CERT_FILE to your CA bundle (OPENAI_BASE_URL={tls_llm.base_url}); "
            "not retried"
        )

    def test_an_unreadable_bundle_is_a_config_error_naming_the_variable(self, tmp_path, monkeypatch):
        empty = tmp_path / "empty.pem"
        empty.write_text("not a certificate\n")
        for path in (empty, tmp_path / "missing.pem"):
            monkeypatch.setenv("SSL_CERT_FILE", str(path))
            with pytest.raises(ConfigError) as info:
                ssl_context()
            (problem,) = info.value.problems
            assert problem.startswith(f"SSL_CERT_FILE={path}: cannot load CA certificates from it")

    def test_one_context_serves_every_connection_until_the_variables_change(self, bundle, monkeypatch):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        first = ssl_context()
        assert ssl_context() is first
        monkeypatch.delenv("SSL_CERT_FILE")
        assert ssl_context() is not first


class TestProxies:
    async def test_https_proxy_carries_rest_websocket_and_llm_with_its_credentials(
        self, tls_mm, tls_llm, bundle, proxy, monkeypatch
    ):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        monkeypatch.setenv("HTTPS_PROXY", f"http://bot:s3cret@127.0.0.1:{proxy.port}")
        async with serving(tls_mm, tls_llm):
            await one_answer(tls_mm, tls_llm)
        assert set(proxy.tunnels) == {f"127.0.0.1:{tls_mm.port}", f"127.0.0.1:{tls_llm.port}"}
        assert set(proxy.credentials) == {"Basic " + base64.b64encode(b"bot:s3cret").decode()}

    async def test_the_websocket_goes_through_the_https_proxy(self, tls_mm, tls_llm, bundle, proxy, monkeypatch):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")  # no scheme: http:// is meant
        chat = MattermostChat(settings_for(tls_mm, tls_llm))
        hello: list[str] = []

        async def on_frame(raw: str) -> None:
            hello.append(raw)

        task = asyncio.create_task(chat.listen(on_frame))
        try:
            await tls_mm.wait_for(lambda: hello, message="the hello over the tunnel")
        finally:
            await chat.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert proxy.tunnels == [f"127.0.0.1:{tls_mm.port}"]  # the socket alone: no REST call was made

    async def test_rest_calls_go_through_the_https_proxy(self, tls_mm, tls_llm, bundle, proxy, monkeypatch):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        chat = MattermostChat(settings_for(tls_mm, tls_llm))
        try:
            await chat.login()
        finally:
            await chat.close()
        assert proxy.tunnels == [f"127.0.0.1:{tls_mm.port}"]

    async def test_the_llm_goes_through_the_https_proxy(self, tls_llm, bundle, proxy, monkeypatch):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        tls_llm.enqueue(["proxied"])
        llm = OpenAIChat(settings_for_llm(tls_llm), retries=0)
        try:
            assert (await answer(llm, HI)).deltas == ["proxied"]
        finally:
            await llm.close()
        assert proxy.tunnels == [f"127.0.0.1:{tls_llm.port}"]

    async def test_no_proxy_keeps_loopback_direct(self, tls_mm, tls_llm, bundle, proxy, monkeypatch):
        monkeypatch.setenv("SSL_CERT_FILE", bundle)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with serving(tls_mm, tls_llm):
            await one_answer(tls_mm, tls_llm)
        assert proxy.tunnels == []

    @pytest.mark.parametrize(
        ("url", "no_proxy", "proxied"),
        [
            ("https://chat.example.com", "", True),
            ("wss://chat.example.com:8065/api/v4/websocket", "", True),
            ("https://chat.example.com", "example.com", False),
            ("https://chat.example.com", ".example.com", False),
            ("https://chat.example.com", "chat.example.com:443", False),
            ("https://chat.example.com:8443", "chat.example.com:443", True),
            ("https://myexample.com", "example.com", True),
            ("http://10.1.2.3:8000/v1", "10.0.0.0/8", False),
            ("http://11.1.2.3:8000/v1", "10.0.0.0/8", True),
            ("https://anything", "*", False),
        ],
    )
    def test_no_proxy_names_hosts_domains_ports_and_networks(self, monkeypatch, url, no_proxy, proxied):
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
        monkeypatch.setenv("NO_PROXY", no_proxy)
        assert (proxy_for(url) is not None) is proxied

    def test_credentials_leave_the_url_for_a_header_and_never_reach_the_log(self, monkeypatch):
        monkeypatch.setenv("https_proxy", "http://me:p%40ss@proxy.corp:3128")
        found = proxy_for("https://chat.example.com")
        assert found is not None
        assert found.url == "http://proxy.corp:3128"
        assert found.headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"me:p@ss").decode()}
        assert str(found) == "http://proxy.corp:3128 (HTTPS_PROXY)"

    @pytest.mark.parametrize("value", ["socks5://proxy.corp:1080", "http://proxy.corp:port"])
    def test_a_proxy_llmbot_cannot_use_is_a_config_error_naming_the_variable(self, monkeypatch, value):
        monkeypatch.setenv("HTTPS_PROXY", value)
        with pytest.raises(ConfigError) as info:
            proxy_for("https://chat.example.com")
        (problem,) = info.value.problems
        assert problem.startswith("HTTPS_PROXY=") and "name an http:// (or https://) proxy" in problem

    def test_no_variable_no_proxy(self):
        assert proxy_for("https://chat.example.com") is None


def _rehash(directory: Path) -> None:
    """What c_rehash does: OpenSSL finds a CA in a directory by the hash of its subject."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to name the certificate by its hash")
    subject_hash = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(directory / "ca.pem")], check=True, capture_output=True, text=True
    ).stdout.strip()
    shutil.copy(directory / "ca.pem", directory / f"{subject_hash}.0")


@pytest.fixture
def restore_logging():
    """`llmbot check` configures the root logger; give the next test its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class TestCheckCommand:
    async def test_check_reports_an_untrusted_certificate_as_tls_with_the_fix(
        self, tls_mm, tls_llm, tmp_path, capsys, restore_logging
    ):
        from llmbot.__main__ import main

        env = tmp_path / ".env"
        env.write_text(f"MATTERMOST_URL={tls_mm.url}\nMATTERMOST_TOKEN={tls_mm.bot_token}\n"
                       f"OPENAI_API_KEY={tls_llm.api_key}\nOPENAI_BASE_URL={tls_llm.base_url}\n")
        env.chmod(0o600)
        assert await asyncio.to_thread(main, ["--env-file", str(env), "check"]) != 0
        lines = capsys.readouterr().err.splitlines()
        fix = "TLS: certificate verify failed: unable to get local issuer certificate; set SSL_CERT_FILE to your CA bundle"
        assert [line.split(":")[0] for line in lines] == ["Mattermost", "LLM"]
        assert all(fix in line for line in lines), lines
        assert not any("reach" in line for line in lines), lines


class TestTheExitCode:
    async def test_an_untrusted_certificate_at_start_exits_78_not_to_be_restarted(self, tls_mm, tls_llm, tmp_path, capsys):
        """A missing CA does not go away by itself: a supervisor should not restart the bot for ever."""
        from tests.test_cli import env_for, run_cli, write_env

        env = write_env(tmp_path / ".env", **env_for(tls_mm, tls_llm))
        assert await run_cli("run", "--env-file", env) == 78
        err = capsys.readouterr().err
        assert "set SSL_CERT_FILE to your CA bundle" in err and "exiting with 78 (EX_CONFIG)" in err
