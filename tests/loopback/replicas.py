"""Bot processes for the replica tests: `llmbot run` subprocesses on the loopback fakes and a real
redis-server, each logging to a file of its own (a pipe nobody reads would fill and stall it)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI


@dataclass
class Replica:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Replicas:
    mm: FakeMattermost
    llm: FakeOpenAI
    redis_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    running: list[Replica] = field(default_factory=list)
    started: int = 0

    def _env_file(self) -> Path:
        values = {
            "MATTERMOST_URL": self.mm.url,
            "MATTERMOST_TOKEN": self.mm.bot_token,
            "OPENAI_API_KEY": self.llm.api_key,
            "OPENAI_BASE_URL": self.llm.base_url,
            "LLMBOT_REDIS_URL": self.redis_url,
            "LLMBOT_REDIS_LEASE": "2",
            "LLMBOT_REQUEST_TIMEOUT": "5",
            **self.env,
        }
        path = self.workdir / "replicas.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
        return path

    async def start(self, count: int = 1) -> list[Replica]:
        """Start `count` more replicas and wait until each has its websocket up."""
        env_file = self._env_file()
        new = []
        for _ in range(count):
            self.started += 1
            name = f"r{self.started}"
            log = self.workdir / f"{name}.log"
            handle = log.open("w")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llmbot", "--env-file", str(env_file), "run",
                stdout=handle, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            handle.close()
            new.append(Replica(name, proc, log))
        self.running.extend(new)
        want = len(self.running)
        await self.mm.wait_for(lambda: self.mm.ws_clients >= want, timeout=30, message=f"{want} replicas connected")
        for replica in new:  # each is past its start-up catch-up before the test posts
            await self.mm.wait_for(lambda r=replica: "caught up:" in r.text(), timeout=30, message=f"{replica.name} caught up")
        return new

    async def kill(self, replica: Replica) -> None:
        """SIGKILL: no drain, no goodbye."""
        replica.proc.send_signal(signal.SIGKILL)
        await replica.proc.wait()
        self.running.remove(replica)

    async def stop(self, replica: Replica) -> int:
        """SIGTERM, as systemd stops it; its exit code."""
        replica.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(replica.proc.wait(), 30)
        self.running.remove(replica)
        return code

    async def close(self) -> None:
        for replica in list(self.running):
            if replica.proc.returncode is None:
                replica.proc.kill()
                await replica.proc.wait()
        self.running.clear()
