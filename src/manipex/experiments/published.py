"""The papers' published numbers, as named data carrying their setting, shown beside ours.

Each :class:`Published` table states where its numbers come from (paper, table) and the setting
they were measured in (dataset, model, image size, budget), so that a report never puts an
ImageNet number beside an MNIST one without saying so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple
from .sources import eps_text


@dataclass(frozen=True)
class Setting:
    """Where a published number was measured."""

    paper: str
    table: str
    dataset: str
    model: str
    image_size: int
    eps: Optional[str] = None

    def __str__(self) -> str:
        eps = f", eps {self.eps}" if self.eps else ""
        size = f", {self.image_size} px" if self.image_size else ""
        return f"{self.paper} {self.table}: {self.dataset}, {self.model}{size}{eps}"


@dataclass(frozen=True)
class Published:
    """Rows of a published table: ``rows[index] = values`` in the order of ``columns``."""

    setting: Setting
    columns: Tuple[str, ...]
    rows: Mapping[Any, Sequence[Optional[float]]] = field(default_factory=dict)

    def frame(self, prefix: str = "paper_", columns: Optional[Sequence[str]] = None):
        """A DataFrame with columns ``prefix + column`` (``columns``: a subset, renamed in order)."""
        import pandas as pd

        df = pd.DataFrame.from_dict({k: list(v) for k, v in self.rows.items()}, orient="index",
                                    columns=list(self.columns))
        if columns is not None:
            df = df[list(columns)]
        return df.add_prefix(prefix)

    def beside(self, ours, prefix: str = "paper_", columns: Optional[Sequence[str]] = None):
        """``ours`` joined (left) with the published columns."""
        return ours.join(self.frame(prefix, columns), how="left")

    def table(self, config: Any = None, compare: str = "the order of the rows", columns: Optional[Sequence[str]] = None,
              rows: Optional[Sequence[Any]] = None, rename: Optional[Mapping[str, str]] = None):
        """The published numbers as a block of their own (never in a column beside ours): a
        DataFrame whose ``attrs`` carry the paper's setting, ours (from ``config``) and one line
        on how they differ (:func:`difference`); the report shows them above the table."""
        df = self.frame("", columns)
        if rows is not None:
            df = df.reindex([r for r in rows if r in df.index])
        if rename:
            df = df.rename(columns=dict(rename))
        return with_setting(df, self.setting, config, compare)


def with_setting(df, setting: "Setting", config: Any = None, compare: str = "the order of the rows"):
    """``df`` marked as published numbers measured in ``setting`` (see :meth:`Published.table`)."""
    df.attrs.update(published=str(setting), ours=our_setting(config) if config is not None else "",
                    differs=difference(setting, config, compare) if config is not None else "")
    return df


_DATASET_NAMES = {"mnist5k": "MNIST-5k", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
                  "image_folder": "an image folder", "adult": "UCI Adult"}
_SIZES = {"mnist5k": 28, "mnist": 28, "fashion_mnist": 28, "cifar10": 32}


def _ours(config: Any) -> Tuple[str, str, int]:
    """(dataset, model, image size) of a run's config."""
    dataset = getattr(config, "dataset", "adult")
    arch = getattr(config, "arch", "")
    if arch in ("", "auto"):
        arch = config.auto_arch() if hasattr(config, "auto_arch") else "MLP"
    model = {"mnist_cnn": "CNN", "atex_cnn": "ATEX CNN", "vgg16_cifar": "VGG16", "vgg16": "VGG16",
             "tabular_mlp": "MLP"}.get(arch, arch)
    if getattr(config, "weights", ""):
        model += " (user's weights)"
    size = _SIZES.get(dataset, getattr(config, "image_size", 0) if dataset != "adult" else 0)
    return _DATASET_NAMES.get(dataset, dataset), model, size


def our_setting(config: Any) -> str:
    """Our setting in the words of :class:`Setting`: dataset, model, image size, eps."""
    dataset, model, size = _ours(config)
    eps = getattr(config, "eps", None)
    return (f"{dataset}, {model}" + (f", {size} px" if size else "")
            + (f", eps {', '.join(eps_text(e) for e in eps) if isinstance(eps, (list, tuple)) else eps_text(eps)}"
               if eps not in (None, [], ()) else ""))


def difference(setting: "Setting", config: Any, compare: str = "the order of the rows") -> str:
    """One line: where our setting differs from the paper's, and what that implies."""
    dataset, model, size = _ours(config)
    def side(d, m, px):
        return f"{d} {f'{px}×{px} ' if px else ''}{m}"
    same_data = dataset.split("-")[0].lower() == setting.dataset.split("-")[0].lower()
    same_model = model.split(" ")[0].lower() == setting.model.split(" ")[0].lower()
    if same_data and same_model and size == setting.image_size:
        return (f"same dataset and model ({side(dataset, model, size)}): values comparable, up to training runs, "
                "budget and the number of images")
    return (f"{side(dataset, model, size)} vs {setting.dataset} {setting.model}"
            + (f" {setting.image_size} px" if setting.image_size else "")
            + f": absolute values are not comparable; compare {compare}")


RIEGER_TABLE1 = Published(
    Setting("Rieger & Hansen 2020", "Table 1", "ImageNet", "VGG16", 224),
    ("mse_1e-9", "pcc", "top10"),
    {"gradient": (-0.92, 0.74, 0.40), "guided_backprop": (-3.25, 0.77, 0.42), "lrp": (-1.45, 0.81, 0.49),
     "integrated_gradients": (-1.76, 0.82, 0.47), "agg_mean": (-0.89, 0.54, 0.24)},
)

TANG_TABLE1 = Published(
    Setting("Tang et al.", "Table 1 (untargeted)", "Fashion-MNIST", "ATEX CNN", 28),
    ("accuracy_atex", "spearman_atex", "spearman_softplus", "topk_atex", "topk_softplus"),
    {0.02: (0.884, 0.766, 0.708, 0.747, 0.674), 0.04: (0.878, 0.715, 0.622, 0.717, 0.574),
     0.08: (0.870, 0.686, 0.536, 0.702, 0.484)},
)

_PASLIEV = dict(paper="Pasliev 2020", dataset="CIFAR-10", model="VGG16", image_size=32)
METHOD_ORDER = ("gradient", "grad_x_input", "integrated_gradients", "lrp")

PASLIEV_T31 = Published(
    Setting(table="Table 3.1", **_PASLIEV), ("accuracy",) + METHOD_ORDER,
    {"acc": (92.4, 22.15, 22.02, 22.02, 22.70), "com_gradient": (91.8, 0.865, 1.054, 1.114, 8.481),
     "com_grad_x_input": (91.3, 1.867, 1.834, 1.962, 9.823),
     "com_integrated_gradients": (91.6, 20.945, 20.858, 1.472, 21.656),
     "com_lrp": (91.45, 21.17, 20.95, 21.16, 0.59)},
)
#: Table 3.2: per model and method, (accuracy %, MSE x1e6, PCC, SSIM) with the cross.
PASLIEV_T32 = {
    "acc": {"gradient": (92.46, 5.27, 0.162, 0.099), "grad_x_input": (92.46, 6.015, 0.132, 0.172),
            "integrated_gradients": (92.46, 6.20, 0.133, 0.172), "lrp": (92.46, 4.59, 0.211, 0.068)},
    "th_gradient": {"gradient": (91.56, 1.702, 0.798, 0.389), "grad_x_input": (91.66, 2.73, 0.661, 0.523),
                    "integrated_gradients": (91.66, 2.68, 0.678, 0.482), "lrp": (91.66, 4.23, 0.273, 0.038)},
    "th_lrp": {"gradient": (91.48, 5.109, 0.157, 0.058), "grad_x_input": (91.48, 5.819, 0.125, 0.134),
               "integrated_gradients": (91.48, 5.826, 0.132, 0.111), "lrp": (91.48, 2.148, 0.733, 0.443)},
}
PASLIEV_T32_SETTING = Setting(table="Table 3.2", **_PASLIEV)
PASLIEV_T33 = Published(
    Setting(table="Table 3.3", **_PASLIEV),
    ("accuracy", "classification_loss", "target_mse_1e6", "target_pcc", "target_ssim"),
    {"acc": (92.46, 0.0, 5.277, 0.162, 0.099), "th_gradient": (91.56, 0.0146, 1.702, 0.798, 0.389),
     "ipp_gradient": (91.66, 0.007, 1.47, 0.830, 0.445)},
)
PASLIEV_T34 = Published(
    Setting(table="Table 3.4", **_PASLIEV), ("accuracy", "target_mse_1e6", "target_pcc", "target_ssim"),
    {"acc": (92.46, 5.277, 0.162, 0.099), "th_gradient": (91.56, 1.702, 0.798, 0.389),
     "fc_gradient": (91.57, 2.59, 0.654, 0.280)},
)
PASLIEV_T41 = Published(
    Setting(table="Table 4.1 (noise inputs, gradient)", **_PASLIEV),
    ("com_distance", "target_mse_1e6", "target_pcc", "target_ssim"),
    {"acc": (22.48, 4.993, 0.138, 0.033), "com_gradient": (2.40, None, None, None),
     "th_gradient": (None, 1.92, 0.769, 0.336)},
)
PASLIEV_T42 = Published(
    Setting(table="Table 4.2", **_PASLIEV), ("noise_pcc",),
    {"acc": (0.233,), "com_gradient": (0.975,), "th_gradient": (0.763,)},
)
PASLIEV_ADULT = Published(
    Setting("Pasliev 2020", "Sec. 3.8", "UCI Adult", "MLP 100-100", 0), ("accuracy",),
    {"original": (83.4,), "fairwashed": (82.7,), "without_race_sex": (82.1,)},
)


# -- the papers' claims, and what a run finds --------------------------------------------------------------

VERDICTS = ("holds", "partly", "does not hold", "not measured")


@dataclass(frozen=True)
class Claim:
    """A headline claim of a paper: what it states, with its number and the setting measured in."""

    source: str
    statement: str
    published: str


@dataclass(frozen=True)
class Finding:
    """A claim as a run finds it: our number and setting, a verdict (:data:`VERDICTS`) and,
    where it does not hold, why (what is known)."""

    claim: Claim
    ours: str
    verdict: str
    why: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Finding: verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


def findings_table(findings: Sequence[Finding]):
    """The "Findings" block that opens a report: one row per claim (None without findings)."""
    import pandas as pd

    if not findings:
        return None
    rows = [{"claim": f"{f.claim.source}: {f.claim.statement}", "paper": f.claim.published, "ours": f.ours,
             "verdict": f.verdict, "why": f.why} for f in findings]
    return pd.DataFrame(rows, columns=["claim", "paper", "ours", "verdict", "why"]).set_index("claim")


def direction(values_hold: Sequence[bool]) -> str:
    """``holds`` if every case holds, ``partly`` if some, else ``does not hold``."""
    if not values_hold:
        return "not measured"
    return "holds" if all(values_hold) else "partly" if any(values_hold) else "does not hold"


DOMBROWSKI_FIG3 = Claim(
    "Dombrowski 2019, Fig. 3", "a targeted input attack drives each method's map to another image's map while "
    "the class and the image barely change", "manipulated maps close to the target for every method (ImageNet, "
    "VGG16, 224 px; 1500 Adam steps)")
DOMBROWSKI_FIG4 = Claim(
    "Dombrowski 2019, Fig. 4", "beta-smoothing undoes the manipulation: the smoothed map of the manipulated image "
    "is closer to the original map as beta falls, for all methods", "PCC with the original rises as beta falls "
    "(ImageNet, VGG16, 224 px)")
DEFENSE_SMOOTHING = Claim(
    "Dombrowski 2019, Sec. 4", "beta-smoothing makes the maps harder to manipulate (an adaptive attack on the "
    "smoothed map gains less)", "qualitative (Thm 1, 2)")
RIEGER_AGGREGATION = Claim(
    "Rieger & Hansen 2020, Table 1", "AGG-Mean is more robust to the targeted attack than any single method",
    f"Δ-PCC 0.54 (AGG-Mean) vs 0.74-0.82 (gradient, guided backprop, LRP, IG) ({RIEGER_TABLE1.setting})")
TANG_ATEX = Claim(
    "Tang et al., Table 1", "ATEX keeps maps more similar to the original under the untargeted (top-k) attack "
    "than the softplus baseline", f"eps 0.08: Spearman 0.686 vs 0.536, top-k 0.702 vs 0.484 ({TANG_TABLE1.setting})")
PASLIEV_COM = Claim(
    "Pasliev 2020, Table 3.1", "fine-tuning moves the gradient maps' center of mass to the corner on all inputs "
    "while the accuracy stays", f"22.15 -> 0.87 px, accuracy 92.4 -> 91.8 % ({PASLIEV_T31.setting})")
PASLIEV_TARGET = Claim(
    "Pasliev 2020, Table 3.2", "fine-tuning makes the gradient maps resemble a target map (the cross) on all inputs",
    f"PCC with the cross 0.162 -> 0.798 ({PASLIEV_T32_SETTING})")
PASLIEV_NOISE = Claim(
    "Pasliev 2020, Table 4.2", "manipulated models give alike maps for noise inputs, which flags them",
    f"noise-map PCC 0.233 (original) vs 0.975 (center of mass), 0.763 (cross) ({PASLIEV_T42.setting})")
PASLIEV_FAIRWASHING = Claim(
    "Pasliev 2020, Sec. 3.8", "a tabular model can hide race and sex from its gradient explanation while its "
    "accuracy stays (and it still uses them)", f"accuracy 83.4 -> 82.7 % ({PASLIEV_ADULT.setting})")
