"""Pipeline description: validation names the field; the example profile loads."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from oaasd.pipeline import Decision, Pipeline, SolveRequest, solve, solve_request

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline" / "profile.json"

BASE = {
    "name": "p",
    "slo_ms": 100.0,
    "stages": [{
        "name": "detect",
        "variants": [{"name": "yolo", "accuracy": 0.9, "cores": 2.0,
                      "profiles": [{"batch": 1, "latency_ms": 10.0, "throughput_rps": 100.0}]}],
    }],
}


def errors_for(mutate) -> list[dict]:
    spec = copy.deepcopy(BASE)
    mutate(spec)
    with pytest.raises(ValidationError) as err:
        Pipeline.model_validate(spec)
    return err.value.errors()


def variant(spec: dict) -> dict:
    return spec["stages"][0]["variants"][0]


@pytest.mark.parametrize("mutate, loc, words", [
    (lambda s: variant(s).update(accuracy=1.2), ("stages", 0, "variants", 0, "accuracy"), "1"),
    (lambda s: variant(s)["profiles"][0].update(latency_ms=0), (
        "stages", 0, "variants", 0, "profiles", 0, "latency_ms"), "greater than 0"),
    (lambda s: variant(s)["profiles"].append(dict(variant(s)["profiles"][0])),
     ("stages", 0, "variants", 0, "profiles"), "batch sizes must be unique"),
    (lambda s: s["stages"][0].update(min_replicas=4, max_replicas=2),
     ("stages", 0, "max_replicas"), "max_replicas (2) < min_replicas (4)"),
    (lambda s: s["stages"][0]["variants"].append(dict(variant(s))),
     ("stages", 0, "variants"), "names must be unique"),
    (lambda s: s.update(accuracy_combine="harmonic"), ("accuracy_combine",), "product"),
    (lambda s: s.update(slo_ms=-1), ("slo_ms",), "greater than 0"),
    (lambda s: s.update(priority=3), ("priority",), "Extra inputs"),
    (lambda s: variant(s).update(latency_ms=3), ("stages", 0, "variants", 0, "latency_ms"),
     "Extra inputs"),
])
def test_validation_errors_name_the_field(mutate, loc, words) -> None:
    errs = errors_for(mutate)
    assert errs[0]["loc"] == loc
    assert words in errs[0]["msg"]


def test_mixed_latency_percentiles_are_refused_with_the_field_named() -> None:
    def mutate(spec):
        second = copy.deepcopy(variant(spec))
        second.update(name="yolo-m", latency_percentile=50)
        spec["stages"][0]["variants"].append(second)

    (err,) = errors_for(mutate)
    assert "stages[0].variants[1].latency_percentile" in err["msg"]


def test_example_profile_loads_and_round_trips() -> None:
    pipeline = Pipeline.model_validate_json(EXAMPLE.read_text())
    assert [s.name for s in pipeline.stages] == ["detect", "classify", "describe"]
    assert Pipeline.model_validate_json(pipeline.model_dump_json()) == pipeline
    decision = solve(pipeline, 100.0)
    assert Decision.model_validate(json.loads(decision.model_dump_json())) == decision


def test_docs_name_every_field_code_and_kind() -> None:
    """docs/pipeline.md is the reference: every field, reason and kind appears in it."""
    from typing import get_args

    from oaasd.pipeline import InfeasibleReason, Profile, Stage, StageDecision, Variant
    from oaasd.pipeline.model import AccuracyCombine, InfeasibleReasonCode
    from oaasd.pipeline.predictors import (
        HoltPredictor,
        LastValuePredictor,
        SeasonalPredictor,
        WindowMaxPredictor,
    )

    docs = (Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text()
    names = set()
    for model in (Pipeline, Stage, Variant, Profile, Decision, StageDecision, InfeasibleReason,
                  SolveRequest, WindowMaxPredictor, HoltPredictor, SeasonalPredictor):
        names |= set(model.model_fields)
    names |= set(get_args(AccuracyCombine)) | set(get_args(InfeasibleReasonCode))
    names |= {p.model_fields["kind"].default for p in (
        LastValuePredictor, WindowMaxPredictor, HoltPredictor, SeasonalPredictor)}
    missing = sorted(n for n in names if f"`{n}`" not in docs and f'"{n}"' not in docs)
    assert not missing, f"not in docs/pipeline.md: {missing}"


def test_solve_request_is_the_api_body() -> None:
    body = {"pipeline": BASE, "load_rps": 150.0}
    d = solve_request(SolveRequest.model_validate(body))
    assert d.method == "exact" and d.stages[0].replicas == 2 and d.feasible
    greedy = solve_request(SolveRequest.model_validate({**body, "method": "greedy"}))
    assert greedy.method == "greedy"
    for bad, loc in [({**body, "method": "exhaustive"}, ("method",)),
                     ({**body, "load_rps": -1}, ("load_rps",)),
                     ({**body, "pipeline": {**BASE, "slo_ms": 0}}, ("pipeline", "slo_ms"))]:
        with pytest.raises(ValidationError) as err:
            SolveRequest.model_validate(bad)
        assert err.value.errors()[0]["loc"] == loc
