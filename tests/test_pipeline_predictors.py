"""Load predictors: no peeking, trend tracking, cautiousness, backtest figures."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from oaasd.pipeline.predictors import (
    HoltPredictor,
    LastValuePredictor,
    PredictorSpec,
    SeasonalPredictor,
    WindowMaxPredictor,
    backtest,
    holt,
    last_value,
    seasonal,
    window_max,
)

ALL = [LastValuePredictor(), WindowMaxPredictor(window=5), HoltPredictor(alpha=0.4, beta=0.2),
       SeasonalPredictor(period=12), SeasonalPredictor(period=12, method="naive")]


def noisy_rising(n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 + 0.5 * np.arange(n) + rng.normal(0, 5, n)


@pytest.mark.parametrize("predictor", ALL, ids=lambda p: f"{p.kind}")
@pytest.mark.parametrize("horizon", [1, 3, 13])
def test_rolling_equals_predict_on_every_prefix(predictor, horizon) -> None:
    """The backtest's one-pass forecasts use only the past."""
    y = np.abs(noisy_rising(40, seed=horizon)) * (1 + 0.3 * np.sin(np.arange(40)))
    rolled = predictor.rolling(y, horizon)
    assert rolled.shape == y.shape
    for t in range(len(y)):
        assert rolled[t] == pytest.approx(predictor.predict(y[:t + 1], horizon), rel=1e-12)


def test_window_max_under_predicts_less_than_last_value_on_a_rising_series() -> None:
    y = noisy_rising()
    last = backtest(y, LastValuePredictor(), horizon=1, warmup=10)
    wmax = backtest(y, WindowMaxPredictor(window=10), horizon=1, warmup=10)
    assert wmax["under_rate"] < last["under_rate"]
    assert wmax["under_rate"] < 0.25 < last["under_rate"]
    assert wmax["mean_over_rps"] > last["mean_over_rps"]  # the price: over-provisioning


def test_holt_tracks_a_linear_trend() -> None:
    y = 50.0 + 3.0 * np.arange(200)
    for h in (1, 5, 30):
        assert holt(y, h) == pytest.approx(y[-1] + 3.0 * h, rel=1e-9)
    noisy = noisy_rising(600, seed=3)
    h = 10
    holt_err = backtest(noisy, HoltPredictor(alpha=0.2, beta=0.05), h, warmup=50)
    last_err = backtest(noisy, LastValuePredictor(), h, warmup=50)
    assert abs(holt_err["bias"]) < 1.5 < abs(last_err["bias"])  # last value lags by 0.5 * h
    assert holt_err["mae"] < last_err["mae"]


def test_seasonal_beats_last_value_on_a_periodic_load() -> None:
    t = np.arange(24 * 20)
    rng = np.random.default_rng(1)
    y = 200 + 150 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 5, len(t))
    h = 6
    hw = backtest(y, SeasonalPredictor(period=24, alpha=0.3, beta=0.0, gamma=0.3), h, warmup=48)
    naive = backtest(y, SeasonalPredictor(period=24, method="naive"), h, warmup=48)
    last = backtest(y, LastValuePredictor(), h, warmup=48)
    assert hw["mae"] < 0.2 * last["mae"]
    assert naive["mae"] < 0.2 * last["mae"]
    assert seasonal(y, h, period=24, method="naive") == y[len(y) - 1 + h - 24]


def test_backtest_figures_by_hand() -> None:
    y = [10.0, 20.0, 15.0, 15.0]
    r = backtest(y, LastValuePredictor(), horizon=1)
    # forecasts 10, 20, 15 against actuals 20, 15, 15: errors -10, +5, 0
    assert r == {"mae": 5.0, "rmse": pytest.approx(np.sqrt(125 / 3)), "under_rate": 1 / 3,
                 "mean_under_rps": 10 / 3, "mean_over_rps": 5 / 3, "bias": -5 / 3, "n": 3}
    assert last_value(y) == 15.0 and window_max(y, window=3) == 20.0


def test_forecasts_never_negative_and_inputs_checked() -> None:
    falling = np.array([100.0, 60.0, 20.0, 5.0])
    assert HoltPredictor(alpha=1.0, beta=1.0).predict(falling, 10) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        last_value([])
    with pytest.raises(ValueError, match="horizon"):
        holt([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="too short"):
        backtest([1.0, 2.0], LastValuePredictor(), horizon=2)


def test_predictor_specs_parse_from_json_and_name_bad_fields() -> None:
    adapter = TypeAdapter(PredictorSpec)
    p = adapter.validate_python({"kind": "seasonal", "period": 60, "gamma": 0.2})
    assert isinstance(p, SeasonalPredictor) and p.period == 60
    assert isinstance(adapter.validate_json('{"kind": "window_max", "window": 7}'),
                      WindowMaxPredictor)
    with pytest.raises(ValidationError) as err:
        adapter.validate_python({"kind": "holt", "alpha": 2.0})
    assert err.value.errors()[0]["loc"] == ("holt", "alpha")
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "holt", "smoothing": 0.5})  # extra="forbid"
