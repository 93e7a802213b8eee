"""``robust_training``: every robust-explanation training method on the same model and data,
then the same adaptive attacks and robustness metrics on each (beyond the seed papers).

Each defense fine-tunes the model (the default MNIST-5k CNN, or the user's model and data) with
:func:`manipex.defenses.train_robust` for the same epochs, from the same weights; ``plain`` is
that fine-tuning without a regularizer, the baseline. Each model is then:

* attacked with the targeted attack (Dombrowski: another image's map as the target; Adam
  through the Softplus surrogate with β growing, the model itself where it is a Softplus net)
  and the top-k attack (Ghorbani / Tang: signed steps suppressing the top-k pixels), both at
  the same L∞ budget ``eps``: adaptive, since the defense is in the model that is attacked;
* measured: accuracy, the Hessian norm of the explained logit at the data (finite
  differences: the ReLU net's curvature sits in its kinks), max-sensitivity sampled as
  Quantus does and adversarially (its worst case, searched by ``manipulate_input``), and the
  cascading model-randomisation check of Adebayo et al. for the method and guided backprop.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from torch import Tensor, nn

from .._files import replacing
from .tables import Table
from .base import Experiment, Unit
from .common import IG_STEPS, ImageContext, attack_budget, method_options, per_image, seeded, targeted_attack
from .config import ConfigError, key, method_choices, profile_key
from .published import Claim, Finding, direction, findings_table
from .sources import SourceConfig
from ..surgery import has_relu
from .plots import CI_TEXT, bootstrap_ci, each_format, legend_outside, save_figure, styled, summarize
from ..figures import subplots
from ..style import colors_for
from ..defenses import train_robust
from ..defenses.regularizers import REGULARIZERS, make
from ..attacks import manipulate_input
from ..metrics import spearman, ssim, topk_intersection
from ..objectives import TopKSuppression
from ..geometry import hessian_norm
from ..evaluation import max_sensitivity
from ..models import accuracy
from ..evaluation.sanity import model_randomization

#: The defenses in the order of every table: the baseline first
DEFENSES = ("plain", "weight_decay", "softplus", "hessian_norm", "curvature", "ssr", "ig_norm", "ig_sum_norm", "atex")

DOMBROWSKI_2022 = Claim(
    "Dombrowski et al. 2022, Sec. 5-6", "weight decay, softplus training and minimising the Hessian norm make "
    "explanations harder to manipulate at a small cost in accuracy", "qualitative: lower manipulability for all three "
    "(MNIST, CIFAR-10, FashionMNIST)")
CHEN_2019 = Claim(
    "Chen et al. 2019, Sec. 5", "IG-NORM and IG-SUM-NORM training keep attributions closer to the original under "
    "the top-k attack than natural training", "higher top-k intersection and Kendall's tau of IG maps (their MNIST "
    "config: lambda 1, eps 0.3, m = 50 IG steps in training, 10 in each of 40 PGD steps of 0.01; evaluated with a "
    "top-200 attack of 100 steps of 0.01, top-100 intersection, IG with 100 steps)")
WANG_2020 = Claim(
    "Wang et al. 2020, Sec. 5", "SSR training makes attributions more robust to the top-k attack than natural "
    "training", "higher top-k intersection (MNIST, CIFAR-10)")
ADEBAYO_2018 = Claim(
    "Adebayo et al. 2018, Fig. 2", "the gradient map changes as the layers are randomised (cascading), guided "
    "backprop's hardly does", "qualitative (Inception v3, ImageNet)")


@dataclass(frozen=True)
class RobustConfig(SourceConfig):
    defenses: List[str] = key(list(DEFENSES), "trained defenses; plain: the same fine-tuning without a regularizer "
                              "(the baseline, always trained)", choices=DEFENSES)
    method: str = key("gradient", "the explanation method attacked and measured", choices=method_choices)
    n: int = key(16, "test images attacked and measured", ge=1, le=100_000)
    batch: int = key(16, "images per attack unit", ge=1, le=100_000)
    eps: float = key(0.2, "L-infinity budget of both attacks and radius of max-sensitivity (pixels in [0, 1])",
                     gt=0, le=1)
    steps: int = key(100, "steps of each attack", ge=1, le=1_000_000)
    lr: float = key(0.01, "step size of both attacks (Adam: targeted; signed: top-k)", gt=0, le=1)
    k: int = key(50, "pixels of the top-k attack and metric", ge=1, le=4096 * 4096)
    train_n: int = key(2000, "training images of each defense (the first of the training split)", ge=1,
                       le=10_000_000)
    epochs: int = key(2, "epochs of each defense's fine-tuning", ge=1, le=10_000)
    train_lr: float = key(1e-3, "Adam step size of the fine-tuning", gt=0, le=1)
    train_batch: int = key(64, "fine-tuning batch size", ge=1, le=100_000)
    weight_decay: float = key(0.01, "weight of 1/2 ||theta||^2 (weight_decay)", gt=0, le=1e6)
    softplus_train_beta: float = key(5.0, "beta of the Softplus activations the softplus defense trains with",
                                     gt=0, le=10_000)
    hessian_weight: float = key(3e-3, "weight of ||H||_F^2 (hessian_norm, finite differences)", gt=0, le=1e6)
    hessian_h: float = key(0.1, "finite-difference step of hessian_norm (training and the curvature column)", gt=0,
                           le=10)
    curvature_weight: float = key(10.0, "weight of CURE's curvature penalty", gt=0, le=1e6)
    ssr_weight: float = key(1.0, "weight of the SSR penalty", gt=0, le=1e6)
    ig_weight: float = key(1.0, "lambda of IG-NORM / IG-SUM-NORM", gt=0, le=1e6)
    ig_eps: float = key(0.1, "L-infinity ball of IG-NORM's inner maximum (Chen et al. on MNIST: 0.3, trained from "
                        "scratch; in 2 epochs of fine-tuning 0.3 cost IG-SUM-NORM 17 accuracy points)", gt=0, le=1)
    ig_train_steps: int = key(5, "IG steps m inside the training penalty (Chen et al.: 50)", ge=1, le=10_000)
    ig_attack_steps: int = key(3, "PGD steps of the inner maximum (Chen et al.: 40)", ge=0, le=10_000)
    ig_approx_factor: int = key(1, "the PGD steps use ig_train_steps // ig_approx_factor IG steps (Chen et al.: 5)",
                                ge=1, le=10_000)
    atex_weight: float = key(3.0, "weight of ATEX's perpendicular distillation term (Tang: alpha 1)", gt=0, le=1e6)
    ms_samples: int = key(20, "noise draws of the sampled max-sensitivity (Quantus: 200)", ge=1, le=100_000)
    ms_steps: int = key(30, "attack steps of the adversarial max-sensitivity", ge=1, le=100_000)
    seed: int = key(0, "seed", ge=0, le=2**32 - 1)
    profile: str = profile_key(
        "reduced IG-NORM settings (5 IG steps, 3 PGD steps at eps 0.1), 2 epochs on 2000 images (about 10 min on 2 "
        "CPU cores)", "Chen et al.'s IG-NORM settings (50 IG steps, 40 PGD steps at eps 0.3) and all training images "
        "(about 1.5 h on 2 CPU cores, estimated: a batch of IG-NORM costs 22x the default's, on twice the images)")

    PROFILES = {"paper": {"ig_eps": 0.3, "ig_train_steps": 50, "ig_attack_steps": 40, "ig_approx_factor": 5,
                          "train_n": 10_000_000}}

    def regularizer(self, defense: str) -> Dict[str, Any]:
        """``train_robust`` arguments of ``defense`` (``regularizer`` and its options)."""
        ig = {"weight": self.ig_weight, "eps": self.ig_eps, "steps": self.ig_train_steps,
              "attack_steps": self.ig_attack_steps, "approx_factor": self.ig_approx_factor,
              # PGD travels 4/3 eps in all: Chen et al.'s (Madry's) 40 steps of 0.01 at eps 0.3
              "attack_lr": 4 * self.ig_eps / (3 * max(self.ig_attack_steps, 1))}
        return {
            "plain": {"regularizer": None},
            "weight_decay": {"regularizer": "weight_decay", "weight": self.weight_decay},
            "softplus": {"regularizer": "softplus", "beta": self.softplus_train_beta},
            "hessian_norm": {"regularizer": "hessian_norm", "weight": self.hessian_weight, "h": self.hessian_h},
            "curvature": {"regularizer": "curvature", "weight": self.curvature_weight},
            "ssr": {"regularizer": "ssr", "weight": self.ssr_weight},
            "ig_norm": {"regularizer": "ig_norm", **ig},
            "ig_sum_norm": {"regularizer": "ig_sum_norm", **ig},
            "atex": {"regularizer": "atex", "weight": self.atex_weight},
        }[defense]

    def trained(self) -> List[str]:
        """The defenses trained: the configured ones, with the baseline first."""
        return ["plain"] + [d for d in self.defenses if d != "plain"]


@dataclass(kw_only=True)
class RobustContext(ImageContext):
    models: Dict[str, nn.Module] = field(default_factory=dict)


class RobustTraining(Experiment):
    """Every robust-explanation training method on one model and data, under the same adaptive
    attacks and robustness metrics (Dombrowski 2022, Chen 2019, Wang 2020, CURE, ATEX; Adebayo
    2018's sanity check)."""

    name = "robust_training"
    title = "Robust-explanation training: defenses against the same adaptive attacks"
    TABLES = (
        Table("findings", "Findings", "What this run finds",
              "The papers' claims, what they report, ours in this run's setting, and a verdict; 'why' says what is "
              "known where a claim does not hold."),
        Table("defenses", "Robust training per defense", "Each defense: accuracy, attacks and robustness metrics",
              "Rows: the model fine-tuned with each defense (plain: without a regularizer, the baseline). accuracy (%) "
              "on the test images and its change from plain in points (a defense counts where it is within 2 points); "
              "targeted attack: rise of the PCC of the map with the target map (lower = more robust); top-k attack: "
              "top-k intersection and Spearman of the attacked map with the original (higher = more robust); Hessian "
              "norm of the explained logit at the data (lower = flatter); max-sensitivity sampled and adversarial "
              "(its worst case; lower = more robust); sanity: mean SSIM of the map with the original along the "
              "cascading randomisation (lower = the map depends on the weights, as it should)."),
        Table("settings", "Settings of each defense", "What each defense trained with",
              "The regularizer, its paper, its settings and the fine-tuning schedule (the same for all). Each "
              "model is kept in models/robust_<defense>.safetensors, its training time in the file's metadata."),
    )
    captions = {
        "robust_training_summary": (
            "Defenses side by side",
            "Per defense (rows) four panels: accuracy, the targeted attack's rise of the PCC with the target (lower = "
            "more robust), the top-k intersection after the top-k attack (higher = more robust) and the adversarial "
            "max-sensitivity (lower = more robust). Bars: means with 95 % bootstrap intervals over the images; the "
            "dashed line marks plain training, the grey band the 2 accuracy points a defense may lose."),
        "robust_training_sanity": (
            "Sanity check: maps as the layers are randomised",
            "Cascading model randomisation (Adebayo et al. 2018), top layer first: mean SSIM of each model's map with "
            "its map before randomisation, for the attacked method and for guided backprop. A map that passes the "
            "check falls towards 0; guided backprop is known to stay high."),
    }
    Config = RobustConfig
    Context = RobustContext

    # -- units -----------------------------------------------------------------------------------------

    def units(self, config):
        out = []
        for d in config.trained():
            out.append(Unit(f"model/{d}", {"kind": "model", "defense": d}))
            for attack in ("targeted", "topk"):
                out += [Unit(f"attack/{d}/{attack}/{b:05d}", {"kind": attack, "defense": d, "start": b})
                        for b in range(0, config.n, config.batch)]
        return out

    def setup(self, config, run):
        n_eval = 2 * config.n if config.dataset == "image_folder" else max(2 * config.n, 1000)
        ctx = RobustContext.load(config, run, n_train=config.train_n, n_eval=n_eval, seed=config.seed)
        if len(ctx.train[0]) == 0:
            raise ConfigError(f"config key 'root': no training images to fine-tune the defenses on in {config.root!r}")
        if len(ctx.x) < 2 * config.n:
            raise ConfigError(f"config key 'n': {config.n} attacked images need {2 * config.n} images in split "
                              f"{config.split!r} (the others' maps are the targets), but it has {len(ctx.x)}")
        return ctx

    def defended_model(self, ctx: RobustContext, config: RobustConfig, defense: str) -> nn.Module:
        """The model fine-tuned with ``defense``: trained once (resumable, kept under
        ``models/``), then loaded into the model's own structure."""
        if defense in ctx.models:
            return ctx.models[defense]
        from safetensors.torch import load_file, save_file

        folder = Path(ctx.out) / "models"
        path = folder / f"robust_{defense}.safetensors"
        spec = config.regularizer(defense)
        options = {k: v for k, v in spec.items() if k != "regularizer"}
        if path.exists():  # the trained weights, in the structure the regularizer trains (softplus: Softplus units)

            model = copy.deepcopy(ctx.model)
            if spec["regularizer"] is not None:
                model = make(spec["regularizer"], **options).prepare(model, ctx.model)
            model.load_state_dict(load_file(str(path), device=str(ctx.device)))
            model.eval()
        else:
            seeded(config.seed)
            x, y = ctx.train
            started = time.perf_counter()
            result = train_robust(ctx.model, (x[: config.train_n], y[: config.train_n]), spec["regularizer"],
                                  epochs=config.epochs, lr=config.train_lr, batch_size=config.train_batch,
                                  seed=config.seed, checkpoint=folder / f"robust_{defense}.ckpt",
                                  progress=ctx.progress, **options)
            model = result.model
            folder.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp:
                save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, tmp,
                          metadata={"trained_seconds": f"{time.perf_counter() - started:.1f}"})
        ctx.models[defense] = model
        return model

    def run_unit(self, unit, ctx, config):
        p = unit.params
        model = self.defended_model(ctx, config, p["defense"])
        seeded(config.seed)
        if p["kind"] == "model":
            return self._measure(model, ctx, config, p["defense"])
        start = p["start"]
        x, x_target = ctx.images(config.n, start, config.batch)
        surrogate = _surrogate(model)
        common = {"defense": p["defense"], "kind": p["kind"]}
        options = method_options(config.method, IG_STEPS)  # of the maps attacked, as every experiment's
        if p["kind"] == "targeted":
            rows, _, _ = targeted_attack(model, x, x_target, config.method, options, first_index=start, extra=common,
                                         **attack_budget(config, ctx), **surrogate)
            return rows

        k = min(config.k, x[0, 0].numel() - 1)
        res = manipulate_input(model, x, TopKSuppression(k), config.method,
                               method_options=options, optimizer="sign", progress=False,
                               **attack_budget(config, ctx), **surrogate)
        cols = {"topk_after": topk_intersection(res.maps_after, res.maps_before, k),
                "spearman_after": spearman(res.maps_after, res.maps_before),
                "ssim_after": ssim(res.maps_after, res.maps_before), "class_kept": res.class_kept.float()}
        return per_image(cols, first_index=start, method=config.method, **common)

    def _measure(self, model: nn.Module, ctx: RobustContext, config: RobustConfig, defense: str):
        """Accuracy, Hessian norm, max-sensitivity (sampled and adversarial) and the sanity check
        on the first ``n`` test images: one row per image, and one per image and randomised layer."""
        x = ctx.x[: config.n]
        options = {m: method_options(m, IG_STEPS) for m in (config.method, "guided_backprop")}
        acc = accuracy(model, ctx.x, ctx.y)
        curvature = hessian_norm(model, x, h=config.hessian_h, samples=4, seed=config.seed)
        attack = {"steps": config.ms_steps, **_surrogate(model)}
        ms = max_sensitivity(model, x, config.method, radius=config.eps, samples=config.ms_samples,
                             method_options=options[config.method], seed=config.seed, adversarial=True,
                             attack_options=attack, clamp=ctx.clamp, return_details=True)
        methods = [config.method] + ([] if config.method == "guided_backprop" else ["guided_backprop"])
        sanity = model_randomization(model, x, methods, mode="cascading", metrics=("ssim",),
                                     method_options={m: options[m] for m in methods}, seed=config.seed,
                                     progress=False)
        cols: Dict[str, Tensor] = {"hessian_norm": curvature, "ms_sampled": ms.sampled, "ms_adversarial": ms.score}
        for m in methods:
            cols[f"sanity_ssim_{'method' if m == config.method else m}"] = sanity.score(m, "ssim")[1:].mean(0)
        rows = per_image(cols, defense=defense, kind="model", method=config.method, accuracy=acc)
        for m in methods:
            scores = sanity.score(m, "ssim")
            for step, (layer, kind) in enumerate(zip(sanity.steps, sanity.kinds)):
                rows += per_image({"ssim": scores[step]}, defense=defense, kind="sanity", sanity_method=m,
                                  step=step, layer=f"{layer} ({kind})" if kind else str(layer))
        return rows

    # -- tables and figures -----------------------------------------------------------------------------

    def summary(self, df, config):
        """One row per defense: the means of every column the report and figure show."""
        import pandas as pd

        order = [d for d in config.trained() if d in set(df.defense)]
        model = df[df.kind == "model"].groupby("defense")
        table = pd.DataFrame(index=pd.Index(order, name="defense"))
        if len(df[df.kind == "model"]):
            acc = model.accuracy.first() * 100
            table["accuracy (%)"] = acc
            if "plain" in acc:
                table["Δ accuracy (%)"] = acc - acc["plain"]
        targeted = df[df.kind == "targeted"]
        if len(targeted):
            table["targeted: PCC rise"] = (targeted.pcc_after - targeted.pcc_before).groupby(targeted.defense).mean()
        topk = df[df.kind == "topk"]
        if len(topk):
            table["top-k: intersection"] = topk.groupby("defense").topk_after.mean()
            table["top-k: Spearman"] = topk.groupby("defense").spearman_after.mean()
        if len(df[df.kind == "model"]):
            for column, title in (("hessian_norm", "Hessian norm"), ("ms_sampled", "max-sensitivity sampled"),
                                  ("ms_adversarial", "max-sensitivity adversarial"),
                                  ("sanity_ssim_method", f"sanity SSIM {config.method}"),
                                  ("sanity_ssim_guided_backprop", "sanity SSIM guided backprop")):
                if column in df:
                    table[title] = model[column].mean()
        return table.reindex(order)

    def findings(self, df, config):
        table = self.summary(df, config)
        if "plain" not in table.index or len(table) < 2:
            return []
        fair = [d for d in table.index if d != "plain" and abs(table.loc[d].get("Δ accuracy (%)", 0.0)) <= 2.0]
        setting = (f"{config.describe()}; {config.epochs} epoch(s) on {config.train_n} images; attacks at eps "
                   f"{config.eps:g}, {config.steps} steps, {config.n} images, {config.method} maps")

        def robust(d: str) -> bool:
            """Either attack weakened beyond noise: the 95 % bootstrap interval of the per-image
            difference to plain (the same images and targets) excludes 0 in the robust direction."""
            rise = paired_interval(df, "targeted", d, lambda part: part.pcc_after - part.pcc_before)
            topk = paired_interval(df, "topk", d, lambda part: part.topk_after)
            return bool(rise[1] < 0 or topk[0] > 0)

        def line(ds: List[str]) -> str:
            parts = [f"{d}: PCC rise {table.loc[d, 'targeted: PCC rise']:.3f}, "
                     f"top-k {table.loc[d, 'top-k: intersection']:.3f}, "
                     f"accuracy {table.loc[d, 'Δ accuracy (%)']:+.1f} pt" for d in ds
                     if {"targeted: PCC rise", "top-k: intersection"} <= set(table.columns)]
            base = table.loc["plain"]
            return (f"plain: PCC rise {base.get('targeted: PCC rise', float('nan')):.3f}, top-k "
                    f"{base.get('top-k: intersection', float('nan')):.3f}; " + "; ".join(parts) + f" ({setting})")

        out = []
        for claim, group in ((DOMBROWSKI_2022, ("weight_decay", "softplus", "hessian_norm")),
                             (CHEN_2019, ("ig_norm", "ig_sum_norm")), (WANG_2020, ("ssr",))):
            ds = [d for d in group if d in table.index]
            if not ds:
                continue
            holds = [robust(d) and d in fair for d in ds]
            failing = [d for d, h in zip(ds, holds) if not h]
            why = "" if not failing else (
                f"not for {', '.join(failing)}: " + "; ".join(
                    "more than 2 accuracy points lost" if d not in fair else
                    "neither attack weakened beyond noise (95 % interval of the per-image difference to plain)"
                    for d in failing) + " at this budget of training")
            out.append(Finding(claim, line(ds), direction(holds), why))
        if {f"sanity SSIM {config.method}", "sanity SSIM guided backprop"} <= set(table.columns):
            a, b = table.loc["plain", f"sanity SSIM {config.method}"], table.loc["plain", "sanity SSIM guided backprop"]
            verdict = "holds" if a < b else "does not hold"
            out.append(Finding(ADEBAYO_2018, f"plain model, mean SSIM along the cascade: {config.method} {a:.3f}, "
                               f"guided backprop {b:.3f} ({config.describe()}, {config.n} images)", verdict,
                               "" if verdict == "holds" else
                               "the attacked method is guided backprop or as insensitive"))
        return out

    def tables(self, df, config):
        table = self.summary(df, config)
        settings = []
        for d in table.index:
            spec = config.regularizer(d)

            name = spec["regularizer"]
            paper = REGULARIZERS.get(name).paper if name else "(baseline)"
            options = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in spec.items()
                                if k != "regularizer")
            settings.append({"defense": d, "paper": paper, "settings": options or "-",
                             "training": f"{config.epochs} epoch(s), {config.train_n} images, Adam lr "
                                         f"{config.train_lr:g}, batch {config.train_batch}"})
        import pandas as pd

        out = self.new_tables()
        out.add("findings", findings_table(self.findings(df, config)))
        out.add("defenses", table.round(3) + 0.0)  # + 0.0: no "-0.0" cells
        out.add("settings", pd.DataFrame(settings).set_index("defense") if settings else None)
        return out

    def figures(self, df, config, out):
        paths = []
        if len(df[df.kind.isin(["targeted", "topk", "model"])]):
            paths.append(each_format(lambda p: _summary_figure(df, config, p),
                                     Path(out) / "robust_training_summary.png"))
        if len(df[df.kind == "sanity"]):
            paths.append(each_format(lambda p: _sanity_figure(df, config, p), Path(out) / "robust_training_sanity.png"))
        return paths


def _surrogate(model: nn.Module) -> Dict[str, Any]:
    """How the attacker, who knows the defense, attacks ``model``: a net with ReLUs through the
    Softplus surrogate with beta growing (Dombrowski; the attacks' default), a net without (the
    softplus defense's Softplus net) as it is."""
    return {} if has_relu(model) else {"beta": None}


def paired_interval(df, kind: str, defense: str, value) -> "tuple[float, float]":
    """95 % bootstrap interval of the mean per-image difference ``value(defense) - value(plain)``
    over the images both were attacked on (``kind`` rows); NaNs where there are none."""
    part = df[df.kind == kind]
    both = [part[part.defense == d].assign(v=lambda t: value(t)).set_index("image").v for d in (defense, "plain")]
    diff = (both[0] - both[1]).dropna()
    return bootstrap_ci(diff.to_numpy()) if len(diff) else (float("nan"), float("nan"))


def _summary_figure(df, config: RobustConfig, path: Path) -> Path:
    """Four panels of horizontal bars per defense, with 95 % bootstrap intervals."""
    order = [d for d in config.trained() if d in set(df.defense)]
    model, targeted, topk = df[df.kind == "model"], df[df.kind == "targeted"], df[df.kind == "topk"]

    def intervals(grouped) -> Dict[str, Any]:
        """Per defense: (mean, low, high) of its images' values, the 95 % bootstrap interval."""
        return {d: summarize(values)[:3] for d, values in grouped}

    accuracy = model.drop_duplicates("defense").set_index("defense").accuracy * 100
    panels = [("accuracy (%)", {d: (a, a, a) for d, a in accuracy.items()}, True),  # one number: no interval
              ("targeted attack: PCC rise\n(lower = more robust)",
               intervals((targeted.pcc_after - targeted.pcc_before).groupby(targeted.defense)), False),
              ("top-k attack: intersection\n(higher = more robust)", intervals(topk.groupby("defense").topk_after),
               False),
              ("max-sensitivity, adversarial\n(lower = more robust)",
               intervals(model.groupby("defense").ms_adversarial), False)]

    @styled
    def draw():
        colors = colors_for(order)
        fig, axes = subplots(1, len(panels), figsize=(3.0 * len(panels), 0.42 * len(order) + 1.6), sharey=True)
        for ax, (label, stats, single) in zip(axes, panels):
            for i, d in enumerate(order):
                if d in stats:
                    centre, low, high = stats[d]
                    ax.barh(i, centre, color=colors[d], **({} if single else {
                        "xerr": [[centre - low], [high - centre]], "capsize": 2}))
            if "plain" in stats:
                base = stats["plain"][0]
                ax.axvline(base, color="black", ls="--", lw=0.8)
                if single:  # the band a defense must stay in: within 2 points of plain training
                    ax.axvspan(base - 2, base, color="grey", alpha=0.15, lw=0, zorder=0)
            ax.set_xlabel(label)
            if single:
                lo = min(min(c for c, _, _ in stats.values()) - 3, 90)
                ax.set_xlim(lo, 100)
        axes[0].set_yticks(range(len(order)), [d.replace("_", " ") for d in order])
        axes[0].invert_yaxis()
        fig.suptitle(f"robust training on {config.dataset}: {config.method} maps, attacks at eps {config.eps:g} "
                     f"({config.n} images; {CI_TEXT})", fontsize=9)
        return save_figure(fig, path)

    return draw()


def _sanity_figure(df, config: RobustConfig, path: Path) -> Path:
    """SSIM with the original map along the cascade, one panel per method, a line per defense."""
    part = df[df.kind == "sanity"]
    order = [d for d in config.trained() if d in set(part.defense)]
    methods = list(dict.fromkeys(part.sanity_method))

    @styled
    def draw():
        colors = colors_for(order)
        fig, axes = subplots(1, len(methods), figsize=(3.6 * len(methods) + 1.6, 3.0), sharey=True)
        axes = list(axes) if len(methods) > 1 else [axes]
        for ax, m in zip(axes, methods):
            sub = part[part.sanity_method == m]
            layers = sub.drop_duplicates("step").sort_values("step").layer.tolist()
            for d in order:
                curve = sub[sub.defense == d].groupby("step").ssim.mean()
                ax.plot(curve.index, curve.values, marker="o", ms=3, color=colors[d], label=d.replace("_", " "),
                        lw=2.0 if d == "plain" else 1.0)
            ax.set_xticks(range(len(layers)), layers, rotation=55, ha="right", fontsize=7)
            ax.set_title(m.replace("_", " "), fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("randomised down to layer (cascading)")
        axes[0].set_ylabel("SSIM with the original map")
        legend_outside(axes[-1], title="defense")
        return save_figure(fig, path)

    return draw()
