"""The token-count cache: bounded by the memory it holds, exact, least recently used dropped first."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import tiktoken

from llmbot.tokens import COUNT_CACHE_BYTES, DIGEST_OVER_RUNES, Tokenizer, entry_size

BUDGET = 1 << 20


def one_token_per_byte(text: str) -> list[int]:
    """A stand-in encoding whose counts are easy to check."""
    return list(text.encode("utf-8", "surrogatepass"))


def recording(encode: Callable[[str], list[int]]) -> tuple[Callable[[str], list[int]], list[str]]:
    """`encode`, and the list of texts it was called with."""
    calls: list[str] = []

    def wrapped(text: str) -> list[int]:
        calls.append(text)
        return encode(text)

    return wrapped, calls


def held_while(fill: Callable[[], None]) -> int:
    """Bytes still allocated after `fill` returns, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def copy(text: str) -> str:
    """An equal str that is another object, as a re-read thread gives."""
    return (text + ".")[:-1]


class TestMemoryBound:
    def test_the_cache_stays_within_its_byte_budget_after_many_large_texts(self) -> None:
        tokenizer = Tokenizer("estimate", None, None, cache_bytes=BUDGET)

        def fill() -> None:
            for i in range(2_000):  # up to Mattermost's longest post, in 4-byte runes: 64 KiB each
                runes = (16_383, DIGEST_OVER_RUNES, DIGEST_OVER_RUNES + 1, 300)[i % 4]
                tokenizer.count(f"{i:06d}" + "😀" * (runes - 6))

        held = held_while(fill)
        assert tokenizer.cache_bytes <= BUDGET
        assert BUDGET // 2 < held <= BUDGET  # filled, and no more than the budget for real

    def test_many_small_texts_are_held_within_the_budget_too(self) -> None:
        # Small entries are mostly overhead: this checks that ENTRY_OVERHEAD is not optimistic.
        tokenizer = Tokenizer("estimate", None, None, cache_bytes=BUDGET)

        def fill() -> None:
            for i in range(50_000):
                tokenizer.count(f"p{i}")

        held = held_while(fill)
        assert BUDGET // 2 < held <= BUDGET

    def test_a_text_bigger_than_the_whole_budget_is_counted_and_not_cached(self) -> None:
        encode, calls = recording(one_token_per_byte)
        tokenizer = Tokenizer("bytes", encode, None, cache_bytes=100)
        assert tokenizer.count("hello") == tokenizer.count("hello") == 5
        assert tokenizer.cache_bytes == 0 and len(calls) == 2

    def test_the_default_budget_is_32_mib(self) -> None:
        assert Tokenizer("estimate", None, None).cache_limit == COUNT_CACHE_BYTES == 32 * 1024 * 1024


class TestHitsAndEvictions:
    def test_a_warm_count_does_not_encode_again_for_short_or_long_texts(self) -> None:
        encode, calls = recording(one_token_per_byte)
        tokenizer = Tokenizer("bytes", encode, None)
        texts = ["short post", "x" * 50_000, "中" * (DIGEST_OVER_RUNES + 1), "é" * DIGEST_OVER_RUNES]
        first = [tokenizer.count(t) for t in texts]
        again = [tokenizer.count(copy(t)) for t in texts]
        assert first == again == [len(t.encode()) for t in texts]
        assert calls == texts

    def test_the_least_recently_used_entry_is_dropped_first(self) -> None:
        encode, calls = recording(one_token_per_byte)
        tokenizer = Tokenizer("bytes", encode, None, cache_bytes=3 * entry_size("a0"))
        for text in ("a0", "b0", "c0", "a0", "d0"):  # "a0" used again: "b0" is now the oldest
            tokenizer.count(copy(text))
        calls.clear()
        for text in ("a0", "c0", "d0", "b0"):
            tokenizer.count(copy(text))
        assert calls == ["b0"]
        assert tokenizer.cache_bytes == 3 * entry_size("a0")

    def test_long_texts_differing_only_at_the_end_keep_their_own_counts(self) -> None:
        tokenizer = Tokenizer("bytes", one_token_per_byte, None)
        base = "y" * (DIGEST_OVER_RUNES * 4)
        assert [tokenizer.count(base + end) for end in ("", "a", "ab", "ab\ud800")] == [len(base) + n for n in (0, 1, 2, 5)]


@pytest.fixture
def cl100k(real: Tokenizer) -> Iterator[tiktoken.Encoding]:
    """cl100k_base itself, already loaded offline by the `real` fixture."""
    yield tiktoken.get_encoding("cl100k_base")


def test_counts_stay_exact_through_evictions(cl100k: tiktoken.Encoding) -> None:
    tokenizer = Tokenizer("cl100k_base", cl100k.encode_ordinary, cl100k.decode, cache_bytes=20_000)
    texts = [
        "hello world",
        "The quick brown fox jumps over the lazy dog. " * 40,
        "我们今天讨论一下这个项目的进度和下一步计划。" * 60,
        "👍🏽🎉😀" * 700,
        "word " * 400 + "end",
        "word " * 400 + "supercalifragilistic",
    ]
    for _ in range(3):
        assert [tokenizer.count(copy(t)) for t in texts] == [len(cl100k.encode_ordinary(t)) for t in texts]
    assert tokenizer.cache_bytes <= 20_000
