"""EditThrottle with a fake clock; ReplyPages splitting streamed text into posts, fences kept whole."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbot.streaming import (
    MAX_POST_RUNES,
    EditThrottle,
    ReplyPages,
    defuse_broadcasts,
    defused_len,
    open_fence,
    split_page,
)
from tests.fakes import FakeClock

FENCE_LINE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})(.*)$")


def streamed(text: str, limit: int, chunk: int = 7) -> ReplyPages:
    pages = ReplyPages(limit=limit)
    for i in range(0, len(text), chunk):
        pages.add(text[i : i + chunk])
    return pages


def without_fence_lines(text: str) -> str:
    """The text with every fence line and every newline removed: what the reader must still get."""
    return "".join(line for line in text.split("\n") if not FENCE_LINE.match(line))


def fences_balanced(page: str) -> bool:
    return open_fence(page) is None


def code_block(lines: int, info: str = "python", marker: str = "```") -> str:
    body = "\n".join(f"    result_{i} = compute(value_{i}, factor={i})  # step {i}" for i in range(lines))
    return f"{marker}{info}\n{body}\n{marker}\n"


class TestEditThrottle:
    def test_the_first_edit_is_due_at_once(self) -> None:
        assert EditThrottle(FakeClock()).due()

    def test_an_edit_is_not_due_again_within_the_interval(self) -> None:
        clock = FakeClock()
        throttle = EditThrottle(clock, interval=1.0)
        throttle.mark()
        assert not throttle.due()
        clock.advance(0.999)
        assert not throttle.due()
        clock.advance(0.001)
        assert throttle.due()

    def test_marking_restarts_the_interval(self) -> None:
        clock = FakeClock()
        throttle = EditThrottle(clock, interval=2.5)
        throttle.mark()
        clock.advance(3)
        assert throttle.due()
        throttle.mark()
        clock.advance(2)
        assert not throttle.due()
        clock.advance(0.5)
        assert throttle.due()

    def test_a_stream_of_deltas_is_patched_about_once_per_interval(self) -> None:
        clock = FakeClock()
        throttle = EditThrottle(clock, interval=1.0)
        patches = 0
        for _ in range(100):  # a delta every 50 ms for 5 s
            if throttle.due():
                throttle.mark()
                patches += 1
            clock.advance(0.05)
        assert patches == 5

    def test_due_does_not_change_state(self) -> None:
        clock = FakeClock()
        throttle = EditThrottle(clock)
        throttle.mark()
        for _ in range(3):
            assert not throttle.due()
        clock.advance(1)
        assert throttle.due() and throttle.due()


class TestReplyPagesBasics:
    def test_short_text_is_one_page(self) -> None:
        pages = streamed("Hello! Here is the answer.", limit=100)
        assert pages.pages == ["Hello! Here is the answer."]
        assert pages.text == "Hello! Here is the answer."

    def test_text_exactly_at_the_limit_is_not_split(self) -> None:
        assert ReplyPages(limit=50, pages=["x" * 50]).pages == ["x" * 50]
        pages = streamed("y" * 50, limit=50)
        assert pages.pages == ["y" * 50]

    def test_the_default_limit_is_mattermosts(self) -> None:
        assert ReplyPages().limit == MAX_POST_RUNES == 16383

    def test_plain_text_over_the_limit_is_split_and_nothing_is_lost(self) -> None:
        text = " ".join(f"word{i}" for i in range(2000))
        pages = streamed(text, limit=500)
        assert len(pages.pages) > 1
        assert all(len(page) <= 500 for page in pages.pages)
        assert "".join(pages.pages) == text

    def test_limits_count_runes_not_bytes(self) -> None:
        text = "👍🏽 中文 " * 5000
        pages = streamed(text, limit=MAX_POST_RUNES, chunk=301)
        assert all(len(page) <= MAX_POST_RUNES for page in pages.pages)
        assert any(len(page.encode()) > MAX_POST_RUNES for page in pages.pages)
        assert "".join(pages.pages) == text

    def test_a_giant_single_line_without_spaces_still_splits(self) -> None:
        text = "A" * 50_000
        pages = streamed(text, limit=MAX_POST_RUNES, chunk=4096)
        assert len(pages.pages) == 4
        assert all(0 < len(page) <= MAX_POST_RUNES for page in pages.pages)
        assert "".join(pages.pages) == text

    def test_one_huge_delta_is_split_into_many_pages(self) -> None:
        text = "B" * 10_000
        pages = ReplyPages(limit=1000)
        pages.add(text)
        assert len(pages.pages) >= 10
        assert all(len(page) <= 1000 for page in pages.pages)
        assert "".join(pages.pages) == text

    def test_closed_pages_never_change(self) -> None:
        text = "Intro paragraph.\n\n" + code_block(80) + "\nAnd a conclusion " * 40
        pages = ReplyPages(limit=400)
        closed: list[str] = []
        for i in range(0, len(text), 13):
            pages.add(text[i : i + 13])
            assert pages.pages[: len(closed)] == closed
            closed = pages.pages[:-1]


class TestBreaks:
    def test_a_paragraph_break_is_preferred_over_a_line_break(self) -> None:
        text = "a" * 60 + "\n\n" + "b" * 20 + "\n" + "c" * 10 + " " + "d" * 200
        head, rest = split_page(text, 108)
        assert head == "a" * 60 + "\n\n"
        assert rest == text[len(head) :]

    def test_a_line_break_is_preferred_over_a_space(self) -> None:
        text = "a" * 60 + "\n" + "b" * 20 + " " + "c" * 200
        head, _ = split_page(text, 108)
        assert head == "a" * 60 + "\n"

    def test_a_space_is_used_when_there_is_no_line_break(self) -> None:
        text = "a" * 60 + " " + "b" * 20 + " " + "c" * 200
        head, rest = split_page(text, 108)
        assert head == "a" * 60 + " " + "b" * 20 + " "
        assert head + rest == text

    def test_a_break_too_early_in_the_page_is_not_used(self) -> None:
        # A paragraph break in the first half would waste most of the page: cut later instead.
        text = "a" * 10 + "\n\n" + "b" * 500
        head, rest = split_page(text, 108)
        assert len(head) == 100
        assert head + rest == text

    def test_streamed_paragraphs_split_between_paragraphs(self) -> None:
        paragraphs = [f"Paragraph {i}. " + "Some words here. " * 8 for i in range(30)]
        text = "\n\n".join(paragraphs)
        pages = streamed(text, limit=600)
        for page in pages.pages[:-1]:
            assert page.endswith("\n\n"), repr(page[-30:])
        assert "".join(pages.pages) == text


class TestCodeFences:
    def test_a_split_code_block_is_closed_and_reopened_with_its_info_string(self) -> None:
        text = "Here is the script:\n\n" + code_block(60, info="python") + "\nRun it with `python x.py`."
        pages = streamed(text, limit=1000)
        assert len(pages.pages) >= 3
        for page in pages.pages:
            assert len(page) <= 1000
            assert fences_balanced(page), page
        for page in pages.pages[1:-1]:
            assert page.startswith("```python\n")
            assert page.endswith("\n```")
        assert without_fence_lines("".join(pages.pages)) == without_fence_lines(text)

    @pytest.mark.parametrize(
        ("marker", "info"),
        [("```", ""), ("~~~", "yaml"), ("````", "markdown"), ("```", "js {linenos=true}"), ("~~~~", "")],
    )
    def test_every_fence_style_is_carried_over(self, marker: str, info: str) -> None:
        text = "Intro.\n" + code_block(50, info=info, marker=marker) + "Outro."
        pages = streamed(text, limit=700)
        assert len(pages.pages) >= 2
        for page in pages.pages:
            assert len(page) <= 700
            assert fences_balanced(page), page
        for page in pages.pages[1:-1]:
            assert page.startswith(f"{marker}{info}\n")
        assert without_fence_lines("".join(pages.pages)) == without_fence_lines(text)

    def test_a_block_with_an_inner_shorter_fence_is_not_closed_by_it(self) -> None:
        inner = "```python\nprint('hi')\n```\n"
        text = "````markdown\n" + (inner + "Some prose between examples.\n") * 30 + "````\n"
        pages = streamed(text, limit=500)
        for page in pages.pages:
            assert fences_balanced(page)
        assert all(page.startswith("````markdown\n") for page in pages.pages[1:-1])

    def test_a_long_fence_marker_still_fits_the_limit(self) -> None:
        # The split reserves 8 runes to close a fence; a 10-backtick fence needs 11.
        marker = "`" * 10
        text = "intro\n" + marker + "python\n" + "\n".join(f"line {i} of code" for i in range(30)) + "\n" + marker + "\n"
        pages = streamed(text, limit=100)
        assert all(len(page) <= 100 for page in pages.pages), [len(page) for page in pages.pages]

    def test_an_absurd_info_string_is_not_carried_over(self) -> None:
        info = "x" * 200
        text = "```" + info + "\n" + "code line\n" * 200 + "```\n"
        pages = streamed(text, limit=400)
        assert all(len(page) <= 400 for page in pages.pages)
        assert all(page.startswith("```\n") for page in pages.pages[1:])
        assert all(fences_balanced(page) for page in pages.pages)

    def test_text_after_a_closed_block_is_not_fenced(self) -> None:
        text = code_block(3) + "\n" + "Plain prose after the code. " * 100
        pages = streamed(text, limit=600)
        assert all(not page.startswith("```") for page in pages.pages[1:])
        assert "".join(pages.pages) == text


class TestOpenFence:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("no code", None),
            ("```python\nx = 1", ("```python", "```")),
            ("```python\nx = 1\n```", None),
            ("~~~\nx\n```", ("~~~", "~~~")),  # a backtick line does not close a tilde fence
            ("````\nx\n```", ("````", "````")),  # a shorter marker does not close
            ("```\nx\n````", None),  # a longer one does
            ("```py\nx\n``` not a close", ("```py", "```")),  # a closing line has no info
            ("   ```sh\nls", ("```sh", "```")),  # up to three spaces of indent
            ("    ```sh\nls", None),  # four spaces is an indented code line, not a fence
        ],
    )
    def test_open_fence_follows_commonmark(self, text: str, expected: tuple[str, str] | None) -> None:
        assert open_fence(text) == expected


blocks = st.one_of(
    st.lists(
        st.sampled_from(["word", "longerword", "x", "中文", "👍", "`inline`", "a,b", "@channel", "@all:", "@here@here"]),
        min_size=1,
        max_size=60,
    )
    .map(" ".join)
    .map(lambda s: s + "\n\n"),
    st.tuples(
        st.sampled_from(["```", "~~~", "````"]),
        st.sampled_from(["", "python", "js {x=1}", "c++"]),
        st.lists(st.text(st.sampled_from("abc xyz(){};=\t"), max_size=70), max_size=25),
    ).map(lambda t: f"{t[0]}{t[1]}\n" + "".join(line + "\n" for line in t[2]) + f"{t[0]}\n"),
    st.text(st.sampled_from("qwerty"), min_size=100, max_size=900),  # a line without any break
)


class TestSplitProperties:
    @settings(max_examples=80, deadline=None)
    @given(
        text=st.lists(blocks, min_size=1, max_size=8).map("".join),
        limit=st.integers(60, 800),
        chunk=st.integers(1, 400),
    )
    def test_pages_fit_keep_fences_balanced_and_lose_nothing(self, text: str, limit: int, chunk: int) -> None:
        pages = streamed(text, limit=limit, chunk=chunk).pages
        for page in pages:
            assert len(defuse_broadcasts(page)) <= limit  # what is posted
        for page in pages[:-1]:
            assert fences_balanced(page)
        assert without_fence_lines("".join(pages)) == without_fence_lines(text)
        if open_fence(text) is None:
            assert fences_balanced(pages[-1])


class TestDefuseBroadcasts:
    @pytest.mark.parametrize("word", ["@channel", "@all", "@here", "@Channel", "@ALL"])
    def test_channel_wide_mentions_get_a_zero_width_space(self, word: str) -> None:
        out = defuse_broadcasts(f"ping {word}, please")
        assert out == f"ping @\u200b{word[1:]}, please"

    @pytest.mark.parametrize("text", ["@alice hi", "@channels is a word", "mail me@all.example", "no mention", "@allison"])
    def test_other_text_is_untouched(self, text: str) -> None:
        assert defuse_broadcasts(text) == text


class TestPagesFitOnceDefused:
    """Mattermost gets each page defused: one zero-width space more per broadcast."""

    def test_a_page_full_of_channel_mentions_fits_once_defused(self) -> None:
        text = "@channel " * 5_000
        pages = streamed(text, limit=MAX_POST_RUNES, chunk=97).pages
        assert len(pages) > 2
        assert all(len(defuse_broadcasts(page)) <= MAX_POST_RUNES for page in pages), [len(defuse_broadcasts(p)) for p in pages]
        assert "".join(pages) == text

    @pytest.mark.parametrize("word", ["@all", "@here", "@channel"])
    def test_broadcasts_without_spaces_between_them_fit_too(self, word: str) -> None:
        text = (word + "\n") * 3_000
        pages = streamed(text, limit=1_000, chunk=1).pages
        assert all(len(defuse_broadcasts(page)) <= 1_000 for page in pages)
        assert "".join(pages) == text

    def test_a_split_cuts_shorter_by_what_defusing_adds(self) -> None:
        text = "@all " * 30
        head, rest = split_page(text, 100)
        assert head == "@all " * 16  # 18 fit the raw limit (90 runes), 108 once defused
        assert len(defuse_broadcasts(head)) == 96
        assert head + rest == text

    def test_text_without_broadcasts_is_cut_as_before(self) -> None:
        text = "a" * 60 + "\n" + "b" * 20 + " " + "c" * 200
        assert split_page(text, 108)[0] == "a" * 60 + "\n"

    def test_pages_are_kept_as_written_and_defused_when_posted(self) -> None:
        pages = streamed("ping @channel" + "s, the bot's users", limit=MAX_POST_RUNES).pages
        assert pages == ["ping @channels, the bot's users"]  # "@channels" is no broadcast

    @pytest.mark.parametrize("text", ["", "no mention", "@alice", "@all @here x@all", "@channel\n@ALL"])
    def test_defused_len_is_the_length_once_defused(self, text: str) -> None:
        assert defused_len(text) == len(defuse_broadcasts(text))
