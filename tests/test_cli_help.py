"""`ddiff <command> --help`: every option has help text that shows its default, and no help text
names an option its command does not have (issue 28, item 6)."""
from __future__ import annotations

import argparse
import re

import pytest

from flows.cli import build_parser

OPTION = re.compile(r"(?:\bddiff (\w+) )?(?<![\w-])(--[a-z][a-z0-9-]*)")


def _commands():
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return ap, dict(sub.choices)


def _shown(sp, action) -> str:
    """The help line argparse prints for ``action`` (with the formatter's defaults)."""
    return sp._get_formatter()._expand_help(action)


@pytest.mark.parametrize("name", list(_commands()[1]))
def test_every_option_has_help_and_shows_its_default(name):
    sp = _commands()[1][name]
    missing, no_default = [], []
    for action in sp._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(label)
            continue
        if action.option_strings and "default" not in _shown(sp, action).lower():
            no_default.append(label)
    assert not missing, f"ddiff {name}: no help text for {missing}"
    assert not no_default, f"ddiff {name}: help does not show the default of {no_default}"


@pytest.mark.parametrize("name", list(_commands()[1]))
def test_help_names_only_options_the_command_has(name):
    _, commands = _commands()
    sp = commands[name]
    texts = [sp.description or ""] + [a.help for a in sp._actions if a.help and a.help != argparse.SUPPRESS]
    wrong = []
    for text in texts:
        for other, opt in OPTION.findall(text):
            target = commands.get(other, sp) if other else sp
            if opt not in target._option_string_actions:
                wrong.append(f"{opt} (in {text[:60]!r}…)" if not other else f"ddiff {other} {opt}")
    assert not wrong, f"ddiff {name}: help names options it does not have: {wrong}"


def test_defaults_are_printed_in_the_help_text():
    _, commands = _commands()
    text = commands["reconstruct"].format_help()
    assert "tile core size (pixels) (default: 256)" in " ".join(text.split())
    assert "(default: 16)" in text and "(default: 4)" in text  # --overlap, --batch-size
