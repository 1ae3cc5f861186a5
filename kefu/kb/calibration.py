"""How sure the knowledge base is that its first hit answers a question, and when that is sure
enough to answer straight from it.

A raw score says little on its own: a BM25 score grows with the query's length, a cosine of 0.6
is a match for one encoder and noise for another, and Chinese queries have no dense score at all
with MiniLM. So the confidence is a small logistic regression over what the two rankings say
about the first hit, fitted on held-out queries of the knowledge base itself:

    dense_top      cosine of the first hit (0 when the dense side did not run)
    dense_gap      how far it leads the best other chunk by cosine
    bm25_top       its BM25 score over the query's ceiling (0-1; see BM25.ceiling)
    bm25_gap       how far it leads the best other chunk by BM25, over the same ceiling
    bm25_agrees    1 when BM25 ranks it first too
    dense_agrees   1 when the dense side ranks it first too
    dense_ran      1 when the dense side ran (its features mean something)

The regression gives P(first hit is right); the threshold on it is the lowest that keeps the
target precision (default 90%) on those queries (`kefu.eval.calibration`). Above it the assistant
answers from the FAQ with its citation; below, it writes an answer from the passages or hands off.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kefu.errors import KefuError
from kefu.kb.fusion import FusionConfig, Rankings

CALIBRATION_FILE = "calibration.json"
FEATURES = (
    "dense_top", "dense_gap", "bm25_top", "bm25_gap", "bm25_agrees", "dense_agrees", "dense_ran",
)  # fmt: skip


def _lead(ranking: dict[int, float], top: int) -> tuple[float, float]:
    """The top chunk's score in `ranking` and its lead over the best other chunk."""
    score = ranking.get(top, 0.0)
    other = next((value for chunk, value in ranking.items() if chunk != top), 0.0)
    return score, score - other


def features(rankings: Rankings, top: int) -> np.ndarray:
    """(len(FEATURES),) what the rankings say about chunk `top`, the first fused hit."""
    dense_ran = bool(rankings.dense)
    dense_top, dense_gap = _lead(rankings.dense, top) if dense_ran else (0.0, 0.0)
    bm25_top, bm25_gap = _lead(rankings.bm25, top)
    ceiling = rankings.bm25_ceiling or 1.0
    first = (next(iter(ranking), None) for ranking in (rankings.bm25, rankings.dense))
    bm25_first, dense_first = first
    return np.array(
        [
            dense_top, dense_gap, bm25_top / ceiling, bm25_gap / ceiling,
            float(bm25_first == top), float(dense_first == top), float(dense_ran),
        ],
        dtype=np.float64,
    )  # fmt: skip


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Weights (bias last) of an L2-regularised logistic regression, by Newton's method.

    Args:
        x: (N, F) standardised features.
        y: (N,) 1 for a right first hit, 0 for a wrong one.
        l2: penalty on the weights (not the bias); keeps them finite when the classes separate.
    """
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    weights = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) + penalty * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


@dataclass
class Calibration:
    """Fusion weights and the confidence model chosen on held-out queries, with their figures."""

    fusion: FusionConfig
    mean: list[float]  # feature standardisation
    scale: list[float]
    weights: list[float]  # logistic regression, bias last
    threshold: float  # confidence at or above which the first hit answers directly
    precision: float  # the precision the threshold was chosen for
    queries: str  # which queries it was fitted on
    figures: dict[str, Any] = field(default_factory=dict)  # metrics on those queries

    @classmethod
    def fit(
        cls,
        fusion: FusionConfig,
        x: np.ndarray,
        correct: np.ndarray,
        precision: float,
        queries: str,
        figures: dict[str, Any],
    ) -> Calibration:
        """The confidence model and its threshold for first hits `x` (N, F) and whether each
        was right."""
        from kefu.eval.calibration import calibrate_threshold

        if len(x) < 10 or correct.all() or not correct.any():
            raise KefuError(
                f"cannot calibrate on {len(x)} queries of which {int(correct.sum())} find their "
                "answer first: calibration needs at least 10, with both right and wrong first "
                "hits; give more held-out queries (--queries FILE)"
            )
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0] = 1.0
        weights = fit_logistic((x - mean) / scale, correct.astype(np.float64))
        calibration = cls(
            fusion, mean.tolist(), scale.tolist(), weights.tolist(), 1.0, precision, queries,
            figures,
        )  # fmt: skip
        confidence = calibration.probabilities(x)
        calibration.threshold = calibrate_threshold(confidence, correct, precision)
        return calibration

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N,) P(first hit right) for features (N, F)."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        weights = np.asarray(self.weights)
        return 1 / (1 + np.exp(-(z @ weights[:-1] + weights[-1])))

    def confidence(self, rankings: Rankings, top: int) -> float:
        return float(self.probabilities(features(rankings, top)[None])[0])

    def write(self, folder: Path) -> None:
        from kefu.files import write_text_atomically

        data = {**asdict(self), "features": list(FEATURES), "fusion": self.fusion.model_dump()}
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        write_text_atomically(folder / CALIBRATION_FILE, text)

    @classmethod
    def read(cls, folder: Path) -> Calibration | None:
        """The calibration stored in a knowledge base folder, if it has one."""
        path = folder / CALIBRATION_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("features") != list(FEATURES):
            return None  # written by a kefu with other features: uncalibrated until redone
        return cls(**{**data, "fusion": FusionConfig.model_validate(data["fusion"])})
