"""Prompt templates: `$name` placeholders (string.Template), checked at start-up."""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptError

# prompts/ beside the package (a checkout or an editable install), else where a wheel installs it.
_PROMPT_DIRS = (Path(__file__).resolve().parent.parent / "prompts", Path(sys.prefix) / "share" / "llmbot" / "prompts")
PROMPTS_DIR = next((d for d in _PROMPT_DIRS if d.is_dir()), _PROMPT_DIRS[0])
SYSTEM_VARIABLES = ("bot_name", "date", "channel", "participants")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    template: string.Template

    def render(self, **values: str) -> str:
        try:
            return self.template.substitute(values)
        except KeyError as exc:
            raise PromptError(f"prompt {self.name} uses ${exc.args[0]}, which is not one of: {', '.join(values)}") from None
        except ValueError as exc:
            raise PromptError(f"prompt {self.name} has a malformed placeholder ({exc}); write $$ for a literal $") from None


def load_prompt(path: Path, variables: tuple[str, ...] = SYSTEM_VARIABLES) -> PromptTemplate:
    """Read and check a template: every placeholder must be one of `variables`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read prompt file {path}: {exc}") from None
    prompt = PromptTemplate(str(path), string.Template(text))
    prompt.render(**{v: v for v in variables})  # fails now, not on the first user's turn
    return prompt


def load_system_prompt(override: Path | None) -> PromptTemplate:
    return load_prompt(override or PROMPTS_DIR / "system.md")
