"""Load predictors: forecast the request rate ``horizon`` steps ahead.

A series is the observed load (requests/s), one value per interval, oldest
first. Every predictor offers ``predict(series, horizon) -> float`` and
``rolling(series, horizon) -> (n,) array``, where ``rolling[t]`` is exactly
what ``predict(series[:t + 1], horizon)`` returns, computed in one pass: the
backtest uses it, so it never peeks at the future and costs O(n), not O(n^2).
Forecasts are clipped at 0 (a load is never negative).

The predictors are pydantic models (``kind`` discriminates), so a pipeline's
predictor can be configured in JSON and validated like the rest.
"""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


def _as_series(series) -> np.ndarray:
    y = np.asarray(series, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("series must be a non-empty 1-D sequence of loads (requests/s)")
    if not np.isfinite(y).all():
        raise ValueError("series must hold finite loads")
    return y


def _check_horizon(horizon: int) -> int:
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon}")
    return int(horizon)


class Predictor(Protocol):
    """What the adaptation loop needs from a load predictor."""

    kind: str

    def predict(self, series, horizon: int = 1) -> float:
        """Forecast of the load ``horizon`` steps after the last observation."""

    def rolling(self, series, horizon: int = 1) -> np.ndarray:
        """``predict`` after every prefix of ``series``, in one pass."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def predict(self, series, horizon: int = 1) -> float:
        """Forecast of the load ``horizon`` steps after the last observation."""
        return float(self.rolling(series, horizon)[-1])


class LastValuePredictor(_Base):
    """Tomorrow is today: the last observed load."""

    kind: Literal["last_value"] = "last_value"

    def predict(self, series, horizon: int = 1) -> float:
        _check_horizon(horizon)
        return max(0.0, float(_as_series(series)[-1]))

    def rolling(self, series, horizon: int = 1) -> np.ndarray:
        _check_horizon(horizon)
        return np.maximum(_as_series(series), 0.0)


class WindowMaxPredictor(_Base):
    """The largest load of the last ``window`` observations (a cautious forecast)."""

    kind: Literal["window_max"] = "window_max"
    window: int = Field(default=30, ge=1, description="observations looked back")

    def predict(self, series, horizon: int = 1) -> float:
        _check_horizon(horizon)
        return max(0.0, float(_as_series(series)[-self.window:].max()))

    def rolling(self, series, horizon: int = 1) -> np.ndarray:
        _check_horizon(horizon)
        y = _as_series(series)
        padded = np.concatenate([np.full(self.window - 1, -np.inf), y])
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.window)
        return np.maximum(windows.max(axis=1), 0.0)


def _holt_states(y: np.ndarray, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Level and trend after each observation (Holt's linear smoothing).

    Initialised with level y[0], trend 0; from the second point on, the
    classic updates (the trend starts as y[1] - y[0])."""
    n = len(y)
    level, trend = np.empty(n), np.empty(n)
    level[0], trend[0] = y[0], 0.0
    if n > 1:
        level[1], trend[1] = y[1], y[1] - y[0]
    lv, tr = (level[1], trend[1]) if n > 1 else (y[0], 0.0)
    for t in range(2, n):  # sequential recursion: no vector form
        prev = lv
        lv = alpha * y[t] + (1 - alpha) * (lv + tr)
        tr = beta * (lv - prev) + (1 - beta) * tr
        level[t], trend[t] = lv, tr
    return level, trend


def holt(series, horizon: int = 1, alpha: float = 0.5, beta: float = 0.3) -> float:
    """Holt's linear exponential smoothing forecast ``horizon`` steps ahead."""
    return HoltPredictor(alpha=alpha, beta=beta).predict(series, horizon)


class HoltPredictor(_Base):
    """Holt's linear exponential smoothing: level + horizon x trend."""

    kind: Literal["holt"] = "holt"
    alpha: float = Field(default=0.5, gt=0, le=1, description="level smoothing")
    beta: float = Field(default=0.3, ge=0, le=1, description="trend smoothing")

    def rolling(self, series, horizon: int = 1) -> np.ndarray:
        h = _check_horizon(horizon)
        level, trend = _holt_states(_as_series(series), self.alpha, self.beta)
        return np.maximum(level + h * trend, 0.0)


class SeasonalPredictor(_Base):
    """Seasonal forecast with period ``period`` (in observations).

    ``holt_winters``: additive Holt-Winters, initialised from the first
    period (level = its mean, trend 0, seasonal = deviations from it);
    ``naive``: the value one period before the forecast time. With less
    than one period observed, both fall back to Holt (resp. last value).
    """

    kind: Literal["seasonal"] = "seasonal"
    period: int = Field(ge=2, description="observations per season")
    method: Literal["holt_winters", "naive"] = "holt_winters"
    alpha: float = Field(default=0.5, gt=0, le=1)
    beta: float = Field(default=0.1, ge=0, le=1)
    gamma: float = Field(default=0.3, ge=0, le=1)

    def rolling(self, series, horizon: int = 1) -> np.ndarray:
        h = _check_horizon(horizon)
        y = _as_series(series)
        if self.method == "naive":
            return self._naive(y, h)
        m = self.period
        level, trend = _holt_states(y, self.alpha, self.beta)
        out = level + h * trend  # used while t < m - 1
        if len(y) >= m:
            out[m - 1:] = self._holt_winters(y, h)
        return np.maximum(out, 0.0)

    def _naive(self, y: np.ndarray, h: int) -> np.ndarray:
        k = (h - 1) // self.period + 1  # whole periods back from t + h
        t = np.arange(len(y))
        src = t + h - k * self.period
        return np.maximum(np.where(src >= 0, y[np.maximum(src, 0)], y), 0.0)

    def _holt_winters(self, y: np.ndarray, h: int) -> np.ndarray:
        """Forecasts after observations m-1 .. n-1."""
        m, a, b, g = self.period, self.alpha, self.beta, self.gamma
        k = (h - 1) // m + 1  # whole periods back from t + h
        lv, tr = float(y[:m].mean()), 0.0
        season = list(y[:m] - lv)  # season[t] for t < m
        out = []
        for t in range(m - 1, len(y)):  # sequential recursion: no vector form
            if t >= m:
                prev = lv
                lv = a * (y[t] - season[t - m]) + (1 - a) * (lv + tr)
                tr = b * (lv - prev) + (1 - b) * tr
                season.append(g * (y[t] - lv) + (1 - g) * season[t - m])
            out.append(lv + h * tr + season[t + h - k * m])
        return np.array(out)


PredictorSpec = Annotated[
    LastValuePredictor | WindowMaxPredictor | HoltPredictor | SeasonalPredictor,
    Field(discriminator="kind"),
]


def last_value(series, horizon: int = 1) -> float:
    """The last observed load."""
    return LastValuePredictor().predict(series, horizon)


def window_max(series, horizon: int = 1, window: int = 30) -> float:
    """The largest of the last ``window`` observed loads."""
    return WindowMaxPredictor(window=window).predict(series, horizon)


def seasonal(series, horizon: int = 1, period: int = 60, **params) -> float:
    """Additive Holt-Winters (or ``method="naive"``) forecast with ``period``."""
    return SeasonalPredictor(period=period, **params).predict(series, horizon)


def backtest(series, predictor: Predictor, horizon: int = 1, warmup: int = 1) -> dict:
    """Replay ``series``: after each observation t >= warmup - 1, forecast t + horizon.

    Returns ``mae`` and ``rmse`` (requests/s), ``under_rate`` (fraction of
    steps where the forecast was below the actual load: SLO risk),
    ``mean_under_rps`` and ``mean_over_rps`` (average shortfall and excess,
    over all steps), ``bias`` (mean forecast - actual) and ``n`` (steps).
    """
    h = _check_horizon(horizon)
    y = _as_series(series)
    start = max(warmup, 1) - 1
    if len(y) - h - start < 1:
        raise ValueError(f"series too short: {len(y)} points for warmup {warmup}, horizon {h}")
    forecast = np.asarray(predictor.rolling(y, h))[start:len(y) - h]
    actual = y[start + h:]
    err = forecast - actual
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "under_rate": float((err < 0).mean()),
        "mean_under_rps": float(np.maximum(-err, 0).mean()),
        "mean_over_rps": float(np.maximum(err, 0).mean()),
        "bias": float(err.mean()),
        "n": int(len(err)),
    }
