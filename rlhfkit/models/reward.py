"""Scalar-head models: the reward model and the value model.

Both are Hugging Face `AutoModelForSequenceClassification` models with one
label (a transformer backbone plus a linear `score` head), so a trained reward
model is an ordinary HF directory that TRL, OpenRLHF or `transformers` load.
We run the backbone and the head ourselves (`token_scores`) instead of calling
the model's forward, for two reasons: the same weights then give a value for
every token (the PPO critic, initialised from the reward model), and "the last
real token" is read from the attention mask, which is right under both left
and right padding (the HF forward infers it from pad ids).

Normalisation (Ziegler et al. 2019; Stiennon et al. 2020): after training, the
RM is shifted so its mean score over SFT samples is 0. The offset (and the std
of the scores) are stored in `config.json` as `rlhfkit_score_offset` /
`rlhfkit_score_std` and applied by `sequence_scores`.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from rlhfkit.models.lora import hf_model


def scalar_model_from_lm(path: str, device="cpu", dtype=torch.float32, seed: int = 0):
    """A fresh 1-output sequence-classification model whose backbone comes from the causal LM at `path`."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.load import disable_dropout, load_tokenizer

    tok = load_tokenizer(path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype, local_files_only=os.path.isdir(path))
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    head = score_head(model)
    # lm-human-preferences init: std 1/sqrt(d+1) keeps initial scores O(1).
    torch.nn.init.normal_(head.weight, std=1 / math.sqrt(model.config.hidden_size + 1))
    if getattr(head, "bias", None) is not None:
        torch.nn.init.zeros_(head.bias)
    model.config.pad_token_id = tok.pad_token_id
    model.config.rlhfkit_score_offset, model.config.rlhfkit_score_std = 0.0, 1.0
    disable_dropout(model)
    return model.to(device), tok


def load_scalar_model(path: str, device="cpu", dtype=torch.float32):
    """Load a trained reward (or value) model directory: `(model, tokenizer)`."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.load import disable_dropout, load_tokenizer

    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, local_files_only=os.path.isdir(path))
    model.config.pad_token_id = tok.pad_token_id
    disable_dropout(model)
    return model.to(device), tok


class ValueHeadOnPolicy(torch.nn.Module):
    """The memory-saving critic: a linear `score` head on the policy's own backbone.

    The backbone is shared, not copied, so PPO keeps one network (and one set of
    optimiser moments) instead of two; the value loss then also shapes the
    policy's features, scaled by `vf_coef`. `token_scores` treats it like any
    scalar model (it finds `base_model_prefix` and `score`).
    """

    base_model_prefix = "backbone"

    def __init__(self, policy, seed: int = 0):
        super().__init__()
        inner = hf_model(policy)  # the HF model, also when the policy carries LoRA adapters
        self.backbone = getattr(inner, inner.base_model_prefix)
        hidden = policy.config.hidden_size
        self.score = torch.nn.Linear(hidden, 1, bias=False).to(next(policy.parameters()).device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.nn.init.normal_(self.score.weight, std=1 / math.sqrt(hidden + 1))


def score_head(model) -> torch.nn.Module:
    for name in ("score", "classifier", "v_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__}: no scalar head found (expected .score or .classifier)")


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head applied at every position: (B, T) float."""
    from rlhfkit.models.logprobs import position_ids_from_mask

    hidden = backbone_of(model)(input_ids=input_ids, attention_mask=attention_mask.long(),
                      position_ids=position_ids_from_mask(attention_mask)).last_hidden_state  # (B, T, H)
    return score_head(model)(hidden).squeeze(-1).float()  # (B, T)


def response_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                    packed: bool = False) -> torch.Tensor:
    """The head at the columns P - 1 ... P + R - 2 of rollouts (B, P + R): a critic's values of the response
    tokens, (B, R). `packed`: on the rows' real tokens packed end to end (`rlhfkit.models.packed.pack_rollout`;
    only for a model `backbone_packs` accepts)."""
    if not packed:
        return token_scores(model, input_ids, attention_mask)[:, prompt_len - 1 : -1]
    from rlhfkit.models.packed import pack_rollout

    return _head_at(model, *pack_rollout(input_ids, attention_mask, prompt_len))


def row_scores(model, rows: Sequence[Sequence[int]], pad_id: int, normalized: bool = True, packed: bool = False,
               prompt_lens: Sequence[int] | None = None) -> torch.Tensor:
    """`sequence_scores` of token-id lists: (N,), right-padded into a batch, or with `packed` laid end to end
    (`rlhfkit.models.packed`; only for a model `backbone_packs` accepts). With `packed` and `prompt_lens` (the
    prompt's tokens at the start of each row), rows that begin with the same prompt share one copy of it
    (`pack_shared`; only for a model `backbone_shares` accepts)."""
    from rlhfkit.data.chat import pad_batch
    from rlhfkit.models.packed import pack, pack_shared

    if not packed:
        device = next(model.parameters()).device
        ids, attn = pad_batch(rows, pad_id, side="right")
        return sequence_scores(model, ids.to(device), attn.to(device), normalized)
    p = pack(rows, pad_id) if prompt_lens is None else pack_shared(rows, prompt_lens, pad_id)
    out = _head_at(model, p, *p.last())
    return out - getattr(model.config, "rlhfkit_score_offset", 0.0) if normalized else out


def _head_at(model, p, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """The head on the backbone's hidden states of the packed batch `p` (`Packed` or `Shared`) at positions
    (row, col), any shape."""
    param = next(model.parameters())
    mask = p.additive_mask(param.dtype).to(param.device) if hasattr(p, "additive_mask") else None
    hidden = backbone_of(model)(input_ids=p.input_ids.to(param.device), position_ids=p.position_ids.to(param.device),
                                attention_mask=mask, use_cache=False).last_hidden_state[row.to(param.device), col.to(param.device)]
    return score_head(model)(hidden).squeeze(-1).float()


def backbone_of(model):
    """The transformer under a scalar model's head (inside a peft wrapper too)."""
    inner = hf_model(model)
    return getattr(inner, inner.base_model_prefix)


def backbone_packs(model) -> bool:
    """`packs` for a scalar model: its backbone's hidden states keep packed sequences apart."""
    from rlhfkit.models.packed import packs

    backbone = backbone_of(model)
    return packs(backbone, lambda ids, pos: backbone(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state)


def backbone_shares(model) -> bool:
    """`shares_prompts` for a scalar model: its backbone honours a custom attention mask, so answers can share
    their prompt's tokens (`pack_shared`)."""
    from rlhfkit.models.packed import shares_prompts

    backbone = backbone_of(model)
    return shares_prompts(backbone, lambda ids, pos, mask: backbone(input_ids=ids, position_ids=pos, attention_mask=mask,
                                                                    use_cache=False).last_hidden_state)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row of a (B, T) mask (left or right padding)."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.long().flip(-1).argmax(-1)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """Reward at the last real token: (B,). Normalised by the stored offset unless `normalized=False`."""
    scores = token_scores(model, input_ids, attention_mask)
    out = scores.gather(1, last_token_index(attention_mask)[:, None])[:, 0]
    if normalized:
        out = out - getattr(model.config, "rlhfkit_score_offset", 0.0)
    return out


def reward_fn_from_model(model, tok, batch_size: int = 64, normalized: bool = True):
    """Wrap a reward model as `fn(prompts, responses, terminated=None) -> (B,) scores`.

    Texts are re-rendered with the reward model's own tokenizer and chat template,
    so the policy and the reward model need not share a vocabulary. Batches are packed (padding-free) when the
    model keeps packed sequences apart (`backbone_packs`, checked here once), with each prompt once when it honours
    a shared-prompt mask (`backbone_shares`).
    """
    from rlhfkit.data.chat import render_example
    from rlhfkit.models.packed import prompt_length

    packed = backbone_packs(model)
    shared = packed and backbone_shares(model)  # the samples of one prompt (RLOO, GRPO, best-of-n) share its tokens

    @torch.no_grad()
    def fn(prompts, responses, terminated=None) -> torch.Tensor:
        model.eval()
        rows = [render_example(tok, p, r) for p, r in zip(prompts, responses)]
        ids, starts = [r[0] for r in rows], [prompt_length(m) for _, m in rows]
        out = [row_scores(model, ids[i : i + batch_size], tok.pad_token_id, normalized, packed,
                          starts[i : i + batch_size] if shared else None)
               for i in range(0, len(rows), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    return fn


def make_reward_fn(spec: str, reward_model: str, device, args: dict | None = None, weights: list[float] | None = None,
                   timeout: float = 30.0, retries: int = 3):
    """`fn(prompts, responses, terminated=None, **columns) -> (B,) tensor` from a config's `reward` field.

    "rm": the reward model at `reward_model`. "package.module:function": any Python callable
    `fn(prompts, responses, terminated, **args, **columns)` returning one number per response; it gets
    the prompts' dataset columns (e.g. `answer`, for a verifiable reward) as lists aligned with the
    batch, those its signature names (all with `**kwargs`). "http://..." / "https://...": an endpoint
    that takes a POST of JSON `{prompts, responses, terminated, **columns}` and answers `{"scores": [...]}`
    (`timeout` seconds a try, `retries` tries). "judge:PATH": the causal LM at PATH as an AI judge
    (direct RLAIF, no reward model): P(yes) that the response is good, or with `judge_reference` in
    `args` P(better than a reference column); `judge_*` args go to it (rlhfkit.feedback.judge.judge_reward),
    never to callables. Several specs joined by "+" are summed with `weights` (default 1 each),
    e.g. `rm+mypkg.rewards:format_ok`.
    """
    specs = [x.strip() for x in spec.split("+")]
    weights = list(weights) if weights else [1.0] * len(specs)
    if len(weights) != len(specs) or not all(specs):
        raise ValueError(f"reward {spec!r}: {len(specs)} reward(s) but {len(weights)} weight(s)")
    parts = [_one_reward(x, reward_model, device, args, timeout, retries) for x in specs]
    if len(parts) == 1 and weights == [1.0]:
        return parts[0]

    def total(prompts, responses, terminated=None, **columns) -> torch.Tensor:
        return sum(w * f(prompts, responses, terminated, **columns) for w, f in zip(weights, parts))

    return total


def _one_reward(spec: str, reward_model: str, device, args: dict | None, timeout: float, retries: int):
    if spec == "rm":
        rm, rm_tok = load_scalar_model(reward_model, device=device)
        rm.requires_grad_(False)
        score = reward_fn_from_model(rm, rm_tok)
        return lambda ps, rs, term=None, **_: score(ps, rs, term)  # a reward model reads text only
    if spec.startswith("judge:"):
        from rlhfkit.feedback.judge import judge_reward

        fn, kwargs = judge_reward(spec[len("judge:"):], device, args), {}
    elif spec.startswith(("http://", "https://")):
        fn, kwargs = _http_reward(spec, timeout, retries), {}
    else:
        from rlhfkit.evaluation.hooks import load_callable

        fn, kwargs = load_callable(spec, "reward"), {k: v for k, v in (args or {}).items() if not k.startswith("judge_")}
    accepts, needs = _accepted(fn), _required_columns(fn) - set(kwargs)

    def call(ps, rs, term=None, **columns) -> torch.Tensor:
        term = term if term is not None else [True] * len(ps)
        if missing := sorted(needs - set(columns)):
            from rlhfkit.config import ConfigError

            raise ConfigError(f"reward {spec!r} needs the prompt column(s) {missing}; the prompts have "
                              f"{sorted(columns) or 'no column but the prompt'}")
        cols = {k: v for k, v in columns.items() if accepts is None or k in accepts}
        out = torch.as_tensor(fn(list(ps), list(rs), list(term), **kwargs, **cols), dtype=torch.float32).reshape(-1)
        if len(out) != len(rs) or not torch.isfinite(out).all():
            raise ValueError(f"reward {spec!r}: expected {len(rs)} finite scores, got {out.tolist()[:8]}"
                             f"{' ...' if len(out) > 8 else ''} ({len(out)} values)")
        return out

    return call


def _accepted(fn) -> set[str] | None:
    """Keyword names `fn` takes (None: any, it has **kwargs)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _required_columns(fn) -> set[str]:
    """Keyword parameters of `fn` past (prompts, responses, terminated) that have no default: dataset columns it needs."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return set()
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {p.name for i, p in enumerate(named) if i >= 3 and p.default is p.empty}


def _http_reward(url: str, timeout: float, retries: int):
    """A reward served over HTTP: POST JSON, read `{"scores": [...]}` (or a bare list); retried on network
    errors and 5xx answers with backoff; any other failure is a ValueError naming the URL and what came back."""
    import json
    import time
    import urllib.error
    import urllib.request

    from rlhfkit.data.records import prompt_json

    def fn(prompts, responses, terminated, **columns):
        body = json.dumps({"prompts": [prompt_json(p) for p in prompts], "responses": responses,
                           "terminated": terminated, **columns}, default=str).encode()
        for attempt in range(1, retries + 1):
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as r:
                    text = r.read().decode("utf-8", "replace")
                break
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:200]
                if e.code < 500 or attempt == retries:
                    raise ValueError(f"reward {url}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == retries:
                    raise ValueError(f"reward {url}: no answer after {retries} tries ({getattr(e, 'reason', e)})") from None
            time.sleep(0.5 * 2 ** (attempt - 1))
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError(f"reward {url}: the answer is not JSON: {text[:200]!r}") from None
        scores = data.get("scores") if isinstance(data, dict) else data
        if not isinstance(scores, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
            raise ValueError(f"reward {url}: expected {{\"scores\": [numbers]}}, got {text[:200]!r}")
        return scores

    return fn
