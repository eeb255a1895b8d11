"""Inter-annotator agreement of the feedback store's judgements.

Agreement. Every judgement becomes a preference on each unordered pair of the
responses it covers, coded x ≻ y -> +1, y ≻ x -> -1, tie / both bad -> 0 (x < y by
id, so all annotators code a pair the same way round). A coding unit is one
response pair of one item judged by >= 2 annotators (an item is a prompt with
the set of responses judged; an annotator's latest judgement of it counts).
Over these units we report
  * Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability"), nominal and ordinal (order -1 < 0 < +1: a tie sits
    between the two preferences); any number of coders, missing values allowed;
  * Cohen's kappa for every pair of annotators over the units both coded, and
    its mean over the annotator pairs where it is defined.
Rankings of K are expanded into their K(K-1)/2 pairs, which are not independent
(transitivity): the numbers are a standard approximation, comparable across
runs, not a significance test.

AI judges (source "ai") are left out of these and compared with the others
instead (`ai_agreement`): per source of the other judgements, the share of
response pairs on which the AI judge and the other annotator prefer the same
response (pairs where either has no preference left out).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, Hashable, Iterable, Sequence



def cohen_kappa(x: Sequence[Hashable], y: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two coders over the same units: (p_o - p_e) / (1 - p_e); None when p_e == 1 or no units.

    p_o = fraction of units where they agree; p_e = sum_c p_x(c) p_y(c) (each coder's own marginals).
    """
    if len(x) != len(y):
        raise ValueError("both coders must code the same units")
    n = len(x)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    p_e = sum(cx[c] * cy[c] for c in cx) / (n * n)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def coincidences(units: Iterable[Sequence[Hashable]], values: Sequence[Hashable]) -> list[list[float]]:
    """Krippendorff's coincidence matrix o[c][k] = sum_u (# ordered pairs (c, k) of different coders in u) / (m_u - 1).

    Units with fewer than 2 values are not pairable and contribute nothing.
    """
    idx = {v: i for i, v in enumerate(values)}
    o = [[0.0] * len(values) for _ in values]
    for u in units:
        m = len(u)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            o[idx[u[i]]][idx[u[j]]] += 1.0 / (m - 1)
    return o


def krippendorff_alpha(units: Iterable[Sequence[Hashable]], metric: str = "nominal",
                       values: Sequence[Hashable] | None = None) -> float | None:
    """alpha = 1 - D_o / D_e; None when there is nothing pairable or no variation at all (D_e = 0).

    `units`: for each unit, the values the coders who coded it gave (missing coders simply absent).
    `metric`: nominal (delta^2 = [c != k]) or ordinal (delta^2 = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2,
    over `values` in their order; default: sorted). D_o = sum o_ck delta^2_ck / n,
    D_e = sum n_c n_k delta^2_ck / (n (n - 1)).
    """
    units = [list(u) for u in units if len(u) >= 2]
    values = list(values) if values is not None else sorted({v for u in units for v in u})
    o = coincidences(units, values)
    n_c = [sum(row) for row in o]
    n = sum(n_c)
    if n <= 1:
        return None
    delta = _DELTAS[metric](n_c)
    v = range(len(values))
    d_o = sum(o[c][k] * delta[c][k] for c in v for k in v) / n
    d_e = sum(n_c[c] * n_c[k] * delta[c][k] for c in v for k in v) / (n * (n - 1))
    return None if d_e == 0 else 1.0 - d_o / d_e


def _nominal(n_c: list[float]) -> list[list[float]]:
    return [[float(c != k) for k in range(len(n_c))] for c in range(len(n_c))]


def _ordinal(n_c: list[float]) -> list[list[float]]:
    def d(c: int, k: int) -> float:
        lo, hi = min(c, k), max(c, k)
        return (sum(n_c[lo:hi + 1]) - (n_c[c] + n_c[k]) / 2) ** 2

    return [[d(c, k) for k in range(len(n_c))] for c in range(len(n_c))]


_DELTAS = {"nominal": _nominal, "ordinal": _ordinal}


def pair_preferences(row: Any) -> dict[tuple[int, int], int]:
    """A judgement row -> {(x, y) with x < y: +1 if x preferred, -1 if y preferred, 0 for tie / both bad}."""
    if row.kind == "ranking":
        pos = {r: i for i, r in enumerate(row.ranking)}
        return {(x, y): 1 if pos[x] < pos[y] else -1 for x, y in itertools.combinations(sorted(pos), 2)}
    x, y = sorted((row.a_id, row.b_id))
    winner = {"a": row.a_id, "b": row.b_id}.get(row.choice)
    return {(x, y): 0 if winner is None else (1 if winner == x else -1)}


def agreement(rows: Iterable[Any]) -> dict[str, Any]:
    """Agreement over items judged by >= 2 annotators (see the module docstring).

    `rows` need: prompt_id, annotator, kind, ranking, a_id, b_id, choice (store judgement rows), in id order.
    Returns items, units, alpha_nominal, alpha_ordinal, kappa_mean, kappa_pairs (None where undefined).
    """
    items: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        ids = tuple(sorted(r.ranking if r.kind == "ranking" else (r.a_id, r.b_id)))
        items.setdefault((r.prompt_id, ids), {})[r.annotator] = pair_preferences(r)  # the latest one wins
    shared = [by for by in items.values() if len(by) >= 2]
    units = [[prefs[pair] for prefs in by.values()] for by in shared for pair in next(iter(by.values()))]
    kappas = []
    for a, b in itertools.combinations(sorted({name for by in shared for name in by}), 2):
        both = [(by[a][p], by[b][p]) for by in shared if a in by and b in by for p in by[a]]
        k = cohen_kappa([x for x, _ in both], [y for _, y in both]) if both else None
        if k is not None:
            kappas.append(k)
    return {"items": len(shared), "units": len(units),
            "alpha_nominal": krippendorff_alpha(units, "nominal", values=(-1, 0, 1)),
            "alpha_ordinal": krippendorff_alpha(units, "ordinal", values=(-1, 0, 1)),
            "kappa_mean": sum(kappas) / len(kappas) if kappas else None, "kappa_pairs": len(kappas)}


def ai_agreement(rows: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """{source: {"pairs": n, "agreement": share}}: how often AI judgements prefer what the other annotators of
    that source prefer, over every (AI judge, other judgement) that both prefer one response of the same pair.
    An annotator's latest judgement of a pair counts."""
    ai: dict[tuple[int, int], dict[str, int]] = {}
    other: dict[tuple[int, int], dict[tuple[str, str], int]] = {}
    for r in rows:
        for pair, v in pair_preferences(r).items():
            if r.source == "ai":
                ai.setdefault(pair, {})[r.annotator] = v
            else:
                other.setdefault(pair, {})[(r.source, r.annotator)] = v
    counts: dict[str, list[int]] = {}
    for pair, judges in ai.items():
        for (source, _), v in other.get(pair, {}).items():
            for w in judges.values():
                if v and w:
                    counts.setdefault(source, []).append(int(v == w))
    return {source: {"pairs": len(c), "agreement": sum(c) / len(c)} for source, c in sorted(counts.items())}


def ai_audit(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Every response pair an AI judge labelled, with what each judge and each other annotator preferred:
    `[{prompt_id, pair: (x, y), ai: [{annotator, principle, prob, prefers}], others: [{annotator, source, prefers}],
    agree: share of (AI, other) verdicts that match, or None}]`; `prefers` is x, y or None (tie / both bad).
    An annotator's latest judgement of a pair counts."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        for (x, y), v in pair_preferences(r).items():
            entry = out.setdefault((r.prompt_id, x, y), {"ai": {}, "others": {}})
            prefers = x if v == 1 else y if v == -1 else None
            if r.source == "ai":
                prob = r.prob if r.prob is None or r.a_id == x else 1.0 - r.prob  # P(x better), as the row saw it
                entry["ai"][r.annotator] = {"annotator": r.annotator, "principle": r.principle, "prob": prob, "prefers": prefers}
            else:
                entry["others"][r.annotator] = {"annotator": r.annotator, "source": r.source, "prefers": prefers}
    audit = []
    for (prompt_id, x, y), entry in out.items():
        if not entry["ai"]:
            continue
        votes = [a["prefers"] == o["prefers"] for a in entry["ai"].values() for o in entry["others"].values()
                 if a["prefers"] is not None and o["prefers"] is not None]
        audit.append({"prompt_id": prompt_id, "pair": (x, y), "ai": list(entry["ai"].values()),
                      "others": list(entry["others"].values()), "agree": sum(votes) / len(votes) if votes else None})
    return audit


# ---------------------------------------------------------------- operations (CLI: rlhfkit label ...)


def judgement_stats(rows: Sequence[Any], kinds: dict[str, str]) -> dict[str, Any]:
    """Counts per source and annotator (judgements, mean seconds per item), inter-annotator agreement, and
    the AI judges' agreement with the others where there are AI judgements.

    `rows`: judgement rows joined with the annotator's name; `kinds`: annotator name -> kind.
    Agreement (see `agreement`) is computed over units judged by >= 2 annotators, AI judges aside: a unit is
    a prompt with the set of responses judged.
    """
    from rlhfkit.feedback.schema import judgement_pairs

    per: dict[str, dict[str, Any]] = {}
    for j in rows:
        a = per.setdefault(j.annotator, {"kind": kinds.get(j.annotator), "judgements": 0, "_secs": []})
        a["judgements"] += 1
        if j.seconds is not None:
            a["_secs"].append(j.seconds)
    for a in per.values():
        secs = a.pop("_secs")
        a["mean_seconds"] = sum(secs) / len(secs) if secs else None
    out = {"judgements": len(rows), "pairs": sum(len(judgement_pairs(j)) for j in rows),
           "by_source": dict(Counter(j.source for j in rows)), "annotators": per,
           "agreement": agreement([j for j in rows if j.source != "ai"])}
    if any(j.source == "ai" for j in rows):
        out["ai_agreement"] = ai_agreement(rows)
    return out
