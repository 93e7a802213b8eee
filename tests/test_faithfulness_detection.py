"""Detection an auditor can rely on (issue 30): the reference-free faithfulness test flags
centre-of-mass- and cross-manipulated MNIST-5k models with no references and not clean models
of other seeds; the combined test decides by Holm's procedure and names what flagged the model;
references of another recipe are said to differ instead of flagging a clean model; the
noise-map test states its power."""
from __future__ import annotations

import math

import pytest
import torch

import manipex
from manipex.attacks import manipulate_model
from manipex.defenses import combined_detection, faithfulness_test, holm
from manipex.defenses.combined_detection import holm_decision, reference_mismatch
from manipex.defenses.detection import Z_POWER, detectable_score, prediction_interval_test, reference_moments
from manipex.models import mnist_cnn, train_classifier
from manipex.objectives import CenterOfMass, TargetMap, cross_mask


def seeded_cnn(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mnist_cnn()


@pytest.fixture(scope="module")
def pool():
    """Clean MNIST-5k CNNs of one kind (one epoch on 2000 images, seeds 1-5), one trained for
    two epochs (seed 6), and seed 1's model manipulated towards the corner and onto a cross
    (gradient, one epoch, the calibration benchmark's settings); 64 test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = manipex.data.load("mnist5k", split="train")
        data = (x[:2000], y[:2000])
        clean = [train_classifier(seeded_cnn(s), *data, epochs=1, seed=s, progress=False).eval() for s in range(1, 6)]
        longer = train_classifier(seeded_cnn(6), *data, epochs=2, seed=6, progress=False).eval()
        cross = cross_mask((28, 28)).float()
        com = manipulate_model(clean[0], data, CenterOfMass((0.0, 0.0)), "gradient", lam=0.03, lr=1e-3, epochs=1,
                               progress=False).model.eval()
        crossed = manipulate_model(clean[0], data, TargetMap((cross / cross.sum())[None]), "gradient", lam=1.0,
                                   lr=1e-3, epochs=1, progress=False).model.eval()
    finally:
        torch.set_num_threads(threads)
    xt, yt = manipex.data.load("mnist5k", split="test")
    return {"clean": clean, "longer": longer, "com": com, "cross": crossed, "x": xt[:64], "y": yt[:64],
            "labelled": (xt, yt)}


def test_the_reference_free_test_flags_manipulated_models_and_not_clean_ones(pool):
    x = pool["x"]
    for kind in ("com", "cross"):
        report = faithfulness_test(pool[kind], x, "gradient")
        assert report.manipulated and report.p_value < 0.01, report
        assert report.ratio < 0.5 and report.p_rank < 0.01 and report.finding().startswith("MANIPULATED")
    reports = [faithfulness_test(m, x, "gradient") for m in pool["clean"][1:]]
    # the false-positive rate is measured over 30 models in benchmarks/detection_calibration.py; here: none of 4
    assert sum(r.manipulated for r in reports) == 0, reports
    assert all(r.ratio > 0.6 and r.conclusive for r in reports), reports
    assert str(reports[0]).startswith("faithfulness (gradient, road)")


def test_the_faithfulness_statistic_is_the_share_of_occlusions_gain_over_chance():
    """The decision from the per-image scores, in closed form: ratio = mean gain of the map over
    mean gain of occlusion; the non-inferiority t test of d = g_map - margin g_occ."""
    from manipex.defenses.detection import student_t_cdf
    from manipex.defenses.faithfulness_detection import _decide

    g = torch.Generator().manual_seed(0)
    s_rand = torch.full((40,), 0.7, dtype=torch.float64)
    s_occ = 0.2 + 0.05 * torch.rand(40, generator=g, dtype=torch.float64)
    s_map = 0.55 + 0.05 * torch.rand(40, generator=g, dtype=torch.float64)  # little better than chance
    report = _decide("gradient", s_map, s_rand, s_occ, 0.5, 0.05, "road")
    g_map, g_occ = s_rand - s_map, s_rand - s_occ
    assert report.ratio == pytest.approx(float(g_map.mean() / g_occ.mean()))
    d = g_map - 0.5 * g_occ
    t = float(d.mean() / (d.std() / math.sqrt(40)))
    assert report.p_value == pytest.approx(student_t_cdf(t, 39)) and report.manipulated
    # its power: the ratio below which the test flags with probability 0.8
    from manipex.defenses.detection import Z_POWER, student_t_quantile
    se = float(d.std()) / math.sqrt(40)
    expected = 0.5 - (student_t_quantile(0.95, 39) + Z_POWER) * se / float(g_occ.mean())
    assert report.detectable_ratio == pytest.approx(expected) and 0 < report.detectable_ratio < 0.5
    faithful = _decide("gradient", s_occ + 0.02, s_rand, s_occ, 0.5, 0.05, "road")
    assert not faithful.manipulated and faithful.p_value > 0.99
    # the mass test: Bonferroni with the ranking test; a map worse placed than a uniform one is flagged
    from manipex.defenses.faithfulness_detection import mass_excess
    occ = torch.zeros(40, 4, 4, dtype=torch.float64)
    occ[:, 1:3, 1:3] = 1  # the model looks at the centre
    corner = torch.zeros(40, 4, 4, dtype=torch.float64)
    corner[:, 0, 0] = 1
    corner += 0.01 * torch.rand(40, 4, 4, generator=g, dtype=torch.float64)
    excess = mass_excess(corner, occ)
    assert bool((excess < 0).all())  # all but a little of its mass where occlusion finds nothing
    torch.testing.assert_close(mass_excess(occ, occ), torch.full((40,), 0.25 - 1 / 16, dtype=torch.float64))
    both = _decide("lrp", s_occ + 0.02, s_rand, s_occ, 0.5, 0.05, "road", (excess, mass_excess(occ, occ)))
    assert both.p_rank > 0.99 and both.p_mass < 1e-6 and both.p_value == pytest.approx(2 * both.p_mass)
    assert both.manipulated and "less of their mass" in both.finding()
    assert both.mass_ratio == pytest.approx(float(excess.mean()) / (0.25 - 1 / 16))
    # occlusion no better than chance: nothing to compare with, never a clean bill
    blind = _decide("gradient", s_map, s_rand, s_rand + 0.01, 0.5, 0.05, "road")
    assert not blind.manipulated and not blind.conclusive and blind.finding().startswith("inconclusive")


def test_references_calibrate_the_faithfulness_test_in_place_of_the_margin():
    """With 3 or more references the model's two ratios are tested against theirs by lower-tail
    Student-t prediction intervals (no margin, no uniform map), Bonferroni-combined: a map as
    unfaithful as its references' (a clean ViT's gradient: 18% of occlusion's) is not flagged."""
    from manipex.defenses.faithfulness_detection import FaithfulnessReport, _calibrate

    def report(ratio, mass):
        empty = torch.zeros(1)
        return FaithfulnessReport("gradient", ratio, 0.0, True, 0.5, 0.05, "road", empty, empty, empty, 0.0, 1.0,
                                  mass)

    refs = [report(r, m) for r, m in ((0.15, 0.01), (0.20, 0.00), (0.18, 0.02))]
    poor_but_usual = _calibrate(report(0.17, 0.01), refs)
    assert poor_but_usual.calibrated and not poor_but_usual.manipulated
    p_rank = 1 - prediction_interval_test(0.17, [0.15, 0.20, 0.18], log=False)[0]
    assert poor_but_usual.p_rank == pytest.approx(p_rank)
    assert poor_but_usual.p_value == pytest.approx(min(1, 2 * min(p_rank, poor_but_usual.p_mass)))
    unusual = _calibrate(report(-0.5, -0.3), refs)
    assert unusual.manipulated and "unusual for the references (15%-20%" in unusual.finding()


def test_holm_adjusts_in_closed_form_and_the_decision_counts_only_what_counts():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    adjusted, flagged = holm_decision([0.01, 0.001, 0.2], [True, False, True], [True, True, True], 0.05)
    assert adjusted == pytest.approx([0.02, None, 0.2]) and flagged == [True, False, False]
    _, flagged = holm_decision([0.01, 0.2], [True, True], [False, True], 0.05)
    assert flagged == [False, False]


def test_the_combined_test_names_the_signal_that_flagged_the_model(pool):
    refs = pool["clean"][1:4]
    report = combined_detection(pool["cross"], (pool["x"], pool["y"]), refs, methods=("gradient",))
    assert report.manipulated and "faithfulness (gradient)" in report.flagged_by
    assert report.signals[0].report.calibrated and report.signals[0].note == "calibrated by the references"
    assert report.finding().startswith("MANIPULATED (flagged by faithfulness (gradient, p = ")
    table = report.table()
    assert set(table.signal) == {"faithfulness", "noise-map similarity"} and table.counted.all()
    clean = combined_detection(pool["clean"][4], (pool["x"], pool["y"]), refs, methods=("gradient",))
    # these three references are too spread for the noise-map test to flag anything: never a clean bill
    assert not clean.manipulated and not clean.conclusive
    assert clean.finding().startswith("inconclusive: noise-map similarity (gradient): inconclusive: 3 references")
    assert clean.finding().endswith("the other 1 counted test(s) found no evidence of manipulation")
    alone_clean = combined_detection(pool["clean"][4], pool["x"], methods=("gradient",))
    assert alone_clean.conclusive and alone_clean.finding() == "no evidence of manipulation (1 tests, Holm at alpha 0.05)"
    # with no references only the reference-free test runs, and it still decides
    alone = combined_detection(pool["com"], pool["x"], methods=("gradient",))
    assert alone.manipulated and [s.signal for s in alone.signals] == ["faithfulness"]
    # one or two references: the noise-map heuristic is shown, not counted
    two = combined_detection(pool["clean"][4], pool["x"], refs[:2], methods=("gradient",))
    noise = next(s for s in two.signals if s.signal == "noise-map similarity")
    assert not noise.counted and noise.adjusted_p is None and "uncalibrated" in noise.note


def test_references_of_another_recipe_are_named_not_taken_for_evidence(pool):
    """A clean model trained twice as long as its references: its loss on the 1000 test images
    lies outside the references' spread, so the noise-map tests do not count and the verdict says why."""
    refs = pool["clean"][:3]
    mismatch = reference_mismatch(pool["longer"], refs, *pool["labelled"])
    assert mismatch and mismatch[0].startswith("loss on the data")
    assert reference_mismatch(pool["clean"][3], refs, *pool["labelled"]) == []
    report = combined_detection(pool["longer"], pool["labelled"], refs, methods=("gradient",))
    assert not report.manipulated and not report.conclusive
    assert report.finding().startswith("inconclusive: references differ from the model in loss on the data")
    noise = next(s for s in report.signals if s.signal == "noise-map similarity")
    assert not noise.counted and "differ" in noise.note


def test_the_noise_map_test_states_its_power():
    """detectable_score: the mean score flagged with probability 0.8 when the model's own score
    varies as the references' do (log-normal), checked by simulation."""
    refs = (0.30, 0.34, 0.38, 0.33, 0.36)
    star = detectable_score(refs)
    m, sd, log = reference_moments(refs)
    assert log
    _, threshold, _ = prediction_interval_test(0.5, refs)
    draws = torch.exp(math.log(star) + sd * torch.randn(200_000, generator=torch.Generator().manual_seed(0),
                                                         dtype=torch.float64))
    assert float((draws > threshold).double().mean()) == pytest.approx(0.8, abs=0.005)
    assert math.log(star) == pytest.approx(math.log(threshold) + Z_POWER * sd)
    report = manipex.defenses.detection.DetectionReport(0.35, threshold, False, refs, "gradient", 0.4, 0.05, "",
                                                        None, star)
    assert f"scoring {star:.3g} on average would be flagged with probability 0.8" in report.finding()


def test_bad_input_to_the_detection_tests_is_refused_and_the_model_kept(pool):
    model = pool["clean"][0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="at least 10 images"):
        faithfulness_test(model, pool["x"][:5])
    with pytest.raises(ValueError, match="margin"):
        faithfulness_test(model, pool["x"], margin=1.5)
    with pytest.raises(ValueError, match="removal must be one of"):
        faithfulness_test(model, pool["x"], removal="blur")
    with pytest.raises(TypeError, match="references must be a list"):
        combined_detection(model, pool["x"], model)
    with pytest.raises(TypeError, match="methods must be a non-empty list"):
        combined_detection(model, pool["x"], methods="gradient")
    with pytest.raises(ValueError, match="NaN"):
        faithfulness_test(model, pool["x"].clone().fill_(float("nan")))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_references_that_the_reference_free_test_flags_take_away_its_verdict(pool):
    """Issue 25's ViT: clean gradient maps reach 8-24 % of occlusion's faithfulness, below the
    margin, so the reference-free ranking test would call any ViT manipulated. Where references
    cannot calibrate (fewer than 3, or another recipe) they check the test: here with a margin
    of 100 % that no clean CNN reaches. References flagged by the ranking test only drop it, and
    the mass test (which assumes nothing about how faithful a clean map is) decides alone; a
    reference the mass test flags too takes away the whole verdict, and the combined decision
    does not count it."""
    x, refs = pool["x"], pool["clean"][1:3]
    alone = faithfulness_test(pool["com"], x, "gradient", margin=1.0)
    assert alone.manipulated and alone.p_rank < 0.025
    strict = faithfulness_test(pool["com"], x, "gradient", margin=1.0, references=refs)
    assert strict.mass_only and not strict.margin_refuted and strict.checked_references == 2
    assert len(strict.refuting_ratios) == 2 and not strict.calibrated
    assert strict.p_value == alone.p_mass and strict.manipulated == (alone.p_mass < 0.05)
    clean = faithfulness_test(pool["clean"][3], x, "gradient", margin=1.0, references=refs)
    assert clean.mass_only and not clean.manipulated and not clean.conclusive
    assert clean.finding().startswith("inconclusive: the mass test finds no evidence")
    # a "trusted" reference that fails the mass test itself: a linear model whose largest weights
    # sit on the pixels blank in every image, so its gradient maps lie where occlusion finds nothing
    torch.manual_seed(0)
    corner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    blank = x.abs().sum((0, 1)).flatten() == 0
    with torch.no_grad():
        corner[1].weight.mul_(20.0)
        corner[1].weight[:, blank] += 100.0 * torch.randn(10, int(blank.sum()))
    assert faithfulness_test(corner, x, "gradient").p_mass < 0.025
    refuted = faithfulness_test(pool["clean"][3], x, "gradient", margin=1.0, references=[corner, refs[0]])
    assert refuted.margin_refuted and not refuted.mass_only and not refuted.manipulated and not refuted.conclusive
    assert refuted.p_value == faithfulness_test(pool["clean"][3], x, "gradient", margin=1.0).p_value
    assert refuted.finding().startswith("inconclusive: the reference-free test flags ")
    uncalibrated = faithfulness_test(pool["com"], x, "gradient", references=pool["clean"][1:4], calibrate=False)
    assert uncalibrated.manipulated and not uncalibrated.margin_refuted and uncalibrated.checked_references == 3
    combined = combined_detection(pool["clean"][3], x, refs, methods=("gradient",), margin=1.0)
    signal = combined.signals[0]
    assert signal.counted and "the mass test alone" in signal.note and not combined.manipulated
