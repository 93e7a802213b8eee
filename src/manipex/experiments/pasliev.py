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
| ``adult`` | Sec. 3.8 | hide race and sex in UCI Adult, keep the other features' importance |

Every model's maps are scored with every evaluated method (does the manipulation transfer?),
on the held-out images and on Gaussian noise, where a model whose maps are manipulated on all
inputs gives near-identical maps (Sec. 4.1), which flags it (:mod:`manipex.defenses.detection`).
The thesis trains for 100 to 1350 epochs at lr 5e-5 on CIFAR-10; the defaults here (3 epochs at
lr 1e-3 on MNIST-5k) reproduce the directions of its findings in minutes on a CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from .base import Experiment, Unit
from .common import save_maps
from .config import ConfigError, Field, method_choices
from .sources import SOURCE_FIELDS, apply_labels, check_sources, load_images, original_model

KINDS = ("com", "th", "ipp", "fc")
METHOD_ORDER = ("gradient", "grad_x_input", "integrated_gradients", "lrp")


def _model_choices():
    return tuple(f"{k}_{m}" for k in KINDS for m in method_choices())


def _rows(frame_rows: Dict[str, Tensor], common: Dict[str, Any]) -> List[Dict[str, Any]]:
    n = len(next(iter(frame_rows.values())))
    return [{**common, "image": i, **{k: float(v[i]) for k, v in frame_rows.items()}} for i in range(n)]


class Pasliev2020(Experiment):
    """Pasliev 2020: Tables 3.1-3.4, Sec. 3.8 (UCI Adult), Tables 4.1 and 4.2 with detection."""

    name = "pasliev2020"
    title = "Pasliev 2020: training networks with manipulated explanations"
    # The thesis' numbers (CIFAR-10, VGG16). Table 3.1: accuracy %, center-of-mass distance (px)
    # of gradient, gradient x input, integrated gradients, LRP.
    T31 = {"acc": (92.4, 22.15, 22.02, 22.02, 22.70), "com_gradient": (91.8, 0.865, 1.054, 1.114, 8.481),
           "com_grad_x_input": (91.3, 1.867, 1.834, 1.962, 9.823),
           "com_integrated_gradients": (91.6, 20.945, 20.858, 1.472, 21.656),
           "com_lrp": (91.45, 21.17, 20.95, 21.16, 0.59)}
    # Table 3.2: per model, (accuracy %, MSE x1e6, PCC, SSIM) with the cross, per method as T31.
    T32 = {
        "acc": {"gradient": (92.46, 5.27, 0.162, 0.099), "grad_x_input": (92.46, 6.015, 0.132, 0.172),
                "integrated_gradients": (92.46, 6.20, 0.133, 0.172), "lrp": (92.46, 4.59, 0.211, 0.068)},
        "th_gradient": {"gradient": (91.56, 1.702, 0.798, 0.389), "grad_x_input": (91.66, 2.73, 0.661, 0.523),
                        "integrated_gradients": (91.66, 2.68, 0.678, 0.482), "lrp": (91.66, 4.23, 0.273, 0.038)},
        "th_lrp": {"gradient": (91.48, 5.109, 0.157, 0.058), "grad_x_input": (91.48, 5.819, 0.125, 0.134),
                   "integrated_gradients": (91.48, 5.826, 0.132, 0.111), "lrp": (91.48, 2.148, 0.733, 0.443)},
    }
    # Table 3.3: accuracy %, classification loss, then the gradient's MSE x1e6, PCC, SSIM.
    T33 = {"acc": (92.46, 0.0, 5.277, 0.162, 0.099), "th_gradient": (91.56, 0.0146, 1.702, 0.798, 0.389),
           "ipp_gradient": (91.66, 0.007, 1.47, 0.830, 0.445)}
    # Table 3.4: accuracy %, gradient MSE x1e6, PCC, SSIM.
    T34 = {"acc": (92.46, 5.277, 0.162, 0.099), "th_gradient": (91.56, 1.702, 0.798, 0.389),
           "fc_gradient": (91.57, 2.59, 0.654, 0.280)}
    # Table 4.1 (noise inputs, gradient): COM distance, target MSE x1e6, PCC, SSIM; 4.2: map PCC.
    T41 = {"acc": (22.48, 4.993, 0.138, 0.033), "com_gradient": (2.40, None, None, None),
           "th_gradient": (None, 1.92, 0.769, 0.336)}
    T42 = {"acc": 0.233, "com_gradient": 0.975, "th_gradient": 0.763}
    ADULT = {"original": 83.4, "fairwashed": 82.7, "without_race_sex": 82.1}  # Sec. 3.8, accuracy %

    schema = {
        **SOURCE_FIELDS,
        "models": Field("list[str]", ["com_gradient", "com_lrp", "th_gradient", "th_lrp", "ipp_gradient",
                                      "fc_gradient"],
                        "manipulated models <objective>_<method>: com (center of mass to the corner), th (cross "
                        "target), ipp (cross, identical probabilities), fc (cross, classifier frozen)", _model_choices()),
        "methods": Field("list[str]", list(METHOD_ORDER), "methods every model is evaluated with", method_choices()),
        "n_train": Field("int", 4000, "training images of the fine-tuning (0: all)"),
        "n_eval": Field("int", 200, "held-out images of the tables"),
        "epochs": Field("int", 3, "fine-tuning epochs (Pasliev: 100 to 1350)"),
        "batch": Field("int", 64, "fine-tuning batch size (Pasliev: 256)"),
        "lr": Field("float", 1e-3, "Adam learning rate (Pasliev: 5e-5, over hundreds of epochs)"),
        "lam_com": Field("float", 0.03, "weight of the center-of-mass objective (squared pixels)"),
        "lam_target": Field("float", 1.0, "weight of the target-map objective (maps rescaled to mean 1)"),
        "ig_steps": Field("int", 8, "integrated-gradients steps, in training (Pasliev: 8) and evaluation"),
        "noise_n": Field("int", 64, "noise inputs N(0, 1) of Tables 4.1 and 4.2"),
        "weight_noise": Field("list[float]", [0.0, 0.25, 0.5, 1.0],
                              "weight noise, relative to each tensor's spread (Sec. 4.2, Fig. 4.4)"),
        "adult": Field("bool", True, "fairwashing UCI Adult (Sec. 3.8)"),
        "adult_epochs": Field("int", 3, "epochs of the Adult classifier and of its fine-tuning"),
        "examples": Field("int", 2, "held-out images shown in the heatmap figure"),
        "save_models": Field("bool", True, "keep every manipulated model as models/<unit>.safetensors "
                             "(VGG16: 60 MB on CIFAR-10, 528 MB on ImageNet)"),
        "seed": Field("int", 0, "seed"),
    }

    def check(self, config):
        check_sources(config)
        for key in ("n_eval", "noise_n"):
            if config[key] < 2:
                raise ConfigError(f"config key {key!r} must be at least 2, got {config[key]}")
        for key in ("epochs", "batch", "ig_steps", "adult_epochs"):
            if config[key] < 1:
                raise ConfigError(f"config key {key!r} must be positive, got {config[key]}")

    def units(self, config):
        names = ["acc"] + list(dict.fromkeys(config["models"]))
        return [Unit(n, {"model": n}) for n in names] + ([Unit("adult", {"model": "adult"})] if config["adult"] else [])

    def setup(self, config, device):
        return {"device": device}  # data and F_acc are loaded by the first unit that needs them

    # -- the original model and the data ---------------------------------------------------------------

    def _original(self, ctx, config) -> nn.Module:
        if "original" not in ctx:
            train, test = load_images(config, n_train=config["n_train"], n_eval=config["n_eval"], seed=config["seed"])
            dev = ctx["device"]
            train, test = (train[0].to(dev), train[1].to(dev)), (test[0].to(dev), test[1].to(dev))
            model = original_model(config, train, dev, cache=Path(ctx["out"]) / "models" / "original.safetensors")
            train, test = apply_labels(config, model, train, test)
            with torch.no_grad():  # evaluation only: F_acc's outputs are constants of every table
                p_acc = torch.cat([model(b).softmax(1) for b in test[0].split(256)])
            h, w = test[0].shape[-2:]
            from ..objectives import cross_mask

            cross = cross_mask((h, w)).to(dev, test[0].dtype)
            ctx.update(original=model, train=train, test=test, p_acc=p_acc, cross=cross / cross.sum())
            from ..defenses import pairwise_pcc, similarity_threshold

            # Table 4.2's detection: F_acc is the trusted model, its threshold is computed once
            ctx["threshold"] = similarity_threshold(pairwise_pcc(self._noise_maps(model, config, test[0])))
        return ctx["original"]

    @staticmethod
    def _options(method: str, config) -> Dict[str, Any]:
        if method == "integrated_gradients":
            return {"steps": config["ig_steps"]}
        if method == "occlusion":
            return {"window": 5, "stride": 1}  # Pasliev Sec. 3.6
        return {}

    def _maps(self, model, x, method, target, config) -> Tensor:
        from ..explainers import explain, relevance

        opts = self._options(method, config)
        parts = [relevance(explain(model, xb, method, tb, **opts)).detach()
                 for xb, tb in zip(x.split(64), target.split(64))]
        return torch.cat(parts)

    @staticmethod
    def _noise_maps(model, config, x) -> Tensor:
        from ..defenses import noise_maps

        return noise_maps(model, x.shape[1:], "gradient", n=config["noise_n"], seed=config["seed"]).detach()

    def _map_metrics(self, r: Tensor, ctx) -> Dict[str, Tensor]:
        from ..metrics import center_of_mass, mse, pcc, ssim

        t = ctx["cross"].expand_as(r)
        return {"com_distance": center_of_mass(r).norm(dim=1), "target_mse": mse(r, t), "target_pcc": pcc(r, t),
                "target_ssim": ssim(r, t)}

    # -- the units -----------------------------------------------------------------------------------------

    def run_unit(self, unit, ctx, config):
        name = unit.params["model"]
        torch.manual_seed(config["seed"])
        if name == "adult":
            return self._adult(config)
        original = self._original(ctx, config)
        rows: List[Dict[str, Any]] = []
        if name == "acc":
            model = original
        else:
            model, history = self._manipulate(name, ctx, config)
            rows += [{"kind": "history", "model": name, **h} for h in history]
        return rows + self._evaluate(name, model, ctx, config)

    def _objective(self, kind: str, ctx):
        from ..objectives import CenterOfMass, TargetMap

        return CenterOfMass((0.0, 0.0)) if kind == "com" else TargetMap(ctx["cross"][None])

    def _manipulate(self, name: str, ctx, config):
        from .. import models
        from ..attacks import manipulate_model

        kind, method = name.split("_", 1)
        original = ctx["original"]
        trainable = None
        if kind == "fc":  # Sec. 3.7: only the convolutions learn, the fully connected classifier is frozen
            trainable = [n for n, m in original.named_modules() if isinstance(m, nn.Conv2d)]
            if not trainable:
                raise ConfigError(f"config key 'models': {name!r} freezes the classifier, but the model has no "
                                  "convolutions to train")
        out = Path(ctx["out"])
        res = manipulate_model(
            original, ctx["train"], self._objective(kind, ctx), method, method_options=self._options(method, config),
            classification="probabilities" if kind == "ipp" else "cross_entropy",
            lam=config["lam_com"] if kind == "com" else config["lam_target"], epochs=config["epochs"], lr=config["lr"],
            batch_size=config["batch"], trainable=trainable, seed=config["seed"],
            checkpoint=out / "checkpoints" / f"{name}.pt", progress=ctx.get("progress", False))
        if config["save_models"]:
            models.save(res.model, out / "models" / f"{name}.safetensors",
                        metadata={"experiment": self.name, "unit": name, "history": res.history})
        return res.model, res.history

    def _evaluate(self, name: str, model: nn.Module, ctx, config) -> List[Dict[str, Any]]:
        from ..defenses import pairwise_pcc, weight_noise_test
        from ..objectives import CenterOfMass

        x, y = ctx["test"]
        with torch.no_grad():  # evaluation only
            p = torch.cat([model(b).softmax(1) for b in x.split(256)])
        target = ctx["p_acc"].argmax(1)  # maps explain F_acc's class, as in training
        common = {"correct": (p.argmax(1) == y).float(), "classification_loss": (p - ctx["p_acc"]).pow(2).mean(1)}
        rows, examples = [], {"input": x}
        for method in config["methods"]:
            r = self._maps(model, x, method, target, config)
            examples[method] = r
            rows += _rows({**common, **self._map_metrics(r, ctx)},
                          {"kind": "maps", "model": name, "inputs": "test", "method": method})
        r = self._noise_maps(model, config, x)
        similarity = pairwise_pcc(r).mean().item()
        detection = {"noise_pcc": similarity, "threshold": ctx["threshold"], "flagged": float(similarity > ctx["threshold"])}
        rows += _rows(self._map_metrics(r, ctx), {"kind": "maps", "model": name, "inputs": "noise",
                                                  "method": "gradient", **detection})
        save_maps(Path(ctx["out"]) / "maps" / f"{name}.safetensors", examples, config["examples"])
        objectives = {}  # Sec. 4.2: the model's own manipulation (F_acc: both) as the weights get noisier
        if name == "acc" or name.startswith("com_"):
            objectives["com"] = CenterOfMass((0.0, 0.0))
        if not name.startswith("com_"):
            objectives["th"] = self._objective("th", ctx)
        for kind, objective in objectives.items():
            table = weight_noise_test(model, (x, y), objective, "gradient", config["weight_noise"], seed=config["seed"])
            rows += [{"kind": "weight_noise", "model": name, "objective": kind, "sigma": float(sigma),
                      "accuracy": float(row["accuracy"]), "metric": float(row[objective.metric_name]),
                      "metric_name": objective.metric_name} for sigma, row in table.iterrows()]
        return rows

    def _adult(self, config) -> List[Dict[str, Any]]:
        from .. import data
        from ..attacks import manipulate_model
        from ..data.adult import adult_feature_names, adult_protected_indices
        from ..explainers import explain, relevance
        from ..models import accuracy, tabular_mlp, train_classifier
        from ..objectives import HideFeatures

        x, y = data.load("adult", split="train")
        xt, yt = data.load("adult", split="test")
        mask = torch.zeros(x.shape[1], dtype=torch.bool)
        mask[sum(adult_protected_indices().values(), [])] = True

        def classifier(inputs):  # Sec. 3.8: two hidden layers of 100 ReLUs, Adam lr 1e-3
            torch.manual_seed(config["seed"])
            return train_classifier(tabular_mlp(inputs.shape[1], hidden=(100, 100)), inputs, y,
                                    epochs=config["adult_epochs"], batch_size=128, seed=config["seed"], progress=False).eval()

        model = classifier(x)
        blind = classifier(x[:, ~mask])  # the same model without the race and sex features
        washed = manipulate_model(model, (x, y), HideFeatures(mask), "gradient", classification="probabilities",
                                  lam=1.0, lr=1e-3, epochs=config["adult_epochs"], batch_size=128, seed=config["seed"],
                                  progress=False).model
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(config["seed"]))
        rows = []
        names = adult_feature_names()
        for label, m in (("original", model), ("fairwashed", washed)):
            r = relevance(explain(m, xt, "gradient")).detach()
            rows.append({"kind": "adult", "model": label, "accuracy": accuracy(m, xt, yt),
                         "gradient_share_race_sex": r[:, mask].sum(1).mean().item(),
                         "accuracy_race_sex_permuted": accuracy(m, torch.where(mask, xt[perm], xt), yt)})
            rows += [{"kind": "adult_feature", "model": label, "feature": f, "importance": v}
                     for f, v in zip(names, r.mean(0).tolist())]
        blind_accuracy = accuracy(blind, xt[:, ~mask], yt)
        rows.append({"kind": "adult", "model": "without_race_sex", "accuracy": blind_accuracy,
                     "gradient_share_race_sex": 0.0, "accuracy_race_sex_permuted": blind_accuracy})
        return rows

    # -- tables and figures --------------------------------------------------------------------------------

    def _model_order(self, config) -> List[str]:
        return ["acc"] + list(dict.fromkeys(config["models"]))

    def tables(self, df, config):
        import pandas as pd

        out: Dict[str, Any] = {}
        maps = df[df.kind == "maps"] if "kind" in df else df.iloc[:0]
        order = [m for m in self._model_order(config) if m in set(maps.model)] if len(maps) else []
        methods = [m for m in config["methods"] if len(maps) and m in set(maps.method)]
        test, noise = maps[maps.inputs == "test"], maps[maps.inputs == "noise"]

        def paper(table, published, columns):
            return table.join(pd.DataFrame.from_dict(published, orient="index", columns=[f"paper_{c}" for c in columns]),
                              how="left")

        def mean_by_model(part, columns):
            return part.groupby("model")[columns].mean().reindex([m for m in order if m in set(part.model)])

        if len(test):
            test = test.assign(accuracy=test.correct * 100, target_mse_1e6=test.target_mse * 1e6)
            com = [m for m in order if m == "acc" or m.startswith("com_")]
            t31 = test[test.model.isin(com)].pivot_table(index="model", columns="method", values="com_distance")
            t31 = t31.reindex(index=com, columns=methods)
            t31.insert(0, "accuracy", mean_by_model(test[test.method == methods[0]], ["accuracy"])["accuracy"])
            out["Table 3.1: center-of-mass distance to the corner (pixels) of every method's maps (lower = manipulated)"] = \
                paper(t31, self.T31, ["accuracy"] + list(METHOD_ORDER)).round(3)
            th = [m for m in order if m == "acc" or m.startswith("th_")]
            part = test[test.model.isin(th)]
            t32 = part.melt(id_vars=["model", "method"], value_vars=["accuracy", "target_mse_1e6", "target_pcc",
                                                                     "target_ssim"], var_name="metric")
            t32 = t32.pivot_table(index=["model", "metric"], columns="method", values="value", sort=False)
            t32 = t32.reindex(columns=methods)
            published = {(mod, metric): [self.T32[mod][m][i] if m in self.T32[mod] else None for m in methods]
                         for mod in self.T32 for i, metric in enumerate(["accuracy", "target_mse_1e6", "target_pcc",
                                                                         "target_ssim"])}
            published = pd.DataFrame.from_dict(published, orient="index", columns=[f"paper_{m}" for m in methods])
            published.index = pd.MultiIndex.from_tuples(published.index, names=["model", "metric"])
            t32 = t32.join(published, how="left")
            t32 = t32.reindex([k for mod in th for k in t32.index if k[0] == mod])
            out["Table 3.2: maps vs the cross target (MSE x1e6 lower, PCC and SSIM higher = manipulated)"] = t32.round(3)
            cols = ["accuracy", "classification_loss", "target_mse_1e6", "target_pcc", "target_ssim"]
            for kind, title, published, columns in (
                ("ipp", "Table 3.3: identical prediction probabilities", self.T33, cols),
                ("fc", "Table 3.4: classifier frozen", self.T34, [c for c in cols if c != "classification_loss"]),
            ):
                for name in [m for m in order if m.startswith(kind + "_")]:
                    method = name.split("_", 1)[1]  # each model with its own method's maps, beside acc and th_<method>
                    if method not in methods:
                        continue
                    chosen = [m for m in order if m in ("acc", f"th_{method}", name)]
                    table = mean_by_model(test[(test.method == method) & test.model.isin(chosen)], columns)
                    out[f"{title} ({method.replace('_', ' ')} maps vs the cross)"] = paper(
                        table, published if method == "gradient" else {}, columns).round(4)
        if len(noise):
            noise = noise.assign(target_mse_1e6=noise.target_mse * 1e6)
            t41 = mean_by_model(noise, ["com_distance", "target_mse_1e6", "target_pcc", "target_ssim"])
            out["Table 4.1: gradient maps of noise inputs N(0, 1)"] = paper(
                t41, self.T41, ["com_distance", "target_mse_1e6", "target_pcc", "target_ssim"]).round(3)
            t42 = noise.groupby("model")[["noise_pcc", "threshold", "flagged"]].first().reindex(t41.index)
            out["Table 4.2: similarity of the maps of noise inputs, and detection (F_acc as the trusted model)"] = \
                paper(t42, {k: (v,) for k, v in self.T42.items()}, ["noise_pcc"]).round(3)
        adult = df[df.kind == "adult"] if "kind" in df else df.iloc[:0]
        if len(adult):
            table = adult.set_index("model")[["accuracy", "gradient_share_race_sex", "accuracy_race_sex_permuted"]]
            table = table.assign(accuracy=table.accuracy * 100, accuracy_race_sex_permuted=table.accuracy_race_sex_permuted * 100)
            out["Sec. 3.8: fairwashing UCI Adult (accuracy %; share of the gradient's importance on race and sex)"] = \
                paper(table, {k: (v,) for k, v in self.ADULT.items()}, ["accuracy"]).round(3)
        return out

    def figures(self, df, config, out):
        from . import plots

        paths = []
        if "kind" not in df:
            return paths
        order = [m for m in self._model_order(config) if (Path(out) / "maps" / f"{m}.safetensors").exists()]
        if order:
            from safetensors.torch import load_file

            maps = {m: load_file(str(Path(out) / "maps" / f"{m}.safetensors")) for m in order}
            from ..figures import map_grid

            methods = [k for k in config["methods"] if all(k in maps[m] for m in order)]
            for i in range(min(config["examples"], len(maps[order[0]]["input"]))):
                image = maps[order[0]]["input"][i]
                image = (image - image.min()) / (image.max() - image.min() + 1e-12)  # inputs may be normalised
                heat = {k: torch.stack([maps[m][k][i] for m in order]) for k in methods}
                paths.append(map_grid(image.expand(len(order), *image.shape), heat,
                                      Path(out) / f"fig3_heatmaps_{i}.png", titles=[m.replace("_", " ") for m in order]))
        history = df[df.kind == "history"]
        if len(history):
            paths.append(plots.training_curves(history, Path(out) / "fig3_4_training.png"))
        noise = df[df.kind == "weight_noise"]
        if len(noise):
            paths.append(plots.weight_noise_curves(noise, Path(out) / "fig4_4_weight_noise.png"))
        features = df[df.kind == "adult_feature"]
        if len(features):
            paths.append(plots.feature_importance(features, Path(out) / "fig3_14_adult_importance.png"))
        return paths
