"""The papers' experiments as configs: quick benchmark, Dombrowski 2019, Rieger 2020."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import torch

from .base import Experiment, Unit
from .common import DEFENSES, default_setup, defended, seeded, targeted_rows
from .config import Field, method_choices

ATTACK_FIELDS = {
    "n": Field("int", 16, "number of test images attacked"),
    "batch": Field("int", 8, "images per unit of work"),
    "steps": Field("int", 100, "attack steps"),
    "eps": Field("float", 0.2, "L-infinity budget on [0, 1] images"),
    "lr": Field("float", 0.01, "Adam step size"),
    "seed": Field("int", 0, "seed of every unit"),
    "ig_steps": Field("int", 5, "integrated-gradients steps inside the attack"),
}

def _method_options(method: str, config: Dict[str, Any]) -> Dict[str, Any]:
    return {"steps": config["ig_steps"]} if method == "integrated_gradients" else {}


def _batches(config: Dict[str, Any]) -> List[int]:
    return list(range(0, config["n"], config["batch"]))


def _method_units(config: Dict[str, Any], parts: List[tuple]) -> List[Unit]:
    """Units ``kind/method/start`` for each ``(kind, methods)`` part and batch of images."""
    return [Unit(f"{kind}/{m}/{b:05d}", {"kind": kind, "method": m, "start": b})
            for kind, methods in parts for m in methods for b in _batches(config)]


class DefaultModelExperiment(Experiment):
    """An experiment on the default MNIST-5k model and test images."""

    def setup(self, config, device):
        return default_setup(device)


def _images(ctx: Dict[str, Any], config: Dict[str, Any], start: int):
    """Attacked images and, as targets, the images ``n`` positions further on."""
    x = ctx["x"]
    end = min(start + config["batch"], config["n"])
    return x[start:end], x[config["n"] + start : config["n"] + end]


class Quick(DefaultModelExperiment):
    """Targeted attack per method, without and with each defense (attacked adaptively)."""

    name = "quick"
    title = "Quick benchmark: targeted attacks against explanation methods and defenses (MNIST-5k)"
    schema = {
        **ATTACK_FIELDS,
        "methods": Field("list[str]", ["gradient", "grad_x_input", "integrated_gradients", "guided_backprop", "lrp"],
                         "attacked methods", method_choices()),
        "defenses": Field("list[str]", list(DEFENSES), "defenses", DEFENSES),
        "softplus_beta": Field("float", 1.0, "beta of beta-smoothing"),
        "smoothgrad_samples": Field("int", 5, "SmoothGrad samples"),
    }

    def units(self, config):
        return [Unit(f"{m}/{d}/{b:05d}", {"method": m, "defense": d, "start": b})
                for m in config["methods"] for d in config["defenses"] for b in _batches(config)]

    def run_unit(self, unit, ctx, config):
        p = unit.params
        seeded(config["seed"])
        x, x_target = _images(ctx, config, p["start"])
        method, options, attack = defended(p["method"], p["defense"], config)
        rows = targeted_rows(ctx["model"], x, x_target, method, options, first_index=p["start"],
                             steps=config["steps"], eps=config["eps"], lr=config["lr"], **attack)
        for row in rows:
            row.update(method=p["method"], defense=p["defense"])
        return rows

    def tables(self, df, config):
        df = df.assign(delta_pcc=df.pcc_after - df.pcc_before)
        delta = df.pivot_table(index="method", columns="defense", values="delta_pcc", aggfunc="mean")
        kept = df.pivot_table(index="method", columns="defense", values="class_kept", aggfunc="mean")
        order = [d for d in DEFENSES if d in delta.columns]
        return {
            "Rise of the PCC with the target map (lower = defense works)": delta[order].round(3),
            "Share of images whose class was kept": kept[order].round(3),
        }

    def figures(self, df, config, out):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        table = df.assign(delta=df.pcc_after - df.pcc_before).pivot_table(
            index="method", columns="defense", values="delta", aggfunc="mean")
        table = table[[d for d in DEFENSES if d in table.columns]]
        fig, ax = plt.subplots(figsize=(6.5, 3))
        table.plot.bar(ax=ax, width=0.8)
        ax.set_ylabel("rise of PCC with target")
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=20)
        ax.legend(fontsize=7, title="defense", title_fontsize=7)
        fig.tight_layout()
        path = Path(out) / "quick_defenses.png"
        fig.savefig(path, dpi=150)
        plt.close(fig)
        return [path]


class Dombrowski2019(DefaultModelExperiment):
    """Dombrowski et al. 2019: the targeted attack across methods (Fig. 3) and the β curve
    of β-smoothing (Fig. 4)."""

    name = "dombrowski2019"
    title = "Dombrowski et al. 2019: explanations can be manipulated (targeted attack; beta-smoothing)"
    schema = {
        **ATTACK_FIELDS,
        "methods": Field("list[str]", ["gradient", "grad_x_input", "integrated_gradients", "guided_backprop", "lrp"],
                         "attacked methods", method_choices()),
        "betas": Field("list[float]", [10.0, 3.0, 1.0], "beta values of the beta curve"),
        "beta_methods": Field("list[str]", ["gradient", "lrp"], "methods of the beta curve", method_choices()),
    }

    def units(self, config):
        return _method_units(config, [("attack", config["methods"]), ("beta", config["beta_methods"])])

    def run_unit(self, unit, ctx, config):
        from ..attacks import manipulate_input
        from ..explainers import explain, relevance
        from ..metrics import pcc
        from ..objectives import TargetImage

        p = unit.params
        seeded(config["seed"])
        x, x_target = _images(ctx, config, p["start"])
        opts = _method_options(p["method"], config)
        attack = dict(steps=config["steps"], eps=config["eps"], lr=config["lr"])
        if p["kind"] == "attack":
            return targeted_rows(ctx["model"], x, x_target, p["method"], opts, first_index=p["start"], **attack)
        model = ctx["model"]
        res = manipulate_input(model, x, TargetImage(x_target), p["method"], method_options=opts, progress=False, **attack)
        t = model(x).argmax(1)
        rows = []
        for beta in [None] + list(config["betas"]):
            def heat(inputs):
                return relevance(explain(model, inputs, p["method"], t, softplus_beta=beta, **opts))

            adv = heat(res.x_adv)
            with_target, with_original = pcc(adv, heat(x_target)), pcc(adv, heat(x))
            for i in range(x.shape[0]):
                rows.append({"image": p["start"] + i, "method": p["method"], "beta": "relu" if beta is None else beta,
                             "pcc_target": float(with_target[i]), "pcc_original": float(with_original[i])})
        return rows

    def tables(self, df, config):
        attack = df[df.unit.str.startswith("attack/")]
        curve = df[df.unit.str.startswith("beta/")]
        out = {}
        if len(attack):
            cols = ["mse_after", "ssim_after", "pcc_after", "pcc_before", "image_mse", "class_kept"]
            out["Fig. 3: manipulated map vs target map (mean per method)"] = attack.groupby("method")[cols].mean().round(4)
        if len(curve):
            out["Fig. 4: beta-smoothed maps of the manipulated image (median PCC)"] = curve.pivot_table(
                index=["method", "beta"], values=["pcc_target", "pcc_original"], aggfunc="median").round(3)
        return out

    def figures(self, df, config, out):
        from ..attacks import manipulate_input
        from ..explainers import explain, relevance
        from ..objectives import TargetImage
        from . import plots

        paths = []
        attack = df[df.unit.str.startswith("attack/")]
        if len(attack):
            paths.append(plots.box_plot(attack.assign(pcc_gain=attack.pcc_after - attack.pcc_before), "pcc_gain",
                                        "method", Path(out) / "fig3_pcc_gain_boxes.png", "rise of PCC with target"))
            ctx = default_setup("cpu")
            x, x_target = ctx["x"][:1], ctx["x"][config["n"] : config["n"] + 1]
            grid = {}
            for method in sorted(attack.method.unique()):
                opts = _method_options(method, config)
                seeded(config["seed"])
                res = manipulate_input(ctx["model"], x, TargetImage(x_target), method, method_options=opts,
                                       steps=config["steps"], eps=config["eps"], lr=config["lr"], progress=False)
                t = ctx["model"](x).argmax(1)
                grid[method] = {"original": res.maps_before[0], "manipulated": res.maps_after[0],
                                "target": relevance(explain(ctx["model"], x_target, method, t, **opts))[0],
                                "perturbation": (res.x_adv - x)[0]}
            paths.append(plots.manipulation_grid(grid, Path(out) / "fig3_maps.png"))
        curve = df[df.unit.str.startswith("beta/")]
        if len(curve):
            paths.append(plots.beta_curve(curve, Path(out) / "fig4_beta_curve.png"))
        return paths


class Rieger2020(DefaultModelExperiment):
    """Rieger & Hansen 2020: Δ-metrics of targeted attacks on single methods and on AGG-Mean
    (Table 1), beside the published ImageNet numbers."""

    name = "rieger2020"
    title = "Rieger & Hansen 2020: aggregation as a defense (Table 1)"
    PUBLISHED = {  # Table 1 (ImageNet, VGG16): MSE x1e-9, PCC, top-10% union
        "gradient": (-0.92, 0.74, 0.40), "guided_backprop": (-3.25, 0.77, 0.42), "lrp": (-1.45, 0.81, 0.49),
        "integrated_gradients": (-1.76, 0.82, 0.47), "agg_mean": (-0.89, 0.54, 0.24),
    }
    schema = {
        **ATTACK_FIELDS,
        "methods": Field("list[str]", ["gradient", "guided_backprop", "lrp", "integrated_gradients", "agg_mean"],
                         "attacked methods", method_choices()),
        "transfer": Field("list[str]", ["gradient", "guided_backprop", "lrp", "agg_mean"],
                          "methods of the transfer matrix (Fig. 2)", method_choices()),
        "blank": Field("list[str]", ["gradient", "guided_backprop", "lrp", "agg_mean"],
                       "methods of the blank-square attack (Table 4)", method_choices()),
    }

    def units(self, config):
        return _method_units(config, [("table1", config["methods"]), ("transfer", config["transfer"]),
                                      ("blank", config["blank"])])

    def run_unit(self, unit, ctx, config):
        from ..attacks import manipulate_input
        from ..explainers import explain, relevance
        from ..metrics import mass_in, mse, pcc, topk_intersection
        from ..objectives import BlankRegion, TargetImage, square_mask

        p = unit.params
        seeded(config["seed"])
        x, x_target = _images(ctx, config, p["start"])
        model, method = ctx["model"], p["method"]
        attack = dict(steps=config["steps"], eps=config["eps"], lr=config["lr"], progress=False)
        if p["kind"] == "table1":
            return targeted_rows(model, x, x_target, method, _method_options(method, config),
                                 first_index=p["start"], **{k: v for k, v in attack.items() if k != "progress"})
        t = model(x).argmax(1)

        def heat(inputs, m):
            return relevance(explain(model, inputs, m, t, **_method_options(m, config)))

        if p["kind"] == "transfer":
            res = manipulate_input(model, x, TargetImage(x_target), method,
                                   method_options=_method_options(method, config), **attack)
            rows = []
            for other in config["transfer"]:
                # similarity of the evaluated method's map of x_adv to that method's map of the
                # target image (Fig. 2's axes), with targeted_rows' metrics (top 10 % as Rieger)
                target = heat(x_target, other)
                after = heat(res.x_adv, other)
                k = max(1, int(0.1 * target[0].numel()))
                pcc_after = pcc(after, target)
                gain = pcc_after - pcc(heat(x, other), target)
                cols = {"d_pcc": gain, "pcc_after": pcc_after, "mse_after": mse(target, after),
                        "top10_after": topk_intersection(target, after, k)}
                rows += [{"image": p["start"] + i, "attacked": method, "evaluated": other,
                          **{c: float(v[i]) for c, v in cols.items()}} for i in range(x.shape[0])]
            return rows
        h, w = x.shape[-2:]
        mask = square_mask((h, w), h // 2, (h // 4, w // 4))  # a quarter of the image, centred
        res = manipulate_input(model, x, BlankRegion(mask), method, method_options=_method_options(method, config), **attack)
        before, after = res.maps_before, res.maps_after
        kept = mass_in(after, mask) / mass_in(before, mask).clamp(min=1e-12)
        preserved = torch.minimum(before, after).flatten(1).sum(1)
        return [{"image": p["start"] + i, "method": method, "square_mass_before": float(mass_in(before, mask)[i]),
                 "square_mass_after": float(mass_in(after, mask)[i]), "square_relevance_kept": float(kept[i]),
                 "map_preserved": float(preserved[i]), "class_kept": float(res.class_kept[i])} for i in range(x.shape[0])]

    def tables(self, df, config):
        import pandas as pd

        out = {}
        transfer = df[df.unit.str.startswith("transfer/")]
        blank = df[df.unit.str.startswith("blank/")]
        df = df[df.unit.str.startswith("table1/")]
        if len(transfer):
            out["Fig. 2: transfer, rise of PCC with the target (rows attacked, columns evaluated)"] = transfer.pivot_table(
                index="attacked", columns="evaluated", values="d_pcc", aggfunc="mean").round(3)
        if len(blank):
            out["Table 4: blank-square attack (share of the square's relevance kept; map preserved)"] = blank.groupby(
                "method")[["square_mass_before", "square_mass_after", "square_relevance_kept", "map_preserved",
                           "class_kept"]].mean().round(3)
        if not len(df):
            return out
        df = df.assign(**{"d_mse_1e-6": (df.mse_after - df.mse_before) * 1e6, "d_pcc": df.pcc_after - df.pcc_before,
                          "d_top10": df.top10_after - df.top10_before})
        ours = df.groupby("method")[["d_mse_1e-6", "d_pcc", "d_top10", "pcc_after", "top10_after", "class_kept"]].mean()
        published = pd.DataFrame.from_dict(self.PUBLISHED, orient="index",
                                           columns=["paper_mse_1e-9", "paper_pcc", "paper_top10"])
        return {"Table 1: Δ-metrics of the targeted attack (ours, MNIST-5k) and the paper's (ImageNet)":
                ours.join(published, how="left").round(4), **out}

    def figures(self, df, config, out):
        from . import plots

        paths = []
        table1 = df[df.unit.str.startswith("table1/")]
        if len(table1):
            paths.append(plots.box_plot(table1.assign(d_pcc=table1.pcc_after - table1.pcc_before), "d_pcc", "method",
                                        Path(out) / "table1_d_pcc_boxes.png", "Δ-PCC with target"))
        transfer = df[df.unit.str.startswith("transfer/")]
        if len(transfer):
            matrix = transfer.pivot_table(index="attacked", columns="evaluated", values="d_pcc", aggfunc="mean")
            paths.append(plots.transfer_heatmap(matrix, Path(out) / "fig2_transfer.png", "rise of PCC with target"))
            if {"pcc_after", "mse_after", "top10_after"} <= set(transfer.columns):  # absent in older stores
                evaluated = set(transfer.evaluated)
                for attacked in [m for m in config["transfer"] if m in set(transfer.attacked)]:
                    if attacked in evaluated and len(evaluated) > 1:  # Fig. 2 needs another method
                        paths.append(plots.transfer_scatter(transfer, attacked,
                                                            Path(out) / f"fig2_transfer_scatter_{attacked}.png"))
        present = set(table1.method) if len(table1) else set()
        singles = [m for m in config["methods"] if m in present and m != "agg_mean"]
        if "agg_mean" in present and singles:  # Fig. 5: AGG-Mean against one unaggregated method
            single = "guided_backprop" if "guided_backprop" in singles else singles[0]
            paths.append(plots.robustness_scatter(table1, single, "agg_mean",
                                                  Path(out) / f"fig5_agg_mean_vs_{single}.png"))
        return paths
