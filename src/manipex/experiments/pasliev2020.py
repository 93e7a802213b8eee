"""Pasliev 2020 (thesis): training networks with manipulated explanations.

Each unit is one model of the thesis, fine-tuned from the original model F_acc with
:func:`manipex.attacks.manipulate_model` and evaluated on held-out images and on noise:

| unit | model of the thesis | objective; classification term |
|---|---|---|
| ``acc`` | F_acc | none: the original model |
| ``com_<m>`` | F_com^m (Sec. 3.3) | center of mass of m's maps to the corner (0, 0); cross-entropy |
| ``th_<m>`` | F_th^m (Sec. 3.4) | m's maps to the "cross" target heatmap; cross-entropy |
| ``ipp_<m>`` | F_ipp^m (Sec. 3.5) | the cross; MSE to F_acc's softmax (identical probabilities) |
| ``fc_<m>`` | F_fc^m (Sec. 3.7) | the cross, with the fully connected layers frozen |

The tabular study of Sec. 3.8 (UCI Adult) is the experiment ``adult_fairwashing``.

Every model's maps are scored with every evaluated method (does the manipulation transfer?),
on the held-out images and on Gaussian noise, where a model whose maps are manipulated on all
inputs gives near-identical maps (Sec. 4.1), which flags it (:mod:`manipex.defenses.detection`).
The thesis trains for 100 to 1350 epochs at lr 5e-5 on CIFAR-10; the defaults here (3 epochs at
lr 1e-3 on MNIST-5k) reproduce the directions of its findings in minutes on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from .tables import Table, findings_table_spec
from .base import Experiment, Unit
from .common import ImageContext, load_maps, method_options, per_image, save_maps, save_model
from .config import ConfigError, key, method_choices, profile_key
from .published import (Finding, METHOD_ORDER, PASLIEV_COM, PASLIEV_NOISE, PASLIEV_T31, PASLIEV_T32,
                        PASLIEV_T32_SETTING, PASLIEV_T33, PASLIEV_T34, PASLIEV_T41, PASLIEV_T42, PASLIEV_TARGET,
                        direction, findings_table, with_setting)
from .sources import SourceConfig
from ..defenses import noise_maps, pairwise_pcc, similarity_threshold, weight_noise_test
from ..objectives import CenterOfMass, TargetMap, cross_mask
from ..explainers import explain, relevance
from ..metrics import center_of_mass, mse, pcc, ssim
from ..attacks import manipulate_model
from . import plots
from ..figures import map_grid

KINDS = ("com", "th", "ipp", "fc")


def _model_choices():
    return tuple(f"{k}_{m}" for k in KINDS for m in method_choices())


@dataclass(frozen=True)
class Pasliev2020Config(SourceConfig):
    models: List[str] = key(["com_gradient", "com_lrp", "th_gradient", "th_lrp", "ipp_gradient", "fc_gradient"],
                            "manipulated models <objective>_<method>: com (center of mass to the corner), th (cross "
                            "target), ipp (cross, identical probabilities), fc (cross, classifier frozen)",
                            choices=_model_choices, empty=True)
    methods: List[str] = key(list(METHOD_ORDER), "methods every model is evaluated with", choices=method_choices)
    n_train: int = key(4000, "training images of the fine-tuning (0: all)", ge=0, le=10_000_000)
    n_eval: int = key(200, "held-out images of the tables", ge=2, le=1_000_000)
    epochs: int = key(3, "fine-tuning epochs (Pasliev: 100 to 1350)", ge=1, le=100_000)
    batch: int = key(64, "fine-tuning batch size (Pasliev: 256)", ge=1, le=100_000)
    lr: float = key(1e-3, "Adam learning rate (Pasliev: 5e-5, over hundreds of epochs)", gt=0, le=1)
    lam_com: float = key(0.03, "weight of the center-of-mass objective (squared pixels)", gt=0, le=1e6)
    lam_target: float = key(1.0, "weight of the target-map objective (maps rescaled to mean 1)", gt=0, le=1e6)
    ig_steps: int = key(8, "integrated-gradients steps, in training (Pasliev: 8) and evaluation", ge=1, le=10_000)
    noise_n: int = key(64, "noise inputs N(0, 1) of Tables 4.1 and 4.2", ge=2, le=100_000)
    weight_noise: List[float] = key([0.0, 0.25, 0.5, 1.0],
                                    "weight noise, relative to each tensor's spread (Sec. 4.2, Fig. 4.4)", ge=0, le=100)
    examples: int = key(2, "held-out images shown in the heatmap figure", ge=0, le=100)
    save_models: bool = key(True, "keep every manipulated model as models/<unit>.safetensors (VGG16: 60 MB on "
                            "CIFAR-10, 528 MB on ImageNet)")
    seed: int = key(0, "seed", ge=0, le=2**32 - 1)
    profile: str = profile_key("a fast run (about 2.5 min on 2 CPU cores)", "the thesis' optimiser, Adam lr 5e-5, "
                               "batches of 256, 200 epochs (its F_com; F_th and F_ipp had 1050 and 1350) on all "
                               "training images (about 2 h on 2 CPU cores: 6 s per model and epoch); the "
                               "objectives' weights stay ours, the thesis' "
                               "lambda are in other units")

    PROFILES = {"paper": {"lr": 5e-5, "batch": 256, "epochs": 200, "n_train": 0}}


@dataclass(kw_only=True)
class PaslievContext(ImageContext):
    p_acc: Tensor
    cross: Tensor
    threshold: float


class Pasliev2020(Experiment):
    """Pasliev 2020: Tables 3.1-3.4, Tables 4.1 and 4.2 with detection (Sec. 3.8 is the
    experiment ``adult_fairwashing``)."""

    name = "pasliev2020"
    title = "Pasliev 2020: training networks with manipulated explanations"
    TABLES = (
        findings_table_spec("The thesis's"),
        Table("t31", "Table 3.1: center-of-mass distance to the corner (pixels) of every method's maps",
              "Table 3.1: centre-of-mass manipulation",
              "Distance in pixels of each method's map's centre of mass to the corner (0, 0), per model (rows: acc = "
              "original, com_<m> = fine-tuned against method m), and accuracy in %. Lower distance = manipulated."),
        Table("t32", "Table 3.2: maps vs the cross target", "Table 3.2: target-map manipulation (the cross)",
              "Per model and method: accuracy in %, MSE to the cross (lower = manipulated), PCC and SSIM with the "
              "cross (higher = manipulated). th_<m> is fine-tuned towards the cross for method m."),
        Table("t33", "Table 3.3: identical prediction probabilities ({method} maps vs the cross)",
              "Table 3.3: identical prediction probabilities ({method} maps vs the cross)",
              "The ipp model keeps the original softmax (classification_loss: MSE to it, lower = closer) while its "
              "maps move to the cross (lower MSE, higher PCC/SSIM = manipulated)."),
        Table("t34", "Table 3.4: classifier frozen ({method} maps vs the cross)",
              "Table 3.4: classifier layers frozen ({method} maps vs the cross)",
              "Only the feature layers fine-tuned: accuracy in %, MSE (lower) and PCC/SSIM (higher) with the cross = "
              "manipulated."),
        Table("t41", "Table 4.1: gradient maps of noise inputs N(0, 1)", "Table 4.1: maps of noise inputs",
              "Gradient maps of Gaussian-noise inputs per model: a manipulated model shows its manipulation here too "
              "(small centre-of-mass distance, high PCC with the cross)."),
        Table("t42", "Table 4.2: similarity of the maps of noise inputs, and detection (F_acc as the trusted model)",
              "Table 4.2: detecting manipulated models from noise inputs",
              "Mean PCC between the maps of noise inputs (higher = suspiciously alike), the threshold set on the "
              "trusted original model, and whether the model is flagged (1 = flagged)."),
        Table("published", "{table} as published", "{table} as published (Pasliev 2020)",
              "The thesis's numbers in its own setting (MSE in the same unit as ours). Compare the direction of each "
              "change from acc, not the values."),
    )
    captions = {
        "fig3_heatmaps_*": ("Fig. 3: maps of each model, example {}",
                            "One test image's maps (rows: method) for every model (columns: acc = original, then the "
                            "manipulated models). Manipulated models should show their target (corner, cross)."),
        "fig3_4_training": ("Training curves of the manipulation",
                            "Classification and explanation loss per fine-tuning step of each manipulated model. Both "
                            "falling = the manipulation is learned while the accuracy is kept."),
        "fig4_4_weight_noise": ("Fig. 4.4: maps and accuracy under weight noise",
                                "As Gaussian noise is added to the weights (x), the manipulation's own metric and the "
                                "accuracy per model. A manipulation that vanishes before the accuracy falls can be "
                                "detected this way."),
    }
    Config = Pasliev2020Config
    Context = PaslievContext

    def units(self, config):
        return [Unit(n, {"model": n}) for n in self._model_order(config)]

    @staticmethod
    def _model_order(config) -> List[str]:
        return ["acc"] + list(dict.fromkeys(config.models))

    def setup(self, config, run):
        base = ImageContext.load(config, run, n_train=config.n_train or None, n_eval=config.n_eval, seed=config.seed)
        with torch.no_grad():  # evaluation only: F_acc's outputs are constants of every table
            p_acc = torch.cat([base.model(b).softmax(1) for b in base.x.split(256)])
        cross = cross_mask(tuple(base.x.shape[-2:])).to(base.x.device, base.x.dtype)
        # Table 4.2's detection: F_acc is the trusted model, its threshold is computed once
        threshold = similarity_threshold(pairwise_pcc(self._noise_maps(base.model, config, base.x)))
        return PaslievContext(**vars(base), p_acc=p_acc, cross=cross / cross.sum(), threshold=threshold)

    @staticmethod
    def _options(method: str, config) -> Dict[str, Any]:
        if method == "occlusion":
            return {"window": 5, "stride": 1}  # Pasliev Sec. 3.6
        return method_options(method, config.ig_steps)

    def _maps(self, model, x, method, target, config) -> Tensor:
        opts = self._options(method, config)
        parts = [relevance(explain(model, xb, method, tb, **opts)).detach()
                 for xb, tb in zip(x.split(64), target.split(64))]
        return torch.cat(parts)

    @staticmethod
    def _noise_maps(model, config, x) -> Tensor:
        return noise_maps(model, x.shape[1:], "gradient", n=config.noise_n, seed=config.seed).detach()

    @staticmethod
    def _map_metrics(r: Tensor, ctx) -> Dict[str, Tensor]:
        t = ctx.cross.expand_as(r)
        return {"com_distance": center_of_mass(r).norm(dim=1), "target_mse": mse(r, t), "target_pcc": pcc(r, t),
                "target_ssim": ssim(r, t)}

    # -- the units -----------------------------------------------------------------------------------------

    def run_unit(self, unit, ctx, config):
        name = unit.params["model"]
        torch.manual_seed(config.seed)
        rows: List[Dict[str, Any]] = []
        if name == "acc":
            model = ctx.model
        else:
            model, history = self._manipulate(name, ctx, config)
            rows += [{"kind": "history", "model": name, **h} for h in history]
        return rows + self._evaluate(name, model, ctx, config)

    @staticmethod
    def _objective(kind: str, ctx):
        return CenterOfMass((0.0, 0.0)) if kind == "com" else TargetMap(ctx.cross[None])

    def _manipulate(self, name: str, ctx, config):
        kind, method = name.split("_", 1)
        trainable = None
        if kind == "fc":  # Sec. 3.7: only the convolutions learn, the fully connected classifier is frozen
            trainable = [n for n, m in ctx.model.named_modules() if isinstance(m, nn.Conv2d)]
            if not trainable:
                raise ConfigError(f"config key 'models': {name!r} freezes the classifier, but the model has no "
                                  "convolutions to train")
        out = Path(ctx.out)
        res = manipulate_model(
            ctx.model, ctx.train, self._objective(kind, ctx), method, method_options=self._options(method, config),
            classification="probabilities" if kind == "ipp" else "cross_entropy",
            lam=config.lam_com if kind == "com" else config.lam_target, epochs=config.epochs, lr=config.lr,
            batch_size=config.batch, trainable=trainable, seed=config.seed,
            checkpoint=out / "checkpoints" / f"{name}.pt", progress=ctx.progress)
        if config.save_models:
            save_model(res.model, out / "models" / f"{name}.safetensors",
                       {"experiment": self.name, "unit": name, "history": res.history})
        return res.model, res.history

    def _evaluate(self, name: str, model: nn.Module, ctx, config) -> List[Dict[str, Any]]:
        x, y = ctx.x, ctx.y
        with torch.no_grad():  # evaluation only
            p = torch.cat([model(b).softmax(1) for b in x.split(256)])
        target = ctx.p_acc.argmax(1)  # maps explain F_acc's class, as in training
        common = {"correct": (p.argmax(1) == y).float(), "classification_loss": (p - ctx.p_acc).pow(2).mean(1)}
        rows, examples = [], {"input": x}
        for method in config.methods:
            r = self._maps(model, x, method, target, config)
            examples[method] = r
            rows += per_image({**common, **self._map_metrics(r, ctx)}, kind="maps", model=name, inputs="test",
                              method=method)
        r = self._noise_maps(model, config, x)
        similarity = pairwise_pcc(r).mean().item()
        rows += per_image(self._map_metrics(r, ctx), kind="maps", model=name, inputs="noise", method="gradient",
                          noise_pcc=similarity, threshold=ctx.threshold, flagged=float(similarity > ctx.threshold))
        save_maps(Path(ctx.out) / "maps" / f"{name}.safetensors", examples, config.examples)
        objectives = {}  # Sec. 4.2: the model's own manipulation (F_acc: both) as the weights get noisier
        if name == "acc" or name.startswith("com_"):
            objectives["com"] = CenterOfMass((0.0, 0.0))
        if not name.startswith("com_"):
            objectives["th"] = self._objective("th", ctx)
        for kind, objective in objectives.items():
            table = weight_noise_test(model, (x, y), objective, "gradient", config.weight_noise, seed=config.seed)
            rows += [{"kind": "weight_noise", "model": name, "objective": kind, "sigma": float(sigma),
                      "accuracy": float(row["accuracy"]), "metric": float(row[objective.metric_name]),
                      "metric_name": objective.metric_name} for sigma, row in table.iterrows()]
        return rows

    # -- tables and figures --------------------------------------------------------------------------------

    def findings(self, df, config):
        maps = df[df.kind == "maps"] if "kind" in df else df.iloc[:0]
        test = maps[(maps.inputs == "test") & (maps.method == "gradient")]
        noise = maps[maps.inputs == "noise"]
        setting = f"{config.describe()}; {config.epochs} fine-tuning epoch(s), lr {config.lr:g}"
        out = []
        by_model = test.groupby("model")[["com_distance", "target_pcc", "correct"]].mean() if len(test) else None
        if by_model is not None and "acc" in by_model.index:
            acc = by_model.loc["acc"]
            if "com_gradient" in by_model.index:
                com = by_model.loc["com_gradient"]
                moved = com.com_distance < 0.5 * acc.com_distance
                kept = acc.correct - com.correct < 0.05
                out.append(Finding(PASLIEV_COM, f"{acc.com_distance:.2f} -> {com.com_distance:.2f} px, accuracy "
                                   f"{100 * acc.correct:.1f} -> {100 * com.correct:.1f} % ({setting})",
                                   "holds" if moved and kept else "partly" if com.com_distance < acc.com_distance
                                   else "does not hold"))
            if "th_gradient" in by_model.index:
                th = by_model.loc["th_gradient"]
                rise = th.target_pcc - acc.target_pcc
                out.append(Finding(PASLIEV_TARGET, f"PCC with the cross {acc.target_pcc:.3f} -> {th.target_pcc:.3f} "
                                   f"({setting})", "holds" if rise > 0.3 else "partly" if rise > 0.05
                                   else "does not hold", "" if rise > 0.3 else "a short fine-tuning moves the maps "
                                   "only part of the way (the thesis trains 100 to 1350 epochs)"))
        if len(noise):
            flags = noise.groupby("model")[["noise_pcc", "flagged"]].first()
            manipulated = [m for m in flags.index if m != "acc"]
            if manipulated and "acc" in flags.index:
                ours = ", ".join(f"{m} {flags.noise_pcc[m]:.3f}" for m in flags.index)
                flagged = [bool(flags.flagged[m] > 0) for m in manipulated]
                out.append(Finding(PASLIEV_NOISE, f"noise-map PCC {ours}; flagged: "
                                   f"{sum(flagged)} of {len(flagged)} ({setting})", direction(flagged),
                                   "" if all(flagged) else "the unflagged models' noise maps are more alike than "
                                   "the original's but below its threshold (mean + 2 sd of its pairs)"))
        return out


    def tables(self, df, config):
        import pandas as pd

        out = self.new_tables()
        out.add("findings", findings_table(self.findings(df, config)))
        maps = df[df.kind == "maps"] if "kind" in df else df.iloc[:0]
        order = [m for m in self._model_order(config) if m in set(maps.model)] if len(maps) else []
        methods = [m for m in config.methods if len(maps) and m in set(maps.method)]
        test, noise = maps[maps.inputs == "test"], maps[maps.inputs == "noise"]

        def mean_by_model(part, columns):
            return part.groupby("model")[columns].mean().reindex([m for m in order if m in set(part.model)])

        compare = "the direction of each change from acc, not the values"
        mse_raw = {"target_mse_1e6": "target_mse"}  # the paper's MSE x1e6, in ours' unit (raw) below

        def published(table, **kwargs):
            pub = table.table(config, compare, rows=kwargs.pop("rows", None), rename={"accuracy": "accuracy (%)",
                                                                                   **mse_raw})
            if "target_mse" in pub:
                pub["target_mse"] = pub["target_mse"] * 1e-6
            pub.index.name = "model"
            return pub

        if len(test):
            test = test.assign(**{"accuracy (%)": test.correct * 100})
            com = [m for m in order if m == "acc" or m.startswith("com_")]
            t31 = test[test.model.isin(com)].pivot_table(index="model", columns="method", values="com_distance")
            t31 = t31.reindex(index=com, columns=methods)
            t31.insert(0, "accuracy (%)",
                       mean_by_model(test[test.method == methods[0]], ["accuracy (%)"])["accuracy (%)"])
            out.add("t31", t31.round(3))
            out.add("t31_published", published(PASLIEV_T31), spec="published", table="Table 3.1")
            th = [m for m in order if m == "acc" or m.startswith("th_")]
            part = test[test.model.isin(th)]
            metrics = ["accuracy (%)", "target_mse", "target_pcc", "target_ssim"]
            t32 = part.groupby(["model", "method"])[metrics].mean()
            t32 = t32.reindex([(mod, m) for mod in th for m in methods if (mod, m) in t32.index])
            out.add("t32", t32)
            pub32 = pd.DataFrame.from_dict({(mod, m): list(v)
                                            for mod in PASLIEV_T32 for m, v in PASLIEV_T32[mod].items()},
                                           orient="index", columns=metrics)
            pub32.index = pd.MultiIndex.from_tuples(pub32.index, names=["model", "method"])
            pub32["target_mse"] = pub32["target_mse"] * 1e-6  # published x1e6
            out.add("t32_published", with_setting(pub32, PASLIEV_T32_SETTING, config, compare), spec="published",
                    table="Table 3.2")
            cols = ["accuracy (%)", "classification_loss", "target_mse", "target_pcc", "target_ssim"]
            for kind, spec, table, columns in (
                ("ipp", "t33", PASLIEV_T33, cols),
                ("fc", "t34", PASLIEV_T34, [c for c in cols if c != "classification_loss"]),
            ):
                for name in [m for m in order if m.startswith(kind + "_")]:
                    method = name.split("_", 1)[1]  # each model with its own method's maps, beside acc and th_<method>
                    if method not in methods:
                        continue
                    chosen = [m for m in order if m in ("acc", f"th_{method}", name)]
                    out.add(f"{spec}_{method}", mean_by_model(test[(test.method == method) & test.model.isin(chosen)],
                                                              columns), spec=spec, method=method.replace("_", " "))
                    if method == "gradient":
                        out.add(f"{spec}_published", published(table), spec="published",
                                table=f"Table 3.{spec[-1]}")
        if len(noise):
            t41 = mean_by_model(noise, ["com_distance", "target_mse", "target_pcc", "target_ssim"])
            out.add("t41", t41)
            out.add("t41_published", published(PASLIEV_T41), spec="published", table="Table 4.1")
            t42 = noise.groupby("model")[["noise_pcc", "threshold", "flagged"]].first().reindex(t41.index)
            out.add("t42", t42.round(3))
            out.add("t42_published", published(PASLIEV_T42), spec="published", table="Table 4.2")
        return out

    def figures(self, df, config, out):
        paths = []
        if "kind" not in df:
            return paths
        saved = {m: load_maps(Path(out) / "maps" / f"{m}.safetensors") for m in self._model_order(config)}
        maps = {m: v for m, v in saved.items() if v is not None}  # none yet, or damaged (warned)
        order = list(maps)
        if order and config.examples:
            methods = [k for k in config.methods if all(k in maps[m] for m in order)]
            for i in range(min(config.examples, len(maps[order[0]]["input"]))):
                image = maps[order[0]]["input"][i]
                heat = {k: torch.stack([maps[m][k][i] for m in order]) for k in methods}
                paths.append(plots.each_format(
                    lambda p, image=image, heat=heat: map_grid(image.expand(len(order), *image.shape), heat, p,
                                                               titles=[m.replace("_", " ") for m in order]),
                    Path(out) / f"fig3_heatmaps_{i}.png"))
        history = df[df.kind == "history"]
        if len(history):
            paths.append(plots.training_curves(history, Path(out) / "fig3_4_training.png",
                                               n=config.n_train or None))
        noise = df[df.kind == "weight_noise"]
        if len(noise):
            held_out = df[(df.kind == "maps") & (df.get("inputs") == "test")] if "inputs" in df else df.iloc[:0]
            n = int(held_out.groupby("model").image.nunique().max()) if len(held_out) and "image" in held_out else None
            paths.append(plots.weight_noise_curves(noise, Path(out) / "fig4_4_weight_noise.png", n=n))
        return paths
