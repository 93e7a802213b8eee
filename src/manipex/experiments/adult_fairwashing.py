"""``adult_fairwashing``: Pasliev 2020, Sec. 3.8: fairwashing a tabular classifier. A model of
UCI Adult is fine-tuned so that its gradient explanations hide race and sex while its output
probabilities stay (identical-probabilities loss); beside it, the same model trained without
those features. Is a feature's low importance evidence that the model does not use it? The
accuracy with race and sex permuted answers: the fairwashed model still uses them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .tables import Table
from .base import Context, Experiment, Unit
from .config import Config, ConfigError, key, profile_key
from .published import PASLIEV_ADULT, PASLIEV_FAIRWASHING, Finding, findings_table
from ..attacks import manipulate_model
from ..explainers import explain, relevance
from ..models import accuracy, tabular_mlp, train_classifier
from ..objectives import HideFeatures
from . import plots


@dataclass(frozen=True)
class AdultConfig(Config):
    root: str = key("", "folder of adult.data and adult.test (empty: the copy shipped with manipex)")
    weights: str = key("", "the original classifier: a .safetensors saved by manipex for Adult's features; empty: "
                       "an MLP 100-100 trained here (Sec. 3.8)")
    epochs: int = key(3, "epochs of the classifiers (Pasliev: 200)", ge=1, le=100_000)
    finetune_epochs: int = key(0, "epochs of the fine-tuning (Pasliev: 100); 0: as many as epochs", ge=0, le=100_000)
    lam: float = key(1.0, "weight of the hide-features objective", gt=0, le=1e6)
    lr: float = key(1e-3, "Adam learning rate of the fine-tuning", gt=0, le=1)
    seed: int = key(0, "seed", ge=0, le=2**32 - 1)
    profile: str = profile_key("a fast run (about 11 s on 2 CPU cores)", "Pasliev's Sec. 3.8, classifiers trained "
                               "200 epochs and fine-tuned 100 (about 5 min)")

    PROFILES = {"paper": {"epochs": 200, "finetune_epochs": 100}}

    def check_files(self) -> None:
        if self.root and not Path(self.root).expanduser().is_dir():
            raise ConfigError(f"config key 'root': {self.root!r} is not a folder")
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise ConfigError(f"config key 'weights': {self.weights!r} does not exist")


@dataclass(kw_only=True)
class AdultContext(Context):
    root: Optional[str] = None


class AdultFairwashing(Experiment):
    """Pasliev 2020, Sec. 3.8: hide race and sex from the gradient of a UCI Adult classifier."""

    name = "adult_fairwashing"
    title = "Pasliev 2020, Sec. 3.8: fairwashing a UCI Adult classifier (hiding race and sex)"
    TABLES = (
        Table("findings", "Findings", "What this run finds",
              "The thesis's claim, the published numbers, ours in this run's setting, and a verdict."),
        Table("fairwashing", "Sec. 3.8: fairwashing UCI Adult", "Sec. 3.8: fairwashing UCI Adult",
              "Accuracy in % per model, the share of the gradient's importance on race and sex (lower = hidden), and "
              "the accuracy with race and sex permuted (lower than the accuracy = the model still uses them)."),
        Table("fairwashing_published", "Sec. 3.8: fairwashing UCI Adult as published",
              "Sec. 3.8 as published (Pasliev 2020)",
              "The thesis's accuracies in its own setting. Compare the change from the original model."),
    )
    captions = {
        "fig3_14_adult_importance": ("Fig. 3.14: feature importance of the original and fairwashed models",
                                     "Mean absolute gradient per input feature. Race and sex near zero for the "
                                     "fairwashed model = hidden from the explanation."),
    }
    Config = AdultConfig
    Context = AdultContext

    def units(self, config):
        return [Unit("adult", {})]

    def setup(self, config, run):
        return AdultContext(out=run.out, device=run.device, progress=run.progress,
                            root=str(Path(config.root).expanduser()) if config.root else None)

    def run_unit(self, unit, ctx, config):
        from .. import data, models  # deferred: the data loaders import PIL and numpy
        from ..data.adult import adult_feature_names, adult_protected_indices  # deferred: as above

        dev = ctx.device
        x, y = (t.to(dev) for t in data.load("adult", split="train", root=ctx.root))
        xt, yt = (t.to(dev) for t in data.load("adult", split="test", root=ctx.root))
        mask = torch.zeros(x.shape[1], dtype=torch.bool, device=dev)
        mask[sum(adult_protected_indices().values(), [])] = True

        def classifier(inputs):  # Sec. 3.8: two hidden layers of 100 ReLUs, Adam lr 1e-3
            torch.manual_seed(config.seed)
            return train_classifier(tabular_mlp(inputs.shape[1], hidden=(100, 100)).to(dev), inputs, y,
                                    epochs=config.epochs, batch_size=128, seed=config.seed, progress=False).eval()

        if config.weights:
            try:
                model = models.load(Path(config.weights).expanduser()).to(dev).eval()
                model(x[:1])
            except (ValueError, RuntimeError) as err:
                raise ConfigError(f"config key 'weights': not a classifier of Adult's {x.shape[1]} features: "
                                  f"{err}") from None
        else:
            model = classifier(x)
        blind = classifier(x[:, ~mask])  # the same model without the race and sex features
        washed = manipulate_model(model, (x, y), HideFeatures(mask), "gradient", classification="probabilities",
                                  lam=config.lam, lr=config.lr, epochs=config.finetune_epochs or config.epochs,
                                  batch_size=128, seed=config.seed, progress=False).model
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(config.seed)).to(dev)
        rows = []
        names = adult_feature_names()
        for label, m in (("original", model), ("fairwashed", washed)):
            r = relevance(explain(m, xt, "gradient")).detach()
            rows.append({"kind": "adult", "model": label, "test_rows": len(xt), "accuracy": accuracy(m, xt, yt),
                         "gradient_share_race_sex": r[:, mask].sum(1).mean().item(),
                         "accuracy_race_sex_permuted": accuracy(m, torch.where(mask, xt[perm], xt), yt)})
            rows += [{"kind": "adult_feature", "model": label, "feature": f, "importance": v}
                     for f, v in zip(names, r.mean(0).tolist())]
        blind_accuracy = accuracy(blind, xt[:, ~mask], yt)
        rows.append({"kind": "adult", "model": "without_race_sex", "accuracy": blind_accuracy,
                     "gradient_share_race_sex": 0.0, "accuracy_race_sex_permuted": blind_accuracy})
        return rows

    def findings(self, df, config):
        adult = df[df.kind == "adult"].set_index("model") if "kind" in df else df.iloc[:0]
        if not {"original", "fairwashed"} <= set(adult.index):
            return []
        o, f = adult.loc["original"], adult.loc["fairwashed"]
        hidden = f.gradient_share_race_sex < 0.5 * o.gradient_share_race_sex
        kept = o.accuracy - f.accuracy < 0.02
        used = f.accuracy_race_sex_permuted < f.accuracy
        ours = (f"share of the gradient on race and sex {o.gradient_share_race_sex:.3f} -> "
                f"{f.gradient_share_race_sex:.3f}; accuracy {100 * o.accuracy:.1f} -> {100 * f.accuracy:.1f} %, "
                f"{100 * f.accuracy_race_sex_permuted:.1f} % with race and sex permuted ({config.epochs} epoch(s), "
                f"fine-tuned {config.finetune_epochs or config.epochs})")
        verdict = "holds" if hidden and kept and used else "partly" if hidden else "does not hold"
        return [Finding(PASLIEV_FAIRWASHING, ours, verdict)]

    def tables(self, df, config):
        import pandas as pd

        adult = df[df.kind == "adult"] if "kind" in df else df.iloc[:0]
        out = self.new_tables()
        if not len(adult):
            return out
        table = adult.set_index("model")[["accuracy", "gradient_share_race_sex", "accuracy_race_sex_permuted"]]
        table = pd.DataFrame({"accuracy (%)": table.accuracy * 100,
                              "gradient_share_race_sex": table.gradient_share_race_sex,
                              "accuracy, race and sex permuted (%)": table.accuracy_race_sex_permuted * 100})
        published = PASLIEV_ADULT.table(config, "the change from the original model, not the values",
                                        rename={"accuracy": "accuracy (%)"})
        published.index.name = "model"
        out.add("findings", findings_table(self.findings(df, config)))
        out.add("fairwashing", table.round(3))
        out.add("fairwashing_published", published)
        return out

    def figures(self, df, config, out):
        features = df[df.kind == "adult_feature"] if "kind" in df else df.iloc[:0]
        if not len(features):
            return []
        counts = df[df.kind == "adult"].test_rows.dropna() if "test_rows" in df else []
        return [plots.feature_importance(features, Path(out) / "fig3_14_adult_importance.png",
                                         n=int(counts.iloc[0]) if len(counts) else None)]
