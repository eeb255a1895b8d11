"""Generation: EOS truncation, padding invariance, and sampling-time logprobs."""

from __future__ import annotations

import torch

from rlhfkit.data.chat import render_prompt
from rlhfkit.ops import logprobs_from_logits
from rlhfkit.rollout import generate, truncate_after_eos
from tests.helpers import response_logits


def test_truncate_after_eos():
    eos = 1
    ids = torch.tensor([[5, 6, 1, 7, 1], [5, 5, 5, 5, 5], [1, 4, 4, 4, 4]])
    mask = truncate_after_eos(ids, eos)
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
        [True, False, False, False, False],
    ]


def test_greedy_is_invariant_to_left_padding(tiny_model, tiny_tok):
    short = render_prompt(tiny_tok, "What is 7 + 5?")
    long = render_prompt(tiny_tok, "Reverse this list: cat, dog, sun, cat, dog.")
    kw = dict(eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, max_new_tokens=12, temperature=0.0)
    alone = generate(tiny_model.eval(), [short], **kw)
    batched = generate(tiny_model, [long, short], **kw)
    n = int(alone.response_mask[0].sum())
    assert batched.response_ids[1, :n].tolist() == alone.response_ids[0, :n].tolist()
    assert torch.allclose(batched.logprobs[1, :n], alone.logprobs[0, :n], atol=1e-4)


def test_sampling_logprobs_match_recomputed_tempered_logprobs(tiny_model, tiny_tok):
    torch.manual_seed(0)
    prompts = [render_prompt(tiny_tok, t) for t in ("What is 7 + 5?", "Reverse this list: cat, dog.", "Hi")]
    temperature = 0.7
    g = torch.Generator().manual_seed(1)
    gen = generate(tiny_model.eval(), prompts, eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id,
                   max_new_tokens=10, temperature=temperature, generator=g)
    logits = response_logits(tiny_model, gen)  # (B, R, V): the logits that predicted each response token
    recomputed = logprobs_from_logits(logits, gen.response_ids, temperature=temperature)
    m = gen.response_mask
    assert m.any()
    assert torch.allclose(recomputed[m], gen.logprobs[m], atol=1e-4)
    # A wrong temperature gives different numbers: the check above can fail.
    wrong = logprobs_from_logits(logits, gen.response_ids, temperature=1.0)
    assert not torch.allclose(wrong[m], gen.logprobs[m], atol=1e-3)


class BoostEOS(torch.nn.Module):
    """Wraps a model and makes EOS overwhelmingly likely for chosen rows, after `after` generated tokens."""

    def __init__(self, model, eos_id, rows, after):
        super().__init__()
        self.model, self.eos_id, self.rows, self.after, self.calls = model, eos_id, rows, after, 0

    def forward(self, **kw):
        out = self.model(**kw)
        if self.calls >= self.after:
            out.logits[self.rows, -1, self.eos_id] += 1e4
        self.calls += 1
        return out


def test_pad_after_eos_and_terminated_flag(tiny_model, tiny_tok):
    eos, pad = tiny_tok.eos_token_id, tiny_tok.pad_token_id
    prompts = [render_prompt(tiny_tok, "Hi"), render_prompt(tiny_tok, "What is 7 + 5?")]
    model = BoostEOS(tiny_model.eval(), eos, rows=[0], after=2)  # row 0 ends with its 3rd token
    gen = generate(model, prompts, eos_id=eos, pad_id=pad, max_new_tokens=6, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert gen.terminated.tolist() == [True, bool((gen.response_ids[1] == eos).any())]
    assert gen.response_mask[0].tolist()[:4] == [True, True, True, False]
    assert gen.response_ids[0, 2].item() == eos
    assert (gen.response_ids[0, 3:] == pad).all()
    assert (gen.logprobs[0, 3:] == 0).all()


def test_sample_next_draws_from_the_tempered_distribution():
    from rlhfkit.rollout import sample_next

    probs = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.2])
    logits = probs.clamp(min=1e-30).log().repeat(40_000, 1)  # (N, V): zero-mass entries at -69
    logits[:, [1, 3]] = float("-inf")
    g = torch.Generator().manual_seed(0)
    tokens, logps = sample_next(logits, 1.0, 1.0, g)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[1] == 0 and freq[3] == 0  # never a token without mass
    assert torch.allclose(freq, probs, atol=0.01)
    assert torch.allclose(logps, probs.log()[tokens])
    # temperature 0.5 squares and renormalises: 0.25 / 0.09 / 0.04 of 0.38
    tokens, _ = sample_next(logits, 0.5, 1.0, g)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert torch.allclose(freq[[0, 2, 4]], torch.tensor([0.25, 0.09, 0.04]) / 0.38, atol=0.01)
    # top-p 0.6 keeps the smallest set reaching 0.6: tokens 0 and 2, renormalised to 0.625 / 0.375
    tokens, _ = sample_next(logits, 1.0, 0.6, g)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[4] == 0 and abs(freq[0] - 0.625) < 0.01


def test_rows_of_a_global_batch_sample_what_the_whole_batch_samples(tiny_model, tiny_tok):
    """Data-parallel sampling: a global batch split across two "ranks" (every other row each), each drawing the
    global batch's uniforms from an equally seeded generator, samples exactly the one-process responses."""
    prompts = [render_prompt(tiny_tok, p) for p in ["What is 7 + 5?", "Reverse this list: cat, dog, sun.", "Hi",
                                                     "The capital of Zorvia is", "What is 9 - 4?", "I can't"]]
    kwargs = dict(eos_id=tiny_tok.eos_token_id, pad_id=tiny_tok.pad_token_id, max_new_tokens=8, temperature=1.0)

    def responses(gen):
        return [r[m].tolist() for r, m in zip(gen.response_ids, gen.response_mask)]

    whole = responses(generate(tiny_model, prompts, generator=torch.Generator().manual_seed(3), **kwargs))
    split = {}
    for rank in (0, 1):
        rows = list(range(rank, 6, 2))
        gen = generate(tiny_model, [prompts[i] for i in rows], generator=torch.Generator().manual_seed(3), rows=rows,
                       n_rows=6, **kwargs)
        split.update(zip(rows, responses(gen)))
    assert [split[i] for i in range(6)] == whole
    other = responses(generate(tiny_model, prompts, generator=torch.Generator().manual_seed(4), **kwargs))
    assert other != whole  # the draws decide the samples: the check above is not vacuous
