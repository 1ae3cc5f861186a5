"""Confidence thresholds chosen for a target precision, shared by the intent models and the
knowledge base: below the threshold the assistant does not answer on its own, it asks the
generator or hands off.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def calibrate_threshold(confidence: ArrayLike, correct: ArrayLike, precision: float) -> float:
    """The confidence threshold that keeps the most validation answers at `precision` or better.

    It lies halfway between the last answer kept and the first one dropped, so test examples a
    hair less confident than the least confident kept one are not thrown away; when every
    answer can be kept it is 0, when none can it is 1.

    Args:
        confidence: (N,) the confidence of each validation answer.
        correct: (N,) whether each answer is right.
        precision: the share of kept answers that must be right.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    kept = np.arange(1, len(order) + 1)
    reaching = np.flatnonzero(hits / kept >= precision)
    if len(reaching) == 0:
        return 1.0
    last = int(reaching[-1])
    if last == len(order) - 1:
        return 0.0
    return float(ranked[last] + ranked[last + 1]) / 2
