"""``quick``: the targeted attack against each method, without and with each defense (attacked
adaptively), on the default MNIST-5k model or the user's model and images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

from .tables import Table, findings_table_spec
from .base import Experiment, Unit
from .common import (DEFENSES, AttackConfig, ImageContext, attack_budget, attack_context, attack_setting, defended,
                     defense_choices, load_examples, pick_examples, seeded, targeted_attack)
from .config import key, method_choices
from .published import DEFENSE_SMOOTHING, RIEGER_AGGREGATION, Finding, direction, findings_table
from .plots import CI_TEXT, Panel, aggregate, each_format, grouped_bars, manipulation_grid, n_text, save_figure, styled
from ..figures import display_title, subplots


#: Column titles of the defenses in the example figure
DEFENSE_TITLES = {"none": "no defense", "beta_smoothing": "β-smoothing", "smoothgrad": "SmoothGrad",
                  "agg_mean": "AGG-Mean"}


def batch_starts(config: AttackConfig) -> List[int]:
    return list(range(0, config.n, config.batch))


@dataclass(frozen=True)
class QuickConfig(AttackConfig):
    methods: List[str] = key(["gradient", "grad_x_input", "integrated_gradients", "guided_backprop", "lrp"],
                             "attacked methods", choices=method_choices)
    defenses: List[str] = key(list(DEFENSES), "defenses (none: the method as is)", choices=defense_choices)
    softplus_beta: float = key(1.0, "beta of beta-smoothing", gt=0, le=10_000)
    smoothgrad_samples: int = key(5, "SmoothGrad samples", ge=1, le=10_000)


class Quick(Experiment):
    """Targeted attack per method, without and with each defense (attacked adaptively)."""

    name = "quick"
    title = "Quick benchmark: targeted attacks against explanation methods and defenses"
    TABLES = (
        findings_table_spec("The papers'"),
        Table("rise", "Rise of the PCC with the target map (lower = defense works)",
              "How far the attack moves each map towards its target, per defense",
              "Mean rise of the Pearson correlation (PCC) between the attacked image's map and the target map "
              "(after − before), rows: explanation method, columns: defense. Lower is better: the defense works."),
        Table("class_kept", "Share of images whose class was kept", "Share of attacked images whose class was kept",
              "Fraction (0-1) of attacked images the model still gives their original class. 1 = the attack changed "
              "only the explanation, as it intends."),
    )
    captions = {
        "quick_maps": ("What the attack does to the maps, without and with each defense",
                       "Rows: per method, a typical example of the undefended attack (its rise of the PCC with the "
                       "target closest to the median) and the best one; columns: the input, the manipulated input "
                       "(L-inf budget eps), the input's map, the target map (another image's), then the map a user "
                       "is shown of the manipulated input without and with each defense, each attacked adaptively on "
                       "the same image. Under each: its PCC with the target before -> after the attack. A defense "
                       "works where its map stays unlike the target. At eps 0.2 on MNIST the maps that follow the "
                       "input (gradient x input, integrated gradients, LRP) can keep much of the digit; "
                       "dombrowski2019 repeats the attack at larger budgets."),
        "quick_defenses": ("Attack success per method and defense",
                           "Bars: mean rise of the PCC with the target map per explanation method (groups) and "
                           "defense (colours), with confidence intervals. Lower bars = the defense holds better."),
    }
    Config = QuickConfig
    Context = ImageContext

    def units(self, config):
        return [Unit(f"{m}/{d}/{b:05d}", {"method": m, "defense": d, "start": b})
                for m in config.methods for d in config.defenses for b in batch_starts(config)]

    def setup(self, config, run):
        return attack_context(config, run)

    def run_unit(self, unit, ctx, config):
        p = unit.params
        seeded(config.seed)
        x, x_target = ctx.images(config.n, p["start"], config.batch)
        method, options, attack = defended(p["method"], p["defense"], config)
        rows, _, _ = targeted_attack(ctx.model, x, x_target, method, options, first_index=p["start"],
                                     examples=self.examples_folder(ctx.out, p["method"], p["defense"]),
                                     **attack_budget(config, ctx), **attack)
        for row in rows:
            row.update(method=p["method"], defense=p["defense"])
        return rows

    @staticmethod
    def examples_folder(out, method: str, defense: str) -> Path:
        """Where the attack on ``method`` through ``defense`` keeps its first images' maps."""
        return Path(out) / "maps" / method / defense

    def example_rows(self, df, config, out: Path):
        """Per method, the typical and the best example of the undefended attack (by the rise of
        the PCC with the target, :func:`~manipex.experiments.common.pick_examples`): its input,
        manipulated input, original and target maps, then the map the user is shown after the
        attack without and with each defense (each attacked adaptively, on the same image),
        labelled with its PCC with the target (that defense's map of the target image) before
        -> after."""
        rows = {}
        for method in [m for m in config.methods if m in set(df.method)]:
            kept = {d: load_examples(self.examples_folder(out, method, d)) for d in config.defenses}
            if "none" not in kept:
                continue
            part = df[(df.method == method) & (df.defense == "none")]
            for label, i in pick_examples(part.pcc_after - part.pcc_before, kept["none"]):
                ex = kept["none"][i]
                panels = [Panel("input", ex["input"], "input"),
                          Panel(f"manipulated input\n(eps {config.eps:g})", ex["x_adv"], "input"),
                          Panel("original map", ex["original"]), Panel("target map", ex["target"])]
                panels += [Panel(f"shown after attack:\n{DEFENSE_TITLES.get(d, d)}", kept[d][i]["manipulated"],
                                 note=f"PCC {float(kept[d][i]['pcc_before']):.2f} → "
                                      f"{float(kept[d][i]['pcc_after']):.2f}")
                           for d in config.defenses if i in kept[d]]
                rows[f"{method}\n{label}\nimage {i}"] = panels
        return rows

    def _rise(self, df):
        table = df.assign(delta=df.pcc_after - df.pcc_before).pivot_table(
            index="method", columns="defense", values="delta", aggfunc="mean")
        return table[[d for d in DEFENSES if d in table.columns]]

    def findings(self, df, config):
        rise, out = self._rise(df), []
        for defense, claim in (("beta_smoothing", DEFENSE_SMOOTHING), ("agg_mean", RIEGER_AGGREGATION)):
            if "none" in rise and defense in rise:
                holds = [rise.loc[m, defense] < rise.loc[m, "none"] for m in rise.index]
                ours = "; ".join(f"{m} {rise.loc[m, 'none']:.3f} -> {rise.loc[m, defense]:.3f}" for m in rise.index)
                failing = [m for m, h in zip(rise.index, holds) if not h]
                why = (f"not for {', '.join(failing)}: the adaptive attack on the defended map gains as much or more"
                       if failing else "")
                out.append(Finding(claim, f"rise of the PCC with the target, no defense -> {defense}: {ours} "
                                   f"({attack_setting(config)})", direction(holds), why))
        return out

    def tables(self, df, config):
        kept = df.pivot_table(index="method", columns="defense", values="class_kept", aggfunc="mean")
        rise = self._rise(df)
        out = self.new_tables()
        out.add("findings", findings_table(self.findings(df, config)))
        out.add("rise", rise.round(3))
        out.add("class_kept", kept[list(rise.columns)].round(3))
        return out

    def figures(self, df, config, out):
        @styled
        def draw():
            rise = self._rise(df)
            mean, low, high, n = aggregate(df.assign(delta=df.pcc_after - df.pcc_before), "method", "defense",
                                           "delta")
            mean, low, high = (t.reindex(index=rise.index, columns=rise.columns) for t in (mean, low, high))
            fig, ax = subplots(figsize=(7.4, 3.2))
            grouped_bars(ax, mean, width=0.8, low=low, high=high)
            ax.axhline(0.0, color="black", lw=0.6)
            ax.set_ylabel("rise of PCC with target map\n(after − before; higher = more manipulated)")
            ax.set_xlabel("explanation method (attacked adaptively through the defense)")
            ax.set_xticks(range(len(mean.index)), [display_title(m) for m in mean.index])
            ax.set_title(f"targeted attack per method and defense: mean rise\n({CI_TEXT}; "
                         f"{n_text(n.stack().dropna())})")
            return save_figure(fig, Path(out) / "quick_defenses.png")

        paths = [draw()]
        grid = self.example_rows(df, config, Path(out))
        if grid:
            paths.append(each_format(lambda p: manipulation_grid(grid, p), Path(out) / "quick_maps.png"))
        return paths
