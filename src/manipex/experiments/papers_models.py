"""Experiments that train models: Tang et al. (ATEX) and Pasliev 2020 (model manipulation)."""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from .base import Experiment, Unit
from .config import Field, method_choices


def _mnist(device: str):
    from .. import data

    x, y = data.load("mnist5k", split="train")
    xt, yt = data.load("mnist5k", split="test")
    return x.to(device), y.to(device), xt.to(device), yt.to(device)


class TangATEX(Experiment):
    """Tang et al.: untargeted (top-k) and targeted (region) attacks against an ATEX-fine-tuned
    model and the softplus baseline of Dombrowski et al., for several budgets (Tables 1 to 4)."""

    name = "tang_atex"
    title = "Tang et al.: ATEX against explanation manipulation (Tables 1-4, MNIST-5k)"
    PUBLISHED = {  # Table 1 (FashionMNIST, untargeted): accuracy, Spearman ATEX / [8], top-k ATEX / [8]
        0.02: (0.884, 0.766, 0.708, 0.747, 0.674), 0.04: (0.878, 0.715, 0.622, 0.717, 0.574),
        0.08: (0.870, 0.686, 0.536, 0.702, 0.484),
    }
    schema = {
        "n": Field("int", 32, "test images attacked"),
        "batch": Field("int", 32, "images per unit"),
        "eps": Field("list[float]", [0.02, 0.04, 0.08], "L-infinity budgets"),
        "steps": Field("int", 100, "signed attack steps (Tang: 200)"),
        "lr": Field("float", 0.01, "signed step size"),
        "k": Field("int", 50, "top-k of the untargeted attack and metric"),
        "softplus_beta": Field("float", 10.0, "beta of the softplus baseline"),
        "train_epochs": Field("int", 3, "epochs of the base model"),
        "atex_epochs": Field("int", 1, "ATEX epochs (Tang: 2)"),
        "atex_n": Field("int", 2000, "ATEX training images"),
        "seed": Field("int", 0, "seed"),
    }

    def units(self, config):
        return [Unit(f"{model}/{attack}/{eps:g}/{b:05d}", {"model": model, "attack": attack, "eps": eps, "start": b})
                for model in ("atex", "softplus") for attack in ("untargeted", "targeted")
                for eps in config["eps"] for b in range(0, config["n"], config["batch"])]

    def setup(self, config, device):
        from ..defenses import atex_finetune
        from ..models import accuracy, atex_cnn, train_classifier
        from ..surgery import softplus_copy

        x, y, xt, yt = _mnist(device)
        torch.manual_seed(config["seed"])
        base = train_classifier(atex_cnn().to(device), x, y, epochs=config["train_epochs"], seed=config["seed"],
                                progress=False).eval()
        atex = atex_finetune(base, x[: config["atex_n"]], epochs=config["atex_epochs"], seed=config["seed"], progress=False)
        models = {"atex": atex, "softplus": softplus_copy(base, config["softplus_beta"])}
        return {"models": models, "x": xt, "accuracy": {k: accuracy(m, xt, yt) for k, m in models.items()}}

    def run_unit(self, unit, ctx, config):
        from ..attacks import manipulate_input
        from ..metrics import spearman, ssim, topk_intersection
        from ..objectives import RegionHighlight, TopKSuppression, square_mask

        p = unit.params
        torch.manual_seed(config["seed"])
        model = ctx["models"][p["model"]]
        x = ctx["x"][p["start"] : min(p["start"] + config["batch"], config["n"])]
        objective = TopKSuppression(config["k"]) if p["attack"] == "untargeted" else RegionHighlight(square_mask((28, 28), 10))
        res = manipulate_input(model, x, objective, "gradient", optimizer="sign", lr=config["lr"], steps=config["steps"],
                               eps=p["eps"], beta=None, progress=False)
        cols = {"spearman": spearman(res.maps_after, res.maps_before),
                "topk": topk_intersection(res.maps_after, res.maps_before, config["k"]),
                "ssim": ssim(res.maps_after, res.maps_before), "class_kept": res.class_kept.float()}
        return [{"image": p["start"] + i, "model": p["model"], "attack": p["attack"], "eps": p["eps"],
                 "accuracy": ctx["accuracy"][p["model"]], **{k: float(v[i]) for k, v in cols.items()}}
                for i in range(x.shape[0])]

    def tables(self, df, config):
        import pandas as pd

        out = {}
        for attack in ("untargeted", "targeted"):
            part = df[df.attack == attack]
            if not len(part):
                continue
            table = part.pivot_table(index="eps", columns="model", values=["spearman", "topk", "ssim", "accuracy"], aggfunc="mean")
            table.columns = [f"{metric}_{model}" for metric, model in table.columns]
            if attack == "untargeted":
                published = pd.DataFrame.from_dict(self.PUBLISHED, orient="index", columns=[
                    "paper_accuracy_atex", "paper_spearman_atex", "paper_spearman_softplus", "paper_topk_atex",
                    "paper_topk_softplus"])
                table = table.join(published, how="left")
            out[f"{attack} attack: similarity of the attacked map to the original (higher = more robust)"] = table.round(3)
        return out


class Pasliev2020(Experiment):
    """Pasliev 2020: model manipulation on MNIST-5k (center of mass, Tables 3.1/3.2 transfer
    across methods; identical probabilities, 3.3), fairwashing on UCI Adult (3.8) and detection
    by noise inputs (4.1)."""

    name = "pasliev2020"
    title = "Pasliev 2020: training networks with manipulated explanations (MNIST-5k, UCI Adult)"
    schema = {
        "epochs": Field("int", 3, "fine-tuning epochs"),
        "lam": Field("float", 0.03, "weight of the explanation objective (MNIST)"),
        "lr": Field("float", 1e-3, "Adam learning rate"),
        "n_eval": Field("int", 200, "held-out images for the transfer table"),
        "methods": Field("list[str]", ["gradient", "grad_x_input", "integrated_gradients", "lrp", "occlusion"],
                         "methods of the transfer table", method_choices()),
        "seed": Field("int", 0, "seed"),
    }
    PARTS = ("com_cross_entropy", "com_probabilities", "adult", "detection")

    def units(self, config):
        return [Unit(part, {"part": part}) for part in self.PARTS]

    def setup(self, config, device):
        from .. import models

        x, y, xt, yt = _mnist(device)
        return {"model": models.load_default("mnist", progress=False).to(device), "train": (x, y),
                "test": (xt[: config["n_eval"]], yt[: config["n_eval"]])}

    def _manipulated(self, ctx, config, classification):
        from ..attacks import manipulate_model
        from ..objectives import CenterOfMass

        return manipulate_model(ctx["model"], ctx["train"], CenterOfMass((0.0, 0.0)), "gradient",
                                classification=classification, lam=config["lam"], lr=config["lr"],
                                epochs=config["epochs"], seed=config["seed"], progress=False).model

    def run_unit(self, unit, ctx, config):
        part = unit.params["part"]
        torch.manual_seed(config["seed"])
        if part.startswith("com_"):
            return self._center_of_mass(ctx, config, part[4:])
        if part == "adult":
            return self._adult(config)
        return self._detection(ctx, config)

    def _center_of_mass(self, ctx, config, classification) -> List[Dict[str, Any]]:
        from ..attacks import evaluate_manipulation
        from ..objectives import CenterOfMass

        manipulated = self._manipulated(ctx, config, classification)
        options = {"integrated_gradients": {"steps": 16}, "occlusion": {"window": 4, "stride": 4}}
        ev = evaluate_manipulation(ctx["model"], manipulated, ctx["test"], CenterOfMass((0.0, 0.0)),
                                   methods=config["methods"], method_options=options)
        return [{"part": f"com_{classification}", "method": m, "com_distance_original": row["original"],
                 "com_distance_manipulated": row["manipulated"], **ev.summary} for m, row in ev.table.iterrows()]

    def _adult(self, config) -> List[Dict[str, Any]]:
        from .. import data
        from ..attacks import manipulate_model
        from ..data.adult import adult_protected_indices
        from ..explainers import explain, relevance
        from ..models import accuracy, tabular_mlp, train_classifier
        from ..objectives import BlankRegion

        x, y = data.load("adult", split="train")
        xt, yt = data.load("adult", split="test")
        model = train_classifier(tabular_mlp(12), x, y, epochs=3, batch_size=128, seed=config["seed"], progress=False).eval()
        mask = torch.zeros(12, dtype=torch.bool)
        mask[sum(adult_protected_indices().values(), [])] = True
        washed = manipulate_model(model, (x, y), BlankRegion(mask), "gradient", classification="probabilities", lam=1.0,
                                  lr=config["lr"], epochs=config["epochs"], batch_size=128, seed=config["seed"],
                                  progress=False).model
        rows = []
        for name, m in (("original", model), ("fairwashed", washed)):
            share = relevance(explain(m, xt, "gradient"))[:, mask].sum(1).mean().item()
            perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(config["seed"]))
            xp = xt.clone()
            xp[:, mask] = xt[perm][:, mask]
            rows.append({"part": "adult", "model": name, "accuracy": accuracy(m, xt, yt),
                         "gradient_share_race_sex": share, "accuracy_race_sex_permuted": accuracy(m, xp, yt)})
        return rows

    def _detection(self, ctx, config) -> List[Dict[str, Any]]:
        from ..defenses import detect_manipulation
        from ..models import mnist_cnn, train_classifier

        x, y = ctx["train"]
        reference = train_classifier(mnist_cnn(), x, y, epochs=3, seed=config["seed"] + 1, progress=False).eval()
        rows = []
        for name, m in (("clean", ctx["model"]), ("manipulated", self._manipulated(ctx, config, "cross_entropy"))):
            report = detect_manipulation(m, (1, 28, 28), [reference])
            rows.append({"part": "detection", "model": name, "noise_map_similarity": report.score,
                         "threshold": report.threshold, "flagged": float(report.manipulated)})
        return rows

    def tables(self, df, config):
        out = {}
        com = df[df.part.str.startswith("com_")]
        if len(com):
            out["Tables 3.1/3.2: center-of-mass distance to the corner (pixels), original vs manipulated"] = com.pivot_table(
                index="method", columns="part", values=["com_distance_original", "com_distance_manipulated"]).round(2)
            out["Table 3.3: accuracy and output change by classification term"] = com.groupby("part")[
                ["accuracy_original", "accuracy_manipulated", "output_change", "class_agreement"]].first().round(4)
        adult = df[df.part == "adult"]
        if len(adult):
            out["Sec. 3.8: fairwashing UCI Adult (race and sex)"] = adult.set_index("model")[
                ["accuracy", "gradient_share_race_sex", "accuracy_race_sex_permuted"]].round(4)
        det = df[df.part == "detection"]
        if len(det):
            out["Table 4.1: detection by noise inputs"] = det.set_index("model")[
                ["noise_map_similarity", "threshold", "flagged"]].round(3)
        return out
