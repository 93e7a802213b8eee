"""Experiments that train models: Tang et al. (ATEX) and Pasliev 2020 (model manipulation)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch

from .base import Experiment, Unit
from .common import save_maps
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
        "examples": Field("int", 3, "images shown in the map figure"),
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
        if p["start"] == 0:  # examples for the figure: maps before and after the attack
            save_maps(Path(ctx["out"]) / "maps" / f"{unit.id.replace('/', '_')}.safetensors",
                       {"input": x, "before": res.maps_before, "after": res.maps_after}, config["examples"])
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

    def figures(self, df, config, out):
        from . import plots

        paths = [plots.metric_curves(df, "eps", "model", ["spearman", "topk", "ssim"], "attack",
                                     Path(out) / "tables_metrics_vs_eps.png")] if len(df) else []
        eps = max(config["eps"])
        found = {m: Path(out) / "maps" / f"{m}_untargeted_{eps:g}_00000.safetensors" for m in ("softplus", "atex")}
        if all(p.exists() for p in found.values()):
            from safetensors.torch import load_file

            maps = {m: load_file(str(p)) for m, p in found.items()}
            columns = {"softplus": maps["softplus"]["before"], "ATEX": maps["atex"]["before"],
                       f"softplus, attacked (ε={eps:g})": maps["softplus"]["after"],
                       f"ATEX, attacked (ε={eps:g})": maps["atex"]["after"]}
            from ..figures import map_grid

            paths.append(map_grid(maps["atex"]["input"], columns, Path(out) / "fig3_maps.png"))
        return paths
