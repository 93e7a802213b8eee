"""``manipex audit``: can this model's explanations be trusted?

One run answers the auditor's questions on the model's own data, each part a unit of work (so
a killed audit resumes):

* **(a) input manipulation** (Dombrowski 2019; Ghorbani 2019): the success of a targeted attack
  (another image's map as the target) and of a top-k attack, per method and budget ε, with the
  class kept (success thresholds: :mod:`manipex.objectives`);
* **(b) defenses** under the adaptive attack at the largest ε: β-smoothing, SmoothGrad, AGG-Mean
  (:func:`~manipex.experiments.common.defended`);
* **(c) curvature**: the largest principal curvature of the decision surface at the data
  (Dombrowski Thm 1) on the Softplus(β) model, for decreasing β;
* **(d) evidence of model manipulation** against trusted reference models: the noise-input
  similarity test with a calibrated p-value (:func:`manipex.defenses.detect_manipulation`, 3 or
  more references) and the similarity as Gaussian noise is added to the weights (Pasliev Sec. 4);
* **(e) a verdict** with the numbers behind it and what the audit cannot see.

Without ``references``, references are trained here: for the default model its recipe with
seeds 1, 2, 3; for a user's model the same architecture on the same data for ``train_epochs``.
References of the same kind as the audited model (same data, recipe, architecture) make the
test meaningful: give your own where you can.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..attacks import manipulate_input
from ..defenses.detection import detect_manipulation, noise_map_similarity, with_weight_noise
from ..explainers import explain, relevance
from ..metrics import linf, pcc
from ..objectives import TargetImage, TopKSuppression
from .base import Experiment, Unit
from .common import (DEFENSES, ImageContext, defended, defense_choices, load_model, per_image, save_model, seeded)
from .config import ConfigError, key, method_choices
from .sources import SourceConfig, build_model, eps_text, require_model

OBJECTIVES = ("targeted", "topk")


def _part(df, name: str):
    """The stored rows of one part of the audit (none before any unit has run)."""
    return df[df.part == name] if "part" in df else df.iloc[0:0]


@dataclass(frozen=True)
class AuditConfig(SourceConfig):
    references: List[str] = key([], "trusted clean models of the same kind: paths (.safetensors saved by manipex, or "
                                "state_dicts for 'arch'); empty: trained here", empty=True)
    n_references: int = key(3, "references trained here when none are given (3 or more: calibrated test)", ge=1, le=100)
    methods: List[str] = key(["gradient", "lrp"], "explanation methods audited", choices=method_choices)
    eps: List[float] = key([0.02, 0.05, 0.1], "L-infinity budgets in pixel units ([0, 1]; 8/255 = 0.031)", gt=0, le=1)
    n: int = key(8, "images attacked", ge=1, le=100_000)
    steps: int = key(100, "attack steps", ge=1, le=1_000_000)
    lr: float = key(0.01, "Adam step size of the attacks", gt=0, le=1)
    topk: float = key(0.05, "top-k attack: k as a fraction of a map's pixels", gt=0, lt=1)
    defenses: List[str] = key([d for d in DEFENSES if d != "none"], "defenses under the adaptive attack at the "
                              "largest eps", choices=defense_choices, empty=True)
    softplus_beta: float = key(1.0, "beta of beta-smoothing", gt=0, le=10_000)
    smoothgrad_samples: int = key(5, "SmoothGrad samples", ge=1, le=10_000)
    ig_steps: int = key(8, "integrated-gradients steps inside the attacks", ge=1, le=10_000)
    betas: List[float] = key([10.0, 3.0, 1.0], "softplus betas of the curvature part", gt=0, le=10_000)
    noise_n: int = key(32, "noise inputs of the detection test", ge=2, le=100_000)
    alpha: float = key(0.05, "stated false-positive rate of the detection test", gt=0, lt=1)
    weight_noise: List[float] = key([0.0, 0.05, 0.1], "weight-noise scales (relative to each tensor's sd)", ge=0, le=100)
    n_train: int = key(0, "training images for references trained here (0: all)", ge=0, le=10_000_000)
    seed: int = key(0, "seed of every unit", ge=0, le=2**32 - 1)

    def check(self) -> None:
        super().check()
        require_model(self, "audit")
        for path in self.references:
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"config key 'references': {path!r} does not exist")


@dataclass(kw_only=True)
class AuditContext(ImageContext):
    references: Optional[List[nn.Module]] = None


class Audit(Experiment):
    """The audit of one model: attacks, defenses, curvature, detection, verdict."""

    name = "audit"
    title = "Audit: can this model's explanations be trusted?"
    captions = {
        "Verdict": ("Verdict", "The audit's answers in words, from the tables below."),
        "(a) Input manipulation*": (
            "(a) Can the maps be manipulated through the input?",
            "Share (0-1) of images attacked successfully with the class kept, per method and objective (rows) and "
            "budget eps (columns). Higher = less trustworthy."),
        "(b) Defenses under the adaptive targeted attack at eps = *: rise of the PCC with the target (lower = the "
        "defense holds)": (
            "(b) Which defense holds? (adaptive attack, eps = {})",
            "Rise of the PCC with the target under an attack that sees the defense, at eps = {}, per method (rows) "
            "and defense (columns). Lower = the defense holds."),
        "(c) Largest principal curvature*": (
            "(c) Curvature of the decision surface (Dombrowski Thm 1)",
            "Median largest principal curvature per softplus beta. Lower = maps harder to manipulate."),
        "(d) Noise-input similarity against the references (alpha = *)": (
            "(d) Was the model itself manipulated? (alpha = {})",
            "Similarity of the maps of noise inputs (score) against reference models of the same kind: threshold, "
            "p-value (small = unusual) and the decision (1 = manipulated)."),
        "(d) Weight noise: noise-map similarity and accuracy": (
            "(d) Weight noise",
            "Per weight-noise level sigma: noise-map similarity per method and accuracy in %. A manipulation that "
            "vanishes with small noise while the accuracy stays is suspicious."),
        "audit_success_vs_eps": ("Input manipulation: success against the budget",
                                 "Share of images attacked successfully (class kept) per method, as eps grows, per "
                                 "attack objective. Higher curves = less trustworthy explanations."),
    }
    Config = AuditConfig
    Context = AuditContext

    def units(self, config):
        units = [Unit(f"attack/{m}/{o}/{e:g}", {"part": "attack", "method": m, "objective": o, "eps": e})
                 for m in config.methods for o in OBJECTIVES for e in config.eps]
        units += [Unit(f"defense/{d}/{m}", {"part": "defense", "method": m, "defense": d})
                  for d in ("none",) + tuple(config.defenses) for m in config.methods]
        units.append(Unit("curvature", {"part": "curvature"}))
        units += [Unit(f"detection/{m}", {"part": "detection", "method": m}) for m in config.methods]
        return units

    def setup(self, config, run):
        # the attacked images and their targets, and for accuracy up to 256 held-out images (an
        # image folder without splits keeps the rest for references trained here)
        n_eval = 2 * config.n if config.dataset == "image_folder" else max(2 * config.n, 256)
        needs_train = config.trains_here or not config.references
        base = ImageContext.load(config, run, n_train=(config.n_train or None) if needs_train else 0, n_eval=n_eval,
                                 seed=config.seed)
        if len(base.x) < 2:
            raise ConfigError(f"config key 'split': the audit needs at least 2 images, split {config.split!r} has "
                              f"{len(base.x)}")
        return AuditContext(**vars(base))

    def _references(self, config, ctx) -> List[nn.Module]:
        """The trusted reference models: given (loaded like the audited model, with its
        architecture and normalisation), or trained here and kept in the run folder."""
        import dataclasses

        from .sources import _normalized, original_model

        if config.references:
            labels = torch.cat([ctx.train[1], ctx.y])
            return [_normalized(original_model(dataclasses.replace(config, weights=path), ctx.train, ctx.device,
                                               labels=labels), config.normalization()).eval()
                    for path in config.references]
        refs = []
        for k in range(1, config.n_references + 1):
            cache = Path(ctx.out) / "references" / f"reference{k}.safetensors"
            if not cache.exists():
                save_model(self._train_reference(config, ctx, seed=k), cache,
                           {"trained_by": "manipex audit", "seed": k})
            refs.append(load_model(cache, config, ctx.device))
        return refs

    @staticmethod
    def _train_reference(config, ctx, seed: int) -> nn.Module:
        """A clean model of the audited model's kind, trained with another seed on the same data
        (behind the same normalisation): the default model's recipe, or the audited model's
        architecture for ``train_epochs``."""
        from .. import models

        if config.is_default:
            recipe = models.DEFAULT_RECIPES["mnist"]
            name, kwargs, epochs, lr, batch = recipe.arch, {}, recipe.epochs, recipe.lr, recipe.batch_size
        else:
            inner = ctx.model[1] if models.input_normalization(ctx.model) is not None else ctx.model
            recorded = getattr(inner, "manipex_arch", None)
            if recorded is not None:
                name, kwargs = recorded["name"], dict(recorded["kwargs"])
            elif ":" not in config.arch:
                from .sources import _zoo_arch

                with torch.no_grad():
                    name, kwargs = _zoo_arch(config, ctx.model(ctx.x[:1]).shape[1])
            else:
                raise ConfigError("config key 'references': a reference cannot be trained for a factory's model; "
                                  "give trusted reference models")
            epochs, lr, batch = config.train_epochs, 1e-3, 64
        if len(ctx.train[0]) == 0:
            raise ConfigError("config key 'references': no training images to train references on; give trusted "
                              "reference models")
        norm = config.normalization()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ref = models.build(name, **kwargs).to(ctx.device)
            trained = ref if norm is None else models.with_normalization(ref, *norm)
            models.train_classifier(trained, ctx.train[0], ctx.train[1], epochs=epochs, lr=lr, batch_size=batch,
                                    seed=seed, progress=False)
        return trained.eval()

    def run_unit(self, unit, ctx, config):
        seeded(config.seed)
        part = unit.params["part"]
        if part == "attack":
            return self._attack(unit.params, ctx, config)
        if part == "defense":
            return self._defense(unit.params, ctx, config)
        if part == "curvature":
            return self._curvature(ctx, config)
        return self._detection(unit.params, ctx, config)

    @staticmethod
    def _images(ctx, config):
        """The attacked images and, as targets, the next ``n``."""
        n = min(config.n, len(ctx.x) // 2)
        return ctx.x[:n], ctx.x[n: 2 * n]

    def _attack(self, p, ctx, config):
        x, x_target = self._images(ctx, config)
        method, options, attack = defended(p["method"], "none", config)
        if p["objective"] == "targeted":
            objective = TargetImage(x_target)
        else:
            objective = TopKSuppression(max(1, round(config.topk * relevance(x[:1]).numel())))
        res = manipulate_input(ctx.model, x, objective, method, method_options=options, steps=config.steps,
                               lr=config.lr, eps=p["eps"], clamp=ctx.clamp, progress=False, **attack)
        return per_image({"before": res.metric_before, "after": res.metric_after, "threshold": res.threshold,
                          "success": res.success.float(), "class_kept": res.class_kept.float(),
                          "linf": linf(x, res.x_adv)},
                         part="attack", method=p["method"], objective=p["objective"], eps=p["eps"],
                         metric=res.metric_name)

    def _defense(self, p, ctx, config):
        model = ctx.model
        x, x_target = self._images(ctx, config)
        method, options, attack = defended(p["method"], p["defense"], config)
        eps = max(config.eps)
        res = manipulate_input(model, x, TargetImage(x_target), method, method_options=options, steps=config.steps,
                               lr=config.lr, eps=eps, clamp=ctx.clamp, progress=False, **attack)
        t = model(x).argmax(1)
        r_target = relevance(explain(model, x_target, method, t, **options))
        rise = pcc(res.maps_after, r_target) - pcc(res.maps_before, r_target)
        return per_image({"pcc_rise": rise, "success": res.success.float(), "class_kept": res.class_kept.float()},
                         part="defense", method=p["method"], defense=p["defense"], eps=eps)

    def _curvature(self, ctx, config):
        from .. import surgery
        from ..geometry import principal_curvature

        model = ctx.model
        x, _ = self._images(ctx, config)
        rows = []
        for beta in config.betas:
            smooth = surgery.softplus_copy(model, beta)
            c = principal_curvature(smooth, x, model(x).argmax(1), iters=20, seed=config.seed)
            rows += per_image({"curvature": c}, part="curvature", beta=beta)
        return rows

    def _detection(self, p, ctx, config):
        from ..models import accuracy

        model, method = ctx.model, p["method"]
        if ctx.references is None:  # loaded (or trained) once per run, for every method
            ctx.references = self._references(config, ctx)
        refs = ctx.references
        shape = tuple(ctx.x.shape[1:])
        options = defended(method, "none", config)[1]
        report = detect_manipulation(model, shape, refs, method, n=config.noise_n, seed=config.seed,
                                     alpha=config.alpha, method_options=options)
        rows = [{"part": "detection", "method": method, "score": report.score, "threshold": report.threshold,
                 "p_value": math.nan if report.p_value is None else report.p_value,
                 "manipulated": float(report.manipulated), "calibrated": float(report.calibrated),
                 "references": len(refs), "reference_mean": sum(report.reference_scores) / len(refs),
                 "test": report.test}]
        for sigma in config.weight_noise:
            noisy = with_weight_noise(model, sigma, config.seed)
            sim = noise_map_similarity(noisy, shape, method, n=config.noise_n, seed=config.seed,
                                       method_options=options).mean().item()
            rows.append({"part": "weight_noise", "method": method, "sigma": sigma, "similarity": sim,
                         "accuracy": accuracy(noisy, ctx.x, ctx.y)})
        return rows

    def tables(self, df, config):
        tables: Dict[str, Any] = {"Verdict": None}  # first in the report; filled in below
        attack = _part(df, "attack")
        if len(attack):
            tables["(a) Input manipulation: share of images attacked successfully, class kept (rows: method, "
                   "objective; columns: eps in pixel units, [0, 1])"] = attack.pivot_table(
                index=["method", "objective"], columns="eps",
                                                                    values="success", aggfunc="mean").round(3)
        defense = _part(df, "defense")
        if len(defense):
            order = [d for d in DEFENSES if d in set(defense.defense)]
            tables[f"(b) Defenses under the adaptive targeted attack at eps = {eps_text(max(config.eps))}: rise of the "
                   "PCC with the target (lower = the defense holds)"] = defense.pivot_table(
                index="method", columns="defense", values="pcc_rise", aggfunc="mean")[order].round(3)
        curvature = _part(df, "curvature")
        if len(curvature):
            tables["(c) Largest principal curvature at the data (median over images; Dombrowski Thm 1)"] = (
                curvature.groupby("beta")["curvature"].median().sort_index(ascending=False).to_frame().round(4))
        detection = _part(df, "detection")
        if len(detection):
            cols = ["score", "reference_mean", "threshold", "p_value", "manipulated", "references", "test"]
            tables[f"(d) Noise-input similarity against the references (alpha = {config.alpha:g})"] = (
                detection.set_index("method")[cols].round(4))
        noise = _part(df, "weight_noise")
        if len(noise):
            table = noise.assign(**{"accuracy (%)": noise.accuracy * 100}).pivot_table(
                index="sigma", columns="method", values=["similarity", "accuracy (%)"], aggfunc="mean").round(4)
            table.columns = [f"{value} {method}" for value, method in table.columns]
            tables["(d) Weight noise: noise-map similarity and accuracy"] = table
        tables["Verdict"] = self.verdict(attack, defense, curvature, detection, config)
        return tables

    @staticmethod
    def verdict(attack, defense, curvature, detection, config):
        import pandas as pd

        rows = []
        if len(attack):
            eps = max(config.eps)
            top = attack[attack.eps == eps].groupby(["method", "objective"])["success"].mean()
            worst = top.idxmax()
            rows.append(("Can the maps be manipulated by the input?",
                         f"{'yes' if top.max() >= 0.5 else 'partly' if top.max() > 0 else 'not at this budget'}: "
                         f"at eps = {eps_text(eps)} the {worst[1]} attack succeeds on {top.max():.0%} of the images with "
                         f"{worst[0]} (class kept); the map's own change is invisible to a user"))
        if len(defense):
            rise = defense.groupby("defense")["pcc_rise"].mean()
            best = rise.drop("none", errors="ignore").idxmin() if len(rise.drop("none", errors="ignore")) else None
            if best is not None:
                rows.append(("Which defense holds?", f"{best}: the adaptive attack raises the PCC with its target by "
                             f"{rise[best]:.3f} against {rise.get('none', float('nan')):.3f} without defense"))
        if len(curvature):
            med = curvature.groupby("beta")["curvature"].median().sort_index(ascending=False)
            rows.append(("Curvature (Dombrowski Thm 1)", "the largest principal curvature falls from "
                         f"{med.iloc[0]:.3g} at beta = {med.index[0]:g} to {med.iloc[-1]:.3g} at beta = "
                         f"{med.index[-1]:g}: smoothing makes the maps harder to manipulate"))
        if len(detection):
            flagged = detection[detection.manipulated > 0]
            calibrated = bool(detection.calibrated.min() > 0)
            text = ("MANIPULATED by " + ", ".join(f"{r.method} (p = {r.p_value:.3g})" for r in flagged.itertuples())
                    if len(flagged) else "no evidence of manipulation: " + ", ".join(
                        f"{r.method} similarity {r.score:.3f}, threshold {r.threshold:.3f}" for r in detection.itertuples()))
            if not calibrated:
                text += " (uncalibrated: fewer than 3 references)"
            rows.append(("Was the model itself manipulated?", text))
        rows.append(("What the audit cannot see", "manipulations of methods not audited; manipulations that act "
                     "only on inputs noise never reaches (a trigger patch); input attacks leave the model unchanged "
                     "and are measured in (a), not detected in (d); references of another kind than the model "
                     "make (d) meaningless"))
        return pd.DataFrame(rows, columns=["question", "finding"]).set_index("question")

    def figures(self, df, config, out):
        from ..figures import _subplots
        from .plots import CI_TEXT, _line_with_interval, _single_x, legend_outside, n_text, save_figure, styled, summarize

        attack = _part(df, "attack")
        if not len(attack):
            return []

        @styled
        def draw():
            objectives = [o for o in OBJECTIVES if o in set(attack.objective)]
            fig, axes = _subplots(1, len(objectives), figsize=(3.4 * len(objectives) + 1.6, 3.0), squeeze=False)
            counts = []
            for ax, objective in zip(axes[0], objectives):
                part = attack[attack.objective == objective]
                for method, group in part.groupby("method", sort=False):
                    eps = sorted(group.eps.unique())
                    stats = [summarize(group[group.eps == e]["success"]) for e in eps]
                    counts += [s[3] for s in stats]
                    _line_with_interval(ax, eps, stats, method)
                _single_x(ax, part.eps)
                ax.set_ylim(-0.03, 1.03)
                ax.set_xlabel("eps (L-infinity, pixels in [0, 1])")
                top = ax.secondary_xaxis("top", functions=(lambda e: e * 255, lambda v: v / 255))
                top.set_xlabel("eps x 255", fontsize=7)
                top.tick_params(labelsize=7)
                ax.set_ylabel("share attacked successfully, class kept\n(higher = less trustworthy)")
                ax.set_title(f"{objective} attack")
            legend_outside(axes[0][-1], title="method")
            fig.suptitle(f"input manipulation: success against the budget ({CI_TEXT}; {n_text(counts)})")
            return save_figure(fig, Path(out) / "audit_success_vs_eps.png")

        return [draw()]
