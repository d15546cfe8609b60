"""Binary focal loss (Lin et al. 2017) as a LightGBM custom objective, and turning such a booster into a plain
binary one that ``predict`` and the ONNX converter understand.

With z the raw margin, s = +1 for y = 1 and -1 for y = 0, z_t = s z, p_t = sigmoid(z_t), q = 1 - p_t:

    L = -q^gamma log p_t
    dL/dz   = s (gamma p_t q^gamma log p_t - q^(gamma+1))
    d2L/dz2 = gamma p_t q^(gamma+1) log p_t - gamma^2 p_t^2 q^gamma log p_t + (2 gamma + 1) p_t q^(gamma+1)

gamma = 0 is the ordinary log loss (gradient p - y, hessian p(1 - p)). The hessian of the focal loss can go
negative far on the wrong side; Newton steps need it positive, so it is floored at ``HESS_FLOOR``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
HESS_FLOOR = 1e-6

Objective = Callable[[FloatArray, lgb.Dataset], tuple[FloatArray, FloatArray]]


def focal_grad_hess(z: FloatArray, y: FloatArray, gamma: float) -> tuple[FloatArray, FloatArray]:
    """Gradient and (floored) hessian of the focal loss with respect to the raw margin ``z``."""
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    s = np.where(y > 0.5, 1.0, -1.0)
    zt = s * z
    pt = 1.0 / (1.0 + np.exp(-zt))
    q = 1.0 - pt
    log_pt = -np.logaddexp(0.0, -zt)  # stable log(sigmoid(z_t))
    q_g = q**gamma
    grad = s * (gamma * pt * q_g * log_pt - q_g * q)
    hess = (gamma * pt * q_g * q * log_pt - gamma * gamma * pt * pt * q_g * log_pt
            + (2.0 * gamma + 1.0) * pt * q_g * q)
    return grad, np.maximum(hess, HESS_FLOOR)


def focal_loss(z: FloatArray, y: FloatArray, gamma: float) -> FloatArray:
    """Per-sample focal loss of raw margins (for tests and reporting)."""
    s = np.where(y > 0.5, 1.0, -1.0)
    zt = s * z
    pt = 1.0 / (1.0 + np.exp(-zt))
    return np.asarray(-((1.0 - pt) ** gamma) * -np.logaddexp(0.0, -zt), dtype=np.float64)


def focal_objective(gamma: float) -> Objective:
    """A LightGBM ``fobj``; sample weights of the Dataset scale gradient and hessian."""

    def objective(preds: FloatArray, data: lgb.Dataset) -> tuple[FloatArray, FloatArray]:
        y = np.asarray(data.get_label(), dtype=np.float64)
        grad, hess = focal_grad_hess(np.asarray(preds, dtype=np.float64), y, gamma)
        weight = data.get_weight()
        if weight is not None:
            w = np.asarray(weight, dtype=np.float64)
            grad, hess = grad * w, hess * w
        return grad, hess

    return objective


def as_binary_booster(booster: lgb.Booster, init_margin: float) -> lgb.Booster:
    """The custom-objective booster as a standard ``binary`` one: sigmoid(init_margin + sum of trees).

    A custom objective leaves no ``objective=`` line (so ``predict`` returns margins and onnxmltools cannot
    tell it is a classifier) and does not store the Dataset's init_score; both are written into the model
    text: the objective line, and ``init_margin`` added to every leaf of the first tree.
    """
    text = booster.model_to_string()
    header, sep, trees = text.partition("\nTree=0\n")
    if not sep:
        raise ValueError("booster has no trees")
    header = re.sub(r"^objective=.*\n", "", header + "\n", flags=re.MULTILINE)
    header = re.sub(r"^tree_sizes=.*\n", "", header, flags=re.MULTILINE)  # byte offsets go stale below
    header = header.rstrip("\n") + "\nobjective=binary sigmoid:1\n"
    first, sep2, rest = trees.partition("\n\n")

    def shift(match: re.Match[str]) -> str:
        return "leaf_value=" + " ".join(repr(float(v) + init_margin) for v in match.group(1).split())

    first = re.sub(r"^leaf_value=(.*)$", shift, first, count=1, flags=re.MULTILINE)
    # The parameters block at the end is what Booster.params (and so onnxmltools) reads.
    rest = re.sub(r"^\[objective: .*\]$", "[objective: binary]", rest, flags=re.MULTILINE)
    return lgb.Booster(model_str=header + "\nTree=0\n" + first + sep2 + rest)
