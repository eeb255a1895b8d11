"""`rlhfkit <command> [--config FILE.yaml] [--section.key=value ...]`

Every command is a typed config plus one function; the config loads from YAML
with CLI overrides, and `rlhfkit <command> --help` lists its fields. Imports are
lazy so `rlhfkit --help` starts in a blink.
"""

from __future__ import annotations

import importlib
import os
import sys

from rlhfkit.stages import STAGES

# command -> (module, config class, entry function, one-line help): the library's stages (rlhfkit.stages.STAGES),
# then the demo's commands. The demo's modules are named here, never imported, until one is run.
COMMANDS = {name: tuple(spec) for name, spec in STAGES.items()} | {
    "pipeline": ("rlhfkit.demo.pipeline", "Config", "main", "the demo: world -> pretrain -> SFT -> feedback -> RM -> PPO/DPO -> eval -> report, cached"),
    "feedback": ("rlhfkit.demo.feedback", "Config", "main", "the demo's feedback: sample K answers, the simulated panel ranks them, export pairs"),
    "seeds": ("rlhfkit.demo.seeds", "Config", "main", "one demo stage trained with several seeds, each judged against one baseline"),
    "report": ("rlhfkit.demo.report.cli", "Config", "main", "HTML + Markdown report (with plots) of a pipeline run"),
}
GROUPS = {  # `rlhfkit world <sub>`: the built-in world's own commands
    "world": {
        "export": ("rlhfkit.world.export", "Config", "main", "write the world's splits as ordinary data files"),
        "eval": ("rlhfkit.demo.eval", "Config", "main", "gold evaluation of policies on the world's held-out prompts"),
    },
}


def usage() -> str:
    width = max([*map(len, COMMANDS), *(len(f"{g} {s}") for g, subs in GROUPS.items() for s in subs)])
    lines = ["usage: rlhfkit <command> [--config FILE.yaml] [--key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {spec[3]}" for name, spec in COMMANDS.items()]
    lines += [f"  {'label':<{width}}  the labelling web app and its admin commands (rlhfkit label --help)"]
    lines += [f"  {'sweep':<{width}}  the whole demo pipeline once per seed, each method's spread (rlhfkit sweep --help)"]
    for group, subs in GROUPS.items():
        lines += [f"  {group + ' ' + sub:<{width}}  {spec[3]}" for sub, spec in subs.items()]
    lines += ["", "`rlhfkit <command> --help` lists a command's config fields."]
    return "\n".join(lines)


def field_help(cls, prefix: str = "", obj=None) -> list[str]:
    """One line per config field: dotted name, default (the value in `obj` when given) and the comment
    written beside it in the source."""
    import dataclasses
    import inspect
    import re

    docs = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        try:
            docs.update(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(klass), re.M))
        except (OSError, TypeError):
            pass
    out = []
    for f in dataclasses.fields(cls):
        default = getattr(obj, f.name) if obj is not None else f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            out += field_help(type(default), prefix + f.name + ".", default if obj is not None else None)
        else:
            out.append(f"  --{prefix}{f.name}={default!r:<24} {docs.get(f.name, '')}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "label":
        from rlhfkit.feedback.cli import main as label_main

        return run_reporting_errors(command, lambda: label_main(rest))
    if command == "sweep":  # the demo's whole-pipeline seeds: pipeline overrides pass through
        return run_reporting_errors(command, lambda: importlib.import_module("rlhfkit.demo.sweep").main(rest))
    table = COMMANDS
    if command in GROUPS:
        table = {f"{command} {sub}": spec for sub, spec in GROUPS[command].items()}
        command = f"{command} {rest[0]}" if rest else command
        rest = rest[1:]
    if command not in table:
        print(f"rlhfkit: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, cls_name, fn_name, help_text = table[command]
    if "-h" in rest or "--help" in rest:
        print(f"rlhfkit {command}: {help_text}\n\nconfig fields (YAML keys / --overrides):")
        print("\n".join(config_help(module_name, cls_name)))
        return 0
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    from rlhfkit.config import ConfigError, parse_cli

    try:
        cfg = parse_cli(cls, rest)
    except ConfigError as e:
        print(f"rlhfkit {command}: config error: {e}", file=sys.stderr)
        return 2
    code = run_reporting_errors(command, lambda: getattr(module, fn_name)(cfg) and 0)
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun rank whose stage finished and closed its process group leaves without the interpreter's
        # teardown, where gloo's threads sometimes abort a rank that has done all its work ("terminate called
        # without an active exception"), which torchrun reports as a failed job
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


def config_help(module_name: str, cls_name: str) -> list[str]:
    """`field_help` of a command's config: read from the source when it says every default plainly (no torch
    import, so `--help` is instant), else from the imported class (defaults as its config files set them)."""
    from rlhfkit.cli_help import Unreadable, help_lines

    try:
        return help_lines(module_name, cls_name)
    except Unreadable:
        from rlhfkit.config import load_config

        cls = getattr(importlib.import_module(module_name), cls_name)
        base = load_config(cls) if getattr(cls, "BASE_CONFIGS", ()) else None
        return field_help(cls, obj=base)


def run_reporting_errors(command: str, fn) -> int:
    """Bad input (malformed data, a missing file, an invalid config) is a message, not a traceback."""
    from rlhfkit.checkpoint import CheckpointError
    from rlhfkit.config import ConfigError
    from rlhfkit.data.loaders import DataError
    from rlhfkit.distributed import NotDistributed, refuse_multi_process
    from rlhfkit.optim import DivergedError

    try:
        refuse_multi_process(command)  # eval, sample, pipeline, label ...: one process's work, not a rank's
        return fn() or 0
    except (DataError, ConfigError, CheckpointError, FileNotFoundError, NotDistributed) as e:
        print(f"rlhfkit {command}: error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        print(f"rlhfkit {command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
