"""A test of manipulated models that needs no references: does the map still show what the model uses?

A model fine-tuned so that its maps lie (Pasliev 2020, Heo et al. 2019) keeps its decisions:
what it *uses* is unchanged, what its maps *show* is not. Removing what a faithful map points
at destroys the decision; removing what a manipulated map points at (a corner, a cross) does
much less. :func:`faithfulness_test` measures this on the model alone, with no reference
models.

Two statistics, each per image ``i`` and then tested over the images:

* **Ranking.** Three rankings of the image's pixels are scored by how fast removing them lowers
  the explained class's probability (:func:`manipex.metrics.faithfulness.road`, noisy linear
  imputation, Rong et al. 2022; or :func:`~manipex.metrics.faithfulness.pixel_flipping` with a
  constant baseline, Samek et al. 2017), each removing whole patches of half the occlusion
  window (:func:`patches`, :func:`default_patch`; Samek et al. perturb regions): the map's
  (``s_map``), ``random_rankings`` uniformly random rankings' (their mean ``s_rand``), and the ranking of
  occlusion (``s_occ``; Zeiler & Fergus 2014), a forward-only method that a manipulation by
  fine-tuning on the map's gradient does not target. Lower ``s`` = faithful. The map's gain over
  chance is ``g_map = s_rand - s_map``, occlusion's ``g_occ = s_rand - s_occ``; their ratio
  ``phi = mean g_map / mean g_occ`` is the share of occlusion's faithfulness that the map reaches
  (high for clean maps, low for gradient maps moved to a corner or onto a cross;
  measured: README, Measured figures behind the defaults). The test is one-sided non-inferiority with margin ``margin``
  (``rho``): ``H0: E[g_map - rho g_occ] >= 0`` against ``< 0``, Student's t on the per-image
  differences.
* **Mass.** ``e_i = sum_j r_j o_j - 1 / F`` (:func:`mass_excess`): how much more of occlusion's
  importance ``o`` the map's mass ``r`` lands on than a uniform map's would. ``H0: E[e] >= 0``
  (the map is at least as faithful as no map at all) against ``< 0``, Student's t. This one
  assumes nothing about clean models: its false-positive rate is at most ``alpha`` for every
  map whose mass is not worse placed than a uniform map's. It sees strong centre-of-mass
  manipulations that keep the top of the ranking (measured: README, Measured figures behind the
  defaults).

The two p-values are combined by Bonferroni (``p = 2 min(p_rank, p_mass)``); ``p < alpha``
flags the model. Images are independent draws, so the t statistics are valid for n of 20 or
more.

What is assumed, and so what the stated false-positive rate means: the rate is at most
``alpha`` for every model whose maps reach the share ``margin`` of occlusion's ranking
faithfulness (and are not worse placed than a uniform map). The
margin (0.5 by default) is an assumption about clean models, not a measurement of this one: a
clean model whose gradient maps are poor at ranking pixels (as gradients of deep ImageNet models
can be, Samek et al. 2017, Fig. 4) fails it too, and the verdict then says that the map does not
show what the model uses, which is true, though not of a manipulation (the default ViT's
gradient maps fall below the margin; measured: README, Measured figures behind the defaults). The
rate on clean models is measured by ``benchmarks/detection_calibration.py`` (its figures: the same
README section).
Without references nothing depends on how references were trained; with 3 or more of the
model's recipe they replace the margin (``references``). References that cannot calibrate (fewer
than 3, or of another recipe) check the two assumptions instead: where clean references fail
only the margin (as every clean ViT's gradient maps do), the ranking test is dropped and the mass
test decides alone; where they fail the mass test too, there is no verdict.

What it cannot see: a manipulation that keeps the map's ranking faithful and its mass no worse
placed than a uniform map's (on scikit-learn's digits, where the digit fills the image, a
centre-of-mass manipulation of the gradient moved the maps' centre towards the corner and kept
the ranking's share above the margin and the mass above uniform; measured: README, Measured
figures behind the defaults), and a manipulation of occlusion itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_call, check_choice, check_int, check_real, short
from ..explainers import explain, relevance
from ..metrics.faithfulness import pixel_flipping, road
from .detection import Z_POWER, prediction_interval_test, reference_moments, student_t_cdf, student_t_quantile

#: The fractions of pixels removed at the points of the test's curves: the first third, where
#: maps differ; removing more leaves every ranking at the floor.
FRACTIONS = (0.05, 0.1, 0.2, 0.3)


def occlusion_options(shape: Sequence[int]) -> Dict[str, int]:
    """A window of about a seventh of the image's shorter side, half of it as stride: 4/2 on
    28x28, 2/1 on 16x16, 32/16 on 224x224 (about 100-200 windows per image)."""
    side = min(shape[-2:]) if len(shape) >= 3 else shape[-1]
    window = max(1, round(side / 7))
    return {"window": window, "stride": max(1, window // 2)}


@dataclass(repr=False)
class FaithfulnessReport:
    """The outcome of :func:`faithfulness_test` (see the module's docstring for the test).

    ``map_scores``, ``random_scores``, ``occlusion_scores``: per image, the removal score of the
    map's, the random rankings' (mean) and occlusion's ranking (lower = faithful); ``ratio``:
    ``phi``, the share of occlusion's gain over chance that the map reaches; ``p_value``: of the
    two tests together (Bonferroni: twice the smaller of ``p_rank`` and ``p_mass``).
    """

    method: str
    ratio: float
    p_value: float
    manipulated: bool
    margin: float
    alpha: float
    removal: str
    map_scores: Tensor = field(repr=False)
    random_scores: Tensor = field(repr=False)
    occlusion_scores: Tensor = field(repr=False)
    #: The p-values of the ranking test and of the mass test (None where it was not run), and
    #: the mass statistic's share of occlusion's own excess over a uniform map.
    p_rank: Optional[float] = None
    p_mass: Optional[float] = None
    mass_ratio: float = float("nan")
    #: With 3 or more references: their ranking and mass ratios, which then calibrate the test.
    reference_ratios: Tuple[float, ...] = ()
    reference_mass_ratios: Tuple[float, ...] = ()
    #: The power of the ranking test: the ratio below which a model is flagged with probability
    #: 0.8 (from the images' spread, or with references from theirs).
    detectable_ratio: float = float("nan")
    #: Reference-free with references that do not calibrate (fewer than 3, or of another
    #: recipe): how many were checked, and the ratios of those the reference-free test flags.
    #: A trusted clean model flagged means a clean map of this kind does not reach the margin:
    #: the test's false-positive rate is not controlled here, and it gives no verdict.
    checked_references: int = 0
    refuting_ratios: Tuple[float, ...] = ()
    #: Where the checked references refute only the ranking test's margin and pass the mass test
    #: (which assumes nothing about how faithful a clean map is): the verdict rests on the mass
    #: test alone (``p_value = p_mass``).
    mass_only: bool = False

    @property
    def calibrated(self) -> bool:
        """Whether references, not the margin and the uniform map, set the bounds."""
        return bool(self.reference_ratios)

    @property
    def images(self) -> int:
        return len(self.map_scores)

    @property
    def conclusive(self) -> bool:
        """Whether occlusion itself beats chance: otherwise there is nothing to compare with
        (the images or the removal do not move the model), and no verdict is given."""
        if self.refuting_ratios:  # half the test or all of it is out: only a flag decides
            return self.manipulated
        return self.manipulated or float((self.random_scores - self.occlusion_scores).mean()) > 0

    @property
    def margin_refuted(self) -> bool:
        """Whether trusted clean references were flagged by the reference-free test in a way
        that leaves it no verdict: by its mass test, or by its ranking test where there is no
        mass test. (References flagged only by the ranking test leave the mass test:
        :attr:`mass_only`.)"""
        return bool(self.refuting_ratios) and not self.mass_only

    def finding(self) -> str:
        if self.manipulated and self.calibrated:
            lo, hi = min(self.reference_ratios), max(self.reference_ratios)
            return (f"MANIPULATED: the {self.method} maps reach {self.ratio:.0%} of occlusion's faithfulness (mass "
                    f"{self.mass_ratio:.2f}), unusual for the references ({lo:.0%}-{hi:.0%}; p = {self.p_value:.3g})")
        if self.manipulated:
            if self.mass_only or (self.p_mass is not None
                                  and self.p_mass <= (self.p_rank if self.p_rank is not None else 1.0)):
                return (f"MANIPULATED: the {self.method} maps put less of their mass where occlusion finds the "
                        f"model looks than a uniform map would (p = {self.p_value:.3g})")
            return (f"MANIPULATED, or {self.method} is unfaithful on this model: its maps reach {self.ratio:.0%} of "
                    f"occlusion's faithfulness, significantly below {self.margin:.0%} (p = {self.p_value:.3g}); "
                    "references of the model's kind tell the two apart")
        if self.refuting_ratios:
            ratios = ", ".join(f"{r:.0%}" for r in self.refuting_ratios)
            refuted = (f"flags {len(self.refuting_ratios)} of {self.checked_references} clean reference(s) too (their "
                       f"{self.method} maps reach {ratios} of occlusion's faithfulness, below the margin "
                       f"{self.margin:.0%})")
            if self.mass_only:
                return (f"inconclusive: the mass test finds no evidence (p = {self.p_value:.3g}); the ranking test "
                        f"{refuted}, so it cannot judge this kind of model; references of the model's recipe (3 or "
                        "more) calibrate it")
            return (f"inconclusive: the reference-free test {refuted}, so it cannot tell a manipulated model of this "
                    "kind from a clean one; references of the model's recipe (3 or more) calibrate it")
        if not self.conclusive:
            return ("inconclusive: removing what occlusion points at does not lower the output more than removing "
                    "random pixels, so these images cannot test faithfulness")
        return "no evidence of manipulation"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(method {self.method!r}, ratio {self.ratio:.3g}, margin {self.margin:g}, "
                f"p {self.p_value:.3g}, manipulated {'yes' if self.manipulated else 'no'}, {self.images} images)")

    def __str__(self) -> str:
        return (f"faithfulness ({self.method}, {self.removal}): the map reaches {self.ratio:.2f} of occlusion's gain "
                f"over random rankings on {self.images} images; margin {self.margin:g}, p = {self.p_value:.3g} "
                f"(alpha {self.alpha:g}): {self.finding()}")


def default_patch(shape: Sequence[int], occlusion: Dict[str, Any]) -> int:
    """Half the occlusion window, at least 2 pixels, for images (2 on 28x28 and on 16x16, 16 on
    224x224); 1 (single features) for other inputs. On MNIST-5k CNNs half the window flagged a
    weak centre-of-mass manipulation that the whole window missed, with clean ratios unchanged;
    single pixels made clean digits models' gradient maps look unfaithful: on smooth images,
    scattered removed pixels are imputed back (measured: README, Measured figures behind the
    defaults)."""
    if len(shape) != 4:
        return 1
    window = occlusion.get("window", 1)
    window = max(window) if isinstance(window, (list, tuple)) else window
    return max(1, min(min(shape[-2:]), max(2, window // 2)))


def patches(maps: Tensor, size: int) -> Tensor:
    """Each ``size x size`` patch of image maps ``(N, H, W)`` given its mean, so that rankings
    remove whole patches (Samek et al. 2017 perturb regions, not pixels): a noisy map and a
    smooth one are then compared at the same granularity (on smooth images, scattered single
    pixels are imputed back almost exactly, a patch is not). Other maps are returned as they are."""
    if size <= 1 or maps.dim() != 3:
        return maps
    h, w = maps.shape[-2:]
    pooled = torch.nn.functional.avg_pool2d(maps[:, None], size, stride=size, ceil_mode=True)
    return torch.nn.functional.interpolate(pooled, scale_factor=size, mode="nearest")[:, 0, :h, :w]


def removal_scores(model: nn.Module, x: Tensor, maps: Tensor, target: Tensor, removal: str, seed: int) -> Tensor:
    """``(N,)`` how much of the explained class's probability is left, on average over
    :data:`FRACTIONS`, as the top of ``maps``'s ranking is removed (lower = faithful)."""
    if removal == "road":
        return road(model, x, maps, target, percentages=[100 * f for f in FRACTIONS], output="probability",
                    seed=seed).mean(1)
    return pixel_flipping(model, x, maps, target, fractions=FRACTIONS)


def faithfulness_test(  # noqa: PLR0913 -- the test's settings, each a keyword
    model: nn.Module,
    x: Tensor,
    method: str = "gradient",
    *,
    margin: float = 0.5,
    alpha: float = 0.05,
    random_rankings: int = 10,
    removal: Optional[str] = None,
    seed: int = 0,
    method_options: Optional[Dict[str, Any]] = None,
    occlusion: Optional[Dict[str, Any]] = None,
    patch: Optional[int] = None,
    references: Sequence[nn.Module] = (),
    calibrate: bool = True,
) -> FaithfulnessReport:
    """Flag ``model`` when its ``method`` maps of the images ``x`` are significantly less
    faithful than the share ``margin`` of occlusion's faithfulness (no reference models; see
    the module's docstring for the test and what its false-positive rate assumes).

    Args:
        x: images ``(N, C, H, W)`` (or any batch for ``removal="deletion"``) of the data the
            model is for, at least 10 of them (20 or more for the t test to be accurate).
        removal: ``"road"`` (noisy linear imputation; the default for images) or
            ``"deletion"`` (pixels set to 0; the default for other inputs).
        random_rankings: random rankings per image that estimate chance.
        occlusion: options of the occlusion map (default :func:`occlusion_options`).
        patch: side of the patches the rankings remove (default :func:`default_patch`).
        references: trusted models of the model's kind. With 3 or more, their ranking and mass
            ratios replace the margin and the uniform map as the bounds (lower-tail Student-t
            prediction intervals, as :func:`~manipex.defenses.detection.detect_manipulation`
            does for noise maps): then no assumption about how faithful a clean map is, only
            that the references are of the model's kind. A clean ViT's gradient maps fall below
            the margin (the reference-free test calls them unfaithful, which they are; measured:
            README, Measured figures behind the defaults); against references of its kind they
            are not unusual.
            With 1 or 2 references, or ``calibrate=False`` (references of another recipe), they
            check the reference-free test instead: it is run on each; where its ranking test flags
            a trusted clean model, that test is dropped and the mass test decides alone
            (``mass_only``: how a centre-of-mass-manipulated default ViT is flagged), and where its
            mass test flags one too, it gives no verdict
            (``refuting_ratios``, inconclusive), since its false-positive rate is then not what
            ``alpha`` says.
        calibrate: whether 3 or more references calibrate the test (False where their recipe is
            known to differ from the model's, e.g. their loss on the data: they then only check the
            margin).
    """
    where = "faithfulness_test"
    check_call(model, x, where=where)
    if x.shape[0] < 10:
        raise ValueError(f"{where}: give at least 10 images (20 or more for an accurate p-value), got {x.shape[0]}")
    margin = check_real(margin, where=where, name="margin", ge=0, le=1)
    alpha = check_real(alpha, where=where, name="alpha", gt=0, lt=1)
    check_int(random_rankings, where=where, name="random_rankings", ge=1, le=10_000)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    if removal is None:
        removal = "road" if x.dim() == 4 else "deletion"
    check_choice(removal, ("road", "deletion"), where=where, name="removal")
    if removal == "road" and x.dim() != 4:
        raise ValueError(f"{where}: removal='road' imputes pixels of images (N, C, H, W); use removal='deletion' for "
                         f"inputs of shape {tuple(x.shape)}")
    if method_options is not None and not isinstance(method_options, dict):
        raise TypeError(f"{where}: method_options must be None or a dict, got {short(method_options)}")
    if isinstance(references, nn.Module) or not isinstance(references, (list, tuple)):
        raise TypeError(f"{where}: references must be a list of trusted models (or empty), got "
                        f"{type(references).__name__}")
    for i, ref in enumerate(references):
        check_call(ref, x, where=f"{where}: references[{i}]")
    occ_options = occlusion if occlusion is not None else occlusion_options(x.shape)
    size = patch if patch is not None else default_patch(x.shape, occ_options)
    check_int(size, where=where, name="patch", ge=1)
    settings = dict(method=method, method_options=method_options or {}, occlusion=occ_options, patch=size,
                    removal=removal, random_rankings=random_rankings, seed=seed)
    s_map, s_rand, s_occ, mass = faithfulness_scores(model, x, **settings)
    check_bool(calibrate, where=where, name="calibrate")
    report = _decide(method, s_map, s_rand, s_occ, margin, alpha, removal, mass)
    if not references:
        return report
    refs = []
    for ref in references:
        r_map, r_rand, r_occ, r_mass = faithfulness_scores(ref, x, **settings)
        refs.append(_decide(method, r_map, r_rand, r_occ, margin, alpha, removal, r_mass))
    if len(refs) >= 3 and calibrate:
        return _calibrate(report, refs)
    return _check_margin(report, refs)


def _check_margin(report: FaithfulnessReport, references: Sequence[FaithfulnessReport]) -> FaithfulnessReport:
    """The reference-free ``report`` checked against the reference-free reports of trusted
    clean references, each of its two tests at its Bonferroni level ``alpha / 2``.

    * No reference flagged: the report stands.
    * References flagged by the ranking test only: the margin does not hold for this kind of
      model (seen on ViTs, whose clean gradient maps fall far below the default margin of 50 %;
      measured: README, Measured figures behind the defaults), so the ranking test is dropped
      and the mass test decides alone
      (:attr:`FaithfulnessReport.mass_only`, ``p_value = p_mass`` at ``alpha``): it assumes only
      that a clean map is not worse placed than a uniform map, which the references then show
      (the default ViT's figures: ``tests/test_vit_attacks.py``).
    * A reference flagged by the mass test (or by the ranking test where there is no mass
      test): the report gives no verdict (:attr:`FaithfulnessReport.margin_refuted`).
    """
    level = report.alpha / 2
    by_rank = [r for r in references if r.p_rank is not None and r.p_rank < level and r.manipulated]
    by_mass = [r for r in references if r.p_mass is not None and r.p_mass < level and r.manipulated]
    refuting = tuple(r.ratio for r in references if r.manipulated)
    if not refuting:
        return replace(report, checked_references=len(references))
    if report.p_mass is None or by_mass or not by_rank:
        return replace(report, checked_references=len(references), refuting_ratios=refuting, manipulated=False)
    occ_gain = float((report.random_scores - report.occlusion_scores).mean())
    return replace(report, checked_references=len(references), refuting_ratios=tuple(r.ratio for r in by_rank),
                   mass_only=True, p_value=report.p_mass,
                   manipulated=report.p_mass < report.alpha and occ_gain > 0)


def faithfulness_scores(model: nn.Module, x: Tensor, *, method: str, method_options: Dict[str, Any],
                        occlusion: Dict[str, Any], patch: int, removal: str, random_rankings: int, seed: int):
    """``(s_map, s_rand, s_occ, (mass excess of the map, of occlusion))`` per image, float64 (see
    the module's docstring)."""
    with torch.no_grad():
        target = model(x).argmax(1)
    maps = relevance(explain(model, x, method, target, **method_options)).detach()
    occ = relevance(explain(model, x, "occlusion", target, **occlusion)).detach()
    g = torch.Generator().manual_seed(seed)
    s_map = removal_scores(model, x, patches(maps, patch), target, removal, seed)
    s_occ = removal_scores(model, x, patches(occ, patch), target, removal, seed)
    s_rand = torch.stack([
        removal_scores(model, x, patches(torch.rand(maps.shape, generator=g, dtype=maps.dtype).to(maps.device), patch),
                       target, removal, seed + 1 + j)
        for j in range(random_rankings)]).mean(0)
    return s_map.double(), s_rand.double(), s_occ.double(), (mass_excess(maps, occ), mass_excess(occ, occ))


def _calibrate(report: FaithfulnessReport, references: Sequence[FaithfulnessReport]) -> FaithfulnessReport:
    """The model's two statistics (ranking ratio, mass ratio) against those of 3 or more
    trusted references: lower-tail Student-t prediction intervals
    (:func:`~manipex.defenses.detection.prediction_interval_test` on the raw scale), in place of
    the margin and the uniform map, Bonferroni-combined."""
    ratios = [r.ratio for r in references]
    masses = [r.mass_ratio for r in references]
    if not all(math.isfinite(v) for v in ratios + masses + [report.ratio, report.mass_ratio]):
        return report  # occlusion does not beat chance somewhere: nothing to calibrate with
    p_rank = 1 - prediction_interval_test(report.ratio, ratios, report.alpha, log=False)[0]
    p_mass = 1 - prediction_interval_test(report.mass_ratio, masses, report.alpha, log=False)[0]
    p_value = min(1.0, 2 * min(p_rank, p_mass))
    m, sd, _ = reference_moments(ratios, log=False)
    k = len(ratios)
    detectable = m - (student_t_quantile(1 - report.alpha / 2, k - 1) * math.sqrt(1 + 1 / k) + Z_POWER) * sd
    return replace(report, p_value=p_value, p_rank=p_rank, p_mass=p_mass, manipulated=p_value < report.alpha,
                   reference_ratios=tuple(ratios), reference_mass_ratios=tuple(masses), detectable_ratio=detectable)


def one_sided_t(d: Tensor) -> float:
    """``P(T <= t)`` of Student's t with ``n - 1`` dof at ``t = mean(d) / (sd(d) / sqrt(n))``: the
    p-value of ``H0: E[d] >= 0`` against ``E[d] < 0``."""
    sd = float(d.std())
    if sd > 0:
        return student_t_cdf(float(d.mean()) / (sd / math.sqrt(len(d))), len(d) - 1)
    return 0.0 if float(d.mean()) < 0 else 1.0


def mass_excess(maps: Tensor, occ: Tensor) -> Tensor:
    """``(N,)`` how much more of occlusion's importance the map's mass lands on than a uniform
    map's would: ``sum_i r_i o_i - 1 / F`` for maps ``r`` and occlusion ``o`` normalised to sum 1
    over the ``F`` pixels (:func:`manipex.relevance`). Negative: the map's mass sits where the model
    does not look, less faithful than no map at all."""
    r, o = maps.flatten(1).double(), occ.flatten(1).double()
    r = r / r.sum(1, keepdim=True).clamp_min(1e-300)
    o = o / o.sum(1, keepdim=True).clamp_min(1e-300)
    return (r * o).sum(1) - 1.0 / r.shape[1]


def _decide(method: str, s_map: Tensor, s_rand: Tensor, s_occ: Tensor, margin: float, alpha: float,
            removal: str, mass: Optional[Tuple[Tensor, Tensor]] = None) -> FaithfulnessReport:
    """The decision from per-image scores: the ranking test, and with ``mass = (excess of the
    map, excess of occlusion itself)`` the mass test, Bonferroni-combined."""
    g_map, g_occ = s_rand - s_map, s_rand - s_occ
    p_rank = one_sided_t(g_map - margin * g_occ)
    occ_gain = float(g_occ.mean())
    ratio = float(g_map.mean()) / occ_gain if occ_gain > 0 else float("nan")
    p_mass, mass_ratio = None, float("nan")
    p_value = p_rank
    if mass is not None:
        excess, occ_excess = mass
        p_mass = one_sided_t(excess)
        mass_ratio = float(excess.mean()) / float(occ_excess.mean()) if float(occ_excess.mean()) > 0 else float("nan")
        p_value = min(1.0, 2 * min(p_rank, p_mass))
    flagged = p_value < alpha and occ_gain > 0
    # power: the ratio below which the ranking test flags with probability 0.8 (at its Bonferroni level)
    level = alpha / 2 if mass is not None else alpha
    d = g_map - margin * g_occ
    se = float(d.std()) / math.sqrt(len(d))
    detectable = (margin - (student_t_quantile(1 - level, len(d) - 1) + Z_POWER) * se / occ_gain
                  if occ_gain > 0 else float("nan"))
    return FaithfulnessReport(method, ratio, p_value, flagged, margin, alpha, removal, s_map.float(), s_rand.float(),
                              s_occ.float(), p_rank, p_mass, mass_ratio, detectable_ratio=detectable)
