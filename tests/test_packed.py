"""Padding-free (packed) batches: the layout by hand, the check that a model keeps packed sequences apart
(and that it can say no), and the SFT loss, DPO's summed log-probs and the RM's scores of packed batches
equal to the padded ones, gradients included."""

from __future__ import annotations

import tempfile

import torch

from rlhfkit.data.chat import IGNORE_INDEX, pad_batch, sft_batch
from rlhfkit.losses import lm_loss
from rlhfkit.models.logprobs import response_logprobs, sequence_logprobs
from rlhfkit.models.packed import pack, pack_rollout, pack_shared, packs, shares_prompts
from rlhfkit.models.reward import backbone_packs, backbone_shares, response_values, row_scores, scalar_model_from_lm, sequence_scores
from rlhfkit.stages.sft import packed_sft_batch


def test_pack_lays_sequences_first_fit_longest_first_with_restarting_positions():
    rows = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14]]
    p = pack(rows, pad_id=0)
    # rows as long as the longest (5); longest first: [4..8] row 0, [11..14] row 1, [1,2,3] row 2, [9,10] after it
    assert p.input_ids.tolist() == [[4, 5, 6, 7, 8], [11, 12, 13, 14, 0], [1, 2, 3, 9, 10]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert p.seq.tolist() == [[1, 1, 1, 1, 1], [3, 3, 3, 3, -1], [0, 0, 0, 2, 2]]
    assert p.row.tolist() == [2, 0, 2, 1] and p.start.tolist() == [0, 0, 3, 0] and p.length.tolist() == [3, 5, 2, 4]
    assert [r.item() for r in p.last()[1]] == [2, 4, 4, 3]
    assert p.place([[True] * 3, [False] * 5, [True, False], [True] * 4], False).tolist() == [
        [False] * 5, [True, True, True, True, False], [True, True, True, True, False]]


def test_packs_accepts_a_llama_and_refuses_a_forward_that_ignores_the_restarts(tiny_model):
    assert packs(tiny_model)
    leaky = torch.nn.Module()  # the same weights, position ids dropped: packed sequences attend to each other
    leaky.inner, leaky.training = tiny_model, True
    leaky.parameters = tiny_model.parameters
    assert not packs(leaky, lambda ids, pos: tiny_model(input_ids=ids, use_cache=False).logits)
    assert leaky.training  # the check puts the model back in the mode it found it in


def rows_with_masks(tok, n=6, seed=0):
    """Rendered-example-like rows of different lengths: (ids, mask) with the mask on a tail."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(4, 15, (1,), generator=g))
        ids = torch.randint(5, len(tok), (length,), generator=g).tolist()
        cut = int(torch.randint(1, length, (1,), generator=g))
        out.append((ids, [False] * cut + [True] * (length - cut)))
    out.append(([7, 8, 9], [True, True, True]))  # a plain-text row: every token trained (the first never is, shifted)
    return out


def test_packed_sequence_logprobs_and_their_gradients_equal_the_padded_ones(tiny_model, tiny_tok):
    rows = rows_with_masks(tiny_tok)
    padded = sequence_logprobs(tiny_model, rows, tiny_tok.pad_token_id)
    grads_padded = torch.autograd.grad(padded.sum(), list(tiny_model.parameters()))
    packed = sequence_logprobs(tiny_model, rows, tiny_tok.pad_token_id, packed=True)
    grads_packed = torch.autograd.grad(packed.sum(), list(tiny_model.parameters()))
    assert len(pack([r[0] for r in rows], 0).input_ids) < len(rows)  # fewer rows than sequences: something was packed
    assert torch.allclose(packed, padded, atol=1e-4) and padded.abs().min() > 0.1
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads_packed, grads_padded))


def test_shared_prompt_sequence_logprobs_and_gradients_equal_the_packed_ones(tiny_model, tiny_tok):
    """DPO's pairs with each prompt once: chosen and rejected (and a third answer) of one prompt, another prompt's
    pair, a row whose mask starts at 0 (shares nothing) and one whose prompt is all it has (nothing scored): the
    summed response logprobs and their gradients equal those with a copy of the prompt per answer."""
    g = torch.Generator().manual_seed(5)
    toks = lambda n: torch.randint(5, len(tiny_tok), (n,), generator=g).tolist()  # noqa: E731
    p1, p2 = toks(8), toks(5)
    row = lambda prompt, n: (prompt + toks(n), [False] * len(prompt) + [True] * n)  # noqa: E731
    rows = [row(p1, 4), row(p1, 6), row(p2, 3), row(p2, 5), row(p1, 2), ([7, 8, 9], [True] * 3), (p2, [False] * 5)]
    plain = sequence_logprobs(tiny_model, rows, tiny_tok.pad_token_id, packed=True)
    grads_plain = torch.autograd.grad(plain[:6].sum(), list(tiny_model.parameters()))
    shared = sequence_logprobs(tiny_model, rows, tiny_tok.pad_token_id, packed=True, shared=True)
    grads_shared = torch.autograd.grad(shared[:6].sum(), list(tiny_model.parameters()))
    s = pack_shared([r[0] for r in rows], [8, 8, 5, 5, 8, 0, 5], 0)
    assert s.columns[1][:8] == s.columns[0][:8] and s.columns[4][:8] == s.columns[0][:8]  # one copy of p1
    assert torch.allclose(shared, plain, atol=1e-4) and plain[:6].abs().min() > 0.1 and shared[6] == plain[6] == 0
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads_shared, grads_plain))
    assert shares_prompts(tiny_model)


def test_packed_sft_batch_gives_the_padded_loss_over_the_same_tokens(tiny_model, tiny_tok):
    rows = rows_with_masks(tiny_tok, seed=1)
    ids, attn, labels = sft_batch(rows, tiny_tok.pad_token_id)
    loss_padded, _ = lm_loss(tiny_model(input_ids=ids, attention_mask=attn).logits[:, :-1], labels[:, 1:])
    pids, pos, plabels = packed_sft_batch(rows, tiny_tok.pad_token_id)
    assert (plabels[:, 1:] != IGNORE_INDEX).sum() == (labels[:, 1:] != IGNORE_INDEX).sum() == sum(sum(m[1:]) for _, m in rows)
    loss_packed, _ = lm_loss(tiny_model(input_ids=pids, position_ids=pos, use_cache=False).logits[:, :-1], plabels[:, 1:])
    assert torch.allclose(loss_packed, loss_padded, atol=1e-5)


def scalar_model(tiny_model, tiny_tok):
    """A reward model / critic (a scalar head) on the tiny model's backbone."""
    with tempfile.TemporaryDirectory() as d:
        tiny_model.save_pretrained(d)
        tiny_tok.save_pretrained(d)
        return scalar_model_from_lm(d, device="cpu", seed=0)[0]


def test_packed_reward_scores_equal_the_padded_ones(tiny_model, tiny_tok):
    rm = scalar_model(tiny_model, tiny_tok)
    rm.config.rlhfkit_score_offset = 0.5  # a trained RM's normalisation, applied the same way both ways
    assert backbone_packs(rm)
    rows = [r[0] for r in rows_with_masks(tiny_tok, seed=2)]
    ids, attn = pad_batch(rows, tiny_tok.pad_token_id, side="right")
    padded = sequence_scores(rm, ids, attn)
    packed = row_scores(rm, rows, tiny_tok.pad_token_id, packed=True)
    assert torch.allclose(packed, padded, atol=1e-4) and padded.std() > 0
    assert torch.allclose(row_scores(rm, rows, tiny_tok.pad_token_id, normalized=False, packed=True), padded + 0.5, atol=1e-4)


def rollouts(tok, B=5, P=6, R=7, seed=3):
    """(B, P + R) rollouts as generation lays them out: prompts left-padded to P, responses right-padded to R
    (one response cut short, one of full length)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(tok), (B, P + R), generator=g)
    attn = torch.ones(B, P + R, dtype=torch.bool)
    for b, (p, r) in enumerate([(6, 7), (2, 3), (4, 1), (1, 7), (3, 5)][:B]):
        attn[b, : P - p] = False
        attn[b, P + r :] = False
    return ids.masked_fill(~attn, tok.pad_token_id), attn, P


def test_pack_rollout_points_each_response_column_at_its_own_sequence():
    ids = torch.tensor([[0, 11, 12, 21, 22, 0], [13, 14, 15, 23, 0, 0]])  # P = 3, R = 3; 0 is padding
    attn = ids != 0
    p, row, col = pack_rollout(ids, attn, 3)
    got = p.input_ids[row, col]  # the token whose output predicts each response token: last prompt token, then the responses
    assert got.tolist() == [[12, 21, 22], [15, 23, 23]]  # past the end of a response: its last token (masked by callers)


def test_packed_rollout_logprobs_entropies_and_values_equal_the_padded_ones(tiny_model, tiny_tok):

    ids, attn, P = rollouts(tiny_tok)
    real = attn[:, P:]  # the response tokens the losses read
    lp, ent = response_logprobs(tiny_model, ids, attn, P, temperature=0.7, with_entropy=True)
    plp, pent = response_logprobs(tiny_model, ids, attn, P, temperature=0.7, with_entropy=True, packed=True)
    assert torch.allclose(plp[real], lp[real], atol=1e-4) and torch.allclose(pent[real], ent[real], atol=1e-4)
    grads = [torch.autograd.grad(x[real].sum(), list(tiny_model.parameters())) for x in (lp, plp)]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
    critic = scalar_model(tiny_model, tiny_tok)
    values, pvalues = response_values(critic, ids, attn, P), response_values(critic, ids, attn, P, packed=True)
    assert torch.allclose(pvalues[real], values[real], atol=1e-4) and values[real].std() > 0


def test_use_packing_asks_the_checks_only_when_packing_is_wanted_and_says_what_it_chose(capsys):
    from rlhfkit.models.packed import use_packing

    called = []
    check = lambda ok: lambda: called.append(ok) or ok  # noqa: E731
    assert use_packing("sft", True, check(True), check(True)) and called == [True, True]
    assert not use_packing("ppo", True, check(True), check(False))
    assert not use_packing("dpo", False, check(True)) and called == [True, True, True, False]  # not asked: not checked
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[sft] padding-free (packed) batches",
                     "[ppo] padded batches: a model's attention does not keep packed sequences apart",
                     "[dpo] padded batches"]


def test_pack_shared_lays_each_prompt_once_with_its_answers_and_a_mask_that_keeps_them_apart():
    # two answers to prompt [1, 2, 3], one to prompt [7, 8]; a sequence that is all prompt ([7, 8] alone)
    rows, starts = [[1, 2, 3, 4, 5], [7, 8, 9], [1, 2, 3, 6], [7, 8]], [3, 2, 3, 2]
    s = pack_shared(rows, starts, pad_id=0, width=1.2)
    # segments [1 2 3 | 4 5 | 6] (6 columns) and [7 8 | 9] (3): rows of 1.2 x 5 = 6, first fit -> two rows
    assert s.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]]
    assert s.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 0, 0, 0]]  # the second answer restarts after the prompt
    assert s.row.tolist() == [0, 1, 0, 1] and s.last()[1].tolist() == [4, 2, 5, 1]  # [7, 8]'s last token is its prompt's
    m = s.mask[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 1, 0],
                 [1, 1, 1, 0, 0, 1]]  # the answer [6] sees the prompt and itself, not the answer [4, 5]
    assert s.mask[1, 0, 3:].int().tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]  # the free tail: itself only
    bias = s.additive_mask(torch.float32)
    assert bias[0, 0, 5, 3] == torch.finfo(torch.float32).min and bias[0, 0, 5, 2] == 0
    # rows of the longest sequence (5): the first prompt's answers no longer fit in one segment, so it is repeated
    narrow = pack_shared(rows, starts, pad_id=0, width=1.0)
    assert narrow.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 6, 0], [7, 8, 9, 0, 0]]
    assert narrow.row.tolist() == [0, 2, 1, 2] and narrow.columns[1][:2] == narrow.columns[3]  # two copies of [1, 2, 3]


def test_shared_prompt_scores_and_gradients_equal_the_packed_ones(tiny_model, tiny_tok):
    """A ranking's answers scored with their prompt once give the scores (and the loss's gradients) they get each
    with its own copy of the prompt; prompts cut differently (or different prompts) simply do not share."""
    from rlhfkit.losses import bradley_terry_loss

    rm = scalar_model(tiny_model, tiny_tok)
    assert backbone_shares(rm)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(5, len(tiny_tok), (n,), generator=g).tolist() for n in (9, 6)]
    answers = [torch.randint(5, len(tiny_tok), (n,), generator=g).tolist() for n in (4, 7, 3, 5, 6)]
    rows = [prompts[0] + answers[0], prompts[0] + answers[1], prompts[0] + answers[2], prompts[1] + answers[3],
            prompts[1] + answers[4], prompts[0][2:] + answers[3]]  # the last: a prompt cut from the left
    starts = [9, 9, 9, 6, 6, 7]
    grads = {}
    for shared in (False, True):
        rm.zero_grad()
        scores = row_scores(rm, rows, tiny_tok.pad_token_id, normalized=False, packed=True,
                            prompt_lens=starts if shared else None)
        bradley_terry_loss(scores[[0, 0, 1, 3]], scores[[1, 2, 2, 5]])[0].backward()
        grads[shared] = (scores.detach(), [p.grad.clone() for p in rm.parameters() if p.grad is not None])
    # segments: prompt 0 with three answers (9 + 4 + 7 + 3 = 23 columns), prompt 1 with two (6 + 5 + 6 = 17), the
    # cut prompt with its answer (7 + 5 = 12): 52 columns against 76 tokens, in rows of the longest segment
    s = pack_shared(rows, starts, 0)
    assert s.input_ids.shape == (3, 23) and s.columns[0][:9] == s.columns[1][:9] == s.columns[2][:9]
    assert s.row[0] == s.row[1] == s.row[2]
    assert torch.allclose(grads[True][0], grads[False][0], atol=1e-4) and grads[False][0].std() > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[True][1], grads[False][1]))


def test_shares_prompts_refuses_a_forward_that_ignores_the_mask(tiny_model):
    backbone = tiny_model.model
    assert shares_prompts(backbone, lambda ids, pos, mask: backbone(input_ids=ids, position_ids=pos, attention_mask=mask,
                                                                    use_cache=False).last_hidden_state)
    blind = torch.nn.Module()  # the mask dropped: the second answer attends to the first
    blind.parameters = backbone.parameters
    assert not shares_prompts(blind, lambda ids, pos, mask: backbone(input_ids=ids, position_ids=pos,
                                                                     use_cache=False).last_hidden_state)
