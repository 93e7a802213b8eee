"""One decision from every detection signal, with a stated false-positive rate.

:func:`combined_detection` runs, for each method of ``methods``:

* the faithfulness test (:func:`~manipex.defenses.faithfulness_detection.faithfulness_test`):
  does removing what the map points at lower the output as much as the model's own use of the
  pixels predicts? It sees targeted (cross) manipulations that noise maps miss. Without
  references (or with references of another recipe) it is reference-free; with 3 or more of the
  model's recipe they calibrate it;
* with 3 or more trusted references, the calibrated noise-map similarity test
  (:func:`~manipex.defenses.detection.detect_manipulation`, Pasliev 2020, Sec. 4.1). With 1 or
  2 references its uncalibrated heuristic is shown but not counted.

The p-values of all counted tests are combined by Holm's step-down procedure (Holm 1979): the
model is flagged when any Holm-adjusted p-value is below ``alpha``, which keeps the probability
that a clean model is flagged by *any* test at most ``alpha``, whatever the dependence between
the tests (each test's own rate being at most ``alpha``). The rate is measured in
``benchmarks/detection_calibration.py``.

References of another recipe. The tests that compare with references are only valid for
references trained as the model was: a user's clean CNN trained for 6 epochs against references
trained for 3 was flagged by LRP noise maps (issue 30), and on digits the LRP noise-map test
alone flagged clean models trained twice as long as their references
(measured: README, Measured figures behind the defaults). Where
labelled data is given, the model's loss on it is compared with the references'
(:func:`reference_mismatch`); where it differs beyond the references' own spread, the noise-map
tests are left out of the decision, the faithfulness test runs reference-free, and the verdict
says how the references differ, naming any left-out test that would have flagged the model. The
price: a manipulation by fine-tuning that also lowers the loss (more training) makes the
references look of another recipe too; the verdict then says "inconclusive: references differ
... would flag the model", and the faithfulness test still counts (measured power in
``benchmarks/detection_calibration.py``).

Not combined: the weight-noise test (:func:`~manipex.defenses.detection.weight_noise_test`),
which needs the manipulation's objective, i.e. knowing what to look for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_call, check_int, check_labelled_data, check_model, check_real, short
from .detection import DetectionReport, detect_manipulation, prediction_interval_test
from .faithfulness_detection import FaithfulnessReport, faithfulness_test

Report = Union[DetectionReport, FaithfulnessReport]


@dataclass
class Signal:
    """One test of :func:`combined_detection`: which signal, which method, its p-value and its
    Holm-adjusted p-value (None where it is not counted, then ``note`` says why)."""

    signal: str
    method: str
    p_value: Optional[float]
    adjusted_p: Optional[float]
    flagged: bool
    counted: bool
    note: str
    report: Report = field(repr=False)


@dataclass(repr=False)
class CombinedReport:
    """The outcome of :func:`combined_detection`: every test (``signals``), the ways the
    references differ from the model (``mismatch``), and the decision at ``alpha``."""

    signals: List[Signal]
    alpha: float
    mismatch: List[str]
    references: int

    @property
    def manipulated(self) -> bool:
        return any(s.flagged for s in self.signals)

    @property
    def flagged_by(self) -> List[str]:
        """``"faithfulness (gradient)"``, ... : the tests that flagged the model."""
        return [f"{s.signal} ({s.method})" for s in self.signals if s.flagged]

    @property
    def conclusive(self) -> bool:
        """Flagged, or every counted test could have flagged the model, and the references (where
        given) are of the model's kind."""
        if self.manipulated:
            return True
        counted = [s for s in self.signals if s.counted]
        return bool(counted) and not self.mismatch and all(_conclusive(s.report) for s in counted)

    def finding(self) -> str:
        """``MANIPULATED (flagged by ...)``, ``inconclusive: ...`` or ``no evidence of manipulation``
        (:func:`verdict_text`)."""
        rows = [{"test": s.signal, "method": s.method, "p_value": s.p_value, "adjusted_p": s.adjusted_p,
                 "flagged": s.flagged, "counted": s.counted, "reference_based": s.signal != "faithfulness",
                 "decided": _conclusive(s.report)} for s in self.signals]
        open_ = [f"{s.signal} ({s.method}): {s.report.finding()}" for s in self.signals
                 if s.counted and not _conclusive(s.report)]
        return verdict_text(rows, self.alpha, self.mismatch, open_)

    def table(self):
        """One row per test: signal, method, statistic, bound (faithfulness: the margin, NaN where
        references calibrate it; noise maps: the threshold), p-value, Holm-adjusted p-value,
        flagged, counted, note; a pandas DataFrame."""
        import pandas as pd

        rows = []
        for s in self.signals:
            r = s.report
            statistic = r.ratio if isinstance(r, FaithfulnessReport) else r.score
            if isinstance(r, FaithfulnessReport):  # with references, their ratios are the bound
                bound = math.nan if r.calibrated else r.margin
            else:
                bound = r.threshold
            rows.append({"signal": s.signal, "method": s.method, "statistic": statistic, "bound": bound,
                         "p_value": s.p_value, "adjusted_p": s.adjusted_p, "flagged": s.flagged,
                         "counted": s.counted, "note": s.note})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.signals)} tests, {self.references} references, "
                f"manipulated {'yes' if self.manipulated else 'no'})")

    def __str__(self) -> str:
        return self.finding()


def verdict_text(rows: Sequence[Dict[str, Any]], alpha: float, mismatch: Sequence[str], open_: Sequence[str]) -> str:
    """The verdict on model manipulation in words, from one dict per test (``test``, ``method``,
    ``p_value``, ``adjusted_p``, ``flagged``, ``counted``, ``reference_based``, ``decided``: able to
    reach a decision), the ways the references differ from the model, and the counted tests that
    could not reach a decision.

    Names the tests that flagged the model; where none did, says which would have (a
    reference-based test left out because the references differ, or a test significant before
    the correction for the number of tests), so that a near miss never reads as a clean bill."""
    counted = sum(bool(r["counted"]) for r in rows)

    def named(r):  # a p-value that underflows reads as a bound, not as an impossible 0
        p = r["p_value"]
        return f"{r['test']} ({r['method']}, {'p < 1e-12' if p < 1e-12 else f'p = {p:.3g}'})"

    flagged = [r for r in rows if r["flagged"]]
    if flagged:
        return (f"MANIPULATED (flagged by {', '.join(named(r) for r in flagged)}; Holm over {counted} tests at alpha "
                f"{alpha:g})")
    parts = []
    if mismatch:
        left_out = [r for r in rows if r["reference_based"] and _below(r["p_value"], alpha)]
        parts.append("references differ from the model in " + "; ".join(mismatch)
                     + ", so the tests that compare with them do not count"
                     + (f" ({', '.join(named(r) for r in left_out)} would flag the model: train references with the "
                        "model's recipe)" if left_out else ""))
    parts += list(open_)
    near = [r for r in rows if r["counted"] and _below(r["p_value"], alpha)]
    near_text = (f"; before the correction for {counted} tests, {', '.join(named(r) for r in near)} "
                 f"{'is' if len(near) == 1 else 'are'} below alpha {alpha:g}: weak evidence" if near else "")
    if parts or not counted:
        rest = sum(bool(r["counted"] and r.get("decided", True)) for r in rows)
        if not parts:
            parts = ["no test could be counted"]
        return ("inconclusive: " + "; ".join(parts)
                + (f"; the other {rest} counted test(s) found no evidence of manipulation" if rest > 0 else "")
                + near_text)
    return f"no evidence of manipulation ({counted} tests, Holm at alpha {alpha:g}){near_text}"


def _below(p_value: Optional[float], alpha: float) -> bool:
    return p_value is not None and p_value == p_value and p_value < alpha


def _conclusive(report: Report) -> bool:
    return report.conclusive


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the ``i``-th smallest
    ``p`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_decision(p_values: Sequence[Optional[float]], counted: Sequence[bool], can_flag: Sequence[bool],
                  alpha: float) -> Tuple[List[Optional[float]], List[bool]]:
    """The decision of :func:`combined_detection` from its tests' p-values: Holm-adjusted
    p-values over the counted tests (None for the others) and which tests flag the model
    (adjusted p below ``alpha``, and the test able to flag: e.g. the faithfulness test only where
    occlusion beats chance)."""
    index = [i for i, c in enumerate(counted) if c]
    adjusted: List[Optional[float]] = [None] * len(p_values)
    for i, a in zip(index, holm([float(p_values[i]) for i in index])):
        adjusted[i] = a
    flagged = [a is not None and a < alpha and bool(ok) for a, ok in zip(adjusted, can_flag)]
    return adjusted, flagged


def data_behaviour(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> Tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on ``(x, y)``."""
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            yi = y[i:i + batch_size].to(out.device)
            loss += float(F.cross_entropy(out.float(), yi, reduction="sum"))
            correct += int((out.argmax(1) == yi).sum())
    return loss / len(x), correct / len(x)


#: Without 3 references: how far (as a factor) the model's loss may lie from the references'
#: mean loss before they count as of another recipe.
LOSS_FACTOR = 1.5


def reference_mismatch(model: nn.Module, references: Sequence[nn.Module], x: Tensor, y: Tensor,
                       *, level: float = 0.05) -> List[str]:
    """How the references differ from the model in their behaviour on ``(x, y)``: the mean
    cross-entropy (log scale) outside the references' two-sided ``1 - level`` prediction
    interval (3 or more references), or off their mean by more than the factor
    :data:`LOSS_FACTOR` (1 or 2). Training length, learning rate and augmentation all move the
    loss; ``[]`` when nothing differs."""
    loss, acc = data_behaviour(model, x, y)
    ref = [data_behaviour(r, x, y) for r in references]
    ref_loss = [r[0] for r in ref]
    lo, hi = min(r[1] for r in ref), max(r[1] for r in ref)
    described = (f"loss on the data ({loss:.3g} against {min(ref_loss):.3g}-{max(ref_loss):.3g}; accuracy "
                 f"{acc:.3f} against {lo:.3f}-{hi:.3f})")
    if loss <= 0 or min(ref_loss) <= 0:
        return []
    if len(references) >= 3:
        p_high, _, _ = prediction_interval_test(loss, ref_loss, level / 2)
        return [described] if min(p_high, 1 - p_high) < level / 2 else []
    mean = math.exp(sum(math.log(r) for r in ref_loss) / len(ref_loss))
    return [described] if abs(math.log(loss / mean)) > math.log(LOSS_FACTOR) else []


def combined_detection(
    model: nn.Module,
    data: Union[Tensor, Tuple[Tensor, Tensor]],
    references: Sequence[nn.Module] = (),
    methods: Sequence[str] = ("gradient", "lrp"),
    *,
    alpha: float = 0.05,
    noise_n: int = 32,
    margin: float = 0.5,
    images: int = 64,
    seed: int = 0,
    method_options: Optional[Dict[str, Dict[str, Any]]] = None,
) -> CombinedReport:
    """Every detection test of ``model`` for each of ``methods``, decided together by Holm's
    procedure at ``alpha`` (see the module's docstring).

    Args:
        data: images ``x`` of the data the model is for (20 or more), or ``(x, y)``: with the
            labels, the references' recipe is checked against the model on all of them
            (:func:`reference_mismatch`; several hundred make the check sharp: the loss of 64
            images varies from model to model too much to tell 1 epoch from 2).
        images: the first ``images`` of ``x`` are those of the faithfulness test.
        references: trusted models of the model's kind (0 or more); with 3 or more the noise-map
            test counts.
        method_options: per method, options of :func:`manipex.explain`.
    """
    where = "combined_detection"
    check_model(model, where=where)
    y = None
    if isinstance(data, (tuple, list)):
        x, y = check_labelled_data(data, where=where)
    else:
        x = data
    check_call(model, x, where=where)
    if isinstance(references, nn.Module) or not isinstance(references, (list, tuple)):
        raise TypeError(f"{where}: references must be a list of trusted models (or empty), got "
                        f"{type(references).__name__}")
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
        raise TypeError(f"{where}: methods must be a non-empty list of method names, got {short(methods)}")
    alpha = check_real(alpha, where=where, name="alpha", gt=0, lt=1)
    check_int(images, where=where, name="images", ge=10)
    options = method_options or {}
    if not isinstance(options, dict):
        raise TypeError(f"{where}: method_options must be a dict of options per method, got {short(options)}")
    mismatch = reference_mismatch(model, references, x, y) if references and y is not None else []
    signals: List[Signal] = []
    for method in methods:
        report = faithfulness_test(model, x[:images], method, margin=margin, alpha=alpha, seed=seed,
                                   method_options=options.get(method), references=list(references),
                                   calibrate=not mismatch)
        note = ("calibrated by the references" if report.calibrated else
                "reference-free, not counted: it flags clean references too" if report.margin_refuted else
                "reference-free, the mass test alone: the ranking test flags clean references too" if report.mass_only
                else "reference-free")
        signals.append(Signal("faithfulness", method, report.p_value, None, False, not report.margin_refuted, note,
                              report))
        if references:
            noise = detect_manipulation(model, tuple(x.shape[1:]), list(references), method, n=noise_n, seed=seed,
                                        alpha=alpha, method_options=options.get(method))
            counted = noise.calibrated and not mismatch
            note = ("calibrated" if counted else "references differ from the model" if mismatch
                    else "uncalibrated with fewer than 3 references: shown, not counted")
            signals.append(Signal("noise-map similarity", method, noise.p_value, None, False, counted, note, noise))
    adjusted, flagged = holm_decision([s.p_value for s in signals], [s.counted for s in signals],
                                      [s.report.conclusive or s.report.manipulated for s in signals], alpha)
    for s, a, f in zip(signals, adjusted, flagged):
        s.adjusted_p, s.flagged = a, f
    return CombinedReport(signals, alpha, mismatch, len(references))



__all__ = ["CombinedReport", "Signal", "combined_detection", "holm", "holm_decision", "reference_mismatch",
           "data_behaviour"]
