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
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from ..attacks import manipulate_input
from ..defenses.detection import detect_manipulation, noise_map_similarity, with_weight_noise
from ..explainers import explain, relevance
from ..metrics import linf, pcc
from ..objectives import TargetImage, TopKSuppression
from .base import Experiment, Unit
from .common import DEFENSES, defended, seeded
from .config import ConfigError, Field, method_choices
from .sources import (SOURCE_FIELDS, _arch, _normalization, apply_labels, check_sources, load_images,
                      original_model, require_model)

OBJECTIVES = ("targeted", "topk")


def _part(df, name: str):
    """The stored rows of one part of the audit (none before any unit has run)."""
    return df[df.part == name] if "part" in df else df.iloc[0:0]


class Audit(Experiment):
    """The audit of one model: attacks, defenses, curvature, detection, verdict."""

    name = "audit"
    title = "Audit: can this model's explanations be trusted?"
    schema = {
        **SOURCE_FIELDS,
        "references": Field("str", "", "trusted clean models of the same kind, comma-separated paths (.safetensors "
                            "saved by manipex, or .pth for 'arch'); empty: trained here"),
        "n_references": Field("int", 3, "references trained here when none are given (3 or more: calibrated test)"),
        "methods": Field("list[str]", ["gradient", "lrp"], "explanation methods audited", method_choices()),
        "eps": Field("list[float]", [0.02, 0.05, 0.1], "L-infinity budgets in the units of the model's input "
                     "([0, 1] pixels, or normalised values where 'normalize' applies)"),
        "n": Field("int", 8, "images attacked"),
        "steps": Field("int", 100, "attack steps"),
        "lr": Field("float", 0.01, "Adam step size of the attacks"),
        "topk": Field("float", 0.05, "top-k attack: k as a fraction of a map's pixels"),
        "defenses": Field("list[str]", list(DEFENSES[1:]), "defenses under the adaptive attack at the largest eps",
                          DEFENSES[1:]),
        "softplus_beta": Field("float", 1.0, "beta of beta-smoothing"),
        "smoothgrad_samples": Field("int", 5, "SmoothGrad samples"),
        "ig_steps": Field("int", 5, "integrated-gradients steps inside the attacks"),
        "betas": Field("list[float]", [10.0, 3.0, 1.0], "softplus betas of the curvature part"),
        "noise_n": Field("int", 32, "noise inputs of the detection test"),
        "alpha": Field("float", 0.05, "stated false-positive rate of the detection test"),
        "weight_noise": Field("list[float]", [0.0, 0.05, 0.1], "weight-noise scales (relative to each tensor's sd)"),
        "n_train": Field("int", 0, "training images for references trained here (0: all)"),
        "seed": Field("int", 0, "seed of every unit"),
    }

    def check(self, config):
        check_sources(config)
        require_model(config, "audit")
        for path in self._reference_paths(config):
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"config key 'references': {path!r} does not exist")
        for key in ("n", "steps", "n_references", "noise_n", "smoothgrad_samples", "ig_steps"):
            if config[key] < 1:
                raise ConfigError(f"config key {key!r} must be at least 1, got {config[key]}")
        if config["noise_n"] < 2:
            raise ConfigError("config key 'noise_n' must be at least 2 (pairs of noise maps)")
        if any(not (e > 0) for e in config["eps"]):
            raise ConfigError(f"config key 'eps': budgets must be positive, got {config['eps']}")
        if not 0 < config["alpha"] < 1:
            raise ConfigError(f"config key 'alpha' must lie in (0, 1), got {config['alpha']}")
        if not 0 < config["topk"] < 1:
            raise ConfigError(f"config key 'topk' is a fraction of the pixels in (0, 1), got {config['topk']}")

    @staticmethod
    def _reference_paths(config) -> List[str]:
        return [p.strip() for p in config["references"].split(",") if p.strip()]

    def units(self, config):
        units = [Unit(f"attack/{m}/{o}/{e:g}", {"part": "attack", "method": m, "objective": o, "eps": e})
                 for m in config["methods"] for o in OBJECTIVES for e in config["eps"]]
        units += [Unit(f"defense/{d}/{m}", {"part": "defense", "method": m, "defense": d})
                  for d in ("none",) + tuple(config["defenses"]) for m in config["methods"]]
        units.append(Unit("curvature", {"part": "curvature"}))
        units += [Unit(f"detection/{m}", {"part": "detection", "method": m}) for m in config["methods"]]
        return units

    def setup(self, config, device):
        # the attacked images and their targets, and for accuracy up to 256 held-out images (an
        # image folder without splits keeps the rest for references trained here)
        n_eval = 2 * config["n"] if config["dataset"] == "image_folder" else max(2 * config["n"], 256)
        train, test = load_images(config, n_train=config["n_train"], n_eval=n_eval, seed=config["seed"])
        ctx: Dict[str, Any] = {}
        model = original_model(config, train, device, cache=None)
        train, test = apply_labels(config, model, train, test)
        ctx.update(model=model, x=test[0].to(device), y=test[1].to(device), train=train, device=device)
        return ctx

    def _references(self, config, model, train, device, folder: Path) -> List[nn.Module]:
        from .. import models

        paths = self._reference_paths(config)
        if paths:
            refs = []
            for path in paths:
                if path.endswith(".safetensors"):
                    refs.append(models.load(Path(path).expanduser()))
                else:
                    name, kwargs = _arch(config, model(train[0][:1].to(device)).shape[1])
                    refs.append(models.load(Path(path).expanduser(), models.build(name, **kwargs)))
            return [r.to(device).eval() for r in refs]
        refs = []
        for k in range(1, config["n_references"] + 1):
            cache = folder / "references" / f"reference{k}.safetensors"
            if cache.exists():
                refs.append(models.load(cache).to(device).eval())
                continue
            refs.append(self._train_reference(config, model, train, device, seed=k))
            cache.parent.mkdir(parents=True, exist_ok=True)
            models.save(refs[-1], cache, metadata={"trained_by": "manipex audit", "seed": k})
        return refs

    @staticmethod
    def _train_reference(config, model, train, device, seed: int) -> nn.Module:
        """A clean model of the audited model's kind, trained with another seed."""
        from .. import models

        default = not config["weights"] and config["dataset"] == "mnist5k"
        recipe = models.DEFAULT_RECIPES["mnist"]
        if default:
            name, kwargs, epochs, lr, batch = recipe.arch, {}, recipe.epochs, recipe.lr, recipe.batch_size
        else:
            recorded = getattr(model, "manipex_arch", None)
            if recorded is not None:
                name, kwargs = recorded["name"], dict(recorded["kwargs"])
            else:
                name, kwargs = _arch(config, model(train[0][:1].to(device)).shape[1])
            epochs, lr, batch = config["train_epochs"], 1e-3, 64
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ref = models.build(name, **kwargs).to(device)
            models.train_classifier(ref, train[0].to(device), train[1].to(device), epochs=epochs, lr=lr,
                                    batch_size=batch, seed=seed, progress=False)
        return ref.eval()

    def run_unit(self, unit, ctx, config):
        seeded(config["seed"])
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
        x = ctx["x"]
        n = min(config["n"], len(x) // 2)
        return x[:n], x[n: 2 * n]

    def _attack(self, p, ctx, config):
        model = ctx["model"]
        x, x_target = self._images(ctx, config)
        method, options, attack = defended(p["method"], "none", config)
        if p["objective"] == "targeted":
            objective = TargetImage(x_target)
        else:
            objective = TopKSuppression(max(1, round(config["topk"] * relevance(x[:1]).numel())))
        res = manipulate_input(model, x, objective, method, method_options=options, steps=config["steps"],
                               lr=config["lr"], eps=p["eps"], clamp=self._clamp(x, config), progress=False, **attack)
        return [{"part": "attack", "method": p["method"], "objective": p["objective"], "eps": p["eps"], "image": i,
                 "metric": res.metric_name, "before": float(res.metric_before[i]), "after": float(res.metric_after[i]),
                 "threshold": float(res.threshold[i]), "success": float(res.success[i]),
                 "class_kept": float(res.class_kept[i]), "linf": float(linf(x, res.x_adv)[i])}
                for i in range(len(x))]

    @staticmethod
    def _clamp(x, config):
        """The valid range of the model's inputs: [0, 1] pixels, normalised as the weights expect."""
        norm = _normalization(config)
        if norm is None:
            return (0.0, 1.0)
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in norm)
        return (-mean / std, (1 - mean) / std)

    def _defense(self, p, ctx, config):
        model = ctx["model"]
        x, x_target = self._images(ctx, config)
        method, options, attack = defended(p["method"], p["defense"], config)
        eps = max(config["eps"])
        res = manipulate_input(model, x, TargetImage(x_target), method, method_options=options, steps=config["steps"],
                               lr=config["lr"], eps=eps, clamp=self._clamp(x, config), progress=False, **attack)
        t = model(x).argmax(1)
        r_target = relevance(explain(model, x_target, method, t, **options))
        rise = pcc(res.maps_after, r_target) - pcc(res.maps_before, r_target)
        return [{"part": "defense", "method": p["method"], "defense": p["defense"], "eps": eps, "image": i,
                 "pcc_rise": float(rise[i]), "success": float(res.success[i]), "class_kept": float(res.class_kept[i])}
                for i in range(len(x))]

    def _curvature(self, ctx, config):
        from .. import surgery
        from ..geometry import principal_curvature

        model = ctx["model"]
        x, _ = self._images(ctx, config)
        rows = []
        for beta in config["betas"]:
            smooth = surgery.softplus_copy(model, beta)
            c = principal_curvature(smooth, x, model(x).argmax(1), iters=20, seed=config["seed"])
            rows += [{"part": "curvature", "beta": beta, "image": i, "curvature": float(c[i])} for i in range(len(x))]
        return rows

    def _detection(self, p, ctx, config):
        model, method = ctx["model"], p["method"]
        if "references" not in ctx:  # loaded (or trained) once per run, for every method
            ctx["references"] = self._references(config, model, ctx["train"], ctx["device"], Path(ctx["out"]))
        refs = ctx["references"]
        shape = tuple(ctx["x"].shape[1:])
        options = defended(method, "none", config)[1]
        report = detect_manipulation(model, shape, refs, method, n=config["noise_n"], seed=config["seed"],
                                     alpha=config["alpha"], method_options=options)
        rows = [{"part": "detection", "method": method, "score": report.score, "threshold": report.threshold,
                 "p_value": math.nan if report.p_value is None else report.p_value,
                 "manipulated": float(report.manipulated), "calibrated": float(report.calibrated),
                 "references": len(refs), "reference_mean": sum(report.reference_scores) / len(refs),
                 "test": report.test}]
        from ..models import accuracy

        for sigma in config["weight_noise"]:
            noisy = with_weight_noise(model, sigma, config["seed"])
            sim = noise_map_similarity(noisy, shape, method, n=config["noise_n"], seed=config["seed"],
                                       method_options=options).mean().item()
            rows.append({"part": "weight_noise", "method": method, "sigma": sigma, "similarity": sim,
                         "accuracy": accuracy(noisy, ctx["x"], ctx["y"])})
        return rows

    def tables(self, df, config):
        tables: Dict[str, Any] = {"Verdict": None}  # first in the report; filled in below
        attack = _part(df, "attack")
        if len(attack):
            tables["(a) Input manipulation: share of images attacked successfully, class kept (rows: method, "
                   "objective; columns: eps)"] = attack.pivot_table(index=["method", "objective"], columns="eps",
                                                                    values="success", aggfunc="mean").round(3)
        defense = _part(df, "defense")
        if len(defense):
            order = [d for d in DEFENSES if d in set(defense.defense)]
            tables[f"(b) Defenses under the adaptive targeted attack at eps = {max(config['eps']):g}: rise of the "
                   "PCC with the target (lower = the defense holds)"] = defense.pivot_table(
                index="method", columns="defense", values="pcc_rise", aggfunc="mean")[order].round(3)
        curvature = _part(df, "curvature")
        if len(curvature):
            tables["(c) Largest principal curvature at the data (median over images; Dombrowski Thm 1)"] = (
                curvature.groupby("beta")["curvature"].median().sort_index(ascending=False).to_frame().round(4))
        detection = _part(df, "detection")
        if len(detection):
            cols = ["score", "reference_mean", "threshold", "p_value", "manipulated", "references", "test"]
            tables[f"(d) Noise-input similarity against the references (alpha = {config['alpha']:g})"] = (
                detection.set_index("method")[cols].round(4))
        noise = _part(df, "weight_noise")
        if len(noise):
            tables["(d) Weight noise: noise-map similarity and accuracy"] = noise.pivot_table(
                index="sigma", columns="method", values=["similarity", "accuracy"], aggfunc="mean").round(4)
        tables["Verdict"] = self.verdict(attack, defense, curvature, detection, config)
        return tables

    @staticmethod
    def verdict(attack, defense, curvature, detection, config):
        import pandas as pd

        rows = []
        if len(attack):
            eps = max(config["eps"])
            top = attack[attack.eps == eps].groupby(["method", "objective"])["success"].mean()
            worst = top.idxmax()
            rows.append(("Can the maps be manipulated by the input?",
                         f"{'yes' if top.max() >= 0.5 else 'partly' if top.max() > 0 else 'not at this budget'}: "
                         f"at eps = {eps:g} the {worst[1]} attack succeeds on {top.max():.0%} of the images with "
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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        attack = _part(df, "attack")
        if not len(attack):
            return []
        objectives = [o for o in OBJECTIVES if o in set(attack.objective)]
        fig, axes = plt.subplots(1, len(objectives), figsize=(3.4 * len(objectives), 2.8), squeeze=False)
        for ax, objective in zip(axes[0], objectives):
            part = attack[attack.objective == objective]
            for method, group in part.groupby("method", sort=False):
                means = group.groupby("eps")["success"].mean().sort_index()
                ax.plot(means.index, means.values, marker="o", ms=4, label=method)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("eps (L-infinity budget)")
            ax.set_ylabel("share attacked successfully")
            ax.set_title(f"{objective} attack, class kept", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out) / "audit_success_vs_eps.png"
        fig.savefig(path, dpi=150)
        plt.close(fig)
        return [path]
