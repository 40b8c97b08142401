"""Every ``dfkd-train`` command the README and docs/ show composes and passes dfkd-train's checks
of its values: a key renamed or an option removed in the configs fails here, not in a user's
terminal."""

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from dfkd_lab.train import compose_train
from dfkd_lab.validate import problems

REPO = Path(__file__).resolve().parents[1]
# What a command needs that only a user's machine has: a run dir to resume, a folder of configs
NEEDS_THE_USERS_FILES = ("resume=", "--config-dir", "hydra.searchpath=")


def documented_commands() -> list[tuple[str, str]]:
    """(file, arguments) of each ``dfkd-train`` line in a code block (continuation lines joined),
    a command shown twice once."""
    found = []
    for md in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", md.read_text(), re.DOTALL):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                words = line.split(" #")[0].split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # PYTHONPATH=... before it
                    words.pop(0)
                arguments = " ".join(words[1:])
                if words[:1] == ["dfkd-train"] and arguments not in {a for _, a in found}:
                    found.append((str(md.relative_to(REPO)), arguments))
    return found


def as_overrides(arguments: str) -> list[str]:
    """The config overrides of a command line; placeholders (``<run dir>``, ``[...]``) filled in,
    a multirun's sweeps reduced to their first value, Hydra's own settings left to Hydra."""
    arguments = re.sub(r"<[^>]*>", "RUN", arguments).replace("[...]", "[0.5]")
    overrides = []
    for arg in shlex.split(arguments):
        if arg == "-m" or arg.startswith(("hydra.", "hydra/")):
            continue
        key, _, value = arg.partition("=")
        if "-m" in arguments.split() and "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


COMMANDS = documented_commands()


def test_the_docs_show_commands_and_the_filter_keeps_most_of_them():
    composable = [c for _, c in COMMANDS if not any(n in c for n in NEEDS_THE_USERS_FILES)]
    assert len(COMMANDS) >= 35 and len(composable) >= 0.8 * len(COMMANDS)


@pytest.mark.parametrize("where,arguments", [c for c in COMMANDS if not any(n in c[1] for n in NEEDS_THE_USERS_FILES)],
                         ids=lambda v: v if v.endswith(".md") else None)
def test_a_documented_command_composes(where, arguments, monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # no earlier test's run: the checks read its choices
    cfg = compose_train(as_overrides(arguments))
    found = problems(cfg, on_this_machine=False)  # dfkd-train would accept its values ...
    assert [p for p in found if "cannot be imported" not in p] == []  # ... a user's own module is on their path
