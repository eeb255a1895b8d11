"""`rlhfkit <command> [--config FILE.yaml] [--section.key=value ...]`

Every command is a typed config plus one function; the config loads from YAML
with CLI overrides, and `rlhfkit <command> --help` lists its fields. Imports are
lazy so `rlhfkit --help` starts in a blink.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, config class, entry function, one-line help)
COMMANDS = {
    "pipeline": ("rlhfkit.pipeline", "Config", "main", "the whole demo: pretrain -> SFT -> feedback -> RM -> PPO/DPO -> eval -> report, cached"),
    "pretrain": ("rlhfkit.stages.pretrain", "Config", "train", "causal-LM pretraining of the tiny model on the world corpus"),
    "sft": ("rlhfkit.stages.sft", "Config", "train", "supervised fine-tuning on demonstrations"),
    "generate": ("rlhfkit.stages.generate", "Config", "main", "batched sampling from a policy"),
    "sample": ("rlhfkit.stages.generate", "SampleConfig", "main", "K responses per prompt: the queue to be ranked"),
    "feedback": ("rlhfkit.stages.feedback", "Config", "main", "sample K responses, rank them with the simulated panel, export pairs"),
    "rm": ("rlhfkit.stages.rm", "Config", "train", "Bradley-Terry reward model on preference pairs"),
    "ppo": ("rlhfkit.stages.ppo", "Config", "train", "PPO against the reward model with a KL penalty to the SFT model"),
    "dpo": ("rlhfkit.stages.dpo", "Config", "train", "direct preference optimisation (sigmoid / IPO / cDPO)"),
    "rloo": ("rlhfkit.stages.rloo", "Config", "train", "critic-free online RL with a leave-one-out baseline"),
    "grpo": ("rlhfkit.stages.grpo", "Config", "train", "critic-free online RL with group-normalised advantages"),
    "seeds": ("rlhfkit.seeds", "Config", "main", "one stage trained with several seeds, each judged against one baseline"),
    "eval": ("rlhfkit.stages.eval", "Config", "main", "gold evaluation of policies on held-out world prompts"),
    "report": ("rlhfkit.stages.report", "Config", "main", "HTML + Markdown report (with plots) of a pipeline run"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rlhfkit <command> [--config FILE.yaml] [--key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {spec[3]}" for name, spec in COMMANDS.items()]
    lines += [f"  {'label':<{width}}  the labelling web app and its admin commands (rlhfkit label --help)"]
    lines += ["", "`rlhfkit <command> --help` lists a command's config fields."]
    return "\n".join(lines)


def field_help(cls, prefix: str = "") -> list[str]:
    """One line per config field: dotted name, default and the comment written beside it in the source."""
    import dataclasses
    import inspect
    import re

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        src = ""
    docs = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", src, re.M))
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            out += field_help(type(default), prefix + f.name + ".")
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
    if command not in COMMANDS:
        print(f"rlhfkit: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, cls_name, fn_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    if "-h" in rest or "--help" in rest:
        print(f"rlhfkit {command}: {help_text}\n\nconfig fields (YAML keys / --overrides):")
        print("\n".join(field_help(cls)))
        return 0
    from rlhfkit.config import ConfigError, parse_cli

    try:
        cfg = parse_cli(cls, rest)
    except ConfigError as e:
        print(f"rlhfkit {command}: config error: {e}", file=sys.stderr)
        return 2
    return run_reporting_errors(command, lambda: getattr(module, fn_name)(cfg) and 0)


def run_reporting_errors(command: str, fn) -> int:
    """Bad input (malformed data, a missing file, an invalid config) is a message, not a traceback."""
    from rlhfkit.config import ConfigError
    from rlhfkit.data.loaders import DataError

    try:
        return fn() or 0
    except (DataError, ConfigError, FileNotFoundError) as e:
        print(f"rlhfkit {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
