"""The corpus-only signal a fine-tune is judged and tuned by: held-out pseudo-queries.

Some documents' pseudo-queries are never trained on; each must find its own document among the
validation documents (those documents plus a seeded sample of the others). nDCG@10 with one
relevant document (1 / log2(rank + 1) within the top 10), MRR@10 and Recall@10, at every
Matryoshka prefix: plain truncation, renormalized, as the server's ``dimensions`` and the edge
do it. No benchmark query or label is involved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedcore import l2_normalize


def retrieval_at_dims(
    queries: np.ndarray, docs: np.ndarray, targets: Sequence[int], dims: Sequence[int]
) -> dict[int, dict[str, float]]:
    """{dims: {"ndcg@10", "mrr@10", "recall@10"}} for ``queries`` (q, d) against ``docs`` (n, d),
    query i's one relevant document being row ``targets[i]``; ties rank the target last."""
    out: dict[int, dict[str, float]] = {}
    target = np.asarray(targets, dtype=np.int64)
    for d in dims:
        q, x = l2_normalize(queries[:, :d]), l2_normalize(docs[:, :d])
        scores = q @ x.T
        own = scores[np.arange(len(q)), target]
        rank = (scores >= own[:, None]).sum(axis=1)  # 1 = first
        hit = rank <= 10
        out[int(d)] = {
            "ndcg@10": float(np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0).mean()),
            "mrr@10": float(np.where(hit, 1.0 / rank, 0.0).mean()),
            "recall@10": float(hit.mean()),
        }
    return out


def format_table(base: dict[int, dict[str, float]], tuned: dict[int, dict[str, float]]) -> str:
    """A plain-text table of nDCG@10 per dims, base vs fine-tuned, and each as % of base full."""
    full = max(base)
    lines = ["dims  base nDCG@10  fine-tuned  base/base-full  tuned/base-full"]
    for d in sorted(base, reverse=True):
        b, t, ref = base[d]["ndcg@10"], tuned[d]["ndcg@10"], base[full]["ndcg@10"] or 1.0
        lines.append(f"{d:>4}  {b:>12.4f}  {t:>10.4f}  {b / ref:>13.1%}  {t / ref:>14.1%}")
    return "\n".join(lines)
