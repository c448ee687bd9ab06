"""The example config file and the key table of docs/configuration.md, both written from the config model.

``lam config docs`` rewrites them in a source checkout; a test fails when either is stale.
Capability sections come from the built-in capabilities' own ``config_schema``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from lamcontrol.config import MODEL, Setting, capability_entry_points

EXAMPLE = Path("config") / "lamcontrol.example.toml"
REFERENCE = Path("docs") / "configuration.md"
TABLE_START, TABLE_END = "<!-- config keys: start (lam config docs) -->", "<!-- config keys: end -->"
COMMENT_COLUMN = 34
WIDTH = 110

HEADER = """\
# LAMControl configuration: every key with its default. Generated from the config model by
# `lam config docs` (lam config example prints it); a key not listed here is refused.
#
# Copy to ~/.config/lamcontrol/config.toml (or /etc/lamcontrol/config.toml, or point
# $LAM_CONFIG or --config at it), uncomment only what you change. No file at all works too.
# Secrets never need to be in this file: every *_file key names a file holding one, and
# $LAM_BROKER_PASSWORD, $GROQ_API_KEY, $HASS_TOKEN, $LAM_TELEGRAM_TOKEN, $LAM_DISCORD_TOKEN
# override them.
"""


def builtin_capabilities() -> dict[str, Any]:
    """The capability classes that ship with LAMControl, by name (third-party plugins document themselves)."""
    found = {name: ep for name, ep in capability_entry_points().items() if ep.value.startswith("lamcontrol.")}
    return {name: found[name].load() for name in sorted(found)}


def all_sections() -> list[tuple[str, str, dict[str, Setting]]]:
    """(table name, what it is, its settings) for the model's sections, then each built-in capability's."""
    sections = [(name, section.help, section.settings) for name, section in MODEL.items()]
    for name, capability in builtin_capabilities().items():
        sections.append((f"capabilities.{name}", capability.summary, capability.config_schema))
    return sections


def toml_value(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def meaning(setting: Setting) -> str:
    if setting.state_file:
        return f"{setting.help}; empty: {setting.state_file} in the state directory"
    return setting.help


def example() -> str:
    """The whole example file."""
    lines = [HEADER]
    for name, about, settings in all_sections():
        lines.append(f"[{name}]".ljust(COMMENT_COLUMN) + f"# {about}")
        for key, setting in settings.items():
            assignment = f"# {key} = {toml_value(setting.default)}"
            text = textwrap.wrap(meaning(setting), WIDTH - COMMENT_COLUMN - 2) or [""]
            if len(assignment) >= COMMENT_COLUMN:
                lines.append(assignment)
                assignment = "#"
            lines.append(assignment.ljust(COMMENT_COLUMN) + f"# {text[0]}")
            lines += ["#".ljust(COMMENT_COLUMN) + f"# {more}" for more in text[1:]]
        lines.append("")
    return "\n".join(lines)


def key_table() -> str:
    """The reference's table of every key."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, _, settings in all_sections():
        for key, setting in settings.items():
            default = toml_value(setting.default).replace("|", "\\|")
            rows.append(f"| `[{name}] {key}` | `{default}` | {meaning(setting).replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def with_table(page: str) -> str:
    """``page`` with the text between the markers replaced by the current table."""
    start, end = page.find(TABLE_START), page.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{REFERENCE} lacks the markers {TABLE_START} ... {TABLE_END}")
    return page[:start + len(TABLE_START)] + "\n" + key_table() + "\n" + page[end:]


def generated(root: Path) -> dict[Path, str]:
    """Each generated file under the checkout ``root`` with the text it should have."""
    return {root / EXAMPLE: example(), root / REFERENCE: with_table((root / REFERENCE).read_text())}


def stale(root: Path) -> list[Path]:
    """The generated files under ``root`` that differ from what the model gives."""
    return [path for path, text in generated(root).items() if not path.is_file() or path.read_text() != text]


def source_root() -> Path | None:
    """The checkout this package runs from (an editable install), or None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / REFERENCE).is_file() and (root / EXAMPLE).parent.is_dir() else None
