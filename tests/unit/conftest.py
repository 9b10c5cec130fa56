"""Fixtures shared by the unit tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest

from llmbot.tokens import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def real() -> Iterator[Tokenizer]:
    """The real cl100k_base tokenizer, loaded offline from a private cache directory."""
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as cache:
        mp.setenv("TIKTOKEN_CACHE_DIR", cache)
        load_tokenizer.cache_clear()
        tokenizer = load_tokenizer("gpt-4o-mini")
        assert tokenizer.exact and tokenizer.name == "cl100k_base"
        yield tokenizer
    load_tokenizer.cache_clear()
