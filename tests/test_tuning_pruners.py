"""Early stopping: the median rule and ASHA stop a clearly bad trial and keep a good one."""

from __future__ import annotations

import pytest

from oaasd.tuning.pruners import Asha, MedianRule, NoStopping


def curve(final: float, steps: int, start: float = 1.0) -> list[tuple[float, float]]:
    """A loss curve going from ``start`` to ``final`` over ``steps`` reports."""
    return [(s, start + (final - start) * s / steps) for s in range(1, steps + 1)]


OTHERS = {i: curve(0.2 + 0.02 * i, 9) for i in range(5)}


@pytest.mark.parametrize("rule", [MedianRule(grace_steps=2, min_trials=3), Asha(min_resource=1, eta=3)])
def test_a_clearly_bad_trial_stops_and_a_good_one_goes_on(rule):
    bad = [(s, 1.0 + 0.1 * s) for s in range(1, 4)]   # the loss rises
    good = [(s, 0.9 - 0.2 * s) for s in range(1, 4)]  # falls faster than anyone
    stop, reason = rule.should_stop("bad", bad, OTHERS, "minimize")
    assert stop and reason
    stop, reason = rule.should_stop("good", good, OTHERS, "minimize")
    assert not stop and reason


@pytest.mark.parametrize("rule", [MedianRule(grace_steps=1, min_trials=1), Asha(min_resource=1, eta=2)])
def test_sense_maximize_flips_the_ranking(rule):
    others = {i: [(s, v) for s, v in curve(0.5, 3, start=0.1)] for i in range(4)}
    assert rule.should_stop("low", [(1, 0.0), (2, 0.01)], others, "maximize").stop
    assert not rule.should_stop("high", [(1, 0.5), (2, 0.7)], others, "maximize").stop


def test_median_rule_waits_for_its_grace_and_enough_trials():
    bad = [(1, 5.0)]
    assert not MedianRule(grace_steps=2, min_trials=1).should_stop("b", bad, OTHERS, "minimize").stop
    few = {0: OTHERS[0]}
    decision = MedianRule(grace_steps=1, min_trials=3).should_stop("b", bad, few, "minimize")
    assert not decision.stop and "only 1" in decision.reason
    assert MedianRule(grace_steps=1, min_trials=1).should_stop("b", bad, few, "minimize").stop


def test_median_rule_compares_running_averages_at_the_same_step():
    # others average 0.5 up to step 2 but reach 0.0 later; the trial's best 0.6 at step 2 is worse
    others = {i: [(1, 0.6), (2, 0.4), (3, 0.0), (4, 0.0)] for i in range(3)}
    assert MedianRule(1, 3).should_stop("t", [(1, 0.7), (2, 0.6)], others, "minimize").stop
    assert not MedianRule(1, 3).should_stop("t", [(1, 0.7), (2, 0.45)], others, "minimize").stop


def test_asha_decides_only_when_a_rung_is_crossed():
    asha = Asha(min_resource=1, eta=3)
    assert asha.rungs(30) == [1, 3, 9, 27]
    assert Asha(1, 3, max_resource=9).rungs(30) == [1, 3]
    bad = [(1, 0.1), (2, 9.0)]  # step 2 is between rungs 1 and 3: no decision there
    d = asha.should_stop("t", bad, OTHERS, "minimize")
    assert not d.stop and "no new rung" in d.reason
    # at rung 3 it meets the 5 others' values at step 3 (0.733 ... 0.76): top max(1, 6 // 3) = 2 go on
    assert asha.should_stop("t", bad + [(3, 0.75)], OTHERS, "minimize").stop
    assert not asha.should_stop("t", bad + [(3, 0.738)], OTHERS, "minimize").stop


def test_asha_min_trials_and_first_trial():
    assert not Asha(1, 3).should_stop("first", [(1, 99.0)], {}, "minimize").stop  # alone: it is the best
    d = Asha(1, 3, min_trials=4).should_stop("t", [(1, 99.0)], {1: [(1, 0.1)]}, "minimize")
    assert not d.stop and "need 4" in d.reason


def test_no_stopping_never_stops():
    assert NoStopping().should_stop("t", [(1, 1e9)], OTHERS, "minimize") == (False, "early stopping is off")
