"""Print the results as a table and write them as JSON (one object per configuration)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.evaluation.configs import ConfigResult
from server.evaluation.metrics import RETRIEVAL_METRICS

_HEAD = {
    "ndcg@10": "nDCG@10",
    "recall@10": "R@10",
    "recall@100": "R@100",
    "mrr@10": "MRR@10",
    "map@10": "MAP@10",
}


def table(results: Sequence[ConfigResult]) -> str:
    label_width = max([len("config"), *(len(r.config.label) for r in results)])
    header = f"{'config':<{label_width}}  {'dims':>4}  " + "  ".join(
        f"{_HEAD[m]:>7}" for m in RETRIEVAL_METRICS
    )
    header += f"  {'queries':>7}  {'local':>5}  {'secs':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        dims = "" if r.dims is None else str(r.dims)
        row = f"{r.config.label:<{label_width}}  {dims:>4}  "
        if r.metrics is None:
            row += f"unavailable: {r.unavailable}"
        else:
            row += "  ".join(f"{r.metrics[m]:>7.4f}" for m in RETRIEVAL_METRICS)
            local = "" if r.local_share is None else f"{r.local_share:.0%}"
            row += f"  {r.queries:>7}  {local:>5}  {r.seconds:>6.1f}"
        lines.append(row)
    return "\n".join(lines)


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
