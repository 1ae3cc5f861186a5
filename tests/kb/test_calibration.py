"""The confidence model of a first hit: its features, the logistic regression (against scipy's
optimiser on the same objective) and its round trip through the knowledge base folder."""

import numpy as np
import pytest
from scipy.optimize import minimize

from kefu.errors import KefuError
from kefu.kb.calibration import FEATURES, Calibration, features, fit_logistic
from kefu.kb.fusion import FusionConfig, Rankings


def test_features_describe_the_first_hit_against_the_rest():
    rankings = Rankings(bm25={4: 6.0, 9: 2.0}, dense={9: 0.9, 4: 0.7}, bm25_ceiling=8.0)
    found = dict(zip(FEATURES, features(rankings, top=4), strict=True))
    assert found == pytest.approx({
        "dense_top": 0.7, "dense_gap": 0.7 - 0.9, "bm25_top": 6 / 8, "bm25_gap": (6 - 2) / 8,
        "bm25_agrees": 1.0, "dense_agrees": 0.0, "dense_ran": 1.0,
    })  # fmt: skip
    chinese = Rankings(bm25={1: 3.0}, dense={}, bm25_ceiling=3.0)
    assert features(chinese, top=1).tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_logistic_regression_matches_a_general_optimiser():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x @ [1.5, -2.0, 0.5] + 0.3 + rng.normal(size=200) > 0).astype(float)
    ours = fit_logistic(x, y, l2=1.0)

    def objective(w):
        z = x @ w[:-1] + w[-1]
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * np.sum(w[:-1] ** 2)

    reference = minimize(objective, np.zeros(4), method="BFGS", options={"gtol": 1e-8}).x
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_the_threshold_keeps_the_target_precision_and_survives_a_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    right = rng.random(300) < 0.6
    # Right first hits lead their runner-up by more: a signal the model must find.
    x = np.zeros((300, len(FEATURES)))
    x[:, 1] = np.where(right, 0.15, 0.02) + rng.normal(0, 0.05, 300)
    x[:, 6] = 1.0
    calibration = Calibration.fit(FusionConfig(k=3), x, right, 0.9, "test", {"queries": 300})
    kept = calibration.probabilities(x) >= calibration.threshold
    assert right[kept].mean() >= 0.9 and 0.2 < kept.mean() < 0.7
    assert calibration.weights[1] > 0  # a bigger lead means more confidence

    calibration.write(tmp_path)
    again = Calibration.read(tmp_path)
    assert again == calibration and again.fusion.k == 3
    assert Calibration.read(tmp_path / "none") is None


def test_too_few_or_one_sided_questions_cannot_calibrate():
    x = np.zeros((20, len(FEATURES)))
    with pytest.raises(KefuError, match="needs at least 10, with both right and wrong"):
        Calibration.fit(FusionConfig(), x, np.ones(20, dtype=bool), 0.9, "t", {})
    with pytest.raises(KefuError, match="cannot calibrate on 5 queries"):
        Calibration.fit(FusionConfig(), x[:5], np.array([1, 0, 1, 0, 1], bool), 0.9, "t", {})
