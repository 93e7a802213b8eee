"""Pieces every experiment shares: typed configs and context of attacks on images, method
options in one place, the table of defenses, one per-image row builder, example maps."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .._files import replacing
from ..defenses.catalog import DEFENSES, Defense  # noqa: F401 (the experiments' defenses, by name)
from ..defenses.catalog import defended as catalog_defended
from .base import Context, Unit
from .config import ConfigError, key
from .sources import ImageSource, SourceConfig, eps_text, load_source
from ..attacks import manipulate_input
from ..explainers import explain, relevance
from ..metrics import image_mse, linf, mse, pcc, ssim, topk_intersection
from ..objectives import TargetImage
from .. import models

#: Integrated-gradients steps inside attacks and training (Pasliev's setting), the default of
#: every experiment's ``ig_steps`` key.
IG_STEPS = 8
#: Method options where the user gives none, for maps that are attacked or trained against
#: (``ig_steps`` from the config) and for maps only shown (``manipex explain``: IG with 30 steps,
#: Dombrowski's reference setting). Other options are each method's own defaults.
SHOWN_OPTIONS: Dict[str, Dict[str, Any]] = {
    "integrated_gradients": {"steps": 30},
    "smoothgrad": {"samples": 20, "seed": 0},
    "occlusion": {"window": 4, "stride": 2},
}


def method_options(method: str, ig_steps: Optional[int] = None) -> Dict[str, Any]:
    """Options of ``method``: :data:`SHOWN_OPTIONS`, with ``ig_steps`` for integrated gradients
    where given (maps inside attacks and training)."""
    options = dict(SHOWN_OPTIONS.get(method, {}))
    if method == "integrated_gradients" and ig_steps is not None:
        options["steps"] = ig_steps
    return options


@dataclass(frozen=True)
class AttackConfig(SourceConfig):
    """Keys of the input attacks on images (quick, dombrowski2019, rieger2020)."""

    n: int = key(16, "number of images attacked", ge=1, le=100_000)
    batch: int = key(8, "images per unit of work", ge=1, le=100_000)
    steps: int = key(100, "attack steps", ge=1, le=1_000_000)
    eps: float = key(0.2, "L-infinity budget in pixel units ([0, 1]; 8/255 = 0.031)", gt=0, le=1)
    lr: float = key(0.01, "Adam step size", gt=0, le=1)
    ig_steps: int = key(IG_STEPS, "integrated-gradients steps inside the attack", ge=1, le=10_000)
    seed: int = key(0, "seed of every unit", ge=0, le=2**32 - 1)


@dataclass(kw_only=True)
class ImageContext(Context):
    """A model and its images in pixel space (:class:`~manipex.experiments.sources.ImageSource`):
    ``x``/``y`` are the evaluation images and labels, ``train`` the training split."""

    model: nn.Module
    x: Tensor
    y: Tensor
    train: Tuple[Tensor, Tensor]
    clamp: Tuple[float, float] = (0.0, 1.0)

    @classmethod
    def load(cls, config: SourceConfig, run: Context, *, n_train: Optional[int], n_eval: int, seed: int = 0,
             prepare: Optional[Callable[[nn.Module], nn.Module]] = None, **extra: Any) -> "ImageContext":
        source: ImageSource = load_source(config, run.device, n_train=n_train, n_eval=n_eval, seed=seed,
                                          cache=Path(run.out) / "models" / "original.safetensors", prepare=prepare)
        return cls(out=run.out, device=run.device, progress=run.progress, model=source.model, x=source.test[0],
                   y=source.test[1], train=source.train, clamp=source.clamp, **extra)

    def images(self, n: int, start: int, batch: int) -> Tuple[Tensor, Tensor]:
        """Attacked images ``start .. start + batch`` (of the first ``n``) and, as their targets,
        the images ``n`` positions further on (Dombrowski: the target is another image's map)."""
        end = min(start + batch, n)
        return self.x[start:end], self.x[n + start: n + end]


def attack_setting(config: AttackConfig) -> str:
    """Our setting, for the Findings block: model and data, budget, steps, images."""
    profile = getattr(config, "profile", "default")
    return (f"{config.describe()}; eps {eps_text(config.eps)}, {config.steps} steps, {config.n} images"
            + ("" if profile == "default" else f"; profile {profile}"))


def attack_context(config: AttackConfig, run: Context) -> ImageContext:
    """The model and ``2 n`` images of an attack experiment: ``n`` attacked, ``n`` more whose maps
    are the targets (training images only where the model is trained here)."""
    ctx = ImageContext.load(config, run, n_train=None if config.trains_here else 0, n_eval=2 * config.n,
                            seed=config.seed)
    if len(ctx.x) < 2 * config.n:
        raise ConfigError(f"config key 'n': {config.n} attacked images need {2 * config.n} images in split "
                          f"{config.split!r} (the others' maps are the targets), but it has {len(ctx.x)}")
    return ctx


# -- the defenses --------------------------------------------------------------------------------------


def defense_choices() -> Tuple[str, ...]:
    return tuple(DEFENSES)


def defended(method: str, defense: str, config: Any) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """``(method, options, attack options)`` of the map that ``defense`` shows for ``method``
    (:func:`manipex.defenses.catalog.defended`), with the config's ``ig_steps``,
    ``softplus_beta``, ``smoothgrad_samples`` and ``seed``, and :func:`method_options` for the
    method and AGG-Mean's members."""
    ig_steps = getattr(config, "ig_steps", None)
    return catalog_defended(method, defense, method_options(method, ig_steps),
                            softplus_beta=getattr(config, "softplus_beta", None),
                            smoothgrad_samples=getattr(config, "smoothgrad_samples", None),
                            seed=getattr(config, "seed", None), member_options=lambda m: method_options(m, ig_steps))


def attack_budget(config: Any, ctx: "ImageContext", eps: Optional[float] = None) -> Dict[str, Any]:
    """The options every experiment passes its attacks the same way: the config's ``steps`` and
    ``lr``, the budget ``eps`` (the config's, or a unit's own) and the images' range ``clamp``.
    The one place where a config's ``eps`` becomes :func:`~manipex.attacks.manipulate_input`'s
    (and then :class:`~manipex.optim.Budget`'s)."""
    return {"steps": config.steps, "lr": config.lr, "eps": config.eps if eps is None else eps, "clamp": ctx.clamp}


# -- rows, maps ------------------------------------------------------------------------------------------


def per_image(columns: Mapping[str, Tensor], *, first_index: int = 0, **common: Any) -> List[Dict[str, Any]]:
    """One row per image: ``common`` values, ``image`` (its index) and each column's value."""
    columns = {k: (v.detach().flatten().cpu().tolist() if isinstance(v, Tensor) else list(v))
               for k, v in columns.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{**common, "image": first_index + i, **{k: float(v[i]) for k, v in columns.items()}} for i in range(n)]


def targeted_attack(model: nn.Module, x: Tensor, x_target: Tensor, method: str,
                    options: Optional[Dict[str, Any]] = None, *, first_index: int,
                    extra: Optional[Dict[str, Any]] = None, examples: Optional[Path] = None, **attack: Any):
    """Targeted attack (Dombrowski's setting: the target is another image's map): ``(rows,
    result, target maps)``, one row per image with the papers' map metrics (target vs
    manipulated, before and after) and image metrics. With ``examples`` (a folder), the images
    among the first :data:`EXAMPLE_IMAGES` keep their inputs and maps there
    (:func:`save_examples`)."""
    options = dict(options or {})
    res = manipulate_input(model, x, TargetImage(x_target), method, method_options=options, progress=False, **attack)
    t = model(x).argmax(1)
    r_target = relevance(explain(model, x_target, method, t, **options))
    before, after = res.maps_before, res.maps_after
    k = max(1, int(0.1 * before[0].numel()))  # Rieger's top 10 %
    cols = {
        "pcc_before": pcc(r_target, before), "pcc_after": pcc(r_target, after),
        "mse_before": mse(r_target, before), "mse_after": mse(r_target, after),
        "ssim_before": ssim(r_target, before), "ssim_after": ssim(r_target, after),
        "top10_before": topk_intersection(r_target, before, k), "top10_after": topk_intersection(r_target, after, k),
        "pcc_original": pcc(before, after),
        "image_mse": image_mse(x, res.x_adv), "linf": linf(x, res.x_adv),
        "class_kept": res.class_kept.float(),
    }
    if examples is not None:
        save_examples(examples, first_index, {"input": x, "x_adv": res.x_adv, "original": before, "manipulated": after,
                                              "target": r_target, "pcc_before": cols["pcc_before"],
                                              "pcc_after": cols["pcc_after"]})
    return per_image(cols, first_index=first_index, method=method, **(extra or {})), res, r_target


def method_units(config: AttackConfig, parts) -> List[Unit]:
    """Units ``kind/method/start`` for each ``(kind, methods)`` part and batch of images."""
    return [Unit(f"{kind}/{m}/{b:05d}", {"kind": kind, "method": m, "start": b})
            for kind, methods in parts for m in methods for b in range(0, config.n, config.batch)]


def budget_units(config: AttackConfig, methods) -> List[Unit]:
    """Units ``budget/method/eps/start``: the targeted attack repeated at each of ``config.budgets``
    (larger L∞ budgets, to show what the budget limits)."""
    return [Unit(f"budget/{m}/{eps:g}/{b:05d}", {"kind": "budget", "method": m, "eps": eps, "start": b})
            for eps in config.budgets for m in methods for b in range(0, config.n, config.batch)]


def by_budget(df, config: AttackConfig, main: str, value: str):
    """Mean ``value`` per method (rows) and budget (columns: ``config.eps`` from the units whose
    names start with ``main``, then each of the ``budget/`` units' eps); None without both."""
    import pandas as pd

    budget, first = df[df.unit.str.startswith("budget/")], df[df.unit.str.startswith(main)]
    if not len(budget) or not len(first):
        return None
    return pd.concat([first.assign(eps=config.eps), budget]).pivot_table(index="method", columns="eps", values=value,
                                                                         aggfunc="mean")


def seeded(seed: int) -> None:
    torch.manual_seed(seed)


def save_maps(path: Path, tensors: Dict[str, Tensor], n: int) -> None:
    """The first ``n`` of each tensor, as float32 safetensors, written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({k: v[:n].detach().cpu().float().clone() for k, v in tensors.items()}, tmp)


def load_maps(path: Path) -> Optional[Dict[str, Tensor]]:
    """Maps saved by :func:`save_maps`, or None: where there are none, and where the file is
    empty or damaged (a warning names it; the figure that would show them leaves them out)."""
    if not Path(path).exists():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError on an empty or damaged header, OSError
        warnings.warn(f"{path}: the saved maps cannot be read ({type(err).__name__}: {str(err)[:120]}); the figure "
                      "leaves them out (run again with --fresh to make them anew)", stacklevel=2)
        return None


#: Attacked images (the first ones) whose inputs and maps an attack experiment keeps for its
#: example figure; the others keep only their metrics, so a run on 224 px images stays small.
EXAMPLE_IMAGES = 16


def save_examples(folder: Path, first_index: int, tensors: Dict[str, Tensor]) -> None:
    """Keep, in ``folder/<first_index>.safetensors``, the rows of ``tensors`` (one per image,
    images ``first_index ..``) of the images among the first :data:`EXAMPLE_IMAGES`, with their
    image indices under ``"index"``."""
    n = len(next(iter(tensors.values())))
    keep = min(n, EXAMPLE_IMAGES - first_index)
    if keep > 0:
        index = torch.arange(first_index, first_index + n, dtype=torch.float32)
        save_maps(Path(folder) / f"{first_index:05d}.safetensors", {"index": index, **tensors}, keep)


def load_examples(folder: Path) -> Dict[int, Dict[str, Tensor]]:
    """The examples :func:`save_examples` kept in ``folder``, by image index (empty if none)."""
    out: Dict[int, Dict[str, Tensor]] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        saved = load_maps(path)
        if saved is not None and "index" in saved:
            for i, index in enumerate(saved["index"].long().tolist()):
                out[index] = {k: v[i] for k, v in saved.items() if k != "index"}
    return out


def pick_examples(rise, saved: Mapping[int, Mapping[str, Tensor]]) -> List[Tuple[str, int]]:
    """The examples a figure shows: ``("typical", i)``, the kept image whose rise of the PCC with
    the target is closest to the median ``rise`` of all attacked images (a Series or list), and
    ``("best", j)``, the kept image with the largest rise (left out where it is the typical one).
    Picking by the rise, not by the PCC after, passes over pairs whose maps were alike anyway."""
    import statistics

    if not saved or not len(rise):
        return []
    median = statistics.median(float(r) for r in rise)
    gain = {i: float(s["pcc_after"] - s["pcc_before"]) for i, s in saved.items()}
    typical = min(gain, key=lambda i: (abs(gain[i] - median), i))
    best = max(gain, key=lambda i: (gain[i], -i))
    return [("typical", typical)] + ([("best", best)] if best != typical else [])


def save_model(model: nn.Module, path: Path, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Save an experiment's model with :func:`manipex.models.save`; a model behind an input
    :class:`~manipex.models.Normalize` is saved without it, its mean and std in the metadata
    (a checkpoint holds the weights; the config's ``normalize`` says what they expect)."""
    norm = models.input_normalization(model)
    meta = dict(metadata or {})
    if norm is not None:
        meta["normalize"] = {"mean": norm.mean.tolist(), "std": norm.std.tolist()}
        model = model[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save(model, path, metadata=meta)


def load_model(path: Path, config: SourceConfig, device: str) -> nn.Module:
    """A model saved by :func:`save_model`, behind the configured normalisation, in eval mode."""
    model = models.load(path).to(device)
    norm = config.normalization()
    return (model if norm is None else models.with_normalization(model, *norm)).eval()
