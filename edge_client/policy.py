"""When ``auto`` search answers locally and when it asks the server. Read in a minute.

Local evidence is weak, so the server is asked, when:
- the caller wants comprehensive results (the server searches everything at full dimension);
- the local index is empty, or stale (built for another bundle, or last synced too long ago);
- the best local score is below the index's calibrated threshold (nothing local is close);
- the best two scores are nearly tied (the truncated vectors cannot tell them apart); documents
  that share one vector (the same content) are one candidate here, not a tie.
If the server then fails, the local answer is returned, flagged degraded, with the reason.

The threshold is calibrated on the local index itself when it changes: the median cosine of a
sample of documents to their nearest other document, scaled by ``CALIBRATION_FACTOR`` (a
query-document match scores lower than a near-duplicate pair) and clipped to a sane range.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge_client.index import Hit, LocalIndex

DEFAULT_THRESHOLD = 0.35
CALIBRATION_FACTOR = 0.7
THRESHOLD_RANGE = (0.2, 0.6)
CALIBRATION_SAMPLE = 200


@dataclass(frozen=True)
class Policy:
    threshold: float = DEFAULT_THRESHOLD  # used when the index has no calibration yet
    min_margin: float = 0.005
    max_staleness_s: float = 7 * 24 * 3600.0


def fit_threshold(index: LocalIndex) -> float:
    """Compute, store (state 'threshold') and return the index's score threshold."""
    vectors = index.sample_vectors(CALIBRATION_SAMPLE)
    if len(vectors) < 10:
        return DEFAULT_THRESHOLD
    nearest = []
    for vector in vectors:
        hits = index.search(vector, 2)
        if len(hits) == 2:
            nearest.append(hits[1].score)  # hits[0] is the document itself
    value = float(np.clip(np.median(nearest) * CALIBRATION_FACTOR, *THRESHOLD_RANGE))
    index.set_state("threshold", f"{value:.4f}")
    index.save()
    return value


def weak_evidence(
    hits: list[Hit], index: LocalIndex, bundle_fingerprint: str, policy: Policy, *, comprehensive: bool
) -> str | None:
    """The reason to ask the server, or None to answer locally."""
    if comprehensive:
        return "comprehensive results requested"
    if not len(index) or not hits:
        return "local index is empty"
    synced_for = index.get_state("bundle_fingerprint")
    if synced_for and synced_for != bundle_fingerprint:
        return "local index was built with another edge bundle (sync again)"
    synced_at = float(index.get_state("synced_at", "0") or 0)
    if synced_for and time.time() - synced_at > policy.max_staleness_s:
        return f"local index is stale (last synced {time.time() - synced_at:.0f}s ago)"
    threshold = float(index.get_state("threshold", "") or policy.threshold)
    if hits[0].score < threshold:
        return f"top local score {hits[0].score:.3f} is below the threshold {threshold:.3f}"
    runner_up = next((h for h in hits[1:] if not _same_vector(h, hits[0])), None)
    if runner_up is not None and hits[0].score - runner_up.score < policy.min_margin:
        return f"top local scores are tied within {policy.min_margin} ({hits[0].score:.3f})"
    return None


def _same_vector(a: Hit, b: Hit) -> bool:
    return a.vector_key != 0 and a.vector_key == b.vector_key
