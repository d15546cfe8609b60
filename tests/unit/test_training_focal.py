"""Focal-loss objective: derivatives against finite differences, gamma=0 is log loss, and the custom-objective
booster rewritten as a plain binary one predicts sigmoid(init + margin) and converts to ONNX."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.training.export import round_thresholds, to_onnx
from services.training.focal import HESS_FLOOR, as_binary_booster, focal_grad_hess, focal_loss, focal_objective

pytestmark = pytest.mark.unit


@settings(max_examples=200, deadline=None)
@given(st.floats(-8, 8), st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 0.5, 1.5, 2.0, 3.0]))
def test_gradient_and_hessian_match_finite_differences(z: float, y: float, gamma: float) -> None:
    eps = 1e-5
    zs = np.array([z - eps, z, z + eps])
    ys = np.full(3, y)
    loss = focal_loss(zs, ys, gamma)
    grad, hess = focal_grad_hess(zs, ys, gamma)
    assert grad[1] == pytest.approx((loss[2] - loss[0]) / (2 * eps), rel=1e-4, abs=1e-7)
    fd_hess = (grad[2] - grad[0]) / (2 * eps)
    assert hess[1] == pytest.approx(max(fd_hess, HESS_FLOOR), rel=1e-3, abs=2e-6)


def test_gamma_zero_is_log_loss() -> None:
    z = np.linspace(-5, 5, 11)
    y = (np.arange(11) % 2).astype(float)
    p = 1 / (1 + np.exp(-z))
    grad, hess = focal_grad_hess(z, y, 0.0)
    np.testing.assert_allclose(grad, p - y, atol=1e-12)
    np.testing.assert_allclose(hess, p * (1 - p), atol=1e-12)
    np.testing.assert_allclose(focal_loss(z, y, 0.0), -(y * np.log(p) + (1 - y) * np.log(1 - p)), atol=1e-12)
    with pytest.raises(ValueError):
        focal_grad_hess(z, y, -1.0)


def test_focal_down_weights_easy_examples() -> None:
    # A confidently right prediction contributes far less gradient under focal loss than under log loss.
    z, y = np.array([4.0]), np.array([1.0])
    g_focal, _ = focal_grad_hess(z, y, 2.0)
    g_log, _ = focal_grad_hess(z, y, 0.0)
    assert abs(g_focal[0]) < 0.01 * abs(g_log[0])


def test_custom_booster_becomes_binary_and_exports_to_onnx() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = (x[:, 0] + rng.normal(size=3000) > 1.2).astype(float)
    w = np.where(y > 0, 2.0, 1.0)
    init = float(np.log(y.mean() / (1 - y.mean())))
    data = lgb.Dataset(x, label=y, weight=w, init_score=np.full(len(y), init))
    params = {"objective": focal_objective(1.5), "verbose": -1, "num_leaves": 7, "num_threads": 1}
    booster = lgb.train(params, data, num_boost_round=15)
    binary = as_binary_booster(booster, init)
    expected = 1 / (1 + np.exp(-(np.asarray(booster.predict(x, raw_score=True)) + init)))
    np.testing.assert_allclose(binary.predict(x), expected, atol=1e-12)
    assert binary.params["objective"] == "binary"
    rounded = round_thresholds(binary)
    x32 = x.astype(np.float32)
    session = ort.InferenceSession(to_onnx([rounded], 4).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(["p_up_raw"], {"features": x32})
    assert out.shape == (3000, 1)
    assert float(np.max(np.abs(out[:, 0] - rounded.predict(x32.astype(np.float64))))) < 1e-6
