"""The threshold that keeps a target precision, shared by intents and the knowledge base."""

import numpy as np
import pytest
import torch

from kefu.eval.calibration import calibrate_threshold


def test_threshold_is_the_lowest_that_keeps_the_precision():
    confidence = torch.tensor([0.6, 0.9, 0.7, 0.8])  # tensors, as the intent models pass them
    correct = torch.tensor([True, True, False, True])
    # Sorted: 0.9 ✓, 0.8 ✓, 0.7 ✗, 0.6 ✓ → precision 1, 1, 2/3, 3/4 of the answers kept.
    assert calibrate_threshold(confidence, correct, 0.9) == pytest.approx(0.75)  # keep 2
    assert calibrate_threshold(confidence, correct, 0.7) == 0.0  # keep all 4
    assert calibrate_threshold(confidence, torch.tensor([False] * 4), 0.9) == 1.0


def test_numpy_arrays_give_the_same_threshold():
    confidence = np.array([0.2, 0.95, 0.5, 0.85, 0.4])
    correct = np.array([False, True, True, True, False])
    # Sorted: 0.95 ✓, 0.85 ✓, 0.5 ✓, 0.4 ✗, 0.2 ✗ → all three right ones kept at precision 1.
    assert calibrate_threshold(confidence, correct, 1.0) == pytest.approx(0.45)
    assert calibrate_threshold(confidence, correct, 0.7) == pytest.approx(0.3)  # 3/4 ≥ 0.7 > 3/5
