"""Every option that two or more `crnet` commands use is defined once, in crnet.cli.arguments.

The check builds every subcommand's parser while recording, for each option, the function
that called ``add_argument``; it is tested on fake commands, so it can fail.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from unittest import mock

from crnet.cli import SUBCOMMANDS, build_parser

SHARED_MODULE = "crnet.cli.arguments"


def option_definitions(build: Callable[[str], argparse.ArgumentParser],
                       commands: Iterable[str]) -> dict[str, dict[str, set[str]]]:
    """option -> command -> the functions (``module.qualname``) whose add_argument call
    defined it, over the parsers ``build`` makes (argparse's own -h/--help left out)."""
    found: dict[str, dict[str, set[str]]] = {}
    original = argparse._ActionsContainer.add_argument
    command = ""

    def traced(self: argparse._ActionsContainer, *flags: object, **kwargs: object) -> object:
        frame = sys._getframe(1)
        definer = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_qualname}"
        for flag in flags:
            if isinstance(flag, str) and flag.startswith("-") and flag not in ("-h", "--help"):
                found.setdefault(flag, {}).setdefault(command, set()).add(definer)
        return original(self, *flags, **kwargs)

    with mock.patch.object(argparse._ActionsContainer, "add_argument", traced):
        for command in commands:
            build(command)
    return found


def shared_option_violations(definitions: dict[str, dict[str, set[str]]],
                             shared_module: str = SHARED_MODULE) -> list[str]:
    """``--flag: definers`` for each option used by two or more commands that is not defined
    by exactly one function of ``shared_module``."""
    bad = []
    for flag, by_command in sorted(definitions.items()):
        if len(by_command) < 2:
            continue
        definers = set().union(*by_command.values())
        if len(definers) != 1 or not next(iter(definers)).startswith(shared_module + "."):
            bad.append(f"{flag}: {sorted(definers)}")
    return bad


def format_definitions(definitions: dict[str, dict[str, set[str]]]) -> str:
    """One line per option: the commands that use it and the function that defined it."""
    return "\n".join(f"{flag:<28} {', '.join(sorted(by_command))}: "
                     f"{', '.join(sorted(set().union(*by_command.values())))}"
                     for flag, by_command in sorted(definitions.items()))


def test_every_shared_option_is_defined_once() -> None:
    definitions = option_definitions(build_parser, SUBCOMMANDS)
    table = format_definitions(definitions)
    assert shared_option_violations(definitions) == [], table
    # the data group's options are shared by the commands that read episodes
    assert set(definitions["--seed"]) >= {"train", "export", "eval", "synthetic"}
    assert set().union(*definitions["--seed"].values()) == {f"{SHARED_MODULE}.add_seed"}
    assert set().union(*definitions["--dataset"].values()) == {f"{SHARED_MODULE}.add_dataset"}
    assert len(definitions["--dataset"]) >= 3
    # a command's own option is listed with the command that defined it
    assert definitions["--opset"] == {"export": {"crnet.cli.commands.export.add_arguments"}}


def _fake_parsers(seed_twice: bool) -> Callable[[str], argparse.ArgumentParser]:
    def add_seed(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seed", type=int, default=0)

    def train(parser: argparse.ArgumentParser) -> None:
        add_seed(parser)
        parser.add_argument("--steps", type=int)

    def export(parser: argparse.ArgumentParser) -> None:
        if seed_twice:
            parser.add_argument("--seed", type=int, default=0)  # its own, second definition
        else:
            add_seed(parser)

    def build(command: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=command)
        {"train": train, "export": export}[command](parser)
        return parser

    return build


def test_the_check_finds_an_option_defined_twice() -> None:
    here = __name__
    twice = option_definitions(_fake_parsers(seed_twice=True), ["train", "export"])
    assert twice["--seed"] == {
        "train": {f"{here}._fake_parsers.<locals>.add_seed"},
        "export": {f"{here}._fake_parsers.<locals>.export"}}
    assert twice["--steps"] == {"train": {f"{here}._fake_parsers.<locals>.train"}}
    assert shared_option_violations(twice, shared_module=here) == [
        f"--seed: ['{here}._fake_parsers.<locals>.add_seed', "
        f"'{here}._fake_parsers.<locals>.export']"]
    once = option_definitions(_fake_parsers(seed_twice=False), ["train", "export"])
    assert shared_option_violations(once, shared_module=here) == []
    # defined once, but outside the shared module: still a violation
    assert shared_option_violations(once, shared_module="crnet.cli.arguments") == [
        f"--seed: ['{here}._fake_parsers.<locals>.add_seed']"]


def test_backend_choices_come_from_the_registry() -> None:
    from crnet.runtime.backends.base import REGISTRY

    for command in ("eval", "serve"):
        action = next(a for a in build_parser(command)._actions if "--backend" in a.option_strings)
        assert action.choices == ["auto", *sorted(REGISTRY)]
