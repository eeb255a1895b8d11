"""How long the built-in world takes to build (tables, splits, corpus, eval corpus), by corpus size.

    .venv/bin/python benchmarks/world_build.py

Prints a table and one `JSON ...` line. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import json
import time

from rlhfkit.world import WorldConfig, build_world


def main() -> None:
    rows = []
    for docs in (1000, 9000):
        t0 = time.perf_counter()
        w = build_world(WorldConfig(corpus_docs=docs))
        t1 = time.perf_counter()
        n = len(w.corpus()) + len(w.eval_corpus())
        rows.append({"corpus_docs": docs, "splits_s": round(t1 - t0, 3), "total_s": round(time.perf_counter() - t0, 3), "documents": n})
    print(f"{'corpus_docs':>12}{'splits s':>10}{'total s':>10}{'documents':>11}")
    for r in rows:
        print(f"{r['corpus_docs']:>12}{r['splits_s']:>10.3f}{r['total_s']:>10.3f}{r['documents']:>11}")
    print("JSON " + json.dumps({"benchmark": "world_build", "rows": rows}))


if __name__ == "__main__":
    main()
