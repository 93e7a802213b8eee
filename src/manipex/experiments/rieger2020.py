"""``rieger2020``: Rieger & Hansen 2020, aggregation as a defense: Δ-metrics of targeted attacks
on single methods and on AGG-Mean (Table 1) beside the published numbers, transfer between
methods (Fig. 2) and the blank-square attack (Table 4)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch

from .tables import Table, findings_table_spec
from .base import Experiment
from .common import (AttackConfig, ImageContext, attack_budget, attack_context, attack_setting, budget_units, by_budget,
                     method_options, method_units, per_image, seeded, targeted_attack)
from .config import key, method_choices, profile_key
from .published import RIEGER_AGGREGATION, RIEGER_TABLE1, Finding, findings_table
from ..attacks import manipulate_input
from ..explainers import explain, relevance
from ..metrics import mass_in, mse, pcc, topk_intersection
from ..objectives import BlankRegion, TargetImage, square_mask
from . import plots


@dataclass(frozen=True)
class Rieger2020Config(AttackConfig):
    methods: List[str] = key(["gradient", "guided_backprop", "lrp", "integrated_gradients", "agg_mean"],
                             "attacked methods (Table 1)", choices=method_choices)
    transfer: List[str] = key(["gradient", "guided_backprop", "lrp", "agg_mean"],
                              "methods of the transfer matrix (Fig. 2)", choices=method_choices, empty=True)
    blank: List[str] = key(["gradient", "guided_backprop", "lrp", "agg_mean"],
                           "methods of the blank-square attack (Table 4)", choices=method_choices, empty=True)
    budgets: List[float] = key([0.5], "larger L-inf budgets at which Table 1 is repeated, to show what the budget "
                               "limits (empty: none)", gt=0, le=1, empty=True)
    profile: str = profile_key("a fast run (about 3 min on 2 CPU cores)", "Rieger's protocol (Dombrowski's), 100 "
                               "images, 1500 attack steps, no budget sweep (about 4 h on 2 CPU cores: 0.7 s per step "
                               "for Table 1, Fig. 2 and Table 4 on 8 images)")

    PROFILES = {"paper": {"n": 100, "steps": 1500, "budgets": []}}


class Rieger2020(Experiment):
    """Rieger & Hansen 2020: Δ-metrics of targeted attacks on single methods and on AGG-Mean
    (Table 1), beside the published ImageNet numbers."""

    name = "rieger2020"
    title = "Rieger & Hansen 2020: aggregation as a defense (Table 1)"
    TABLES = (
        findings_table_spec("The paper's"),
        Table("table1", "Table 1: Δ-metrics of the targeted attack",
              "Table 1: how much the targeted attack moves each method's map (ours)",
              "Per method: change (after − before) of the MSE (lower = closer to target), PCC and top-10 overlap "
              "(higher = closer) between the map and the target map; PCC and top-10 after; share of images whose "
              "class was kept. A robust method has Δ-PCC and Δ-top-10 near 0."),
        Table("table1_published", "Table 1 as published", "Table 1 as published (Rieger & Hansen 2020)",
              "The paper's Δ-metrics in its own setting, Δ-MSE in the same unit as ours. Compare which methods move "
              "most, not the values."),
        Table("table1_budgets", "Table 1 by budget: Δ-PCC of the targeted attack",
              "Table 1 by budget: Δ-PCC at each eps",
              "Mean rise of the PCC with the target per method (rows) and budget eps (columns). Lower = more robust."),
        Table("fig2_transfer", "Fig. 2: transfer, rise of PCC with the target (rows attacked, columns evaluated)",
              "Fig. 2: does an attack on one method transfer to another?",
              "Rise of the PCC with the target for the method attacked (rows) as seen by each method evaluated "
              "(columns). A large diagonal and small off-diagonal = the attack transfers poorly."),
        Table("table4_blank", "Table 4: blank-square attack (share of the square's relevance kept; map preserved)",
              "Table 4: blank-square attack",
              "Relevance inside the blanked square before and after, the share kept (higher = the square still "
              "shows), whether the rest of the map was preserved, and the share of images whose class was kept."),
    )
    captions = {
        "table1_d_pcc_boxes": ("Table 1: Δ-PCC per method, over images",
                               "Box plots of the rise of the PCC with the target map per attacked method. Lower = "
                               "more robust; AGG-Mean should sit lowest if aggregation defends."),
        "fig2_transfer": ("Fig. 2: transfer of the attack between methods",
                          "Heat map of the mean rise of the PCC with the target: rows attacked, columns evaluated. "
                          "Darker = more manipulated."),
        "fig2_transfer_scatter_*": ("Fig. 2: transfer of the attack on {}",
                                    "Per image: the PCC with the target after attacking {} (x) against the same "
                                    "for the other methods (y). Points under the diagonal = the attack transfers "
                                    "poorly."),
        "fig5_agg_mean_vs_*": ("Fig. 5: AGG-Mean against {}",
                               "Per image: the rise of the PCC with the target for {} (x) and for AGG-Mean (y). "
                               "Points under the diagonal = AGG-Mean is more robust."),
    }
    Config = Rieger2020Config
    Context = ImageContext

    def units(self, config):
        return (method_units(config, [("table1", config.methods), ("transfer", config.transfer),
                                      ("blank", config.blank)]) + budget_units(config, config.methods))

    def setup(self, config, run):
        return attack_context(config, run)

    def run_unit(self, unit, ctx, config):
        p = unit.params
        seeded(config.seed)
        x, x_target = ctx.images(config.n, p["start"], config.batch)
        model, method = ctx.model, p["method"]
        attack = attack_budget(config, ctx, p.get("eps"))
        options = method_options(method, config.ig_steps)
        if p["kind"] in ("table1", "budget"):
            extra = {"eps": p["eps"]} if p["kind"] == "budget" else None
            return targeted_attack(model, x, x_target, method, options, first_index=p["start"], extra=extra,
                                   **attack)[0]
        t = model(x).argmax(1)

        def heat(inputs, m):
            return relevance(explain(model, inputs, m, t, **method_options(m, config.ig_steps)))

        if p["kind"] == "transfer":
            res = manipulate_input(model, x, TargetImage(x_target), method, method_options=options, progress=False,
                                   **attack)
            rows = []
            for other in config.transfer:
                # similarity of the evaluated method's map of x_adv to that method's map of the
                # target image (Fig. 2's axes), with the metrics of Table 1 (top 10 % as Rieger)
                target, after = heat(x_target, other), heat(res.x_adv, other)
                k = max(1, int(0.1 * target[0].numel()))
                pcc_after = pcc(after, target)
                rows += per_image({"d_pcc": pcc_after - pcc(heat(x, other), target), "pcc_after": pcc_after,
                                   "mse_after": mse(target, after), "top10_after": topk_intersection(target, after, k)},
                                  first_index=p["start"], attacked=method, evaluated=other)
            return rows
        h, w = x.shape[-2:]
        mask = square_mask((h, w), h // 2, (h // 4, w // 4)).to(x.device)  # a quarter of the image, centred
        res = manipulate_input(model, x, BlankRegion(mask), method, method_options=options, progress=False, **attack)
        before, after = res.maps_before, res.maps_after
        return per_image({"square_mass_before": mass_in(before, mask), "square_mass_after": mass_in(after, mask),
                          "square_relevance_kept": mass_in(after, mask) / mass_in(before, mask).clamp(min=1e-12),
                          "map_preserved": torch.minimum(before, after).flatten(1).sum(1),
                          "class_kept": res.class_kept.float()}, first_index=p["start"], method=method)

    def findings(self, df, config):
        table1 = df[df.unit.str.startswith("table1/")]
        if not len(table1):
            return []
        if "agg_mean" not in set(table1.method):
            return [Finding(RIEGER_AGGREGATION, "-", "not measured", "agg_mean is not among the attacked methods")]
        d_pcc = (table1.pcc_after - table1.pcc_before).groupby(table1.method).mean()
        singles = d_pcc.drop("agg_mean")
        if not len(singles):
            return []
        below = [bool(d_pcc["agg_mean"] < v) for v in singles]
        verdict = "holds" if all(below) else "partly" if any(below) else "does not hold"
        ours = ", ".join(f"{m} {v:.3f}" for m, v in d_pcc.sort_values().items())
        why = ""
        if verdict != "holds":
            sturdier = [m for m, v in singles.items() if v <= d_pcc["agg_mean"]]
            verb = "moves" if len(sturdier) == 1 else "move"
            why = (f"AGG-Mean lies between its members: {', '.join(sturdier)} already {verb} as little on their own, "
                   "so averaging them with more fragile maps cannot beat them; on Rieger's ImageNet VGG16 every "
                   "single method was fragile (Δ-PCC 0.74-0.82)") + self._budget_why(df, config)
        return [Finding(RIEGER_AGGREGATION, f"Δ-PCC {ours} ({attack_setting(config)})", verdict, why)]

    @staticmethod
    def d_pcc_by_budget(df, config):
        """Mean Δ-PCC per method (rows) and budget (columns); None without budget units."""
        return by_budget(df.assign(d_pcc=df.get("pcc_after", 0) - df.get("pcc_before", 0)), config, "table1/",
                         "d_pcc")

    def _budget_why(self, df, config) -> str:
        table = self.d_pcc_by_budget(df, config)
        if table is None or "agg_mean" not in table.index:
            return ""
        parts = []
        for eps in table.columns[1:]:
            col = table[eps].dropna()
            agg = col.pop("agg_mean")
            above = ", ".join(f"{m} {v:.3f}" for m, v in col.items() if v > agg + 0.005)
            rest = ", ".join(f"{m} {v:.3f}" for m, v in col.items() if v <= agg + 0.005)
            parts.append(f"at eps {eps:g} AGG-Mean's Δ-PCC is {agg:.3f}" + (f", below {above}" if above else "")
                         + (f"; level with or above {rest}" if rest else "; below every single method"))
        return ("; at larger budgets, where the input no longer pins the input-shaped maps (LRP, guided backprop; "
                "see dombrowski2019's budget table), the attack moves those more: " + "; ".join(parts)) if parts else ""

    def tables(self, df, config):
        out = self.new_tables()
        out.add("findings", findings_table(self.findings(df, config)))
        transfer = df[df.unit.str.startswith("transfer/")]
        blank = df[df.unit.str.startswith("blank/")]
        table1 = df[df.unit.str.startswith("table1/")]
        if len(table1):
            table1 = table1.assign(**{"Δ-MSE": table1.mse_after - table1.mse_before,
                                      "Δ-PCC": table1.pcc_after - table1.pcc_before,
                                      "Δ-top-10": table1.top10_after - table1.top10_before,
                                      "PCC after": table1.pcc_after, "top-10 after": table1.top10_after,
                                      "class kept": table1.class_kept})
            out.add("table1", table1.groupby("method")[["Δ-MSE", "Δ-PCC", "Δ-top-10", "PCC after", "top-10 after",
                                                       "class kept"]].mean())
            published = RIEGER_TABLE1.table(config, "the order of the methods (which moves most), not the values",
                                            rename={"mse_1e-9": "Δ-MSE", "pcc": "Δ-PCC", "top10": "Δ-top-10"})
            published["Δ-MSE"] = published["Δ-MSE"] * 1e-9  # the paper's unit (x1e-9) undone: the same unit as ours
            out.add("table1_published", published)
        budgets = self.d_pcc_by_budget(df, config)
        if budgets is not None:
            budgets.columns = [f"eps {e:g}" for e in budgets.columns]
            out.add("table1_budgets", budgets.round(3))
        if len(transfer):
            out.add("fig2_transfer", transfer.pivot_table(index="attacked", columns="evaluated", values="d_pcc",
                                                          aggfunc="mean").round(3))
        if len(blank):
            out.add("table4_blank", blank.groupby("method")[["square_mass_before", "square_mass_after",
                                                             "square_relevance_kept", "map_preserved",
                                                             "class_kept"]].mean().round(3))
        return out

    def figures(self, df, config, out):
        paths = []
        table1 = df[df.unit.str.startswith("table1/")]
        if len(table1):
            paths.append(plots.box_plot(table1.assign(d_pcc=table1.pcc_after - table1.pcc_before), "d_pcc", "method",
                                        Path(out) / "table1_d_pcc_boxes.png",
                                        "Δ-PCC with target map\n(after − before; higher = more manipulated)",
                                        xlabel="explanation method (attacked)"))
        transfer = df[df.unit.str.startswith("transfer/")]
        if len(transfer):
            matrix = transfer.pivot_table(index="attacked", columns="evaluated", values="d_pcc", aggfunc="mean")
            counts = transfer.groupby(["attacked", "evaluated"]).size()
            paths.append(plots.transfer_heatmap(matrix, Path(out) / "fig2_transfer.png",
                                                "transfer of the attack: rise of PCC with target",
                                                label="mean rise of PCC with target map\n(higher = more manipulated)",
                                                n=list(counts)))
            evaluated = set(transfer.evaluated)
            for attacked in [m for m in config.transfer if m in set(transfer.attacked)]:
                if attacked in evaluated and len(evaluated) > 1:  # Fig. 2 needs another method
                    paths.append(plots.transfer_scatter(transfer, attacked,
                                                        Path(out) / f"fig2_transfer_scatter_{attacked}.png"))
        present = set(table1.method) if len(table1) else set()
        singles = [m for m in config.methods if m in present and m != "agg_mean"]
        if "agg_mean" in present and singles:  # Fig. 5: AGG-Mean against one unaggregated method
            single = "guided_backprop" if "guided_backprop" in singles else singles[0]
            paths.append(plots.robustness_scatter(table1, single, "agg_mean",
                                                  Path(out) / f"fig5_agg_mean_vs_{single}.png"))
        return paths
