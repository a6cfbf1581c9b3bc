"""One trial of accuracy-aware int8 post-training quantization of a small MLP.

The fp32 model is an MLP (64-128-64-10, ReLU) trained with a fixed seed on
scikit-learn's bundled digits data set, cached as ``.npz`` at ``--model``
(or ``$OAAS_QUANT_MODEL``, default ``~/.cache/oaasd/quantize-mlp.npz``).

The configuration comes from ``$OAAS_TRIAL_CONFIG`` (JSON; defaults when
absent; ``{"precision": "fp32"}`` runs the unquantized model, the baseline).
Weights and activations are quantized to int8 in numpy: per-tensor or
per-channel weight scales, symmetric or asymmetric ranges, activation ranges
calibrated on training samples (min/max or a percentile), some layers kept
in fp32. Integer products accumulate exactly in float32 (|sum| < 2**24).

Reports on stdout, one JSON line each: ``OAAS_METRIC`` while calibrating and
evaluating, then ``OAAS_RESULT {"accuracy", "latency_ms", "fp32_accuracy", ...}``.
Latency is the median wall time of inference on the whole test split.

Run by hand:  python3 examples/quantize/trial.py
              OAAS_TRIAL_CONFIG='{"weight_granularity": "per_channel"}' python3 examples/quantize/trial.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: threads only add jitter
import numpy as np  # noqa: E402

DEFAULTS = {
    "weight_granularity": "per_tensor",   # per_tensor | per_channel
    "weight_scheme": "symmetric",         # symmetric | asymmetric
    "activation_scheme": "symmetric",     # symmetric | asymmetric
    "calibration": "minmax",              # minmax | percentile
    "percentile": 99.99,                  # only with calibration == percentile
    "calibration_samples": 128,           # 1 .. 1024; few samples under-estimate the ranges
    "fp32_layers": "none",                # none | first | last | first_last
}
HIDDEN = (128, 64)
SEED = 0
REPEATS = 51


def report(kind: str, data: dict) -> None:
    print(f"OAAS_{kind} {json.dumps(data, sort_keys=True)}", flush=True)


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=0.3, random_state=SEED, stratify=y)


def fp32_model(path: Path, X_train: np.ndarray, y_train: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W, b), ...] float32, trained once with a fixed seed and cached at ``path``."""
    if path.exists():
        with np.load(path) as z:
            return [(z[f"W{i}"], z[f"b{i}"]) for i in range(len(HIDDEN) + 1)]
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=200, random_state=SEED)
    clf.fit(X_train, y_train)
    layers = [(W.astype(np.float32), b.astype(np.float32)) for W, b in zip(clf.coefs_, clf.intercepts_)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"W{i}": W for i, (W, _) in enumerate(layers)}, **{f"b{i}": b for i, (_, b) in enumerate(layers)})
    os.replace(tmp, path)  # concurrent trials may train at once: the last complete file wins
    return layers


def fp32_forward(layers, X: np.ndarray) -> np.ndarray:
    h = X
    for i, (W, b) in enumerate(layers):
        h = h @ W + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def layer_inputs(layers, X: np.ndarray) -> list[np.ndarray]:
    """The fp32 input of every layer, for calibration."""
    out, h = [], X
    for i, (W, b) in enumerate(layers):
        out.append(h)
        h = h @ W + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return out


def qparams(lo: np.ndarray, hi: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """int8 scale and zero point for ranges [lo, hi] (arrays broadcast per channel)."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)  # 0 must be exact
    if scheme == "symmetric":
        scale = np.maximum(np.maximum(-lo, hi), 1e-12) / 127.0
        return scale.astype(np.float32), np.zeros_like(scale, dtype=np.float32)
    scale = np.maximum(hi - lo, 1e-12) / 255.0
    zero = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    return scale.astype(np.float32), zero.astype(np.float32)


def quantize(x: np.ndarray, scale, zero) -> np.ndarray:
    """int8 codes (held in float32) of ``x``."""
    return np.clip(np.round(x / scale) + zero, -128, 127)


def build(layers, calib: list[np.ndarray], cfg: dict, keep: set[int]):
    """Per layer: ("fp32", W, b) or ("int8", Wq - zw, 1/a_scale, lo, hi, a_scale * w_scale, b).

    ``lo, hi`` bound the centred activation codes ``q - a_zero``; a ReLU in
    front of an int8 layer is folded into ``lo`` (codes below the zero point
    are clipped to it), so the quantized path costs: scale, round, clip,
    integer GEMM (exact in float32), rescale and bias.
    """
    plan = []
    for i, ((W, b), A) in enumerate(zip(layers, calib)):
        if i in keep:
            plan.append(("fp32", W, b))
            continue
        axis = 0 if cfg["weight_granularity"] == "per_channel" else None  # per output column
        ws, wz = qparams(W.min(axis=axis), W.max(axis=axis), cfg["weight_scheme"])
        Wc = (quantize(W, ws, wz) - wz).astype(np.float32)   # centred int8 weights
        if cfg["calibration"] == "percentile":
            p = float(cfg["percentile"])
            lo, hi = np.percentile(A, 100.0 - p), np.percentile(A, p)
        else:
            lo, hi = A.min(), A.max()
        a_s, a_z = qparams(np.float32(lo), np.float32(hi), cfg["activation_scheme"])
        q_lo = 0.0 if i > 0 else -128.0 - a_z                # after a ReLU, nothing below zero
        plan.append(("int8", Wc, np.float32(1.0 / a_s), np.float32(q_lo), np.float32(127.0 - a_z),
                     (a_s * ws).astype(np.float32), b))
    return plan


def int8_forward(plan, X: np.ndarray) -> np.ndarray:
    h = X
    last = len(plan) - 1
    for i, step in enumerate(plan):
        if step[0] == "fp32":
            _, W, b = step
            h = h @ W
            h += b
            if i < last and plan[i + 1][0] == "fp32":
                np.maximum(h, 0.0, out=h)
        else:
            _, Wc, inv_s, q_lo, q_hi, rescale, b = step
            q = h * inv_s                                   # centred codes: round(x / s) in [lo, hi]
            np.rint(q, out=q)
            np.clip(q, q_lo, q_hi, out=q)                   # also the ReLU of the layer before
            h = q @ Wc                                      # exact: |sum| < 2**24
            h *= rescale
            h += b
            if i < last and plan[i + 1][0] == "fp32":
                np.maximum(h, 0.0, out=h)
    return h


def median_latency_ms(fn, X: np.ndarray) -> float:
    fn(X)  # warm caches
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get(
        "OAAS_QUANT_MODEL", str(Path.home() / ".cache" / "oaasd" / "quantize-mlp.npz")))
    args = ap.parse_args()
    raw = json.loads(os.environ.get("OAAS_TRIAL_CONFIG") or "{}")
    unknown = set(raw) - set(DEFAULTS) - {"precision"}
    if unknown:
        print(f"unknown configuration keys: {sorted(unknown)}", file=sys.stderr)
        return 2
    cfg = {**DEFAULTS, **raw}
    X_train, X_test, y_train, y_test = load_data()
    layers = fp32_model(Path(args.model), X_train, y_train)
    fp32_acc = float((fp32_forward(layers, X_test).argmax(1) == y_test).mean())
    report("METRIC", {"step": 0, "phase": "fp32", "fp32_accuracy": fp32_acc})
    if cfg.get("precision") == "fp32":
        fn, int8_layers, weight_bytes = (lambda X: fp32_forward(layers, X)), 0, sum(4 * W.size for W, _ in layers)
    else:
        n = len(layers)
        keep = {"none": set(), "first": {0}, "last": {n - 1}, "first_last": {0, n - 1}}[cfg["fp32_layers"]]
        rng = np.random.default_rng(SEED)
        idx = rng.choice(len(X_train), min(int(cfg["calibration_samples"]), len(X_train)), replace=False)
        plan = build(layers, layer_inputs(layers, X_train[idx]), cfg, keep)
        report("METRIC", {"step": 1, "phase": "calibrated", "calibration_samples": len(idx)})
        fn = lambda X: int8_forward(plan, X)  # noqa: E731
        int8_layers = n - len(keep)
        weight_bytes = sum(4 * W.size if i in keep else W.size for i, (W, _) in enumerate(layers))
    accuracy = float((fn(X_test).argmax(1) == y_test).mean())
    report("METRIC", {"step": 2, "phase": "evaluated", "accuracy": accuracy})
    latency = median_latency_ms(fn, X_test)
    report("RESULT", {"accuracy": accuracy, "latency_ms": round(latency, 4), "fp32_accuracy": fp32_acc,
                      "int8_layers": int8_layers, "weight_bytes": weight_bytes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
