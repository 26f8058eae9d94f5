"""The claims page's verdict rules (bagcert_lib.verdicts), each on constructed data."""
import numpy as np
import pytest

from bagcert_lib import verdicts as v

RNG = np.random.default_rng(0)
SEEDS = np.array([0.374, 0.403, 0.424, 0.386, 0.417])        # five seeds' clean accuracy
SIGMA = v.seed_noise(SEEDS)


def test_seed_noise_is_the_seeds_standard_deviation():
    assert SIGMA == pytest.approx(np.std(SEEDS, ddof=1))
    with pytest.raises(ValueError):
        v.seed_noise([0.4])


def test_a_trend_that_holds_one_that_does_not_and_one_within_noise():
    margins = np.tile([0.25, 0.5, 0.75, 1.0], 5)
    rfs = np.repeat([5, 7, 9, 11, 13], 4)
    base = 0.3 + 0.02 * (rfs - 5)                              # RFs differ: removed within RF
    falling = base - 0.10 * margins + RNG.normal(0, 0.002, 20)
    d, se = v.slope(margins, falling, SIGMA, groups=rfs)
    assert d == pytest.approx(-0.10, abs=0.01) and se == pytest.approx(SIGMA / np.sqrt(5 * 0.3125))
    assert v.trend(d, se, sign=-1).text == "holds"             # smaller M, higher accuracy
    assert v.trend(d, se, sign=+1).text == "does not hold"     # the opposite claim
    flat = base + RNG.normal(0, SIGMA / 4, 20)                 # no effect beyond seed noise
    assert v.trend(*v.slope(margins, flat, SIGMA, groups=rfs), sign=-1).text == "no clear trend"


def test_a_tie_is_no_clear_trend_and_the_threshold_is_two_standard_errors():
    d, se = v.difference(SEEDS, SEEDS, SIGMA)
    assert d == 0 and se == pytest.approx(SIGMA * np.sqrt(2 / 5))
    assert v.trend(d, se).word == "no clear trend"
    assert v.trend(2.01 * se, se).word == "holds" and v.trend(1.99 * se, se).word == "no clear trend"
    assert v.trend(-2.01 * se, se).word == "does not hold"
    assert v.trend(None, se).word == "not run"


def test_a_difference_inside_and_outside_the_tolerance_is_the_same_rule_for_every_row():
    assert v.value(0.012, 0.03, 0.03).text == "matches"        # a 3-point gain, 1.2 measured
    assert v.value(0.131, 0.60, 0.03).text == "differs by -46.9 points"
    assert v.value(0.63, 0.60, 0.03).word == "matches" and v.value(0.6301, 0.60, 0.03).word == "differs"
    assert v.value(0.64, 0.60, 0.03).word == "differs"
    assert v.value(None, 0.60, 0.03).word == "not run"
    assert v.ratio(230, 19.4).text == "differs (11.9× the paper's)"
    assert v.ratio(25, 19.4).word == "matches" and v.ratio(9, 19.4).word == "differs"


def test_bounds_counts_and_not_run():
    assert v.bound(0.042, 0.05).word == "does not hold" and v.bound(0.06, 0.05).word == "holds"
    assert v.bound(0.02, 0.05, at_least=False).word == "holds"
    assert v.count(5, 5).word == "matches" and v.count(0, 4).text == "differs (0 vs 4)"
    assert v.count("28/38", "28/38").word == "matches"
    nr = v.not_run()
    assert nr.word == "not run" and nr.outcome == v.NOT_JUDGED


def test_combining_parts():
    holds, unclear, fails = v.trend(5, 1), v.trend(0.1, 1), v.trend(-5, 1)
    assert v.combine({"clean": holds, "certified": holds}).word == "holds"
    both = v.combine({"clean": unclear, "certified": holds})
    assert both.word == "partly holds" and both.outcome == v.PARTLY
    assert both.text == "partly holds (no clear trend for clean; holds for certified)"
    assert v.combine({"a": holds, "b": fails}).word == "does not hold"
    assert v.combine({"a": unclear, "b": unclear}).word == "no clear trend"
    assert v.combine({"clean": v.count(0, 4), "certified": v.count(4, 4)}).word == "differs"
    assert v.combine({"a": v.not_run(), "b": v.not_run()}).word == "not run"
    assert v.combine({"only": fails}) == fails


def test_the_count_leaves_out_what_was_not_run_or_not_comparable():
    got = v.tally([v.value(0.3, 0.3, 0.03), v.trend(0, 1), v.not_run(), v.not_comparable("other machine"),
                   v.combine({"a": v.trend(5, 1), "b": v.trend(0, 1)}), v.prediction(0.6, 0.4, 0.7)])
    assert got["judged"] == 3 and got[v.REPRODUCED] == 1 and got[v.PARTLY] == 1
    assert got[v.NOT_REPRODUCED] == 1 and got[v.NOT_JUDGED] == 3
    assert v.prediction(0.6, 0.4, 0.55).text == "paper above our range"
    assert v.prediction(0.6, 0.4, 0.7).text == "paper inside our range"
