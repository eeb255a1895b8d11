"""rlhfkit.config: defaults <- YAML <- CLI overrides, type checks with dotted-key errors, resolve(), round trip."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from rlhfkit.config import ConfigError, dump_yaml, load_config, parse_cli, to_dict


@dataclass
class Optim:
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 10  # linear warmup
    name: str = "adamw"  # optimiser name


@dataclass
class Shared:
    size: int = 3  # stand-in for a section several stages point at

    def resolve(self) -> None:
        # Counted outside the fields so that equality and YAML ignore it.
        self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1


@dataclass
class Cfg:
    out_dir: str = "runs/x"  # run directory
    seed: int = 0  # random seed
    quick: bool = False  # smoke profile
    batch_size: int = 8  # sequences per step
    micro_batch_size: int = 4  # sequences per forward
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"  # preference loss
    data: str | None = None  # optional data file
    tags: list[str] = field(default_factory=list)  # free-form labels
    sizes: tuple[int, ...] = (1, 2)  # a tuple field
    weights: dict[str, float] = field(default_factory=dict)  # per-source weights
    sft: Optim = field(default_factory=Optim)  # nested section
    extra: Optim | None = None  # optional section
    world: Shared = field(default_factory=Shared)  # section with its own resolve()
    accum: int = 0  # derived in resolve(): batch_size // micro_batch_size
    order: list[str] = field(default_factory=list)  # derived: which resolve() ran first

    def resolve(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"'batch_size' ({self.batch_size}) must be a multiple of 'micro_batch_size' ({self.micro_batch_size})")
        self.accum = self.batch_size // self.micro_batch_size
        self.order = ["parent"] + (["world"] if getattr(self.world, "calls", 0) else [])


@dataclass
class Pipeline:
    a: Cfg = field(default_factory=Cfg)  # first stage
    b: Cfg = field(default_factory=Cfg)  # second stage
    shared: Shared = field(default_factory=Shared)  # wired into both stages

    def resolve(self) -> None:
        self.a.world = self.b.world = self.shared


def write_yaml(tmp_path, data) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_derived_values():
    cfg = load_config(Cfg)
    assert cfg.out_dir == "runs/x" and cfg.sft == Optim() and cfg.extra is None
    assert cfg.accum == 2  # 8 // 4, computed by resolve()


def test_yaml_nested_section_keeps_unset_defaults(tmp_path):
    path = write_yaml(tmp_path, {"seed": 3, "sft": {"lr": 0.5}, "extra": {"name": "sgd"}})
    cfg = load_config(Cfg, path)
    assert cfg.seed == 3
    assert cfg.sft == Optim(lr=0.5, warmup_steps=10, name="adamw")
    assert cfg.extra == Optim(name="sgd")  # a None section starts from its defaults


def test_precedence_cli_over_yaml_over_default(tmp_path):
    path = write_yaml(tmp_path, {"seed": 3, "batch_size": 16, "sft": {"lr": 0.5, "warmup_steps": 7}})
    cfg = load_config(Cfg, path, ["--seed=5", "sft.lr=0.25"])
    assert cfg.seed == 5 and cfg.sft.lr == 0.25  # CLI wins
    assert cfg.batch_size == 16 and cfg.sft.warmup_steps == 7  # YAML wins over default
    assert cfg.micro_batch_size == 4 and cfg.sft.name == "adamw"  # defaults
    assert cfg.accum == 4  # derived from the final values
    assert load_config(Cfg, None, ["seed=1", "seed=2"]).seed == 2  # later override wins


def test_override_spellings():
    cfg = load_config(Cfg, None, ["--seed", "4", "batch_size=12", "--sft.warmup-steps=3", "--quick", "--data", "d.jsonl"])
    assert (cfg.seed, cfg.batch_size, cfg.sft.warmup_steps, cfg.quick, cfg.data) == (4, 12, 3, True, "d.jsonl")


def test_bare_flag_needs_a_bool_field():
    with pytest.raises(ConfigError, match=r"'seed': missing value"):
        load_config(Cfg, None, ["--seed"])


def test_unknown_key_top_level_suggests():
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["--batch_sise=4"])
    assert str(e.value) == "unknown key 'batch_sise' (did you mean 'batch_size'?)"


def test_unknown_key_nested_names_dotted_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["sft.lrr=0.1"])
    assert str(e.value) == "unknown key 'sft.lrr' (did you mean 'lr'?)"
    path = write_yaml(tmp_path, {"sft": {"warmup": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, path)
    assert str(e.value) == f"{path}: unknown key 'sft.warmup' (did you mean 'warmup_steps'?)"


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'sft.zzz' \(valid keys: lr, warmup_steps, name\)"):
        load_config(Cfg, None, ["sft.zzz=1"])


def test_wrong_type_names_key_expected_type_and_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["sft.lr=abc"])
    assert str(e.value) == "'sft.lr': expected float, got 'abc'"
    path = write_yaml(tmp_path, {"sft": {"warmup_steps": 2.5}})
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, path)
    assert str(e.value) == f"{path}: 'sft.warmup_steps': expected int, got 2.5"
    with pytest.raises(ConfigError, match=r"'sft': expected a mapping of Optim fields, got 3"):
        load_config(Cfg, None, ["sft=3"])


def test_numbers():
    cfg = load_config(Cfg, None, ["sft.lr=1", "sft.warmup_steps=1e3"])
    assert cfg.sft.lr == 1.0 and type(cfg.sft.lr) is float  # int accepted for float
    assert cfg.sft.warmup_steps == 1000 and type(cfg.sft.warmup_steps) is int
    assert load_config(Cfg, None, ["sft.lr=1e-4"]).sft.lr == 1e-4  # YAML 1.1 reads this as a string
    with pytest.raises(ConfigError, match=r"'seed': expected int, got True"):
        load_config(Cfg, None, ["seed=true"])


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("True", True), ("1", True), ("0", False)])
def test_bool_parsing(text, expected):
    assert load_config(Cfg, None, [f"quick={text}"]).quick is expected


@pytest.mark.parametrize("text", ["maybe", "2", "0.5"])
def test_bool_rejects(text):
    with pytest.raises(ConfigError, match=r"'quick': expected bool, got"):
        load_config(Cfg, None, [f"quick={text}"])


def test_optional(tmp_path):
    assert load_config(Cfg, None, ["data=x.jsonl"]).data == "x.jsonl"
    assert load_config(Cfg, None, ["data=x.jsonl", "data=null"]).data is None
    with pytest.raises(ConfigError, match=r"'data': expected str \| None, got \[1\]"):
        load_config(Cfg, write_yaml(tmp_path, {"data": [1]}))
    with pytest.raises(ConfigError, match=r"unknown key 'extra.zz'"):  # the inner error, not 'expected Optim | None'
        load_config(Cfg, None, ["extra.zz=1"])


def test_string_field_takes_the_text_as_typed(tmp_path):
    cfg = load_config(Cfg, None, ["out_dir=42", "sft.name=true", "data=[1]"])
    assert cfg.out_dir == "42" and cfg.sft.name == "true" and cfg.data == "[1]"
    with pytest.raises(ConfigError, match=r"'out_dir': expected str, got 42"):  # a YAML file must quote it
        load_config(Cfg, write_yaml(tmp_path, {"out_dir": 42}))


def test_lists_tuples_dicts():
    cfg = load_config(Cfg, None, ["tags=[a, b]", "sizes=[4, 5, 6]", "weights={human: 1, ai: 0.5}", "weights.simulated=2"])
    assert cfg.tags == ["a", "b"]
    assert cfg.sizes == (4, 5, 6)
    assert cfg.weights == {"human": 1.0, "ai": 0.5, "simulated": 2.0}
    with pytest.raises(ConfigError, match=r"'sizes\[1\]': expected int, got 'x'"):
        load_config(Cfg, None, ["sizes=[1, x]"])
    with pytest.raises(ConfigError, match=r"'tags': expected list\[str\], got 'a'"):
        load_config(Cfg, None, ["tags=a"])
    with pytest.raises(ConfigError, match=r"'weights.ai': expected float, got 'lots'"):
        load_config(Cfg, None, ["weights.ai=lots"])


def test_literal_rejects_bad_choice():
    assert load_config(Cfg, None, ["loss_type=ipo"]).loss_type == "ipo"
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["loss_type=hinge"])
    assert str(e.value) == "'loss_type': expected one of 'sigmoid', 'ipo', got 'hinge'"


def test_resolve_error_propagates():
    with pytest.raises(ConfigError, match=r"'batch_size' \(6\) must be a multiple of 'micro_batch_size' \(4\)"):
        load_config(Cfg, None, ["batch_size=6"])


def test_resolve_parents_first_and_each_object_once():
    cfg = load_config(Pipeline)
    assert cfg.a.world is cfg.b.world is cfg.shared
    assert cfg.shared.calls == 1  # reached three times through the tree, resolved once
    assert cfg.a.order == ["parent"]  # Cfg.resolve ran before its section's
    assert cfg.a.accum == cfg.b.accum == 2


def test_yaml_round_trip(tmp_path):
    cfg = load_config(Cfg, None, ["seed=7", "data=d.jsonl", "tags=[x, 'true', '1']", "sizes=[3]",
                                  "weights={a: 0.1}", "extra.lr=1e-5", "sft.name=010", "loss_type=ipo"])
    path = str(tmp_path / "dump.yaml")
    dump_yaml(cfg, path)
    with open(path) as f:
        assert yaml.safe_load(f) == to_dict(cfg)
    assert to_dict(cfg)["sizes"] == [3] and to_dict(cfg)["extra"]["lr"] == 1e-5
    again = load_config(Cfg, path)
    assert again == cfg


def test_parse_cli(tmp_path):
    path = write_yaml(tmp_path, {"seed": 3, "sft": {"lr": 0.5}})
    cfg = parse_cli(Cfg, ["--sft.lr=0.1", "--config", path, "batch_size=4"])
    assert (cfg.seed, cfg.sft.lr, cfg.batch_size) == (3, 0.1, 4)
    assert parse_cli(Cfg, [f"--config={path}"]).seed == 3
    with pytest.raises(ConfigError, match="config file not found"):
        parse_cli(Cfg, ["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="unexpected argument 'oops'"):
        parse_cli(Cfg, ["oops"])


def test_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top level, got list"):
        load_config(Cfg, str(path))


@pytest.mark.parametrize("overrides, message", [
    (["--minibatch_size=24"], "batch sizes must nest"),
    (["--value_head=shared"], "'value_head': expected separate or policy, got 'shared'"),
    (["--value_head=policy", "--value_model=runs/rm/model"], "'value_model': a value head on the policy"),
    (["--kl_estimator=k9"], "'kl_estimator': expected one of"),
])
def test_ppo_config_errors_name_the_setting(overrides, message):
    from rlhfkit.stages import ppo

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ppo.Config, overrides=["--prompts=p.jsonl", *overrides])


# ---------------------------------------------------------------- ranges and duplicate keys
BAD_VALUES = [  # (stage, override, dotted key in the message); each once trained silently or crashed deep inside
    ("sft", "grad_clip=-1", "grad_clip"),  # gradient ascent
    ("sft", "grad_clip=0", "grad_clip"),  # no learning at all
    ("sft", "batch_size=-4", "batch_size"),  # a 566-row batch
    ("sft", "epochs=-1", "epochs"),  # one step
    ("sft", "eval_every=-5", "eval_every"),
    ("dpo", "lr=-0.001", "lr"),
    ("dpo", "beta=0", "beta"),
    ("rm", "batch_groups=0", "batch_groups"),
    ("ppo", "ckpt_every=0", "ckpt_every"),  # a ZeroDivisionError after the first iteration
    ("ppo", "lam=1.5", "lam"),
    ("grpo", "k=0", "k"),
    ("pipeline", "sft.lr=-1", "sft.lr"),  # a section's key, named in full
]


@pytest.mark.parametrize("stage,override,key", BAD_VALUES, ids=[f"{s}:{o}" for s, o, _ in BAD_VALUES])
def test_out_of_range_values_are_one_line_config_errors(stage, override, key):
    import importlib

    from rlhfkit.cli import COMMANDS

    module, cls = COMMANDS[stage][:2]
    with pytest.raises(ConfigError) as e:
        parse_cli(getattr(importlib.import_module(module), cls), [f"--{override}"])
    assert f"'{key}' must be" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_in_range_edges_are_accepted():
    from rlhfkit.stages import ppo, sft

    assert parse_cli(sft.Config, ["--data=x.jsonl", "--eval_every=0", "--warmup_steps=0"]).eval_every == 0  # 0: off
    assert parse_cli(ppo.Config, ["--prompts=p.jsonl", "--kl_coef=0", "--lam=1", "--gamma=1"]).lam == 1.0


def test_yaml_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("seed: 1\nsft:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="'lr' given twice"):
        load_config(Cfg, str(path))
