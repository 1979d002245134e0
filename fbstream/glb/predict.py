"""
A load (the viewers of each client network, for the balancer) a few seconds
ahead, from the reports of its recent seconds.

A decision made now takes effect for viewers a few seconds from now: what it
sees is a report already some seconds old, and the map it makes reaches
players only after they next ask. A viral stream can fill a PoP within that
time, so the balancer decides on the load predicted ``horizon`` seconds
ahead, not the load last reported (:mod:`fbstream.glb.balance` says why it
predicts networks' viewers rather than PoPs' loads).

Three predictors, compared by ``bench/glb_sim.py``:

- ``reactive``: no prediction, the last report;
- ``linear``: the last report plus the least-squares slope of the window
  times the horizon;
- ``spline``: :class:`scipy.interpolate.CubicSpline` through the window's
  reports (not-a-knot; with the 3-second window's three reports that is the
  parabola through them, and with two a line), extrapolated from the last
  report by its first and second derivatives there.

The spline's prediction is clamped, because a curve fitted to three noisy
points and extrapolated is only a guess:

- a rise that is slowing down (first derivative up, second down) is
  followed only to its turning point: the plateau, never the fall the
  parabola would go on to draw (and the same for a fall that slows);
- a rise that is speeding up adds at most as much again as the linear
  prediction does (the second-order term never exceeds the first-order one);
- the result is never below zero.

Evaluating the spline's last cubic beyond the last knot would also carry its
third derivative, which with four or more points is noise amplified by the
cube of the horizon; the second-order Taylor step from the last report does
not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

PREDICTORS = ("reactive", "linear", "spline")
#: Report times: a sequence, or an array once cleaned.
Times = Sequence[float] | np.ndarray
#: Seconds between two reports for them to be two points of a fit.
MIN_SPACING = 0.01


def _clean(times: Times, loads: Any) -> tuple[np.ndarray, np.ndarray]:
    """
    The reports in time order, one per time (the latest wins, and reports
    closer than :data:`MIN_SPACING` are one time), finite times
    only, as (times, loads): loads has a row per time and a column per
    series; a load that is not finite or is negative counts as 0.
    """
    by_time: dict[float, int] = {}
    for i, t in enumerate(times):
        if math.isfinite(t):
            by_time[t] = i
    order: list[float] = []
    rows: list[int] = []
    for t in sorted(by_time):
        if order and t - order[-1] < MIN_SPACING:
            # Reports this close are one: the later wins.
            order[-1], rows[-1] = t, by_time[t]
        else:
            order.append(t)
            rows.append(by_time[t])
    y = np.asarray(loads, dtype=float).reshape(len(times), -1)[rows]
    y = np.where(np.isfinite(y) & (y > 0), y, 0.0)
    return np.array(order, dtype=float), y


def derivatives(times: Times, loads: Any) -> tuple[np.ndarray, np.ndarray]:
    """
    The spline's first and second derivatives (per second) at the last
    report, one per series (column of ``loads``): 0 where there are too few
    reports.

    A spline's derivatives are linear in the values it interpolates, so the
    spline is fitted once, to each report alone (the identity), and the
    weights it gives each report are applied to every series at once: one
    small fit for any number of series.
    """
    t, y = _clean(times, loads)
    if len(t) < 2:
        return np.zeros(y.shape[1]), np.zeros(y.shape[1])
    if len(t) == 2:
        return (y[1] - y[0]) / (t[1] - t[0]), np.zeros(y.shape[1])
    unit = CubicSpline(t, np.eye(len(t)), axis=0, bc_type="not-a-knot")
    w1, w2 = unit(t[-1], 1), unit(t[-1], 2)
    return w1 @ y, w2 @ y


def slope(times: Times, loads: Any) -> np.ndarray:
    """The least-squares slope of each series' reports (per second): 0 under two reports."""
    t, y = _clean(times, loads)
    if len(t) < 2:
        return np.zeros(y.shape[1])
    tt = t - t.mean()
    return np.asarray(tt @ (y - y.mean(axis=0)) / (tt @ tt))


def spline_step(last: Any, d1: Any, d2: Any, horizon: float) -> np.ndarray:
    """``last`` carried ``horizon`` seconds by the derivatives, clamped as the module says."""
    last, d1, d2 = (np.asarray(v, dtype=float) for v in (last, d1, d2))
    turning = d1 * d2 < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(turning, np.minimum(horizon, -d1 / np.where(turning, d2, 1.0)), horizon)
    linear = d1 * h
    curved = 0.5 * d2 * h * h
    # Speeding up: the second-order term at most the first-order one; from a
    # flat start a curvature alone is noise.
    curved = np.where(d1 * d2 > 0, np.sign(curved) * np.minimum(np.abs(curved), np.abs(linear)), curved)
    curved = np.where(d1 == 0, 0.0, curved)
    return np.maximum(0.0, last + linear + curved)


def extrapolator(kind: str, times: Sequence[float], loads: Any) -> Callable[[float], np.ndarray]:
    """
    What :func:`predict_many` answers, for any horizon, with the fit done
    once: ``extrapolator(kind, times, loads)(horizon)``.
    """
    if kind not in PREDICTORS:
        raise ValueError("unknown predictor %r (choose from %s)" % (kind, ", ".join(PREDICTORS)))
    t, y = _clean(times, loads)
    if len(t) == 0:
        return lambda horizon: np.zeros(y.shape[1])
    last = y[-1]
    if kind == "reactive" or len(t) < 2:
        return lambda horizon: last.copy()
    if kind == "linear":
        rate = slope(t, y)
        return lambda horizon: np.maximum(0.0, last + rate * horizon)
    d1, d2 = derivatives(t, y)
    return lambda horizon: spline_step(last, d1, d2, horizon)


def predict_many(kind: str, times: Sequence[float], loads: Any, horizon: float) -> np.ndarray:
    """
    Each series' load ``horizon`` seconds after the last of ``times``, by
    ``kind`` (one of :data:`PREDICTORS`); ``loads`` has a row per time and a
    column per series.
    """
    return extrapolator(kind, times, loads)(horizon)


def predict(kind: str, times: Sequence[float], loads: Sequence[float], horizon: float) -> float:
    """One series' load ``horizon`` seconds after the last of ``times``; 0 with no report."""
    if not len(times):
        return 0.0
    return float(predict_many(kind, times, np.asarray(loads, dtype=float).reshape(-1, 1), horizon)[0])
