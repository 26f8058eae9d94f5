"""Verdicts on the paper's claims: one rule for each kind of claim, the same for every row.

The claims page (``notebooks/claims``) states these rules; each function here is one of them.

* **value** — the paper states a number: *matches* when |ours − paper| ≤ the tolerance, else
  *differs by* (ours − paper).
* **ratio** — the paper states a ratio (of two times on one machine): *matches* when ours lies within
  a factor ``factor`` of the paper's, else *differs*, ours ÷ paper's.
* **count** — the paper states a count or a discrete value: *matches* when equal, else *differs*.
* **bound** — the paper states a bound ("at least 40 %", "highly correlated", "non-trivial"):
  *holds* when ours lies on its side of the bound, else *does not hold*.
* **trend** — the paper states the sign of an effect d (a difference of means, or a slope): with
  se the standard error that seed-to-seed noise alone gives d, *holds* when d has the claimed sign
  and |d| ≥ z·se, *does not hold* when it has the other sign and |d| ≥ z·se, else *no clear trend*.
* **time** — seconds measured on another machine than the paper's: *not comparable* (the claim is
  then judged, where it can be, by a ratio on one machine).
* **prediction** — our compute study's range at the paper's compute: the paper's value lies
  *inside*, *above* or *below* it.
* *not run* — we have no value: its own verdict, outside every count.

A claim judged on several quantities (clean and certified accuracy, several baselines) gets each
part's verdict and one for the whole: *holds* when every part holds, *does not hold* when any part
contradicts the claim, *no clear trend* when no part holds and none contradicts, and *partly holds*
when some parts hold and the rest show no clear trend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How each verdict counts: claims that reproduce, partly, do not, and those not judged.
REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_JUDGED = "reproduced", "partly", "not reproduced", "not judged"


@dataclass(frozen=True)
class Verdict:
    """``word``: the verdict (``matches``, ``differs``, ``holds``, …); ``text``: as printed, with
    its number; ``outcome``: how it counts (:data:`REPRODUCED`, …)."""
    word: str
    text: str
    outcome: str

    def __str__(self):
        return self.text


def _agree(word, text=None):
    return Verdict(word, text or word, REPRODUCED)


def _disagree(word, text=None):
    return Verdict(word, text or word, NOT_REPRODUCED)


def not_run() -> Verdict:
    return Verdict("not run", "not run", NOT_JUDGED)


def not_comparable(reason: str) -> Verdict:
    return Verdict("not comparable", f"not comparable ({reason})", NOT_JUDGED)


def value(ours, paper: float, tolerance: float, unit: float = 100, suffix: str = " points") -> Verdict:
    """|ours − paper| ≤ tolerance: *matches*; else *differs by* the difference (× ``unit``)."""
    if ours is None:
        return not_run()
    diff = float(ours) - float(paper)
    if abs(diff) <= tolerance + 1e-12:
        return _agree("matches")
    return _disagree("differs", f"differs by {diff * unit:+.1f}{suffix}")


def ratio(ours, paper: float, factor: float = 2.0) -> Verdict:
    """ours within a factor ``factor`` of the paper's: *matches*; else *differs* (ours ÷ paper)."""
    if ours is None:
        return not_run()
    r = float(ours) / float(paper)
    if 1 / factor <= r <= factor:
        return _agree("matches")
    return _disagree("differs", f"differs ({r:.1f}× the paper's)")


def count(ours, paper) -> Verdict:
    """Equal: *matches*; else *differs (ours vs paper)*."""
    if ours is None:
        return not_run()
    if str(ours) == str(paper):
        return _agree("matches")
    return _disagree("differs", f"differs ({ours} vs {paper})")


def bound(ours, limit: float, at_least: bool = True) -> Verdict:
    """ours ≥ ``limit`` (or ≤ where ``at_least`` is False): *holds*; else *does not hold*."""
    if ours is None:
        return not_run()
    ok = float(ours) >= limit if at_least else float(ours) <= limit
    return _agree("holds") if ok else _disagree("does not hold")


def trend(d, se: float, sign: int = 1, z: float = 2.0) -> Verdict:
    """An effect ``d`` claimed to have sign ``sign`` (+1 or −1), against the standard error ``se``
    that seed noise alone gives it: beyond z·se with the claimed sign *holds*, with the other sign
    *does not hold*; within z·se, *no clear trend*."""
    if d is None:
        return not_run()
    if not np.isfinite(se) or se < 0:
        raise ValueError(f"a trend needs the seed noise's standard error; got {se}")
    if abs(d) < z * se:
        return Verdict("no clear trend", "no clear trend", NOT_REPRODUCED)
    return _agree("holds") if np.sign(d) == np.sign(sign) else _disagree("does not hold")


def prediction(paper: float, low: float, high: float) -> Verdict:
    """Is the paper's value inside our range [low, high]? Our own extrapolation, not a claim of the
    paper: outside every count."""
    if low is None:
        return not_run()
    if low <= paper <= high:
        return Verdict("inside", "paper inside our range", NOT_JUDGED)
    side = "above" if paper > high else "below"
    return Verdict(side, f"paper {side} our range", NOT_JUDGED)


def combine(parts: dict) -> Verdict:
    """One verdict for a claim judged on several quantities, ``{name: Verdict}``: every part
    agrees — *holds* (or *matches*); any part contradicts — *does not hold* (*differs*); none
    agrees and none contradicts — *no clear trend*; otherwise *partly holds*. The text names each
    part's verdict."""
    judged = {k: v for k, v in parts.items() if v.outcome != NOT_JUDGED}
    if not judged:
        return not_run()
    if len(parts) == 1:
        return next(iter(parts.values()))
    agree = [v for v in judged.values() if v.outcome == REPRODUCED]
    clash = [v for v in judged.values() if v.outcome == NOT_REPRODUCED and v.word != "no clear trend"]
    each = "; ".join(f"{v.text} for {k}" for k, v in parts.items())
    if len(agree) == len(parts):
        return Verdict(agree[0].word, f"{agree[0].word} ({each})", REPRODUCED)
    if clash:
        word = "differs" if clash[0].word == "differs" else "does not hold"
        return Verdict(word, f"{word} ({each})", NOT_REPRODUCED)
    if not agree:
        return Verdict("no clear trend", f"no clear trend ({each})", NOT_REPRODUCED)
    return Verdict("partly holds", f"partly holds ({each})", PARTLY)


# ------------------------------------------------------------------ the statistics of a trend
def seed_noise(values) -> float:
    """Standard deviation (n − 1) of one quantity over runs that differ only in their seed."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        raise ValueError("seed noise needs two or more seeds")
    return float(v.std(ddof=1))


def difference(a, b, sigma: float) -> tuple[float, float]:
    """mean(a) − mean(b) and its standard error σ·√(1/n_a + 1/n_b) under seed noise σ."""
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    return float(a.mean() - b.mean()), float(sigma * np.sqrt(1 / len(a) + 1 / len(b)))


def slope(x, y, sigma: float, groups=None) -> tuple[float, float]:
    """Least-squares slope of y on x (within ``groups``: each group's means removed, so the
    slope compares runs of one group only) and its standard error σ / √Σ(x − x̄)²."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if groups is not None:
        g = np.asarray(groups)
        for k in np.unique(g):
            x = np.where(g == k, x - x[g == k].mean(), x)
            y = np.where(g == k, y - y[g == k].mean(), y)
    else:
        x, y = x - x.mean(), y - y.mean()
    sxx = float((x ** 2).sum())
    if sxx <= 0:
        raise ValueError("a slope needs two or more distinct x within a group")
    return float((x * y).sum() / sxx), float(sigma / np.sqrt(sxx))


def tally(verdicts) -> dict:
    """How many verdicts of each outcome: the page's "N of M" counts only the judged ones."""
    out = {REPRODUCED: 0, PARTLY: 0, NOT_REPRODUCED: 0, NOT_JUDGED: 0}
    for v in verdicts:
        out[v.outcome] += 1
    out["judged"] = out[REPRODUCED] + out[PARTLY] + out[NOT_REPRODUCED]
    return out
