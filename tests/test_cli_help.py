"""`rlhfkit <command> --help` reads the config from source (no torch import) and says exactly what the
imported config class says."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from rlhfkit.cli import COMMANDS, GROUPS, field_help
from rlhfkit.cli_help import Unreadable, help_lines
from rlhfkit.stages import STAGES
from tests.helpers import REPO

ALL = {**COMMANDS, **{f"{g} {s}": spec for g, subs in GROUPS.items() for s, spec in subs.items()}}


@pytest.mark.parametrize("command", sorted(ALL))
def test_the_source_read_help_equals_the_imported_configs(command):
    module, cls_name = ALL[command][:2]
    try:
        lines = help_lines(module, cls_name)
    except Unreadable:
        assert command not in STAGES, f"{command}: every stage's help must be readable from source"
        return
    assert lines == field_help(getattr(importlib.import_module(module), cls_name))


def test_every_stage_help_is_read_without_importing_torch():
    code = ("import sys; from rlhfkit.cli import main\n"
            f"for c in {sorted(STAGES)!r}: main([c, '--help'])\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--lora.r=0" in proc.stdout and "--lr=0.001" in proc.stdout  # a nested section and a plain field


def test_a_config_whose_default_is_computed_falls_back_to_importing(tmp_path, monkeypatch):
    (tmp_path / "computed_cfg.py").write_text("import os\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass Config:\n"
                                               "    out: str = os.path.join('a', 'b')  # computed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Unreadable):
        help_lines("computed_cfg", "Config")
    from rlhfkit.cli import config_help

    assert config_help("computed_cfg", "Config") == ["  --out='a/b'                    computed"]
