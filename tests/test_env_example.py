""".env.example documents exactly the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from annotated_types import Ge, Le
from dotenv import dotenv_values

from llmbot.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / ".env.example"
LLMBOT_VARIABLE = re.compile(r"\bLLMBOT_[A-Z][A-Z0-9_]*[A-Z0-9]\b")  # not a wildcard like LLMBOT_PLUGIN_*
CONNECTION_VARIABLES = {"MATTERMOST_URL", "MATTERMOST_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL"}


def variables_read_by_the_code() -> set[str]:
    found: set[str] = set()
    for path in sorted((REPO / "llmbot").rglob("*.py")):
        found |= set(LLMBOT_VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def variables_listed_in_the_example() -> set[str]:
    """Names assigned in .env.example, whether active or commented out as an example line."""
    text = EXAMPLE.read_text(encoding="utf-8")
    commented = re.findall(r"(?m)^\s*#\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=", text)
    return set(dotenv_values(EXAMPLE)) | set(commented)


def test_the_code_reads_some_llmbot_variables() -> None:
    # Guards the grep itself: if it found nothing, the tests below would pass vacuously.
    assert {"LLMBOT_MODEL", "LLMBOT_TRIGGER", "LLMBOT_END"} <= variables_read_by_the_code()


def test_every_llmbot_variable_the_code_reads_is_in_the_example() -> None:
    missing = variables_read_by_the_code() - variables_listed_in_the_example()
    assert not missing, f"add these to .env.example with a comment: {sorted(missing)}"


def test_the_connection_variables_are_in_the_example() -> None:
    missing = CONNECTION_VARIABLES - variables_listed_in_the_example()
    assert not missing, f"add these to .env.example: {sorted(missing)}"


def test_the_example_names_no_llmbot_variable_the_code_does_not_read() -> None:
    named = set(LLMBOT_VARIABLE.findall(EXAMPLE.read_text(encoding="utf-8")))
    stale = named - variables_read_by_the_code()
    assert not stale, f".env.example mentions settings the code ignores: {sorted(stale)}"


def test_every_example_variable_has_a_comment_above_it() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"([A-Z][A-Z0-9_]*)=", line)
        if match:
            assert i > 0 and lines[i - 1].lstrip().startswith("#"), f"{match.group(1)} has no explanation"


def comment_above(name: str) -> str:
    """The comment lines right above `name=` in .env.example."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
    block: list[str] = []
    while i > 0 and lines[i - 1].startswith("#"):
        i -= 1
        block.insert(0, lines[i].lstrip("# "))
    return " ".join(block)


def shown(number: object) -> str:
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)


def test_every_numeric_setting_documents_its_default_and_the_range_the_code_enforces() -> None:
    checked = 0
    for field in Settings.model_fields.values():
        low = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
        high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
        if low is None or high is None:
            continue
        comment = comment_above(str(field.validation_alias))
        assert f"range {shown(low)}..{shown(high)}" in comment, field.validation_alias
        assert f"Default {shown(field.default)}" in comment, field.validation_alias
        checked += 1
    assert checked >= 14  # guards the loop: every number has a range


def test_the_on_off_settings_document_their_default() -> None:
    for name, default in (("LLMBOT_MERGE_USER_TURNS", "off"), ("LLMBOT_DIRECT_MESSAGES", "on")):
        assert f"{name}={default}" in EXAMPLE.read_text(encoding="utf-8")
    assert "Default off" in comment_above("LLMBOT_MERGE_USER_TURNS")
