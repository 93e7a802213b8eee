"""``manipex audit``: can this model's explanations be trusted?

One run answers the auditor's questions on the model's own data, each part a unit of work (so
a killed audit resumes):

* **(a) input manipulation** (Dombrowski 2019; Ghorbani 2019): the success of a targeted attack
  (another image's map as the target) and of a top-k attack, per method and budget ε, with the
  class kept (success thresholds: :mod:`manipex.objectives`);
* **(b) defenses** under the adaptive attack at the largest ε: β-smoothing, SmoothGrad, AGG-Mean
  (:func:`~manipex.experiments.common.defended`);
* **(c) curvature**: the largest principal curvature of the decision surface at the data
  (Dombrowski Thm 1) on the Softplus(β) model, for decreasing β;
* **(d) evidence of model manipulation**: per method, the faithfulness test
  (:func:`manipex.defenses.faithfulness_test`: does removing what the map points at lower the
  output as occlusion's ranking predicts? reference-free, or calibrated by 3 or more references
  of the model's recipe) and, against trusted reference models, the
  noise-input similarity test with a calibrated p-value (:func:`manipex.defenses.
  detect_manipulation`, 3 or more references), decided together by Holm's procedure at
  ``alpha`` (:func:`manipex.defenses.combined_detection.holm_decision`); the references' loss on
  the data is compared with the model's, and references of another recipe do not count
  (:func:`~manipex.defenses.combined_detection.reference_mismatch`); the similarity as Gaussian
  noise is added to the weights is shown (Pasliev Sec. 4);
* **(e) a verdict** with the numbers behind it and what the audit cannot see.

The audited model is given as for every experiment (:mod:`.sources`); on MNIST-5k without
``weights``, ``arch = "vit_mnist"`` audits the default ViT (``models.load_default("vit_mnist")``)
as ``auto`` audits the default CNN (:attr:`.sources.SourceConfig.default_model`).

Without ``references``, ``n_references`` references are trained here on the audit's data (its
``train`` split, ``n_train`` images): the audited model's architecture (the default model's, a
zoo architecture, the one a checkpoint records, or the factory ``arch = "package.module:function"``,
called once per reference), each built and trained under its own seed (reference k of 1, 2, ...
gets ``reference_seed + k - 1``: ``torch.manual_seed`` before it is built, and the order of its
batches), with Adam and cross-entropy (:func:`manipex.models.train_classifier`, deterministic) at
``reference_lr``, ``reference_batch_size`` and ``reference_epochs`` (0: the default model's recipe
for the default model, else ``train_epochs``). The report states this recipe ("(d) Reference
models"). References of the same kind as the audited model (same data, recipe, architecture) make
the test meaningful: give your own where you can.

Everything is checked before the first attack: the keys (:meth:`AuditConfig.check`: files exist,
the factory imports), then in :meth:`Audit.setup` the audited model (the factory returns an
``nn.Module``, the weights fit it, it takes the images), the given references (they load and fit
the architecture and the classes), or, for references trained here, that there are training
images and that the factory builds a new model each call.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..attacks import manipulate_input
from ..defenses.combined_detection import holm_decision, reference_mismatch, verdict_text
from ..defenses.detection import detect_manipulation, noise_map_similarity, with_weight_noise
from ..defenses.faithfulness_detection import faithfulness_test
from ..explainers import explain, relevance
from ..metrics import linf, pcc
from ..objectives import TargetImage, TopKSuppression
from .base import Experiment, Unit
from .tables import Table
from .common import (DEFENSES, ImageContext, attack_budget, defended, defense_choices, load_model, per_image,
                     save_model, seeded)
from .config import ConfigError, key, method_choices
from .sources import SourceConfig, build_model, eps_text, normalized, original_model, require_model, zoo_arch
from .. import models, surgery
from ..geometry import principal_curvature
from ..models import accuracy
from ..figures import subplots
from .plots import CI_TEXT, legend_outside, line_with_interval, n_text, save_figure, single_x, styled, summarize

OBJECTIVES = ("targeted", "topk")


class Part(str, enum.Enum):
    """The parts of an audit. Each unit runs one (its ``params["part"]``) and its rows carry it
    (column ``part``, stored as the value: ``"attack"``)."""

    ATTACK = "attack"  # (a) input attacks per method, objective and budget
    DEFENSE = "defense"  # (b) the adaptive attack through each defense
    CURVATURE = "curvature"  # (c) the largest principal curvature per softplus beta
    FAITHFULNESS = "faithfulness"  # (d) the faithfulness test per method
    DETECTION = "detection"  # (d) the noise-map test per method
    WEIGHT_NOISE = "weight_noise"  # (d) rows of the detection units: similarity and accuracy under weight noise


def _part(df, part: Part):
    """The stored rows of one part of the audit (none before any unit has run)."""
    return df[df.part == part.value] if "part" in df else df.iloc[0:0]


@dataclass(frozen=True)
class AuditConfig(SourceConfig):
    references: List[str] = key([], "trusted clean models of the same kind: paths (.safetensors saved by manipex, or "
                                "state_dicts for 'arch'); empty: trained here", empty=True)
    n_references: int = key(3, "references trained here when none are given (3 or more: calibrated test)", ge=1, le=100)
    methods: List[str] = key(["gradient", "lrp"], "explanation methods audited", choices=method_choices)
    eps: List[float] = key([0.02, 0.05, 0.1], "L-infinity budgets in pixel units ([0, 1]; 8/255 = 0.031)", gt=0, le=1)
    n: int = key(8, "images attacked", ge=1, le=100_000)
    steps: int = key(100, "attack steps", ge=1, le=1_000_000)
    lr: float = key(0.01, "Adam step size of the attacks", gt=0, le=1)
    topk: float = key(0.05, "top-k attack: k as a fraction of a map's pixels", gt=0, lt=1)
    defenses: List[str] = key([d for d in DEFENSES if d != "none"], "defenses under the adaptive attack at the "
                              "largest eps", choices=defense_choices, empty=True)
    softplus_beta: float = key(1.0, "beta of beta-smoothing", gt=0, le=10_000)
    smoothgrad_samples: int = key(5, "SmoothGrad samples", ge=1, le=10_000)
    ig_steps: int = key(8, "integrated-gradients steps inside the attacks", ge=1, le=10_000)
    betas: List[float] = key([10.0, 3.0, 1.0], "softplus betas of the curvature part", gt=0, le=10_000)
    noise_n: int = key(32, "noise inputs of the detection test", ge=2, le=100_000)
    alpha: float = key(0.05, "stated false-positive rate of the detection tests together (Holm)", gt=0, lt=1)
    faithfulness_n: int = key(64, "images of the faithfulness test (10 or more)", ge=10, le=100_000)
    margin: float = key(0.5, "faithfulness test: the share of occlusion's faithfulness a clean map is assumed to "
                        "reach", ge=0, le=1)
    weight_noise: List[float] = key([0.0, 0.05, 0.1], "weight-noise scales (relative to each tensor's sd)", ge=0,
                                    le=100)
    n_train: int = key(0, "training images for references trained here (0: all)", ge=0, le=10_000_000)
    reference_epochs: int = key(0, "epochs of each reference trained here; 0: the audited model's (the default "
                                "model's recipe for a default model: 3 for the CNN, 50 for vit_mnist; else "
                                "train_epochs)", ge=0, le=10_000)
    reference_lr: float = key(1e-3, "Adam learning rate of the references trained here", gt=0, le=1)
    reference_batch_size: int = key(64, "batch size of the references trained here", ge=1, le=100_000)
    reference_seed: int = key(1, "seed of the first reference trained here: reference k (1, 2, ...) is built and "
                              "trained with seed reference_seed + k - 1", ge=0, le=2**32 - 1)
    seed: int = key(0, "seed of every unit", ge=0, le=2**32 - 1)

    def check(self) -> None:
        super().check()
        require_model(self, "audit")

    def check_files(self) -> None:
        super().check_files()
        for path in self.references:
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"config key 'references': {path!r} does not exist")


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the references of an audit are trained here: ``arch`` (a zoo architecture with
    ``kwargs``, or a factory ``package.module:function``), Adam at ``lr`` with cross-entropy,
    ``batch_size``, ``epochs``, on ``images`` training images; reference k is built and trained
    with ``seeds[k - 1]``."""

    arch: str
    kwargs: Dict[str, Any]
    epochs: int
    lr: float
    batch_size: int
    seeds: Tuple[int, ...]
    images: int

    @property
    def factory(self) -> bool:
        return ":" in self.arch

    def record(self, seed: int) -> Dict[str, Any]:
        """What a cached reference's file records of its recipe (a cache of another recipe is
        trained again)."""
        return {"arch": self.arch, "kwargs": self.kwargs, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "seed": seed, "images": self.images, "optimizer": "Adam"}

    def row(self) -> Dict[str, Any]:
        """The recipe as columns of the detection rows (the report's "(d) Reference models")."""
        return {"reference_source": "trained here", "reference_arch": self.arch, "reference_images": self.images,
                "reference_epochs": self.epochs, "reference_lr": self.lr, "reference_batch_size": self.batch_size,
                "reference_seeds": ", ".join(str(s) for s in self.seeds)}


@dataclass(kw_only=True)
class AuditContext(ImageContext):
    references: Optional[List[nn.Module]] = None
    recipe: Optional[ReferenceRecipe] = None
    mismatch: Optional[List[str]] = None


class Audit(Experiment):
    """The audit of one model: attacks, defenses, curvature, detection, verdict."""

    name = "audit"
    title = "Audit: can this model's explanations be trusted?"
    TABLES = (
        Table("verdict", "Verdict", "Verdict", "The audit's answers in words, from the tables below."),
        Table("attack", "(a) Input manipulation: share of images attacked successfully, class kept (rows: method, "
              "objective; columns: eps in pixel units, [0, 1])", "(a) Can the maps be manipulated through the input?",
              "Share (0-1) of images attacked successfully with the class kept, per method and objective (rows) and "
              "budget eps (columns). Higher = less trustworthy."),
        Table("defense", "(b) Defenses under the adaptive targeted attack at eps = {eps}: rise of the PCC with the "
              "target (lower = the defense holds)", "(b) Which defense holds? (adaptive attack, eps = {eps})",
              "Rise of the PCC with the target under an attack that sees the defense, at eps = {eps}, per method "
              "(rows) and defense (columns). Lower = the defense holds."),
        Table("curvature", "(c) Largest principal curvature at the data (median over images; Dombrowski Thm 1)",
              "(c) Curvature of the decision surface (Dombrowski Thm 1)",
              "Median largest principal curvature per softplus beta. Lower = maps harder to manipulate."),
        Table("detection", "(d) Detection tests (alpha = {alpha}, Holm over the counted tests)",
              "(d) Was the model itself manipulated? Every test, decided together (alpha = {alpha})",
              "Per test and method: the statistic and its bound (faithfulness: the share of occlusion's gain over "
              "random rankings the map reaches, against the margin; noise maps: the similarity against the threshold "
              "from the references), p-value, Holm-adjusted p-value over the counted tests, flagged (1 = "
              "manipulated), and the power: the statistic at which a model is flagged with probability 0.8 "
              "(faithfulness: a ratio below it; noise maps: a similarity above it)."),
        Table("noise_maps", "(d) Noise-input similarity against the references (alpha = {alpha})",
              "(d) Was the model itself manipulated? (alpha = {alpha})",
              "Similarity of the maps of noise inputs (score) against reference models of the same kind: threshold, "
              "p-value of this test alone (small = unusual; the decision, over every test, is in the detection tests "
              "above) and its power: the mean similarity a manipulated model must reach to be flagged with "
              "probability 0.8."),
        Table("references", "(d) Reference models", "(d) Reference models",
              "The trusted models the detection test compares with: given, or trained here with this recipe (each "
              "reference built and trained under its own seed). References of another kind than the audited model "
              "make the test meaningless."),
        Table("weight_noise", "(d) Weight noise: noise-map similarity and accuracy", "(d) Weight noise",
              "Per weight-noise level sigma: noise-map similarity per method and accuracy in %. A manipulation that "
              "vanishes with small noise while the accuracy stays is suspicious."),
    )
    captions = {
        "audit_success_vs_eps": ("Input manipulation: success against the budget",
                                 "Share of images attacked successfully (class kept) per method, as eps grows, per "
                                 "attack objective. Higher curves = less trustworthy explanations."),
    }
    Config = AuditConfig
    Context = AuditContext

    def units(self, config):
        units = [Unit(f"attack/{m}/{o}/{e:g}", {"part": Part.ATTACK, "method": m, "objective": o, "eps": e})
                 for m in config.methods for o in OBJECTIVES for e in config.eps]
        units += [Unit(f"defense/{d}/{m}", {"part": Part.DEFENSE, "method": m, "defense": d})
                  for d in ("none",) + tuple(config.defenses) for m in config.methods]
        units.append(Unit("curvature", {"part": Part.CURVATURE}))
        units += [Unit(f"faithfulness/{m}", {"part": Part.FAITHFULNESS, "method": m}) for m in config.methods]
        units += [Unit(f"detection/{m}", {"part": Part.DETECTION, "method": m}) for m in config.methods]
        return units

    def setup(self, config, run):
        # the attacked images and their targets, and for accuracy up to 256 held-out images (an
        # image folder without splits keeps the rest for references trained here)
        needs_train = config.trains_here or not config.references
        n_eval = max(2 * config.n, 256, config.faithfulness_n)
        if config.dataset == "image_folder":
            # a folder without split folders is split here: the held-out images are taken from the
            # training images, so take more than the attacks need only where nothing trains here
            root = Path(config.root).expanduser()
            split = any((root / s).is_dir() for s in ("train", "val", "test"))
            n_eval = max(2 * config.n, config.faithfulness_n) if split or not needs_train else 2 * config.n
        try:
            base = ImageContext.load(config, run, n_train=(config.n_train or None) if needs_train else 0,
                                     n_eval=n_eval, seed=config.seed)
        except ConfigError as err:
            if config.trains_here or config.references or not str(err).startswith("config key 'split' ('train')"):
                raise
            raise ConfigError(f"config key 'references': none given, so references are trained here on the training "
                              f"images, but: {err}; give trusted reference models (--reference)") from None
        if len(base.x) < 2:
            raise ConfigError(f"config key 'split': the audit needs at least 2 images, split {config.split!r} has "
                              f"{len(base.x)}")
        ctx = AuditContext(**vars(base))
        # what the detection part needs is checked now, before the first attack
        if config.references:
            ctx.references = self._given_references(config, ctx)
        else:
            ctx.recipe = self._recipe(config, ctx)
        return ctx

    @staticmethod
    def _outputs(ctx) -> int:
        with torch.no_grad():  # a shape only
            return int(ctx.model(ctx.x[:1]).shape[1])

    def _given_references(self, config, ctx) -> List[nn.Module]:
        """The given references, loaded like the audited model (its architecture and
        normalisation), each checked: it loads, fits the architecture and has the audited model's
        outputs."""
        import dataclasses

        labels = torch.cat([ctx.train[1], ctx.y])
        outputs = self._outputs(ctx)
        refs = []
        for path in config.references:
            try:
                ref = original_model(dataclasses.replace(config, weights=path), ctx.train, ctx.device, labels=labels)
            except ConfigError as err:
                why = str(err).removeprefix("config key 'weights': ")
                raise ConfigError(f"config key 'references': {why}") from None
            ref = normalized(ref, config.normalization()).eval()
            try:
                with torch.no_grad():  # a shape check only
                    got = int(ref(ctx.x[:1]).shape[1])
            except (RuntimeError, ValueError) as err:
                raise ConfigError(f"config key 'references': {path!r} does not take the images: {err}") from None
            if got != outputs:
                raise ConfigError(f"config key 'references': {path!r} has {got} outputs, the audited model {outputs}")
            refs.append(ref)
        return refs

    def _recipe(self, config, ctx) -> ReferenceRecipe:
        """How the references are trained here (see the module's docstring), checked: there are
        training images, and a factory builds a new model each call (not the audited one) that
        trains (:meth:`_probe_factory`)."""
        seeds = tuple(config.reference_seed + k for k in range(config.n_references))
        if config.is_default:
            default = models.DEFAULT_RECIPES[config.default_model]
            name, kwargs, epochs = default.arch, {}, default.epochs
        elif ":" in config.arch:
            name, kwargs, epochs = config.arch, {}, config.train_epochs
        else:
            inner = ctx.model[1] if models.input_normalization(ctx.model) is not None else ctx.model
            recorded = getattr(inner, "manipex_arch", None)
            if recorded is not None:
                name, kwargs = recorded["name"], dict(recorded["kwargs"])
            else:
                name, kwargs = zoo_arch(config, self._outputs(ctx))
            epochs = config.train_epochs
        if len(ctx.train[0]) == 0:
            raise ConfigError(f"config key 'references': no training images in dataset {config.dataset!r} to train "
                              "references on; give trusted reference models (--reference)")
        if ":" in config.arch:
            self._probe_factory(config, ctx, seeds[0])
        return ReferenceRecipe(arch=name, kwargs=kwargs, epochs=config.reference_epochs or epochs,
                               lr=config.reference_lr, batch_size=config.reference_batch_size, seeds=seeds,
                               images=len(ctx.train[0]))

    def _probe_factory(self, config, ctx, seed: int) -> None:
        """One model of the factory, as the first reference would be built, is a new model (not
        the audited one) that trains: one step on two training images in train mode (a model
        whose train mode returns a tuple, such as auxiliary logits, would fail only after the
        attacks). The global RNG and the audited model are left as they were."""
        import torch.nn.functional as F

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            probe = build_model(config, self._outputs(ctx))
            self._refuse_shared(probe, ctx.model, config)
            probe = normalized(probe.to(ctx.device), config.normalization()).train()
            try:
                with torch.enable_grad():
                    F.cross_entropy(probe(ctx.train[0][:2]), ctx.train[1][:2]).backward()
            except Exception as err:  # the user's model may fail in any way
                raise ConfigError(f"config key 'arch': a reference built by factory {config.arch!r} cannot be trained "
                                  f"here (one step on two images in train mode: {type(err).__name__}: "
                                  f"{str(err)[:300]}); give trusted reference models (--reference)") from None

    @staticmethod
    def _refuse_shared(model: nn.Module, audited: nn.Module, config) -> None:
        """A factory that returns the same module (or its parameters) each call would train the
        audited model itself as a reference."""
        own = {id(t) for t in list(audited.parameters()) + list(audited.buffers())}
        if model is audited or any(id(t) in own for t in list(model.parameters()) + list(model.buffers())):
            raise ConfigError(f"config key 'arch': factory {config.arch!r} returns the audited model's own modules; "
                              "it must build a new model each call (the references are built with it), or give "
                              "trusted reference models (--reference)")

    def _references(self, config, ctx) -> List[nn.Module]:
        """The trusted reference models: given (loaded in :meth:`setup`), or trained here with
        :attr:`AuditContext.recipe` and kept in the run folder (``references/reference<k>``)."""
        if config.references:
            if ctx.references is None:
                ctx.references = self._given_references(config, ctx)
            return ctx.references
        recipe = ctx.recipe or self._recipe(config, ctx)
        ctx.recipe = recipe
        refs = []
        for k, seed in enumerate(recipe.seeds, 1):
            cache = Path(ctx.out) / "references" / f"reference{k}.safetensors"
            ref = self._cached_reference(cache, recipe, seed, config, ctx)
            if ref is None:
                ref = self._train_reference(config, ctx, seed)
                save_model(ref, cache, {"trained_by": "manipex audit", "seed": seed, "recipe": recipe.record(seed)})
            refs.append(ref.eval())
        return refs

    def _cached_reference(self, cache: Path, recipe: ReferenceRecipe, seed: int, config, ctx) -> Optional[nn.Module]:
        """The reference kept in ``cache`` by an earlier (killed) run with this recipe and seed;
        None where there is none, it was trained otherwise, or it cannot be read."""
        if not cache.is_file():
            return None
        try:
            if models.read_metadata(cache)["metadata"].get("recipe") != recipe.record(seed):
                return None
            if not recipe.factory:
                return load_model(cache, config, ctx.device)
            with torch.random.fork_rng(devices=[]):
                skeleton = build_model(config, 0)
            model = models.load(cache, skeleton).to(ctx.device)
        except ConfigError:
            raise
        except Exception:  # a damaged cache (the file of a killed run) is trained again
            return None
        return normalized(model, config.normalization()).eval()

    def _train_reference(self, config, ctx, seed: int) -> nn.Module:
        """A clean model of the audited model's kind, built and trained with ``seed`` on the same
        data (behind the same normalisation), by :attr:`AuditContext.recipe`."""
        recipe = ctx.recipe or self._recipe(config, ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if recipe.factory:
                ref = build_model(config, 0)
                self._refuse_shared(ref, ctx.model, config)
            else:
                ref = models.build(recipe.arch, **recipe.kwargs)
            trained = normalized(ref.to(ctx.device), config.normalization())
            models.train_classifier(trained, ctx.train[0], ctx.train[1], epochs=recipe.epochs, lr=recipe.lr,
                                    batch_size=recipe.batch_size, seed=seed, progress=False)
        return trained.eval()

    def run_unit(self, unit, ctx, config):
        seeded(config.seed)
        part = Part(unit.params["part"])
        if part is Part.CURVATURE:
            return self._curvature(ctx, config)
        run = {Part.ATTACK: self._attack, Part.DEFENSE: self._defense, Part.FAITHFULNESS: self._faithfulness,
               Part.DETECTION: self._detection}[part]
        return run(unit.params, ctx, config)

    @staticmethod
    def _images(ctx, config):
        """The attacked images and, as targets, the next ``n``."""
        n = min(config.n, len(ctx.x) // 2)
        return ctx.x[:n], ctx.x[n: 2 * n]

    def _attack(self, p, ctx, config):
        x, x_target = self._images(ctx, config)
        method, options, attack = defended(p["method"], "none", config)
        if p["objective"] == "targeted":
            objective = TargetImage(x_target)
        else:
            objective = TopKSuppression(max(1, round(config.topk * relevance(x[:1]).numel())))
        res = manipulate_input(ctx.model, x, objective, method, method_options=options, progress=False,
                               **attack_budget(config, ctx, p["eps"]), **attack)
        return per_image({"before": res.metric_before, "after": res.metric_after, "threshold": res.threshold,
                          "success": res.success.float(), "class_kept": res.class_kept.float(),
                          "linf": linf(x, res.x_adv)},
                         part=Part.ATTACK.value, method=p["method"], objective=p["objective"], eps=p["eps"],
                         metric=res.metric_name)

    def _defense(self, p, ctx, config):
        model = ctx.model
        x, x_target = self._images(ctx, config)
        method, options, attack = defended(p["method"], p["defense"], config)
        eps = max(config.eps)
        res = manipulate_input(model, x, TargetImage(x_target), method, method_options=options, progress=False,
                               **attack_budget(config, ctx, eps), **attack)
        t = model(x).argmax(1)
        r_target = relevance(explain(model, x_target, method, t, **options))
        rise = pcc(res.maps_after, r_target) - pcc(res.maps_before, r_target)
        return per_image({"pcc_rise": rise, "success": res.success.float(), "class_kept": res.class_kept.float()},
                         part=Part.DEFENSE.value, method=p["method"], defense=p["defense"], eps=eps)

    def _curvature(self, ctx, config):
        model = ctx.model
        x, _ = self._images(ctx, config)
        rows = []
        for beta in config.betas:
            smooth = surgery.softplus_copy(model, beta)
            c = principal_curvature(smooth, x, model(x).argmax(1), iters=20, seed=config.seed)
            rows += per_image({"curvature": c}, part=Part.CURVATURE.value, beta=beta)
        return rows

    def _faithfulness(self, p, ctx, config):
        """The faithfulness test on up to ``faithfulness_n`` of the audit's images (not run, and
        not counted, with fewer than 10), calibrated by the references where there are 3 or more
        of the model's recipe (:meth:`_mismatch`), else reference-free."""
        x = ctx.x[:config.faithfulness_n]
        method = p["method"]
        if len(x) < 10:
            return [{"part": Part.FAITHFULNESS.value, "method": method, "images": len(x), "ratio": math.nan,
                     "p_value": math.nan, "manipulated": 0.0, "conclusive": 0.0, "margin": config.margin,
                     "calibrated": 0.0}]
        refs = self._references_once(config, ctx)
        options = defended(method, "none", config)[1]
        # references of another recipe (or fewer than 3) do not calibrate; they check the margin
        report = faithfulness_test(ctx.model, x, method, margin=config.margin, alpha=config.alpha, seed=config.seed,
                                   method_options=options, references=list(refs), calibrate=not self._mismatch(ctx))
        return [{"part": Part.FAITHFULNESS.value, "method": method, "images": report.images, "ratio": report.ratio,
                 "mass_ratio": report.mass_ratio, "p_value": report.p_value, "manipulated": float(report.manipulated),
                 "conclusive": float(report.conclusive), "margin": report.margin, "removal": report.removal,
                 "calibrated": float(report.calibrated), "detectable_ratio": report.detectable_ratio,
                 "reference_ratios": ", ".join(f"{v:.3f}" for v in report.reference_ratios),
                 "checked_references": report.checked_references,
                 "refuting_ratios": ", ".join(f"{v:.3f}" for v in report.refuting_ratios),
                 "mass_only": float(report.mass_only)}]

    def _references_once(self, config, ctx) -> List[nn.Module]:
        """The references, loaded (or trained) once per run for every method and test."""
        if ctx.references is None:
            ctx.references = self._references(config, ctx)
        return ctx.references

    def _mismatch(self, ctx) -> List[str]:
        """How the references differ from the audited model on the audit's labelled images
        (:func:`~manipex.defenses.combined_detection.reference_mismatch`), computed once per run."""
        if ctx.mismatch is None:
            ctx.mismatch = reference_mismatch(ctx.model, ctx.references, ctx.x, ctx.y) if len(ctx.x) else []
        return ctx.mismatch

    def _detection(self, p, ctx, config):
        model, method = ctx.model, p["method"]
        refs = self._references_once(config, ctx)
        shape = tuple(ctx.x.shape[1:])
        options = defended(method, "none", config)[1]
        report = detect_manipulation(model, shape, refs, method, n=config.noise_n, seed=config.seed,
                                     alpha=config.alpha, method_options=options)
        mismatch = self._mismatch(ctx)
        source = ctx.recipe.row() if ctx.recipe is not None and not config.references else {
            "reference_source": "given"}
        rows = [{"part": Part.DETECTION.value, "method": method, "score": report.score, "threshold": report.threshold,
                 "p_value": math.nan if report.p_value is None else report.p_value,
                 "manipulated": float(report.manipulated), "calibrated": float(report.calibrated),
                 "conclusive": float(report.conclusive),
                 "references_needed": math.nan if report.references_needed is None else report.references_needed,
                 "detectable_score": math.nan if report.detectable_score is None else report.detectable_score,
                 "mismatch": "; ".join(mismatch),
                 "references": len(refs), "reference_mean": sum(report.reference_scores) / len(refs),
                 "test": report.test, **source}]
        for sigma in config.weight_noise:
            noisy = with_weight_noise(model, sigma, config.seed)
            sim = noise_map_similarity(noisy, shape, method, n=config.noise_n, seed=config.seed,
                                       method_options=options).mean().item()
            rows.append({"part": Part.WEIGHT_NOISE.value, "method": method, "sigma": sigma, "similarity": sim,
                         "accuracy": accuracy(noisy, ctx.x, ctx.y)})
        return rows

    def tables(self, df, config):
        tables = self.new_tables()
        tables.add("verdict", None)  # first in the report; filled in below
        attack = _part(df, Part.ATTACK)
        if len(attack):
            tables.add("attack", attack.pivot_table(index=["method", "objective"], columns="eps", values="success",
                                                    aggfunc="mean").round(3))
        defense = _part(df, Part.DEFENSE)
        if len(defense):
            order = [d for d in DEFENSES if d in set(defense.defense)]
            tables.add("defense", defense.pivot_table(index="method", columns="defense", values="pcc_rise",
                                                      aggfunc="mean")[order].round(3), eps=eps_text(max(config.eps)))
        curvature = _part(df, Part.CURVATURE)
        if len(curvature):
            tables.add("curvature",
                       curvature.groupby("beta")["curvature"].median().sort_index(ascending=False).to_frame().round(4))
        detection = _part(df, Part.DETECTION)
        faithfulness = _part(df, Part.FAITHFULNESS)
        decisions = self.decision_table(faithfulness, detection, config.alpha)
        if len(decisions):
            tables.add("detection", decisions, alpha=f"{config.alpha:g}")
        if len(detection):
            detection = detection.assign(power=detection.get("detectable_score", math.nan))
            cols = ["score", "reference_mean", "threshold", "p_value", "power", "references", "test"]
            tables.add("noise_maps", detection.set_index("method")[cols].round(4), alpha=f"{config.alpha:g}")
            tables.add("references", self.reference_table(detection, config))
        noise = _part(df, Part.WEIGHT_NOISE)
        if len(noise):
            table = noise.assign(**{"accuracy (%)": noise.accuracy * 100}).pivot_table(
                index="sigma", columns="method", values=["similarity", "accuracy (%)"], aggfunc="mean").round(4)
            table.columns = [f"{value} {method}" for value, method in table.columns]
            tables.add("weight_noise", table)
        tables.add("verdict", self.verdict(attack, defense, curvature, detection, config, faithfulness))
        return tables

    @staticmethod
    def decision_table(faithfulness, detection, alpha: float, digits: Optional[int] = 4):
        """Every detection test from the stored rows, decided together by Holm's procedure at
        ``alpha`` (:func:`~manipex.defenses.combined_detection.holm_decision`, the decision of
        :func:`~manipex.defenses.combined_detection.combined_detection`): the faithfulness test
        counts where it ran on 10 or more images; the noise-map test where it is calibrated (3 or
        more references) and the references' loss matches the model's. Rounded to ``digits`` for
        the report's table; None keeps the p-values as computed (for the verdict's text)."""
        import pandas as pd

        rows = []
        for r in faithfulness.itertuples() if len(faithfulness) else ():
            ran = r.images >= 10
            calibrated = bool(getattr(r, "calibrated", 0))
            refuting = getattr(r, "refuting_ratios", "")
            refuting = refuting if isinstance(refuting, str) else ""
            mass_only = bool(getattr(r, "mass_only", 0))
            rows.append({"test": "faithfulness", "method": r.method, "statistic": r.ratio,
                         "bound": math.nan if calibrated else r.margin, "p_value": r.p_value,
                         "power": getattr(r, "detectable_ratio", math.nan),
                         "counted": ran and (mass_only or not refuting), "can_flag": bool(r.conclusive),
                         "note": (f"{int(r.images)} images: too few" if not ran else
                                  f"calibrated by the references' ratios {r.reference_ratios}" if calibrated else
                                  f"reference-free, the mass test alone: the ranking test flags clean references "
                                  f"too (their ratios {refuting} are below the margin)" if mass_only else
                                  f"reference-free, not counted: it flags clean references too (their ratios "
                                  f"{refuting} are below the margin)" if refuting else
                                  "reference-free: the margin is the bound")})
        for r in detection.itertuples() if len(detection) else ():
            mismatch = getattr(r, "mismatch", "")
            mismatch = mismatch if isinstance(mismatch, str) else ""
            calibrated = bool(r.calibrated)
            note = ("references differ from the model in " + mismatch if mismatch else
                    "" if calibrated else "uncalibrated with fewer than 3 references: shown, not counted")
            rows.append({"test": "noise-map similarity", "method": r.method, "statistic": r.score,
                         "bound": r.threshold, "p_value": r.p_value, "power": getattr(r, "detectable_score", math.nan),
                         "counted": calibrated and not mismatch, "can_flag": True, "note": note})
        if not rows:
            return pd.DataFrame()
        adjusted, flagged = holm_decision([r["p_value"] for r in rows], [r["counted"] for r in rows],
                                          [r.pop("can_flag") for r in rows], alpha)
        table = pd.DataFrame(rows)
        table.insert(5, "adjusted_p", [math.nan if a is None else a for a in adjusted])
        table.insert(6, "flagged", [float(f) for f in flagged])
        table["counted"] = table["counted"].astype(float)
        table = table.set_index(["test", "method"])
        return table.round(digits) if digits is not None else table

    @staticmethod
    def reference_table(detection, config):
        """The references the detection test used: the given files, or the recipe that trained
        them here (from the stored rows); None for rows stored before the recipe was recorded."""
        import pandas as pd

        if "reference_source" not in detection or not len(detection):
            return None
        first = detection.iloc[0]
        count = int(first["references"])
        if first["reference_source"] == "given":
            rows = [("source", f"given: {count} file(s)")] + [(f"reference {k}", str(path)) for k, path in
                                                              enumerate(config.references, 1)]
        elif isinstance(first.get("reference_arch"), str):
            arch = first["reference_arch"]
            built = (f"factory {arch}, called once per reference" if ":" in arch else f"zoo architecture {arch}")
            epochs = int(first["reference_epochs"])
            rows = [("source", f"trained here: {count} (none given)"),
                    ("architecture", built + (", behind the audited model's input normalisation"
                                              if config.normalization() is not None else "")),
                    ("training data", f"{int(first['reference_images'])} images of {config.dataset}, split train, "
                     f"labels {config.labels}"),
                    ("optimiser", "Adam, cross-entropy loss (manipex.models.train_classifier, deterministic)"),
                    ("learning rate", f"{float(first['reference_lr']):g}"),
                    ("batch size", str(int(first["reference_batch_size"]))),
                    ("epochs", str(epochs)),
                    ("seeds", f"{first['reference_seeds']} (reference k: torch.manual_seed(seed) before it is built; "
                     "the seed also orders its batches)")]
        else:
            return None
        return pd.DataFrame(rows, columns=["setting", "value"]).set_index("setting")

    @staticmethod
    def verdict(attack, defense, curvature, detection, config, faithfulness=None):
        import pandas as pd

        rows = []
        if len(attack):
            eps = max(config.eps)
            top = attack[attack.eps == eps].groupby(["method", "objective"])["success"].mean()
            worst = top.idxmax()
            rows.append(("Can the maps be manipulated by the input?",
                         f"{'yes' if top.max() >= 0.5 else 'partly' if top.max() > 0 else 'not at this budget'}: "
                         f"at eps = {eps_text(eps)} the {worst[1]} attack succeeds on {top.max():.0%} of the images "
                         f"with {worst[0]} (class kept); the map's own change is invisible to a user"))
        if len(defense):
            rise = defense.groupby("defense")["pcc_rise"].mean()
            best = rise.drop("none", errors="ignore").idxmin() if len(rise.drop("none", errors="ignore")) else None
            undefended = float(rise.get("none", float("nan")))
            if best is not None and not rise[best] < undefended - 0.01 and undefended == undefended:
                rows.append(("Which defense holds?", f"none: the adaptive attack raises the PCC with its target by "
                             f"{undefended:.3f} without defense and by {rise[best]:.3f} or more with each"))
            elif best is not None:
                rows.append(("Which defense holds?", f"{best}: the adaptive attack raises the PCC with its target by "
                             f"{rise[best]:.3f} against {undefended:.3f} without defense"))
        if len(curvature):
            med = curvature.groupby("beta")["curvature"].median().sort_index(ascending=False)
            if len(med) > 1 and med.iloc[-1] < med.iloc[0]:
                text = (f"the largest principal curvature falls from {med.iloc[0]:.3g} at beta = {med.index[0]:g} to "
                        f"{med.iloc[-1]:.3g} at beta = {med.index[-1]:g}: smoothing makes the maps harder to "
                        "manipulate")
            elif len(med) > 1:
                text = (f"the largest principal curvature does not fall with smoothing ({med.iloc[0]:.3g} at beta = "
                        f"{med.index[0]:g}, {med.iloc[-1]:.3g} at beta = {med.index[-1]:g})")
            else:
                text = (f"the largest principal curvature is {med.iloc[0]:.3g} at beta = {med.index[0]:g} "
                        "(one beta: no trend)")
            rows.append(("Curvature (Dombrowski Thm 1)", text))
        faithfulness = faithfulness if faithfulness is not None else pd.DataFrame()
        if len(detection) or len(faithfulness):
            rows.append(("Was the model itself manipulated?",
                         Audit.detection_finding(faithfulness, detection, config.alpha if config else 0.05)))
        rows.append(("What the audit cannot see", "manipulations of methods not audited; manipulations that keep "
                     "the map's ranking of pixels faithful (only its scale or low-ranked part moved) and act only on "
                     "inputs noise never reaches (a trigger patch); a manipulation of occlusion itself; input attacks "
                     "leave the model unchanged and are measured in (a), not detected in (d); the noise-map test is "
                     "only as good as the references (of the model's kind and recipe); the faithfulness test assumes "
                     "that a clean model's maps reach the margin's share of occlusion's faithfulness"))
        return pd.DataFrame(rows, columns=["question", "finding"]).set_index("question")

    @staticmethod
    def detection_finding(faithfulness, detection, alpha: float) -> str:
        """The verdict on model manipulation, naming the tests that flagged the model."""
        table = Audit.decision_table(faithfulness, detection, alpha, digits=None)  # p-values as computed
        if not len(table):
            return "not tested"
        decided = {}
        for r in faithfulness.itertuples() if len(faithfulness) else ():
            decided[("faithfulness", r.method)] = bool(r.conclusive) and r.images >= 10
        for r in detection.itertuples() if len(detection) else ():
            decided[("noise-map similarity", r.method)] = bool(getattr(r, "conclusive", 1))
        rows = [{"test": test, "method": method, "p_value": r.p_value, "adjusted_p": r.adjusted_p,
                 "flagged": r.flagged > 0, "counted": r.counted > 0, "reference_based": not test.startswith("faith"),
                 "decided": decided.get((test, method), True)} for (test, method), r in table.iterrows()]
        mismatch = sorted({m for m in detection.get("mismatch", []) if isinstance(m, str) and m}) if len(
            detection) else []
        parts = []
        if len(detection) and "conclusive" in detection:
            for r in detection[detection.conclusive <= 0].itertuples():
                needed = (f" (about {int(r.references_needed)} are needed)"
                          if r.references_needed == r.references_needed else "")
                parts.append(f"the {r.method} noise-map threshold {r.threshold:.3f} is above the largest attainable "
                             f"similarity (1), so {int(r.references)} references are too few for their spread{needed}")
        if len(faithfulness):
            for r in faithfulness[faithfulness.conclusive <= 0].itertuples():
                refuting = getattr(r, "refuting_ratios", "")
                if r.images < 10:
                    parts.append(f"the {r.method} faithfulness test had only {int(r.images)} images (10 are needed)")
                elif bool(getattr(r, "mass_only", 0)):
                    parts.append(f"the reference-free {r.method} ranking test flags clean references too (their "
                                 f"ratios {refuting} are below the margin {r.margin:g}) and is dropped; its mass test "
                                 "alone finds no evidence; references of the model's recipe calibrate both")
                elif isinstance(refuting, str) and refuting:
                    parts.append(f"the reference-free {r.method} faithfulness test flags clean references too (their "
                                 f"ratios {refuting} are below the margin {r.margin:g}), so it cannot tell this model "
                                 "from a clean one; references of the model's recipe calibrate it")
                else:
                    parts.append(f"the {r.method} faithfulness test cannot compare: occlusion does not beat random "
                                 "rankings on these images")
        text = verdict_text(rows, alpha, mismatch, parts)
        if not text.startswith("MANIPULATED"):
            ratios = {r.method: r.reference_ratios for r in faithfulness.itertuples()
                      if bool(getattr(r, "calibrated", 0))} if len(faithfulness) else {}

            def against(test, method, r) -> str:
                if test == "faithfulness" and method in ratios:
                    return f"the references' ratios {ratios[method]}"
                return f"{r.bound:.3f}"

            text += ". " + ", ".join(f"{test} of {method}: {r.statistic:.3f} against {against(test, method, r)}"
                                     for (test, method), r in table.iterrows())
        uncalibrated = len(detection) and not bool(detection.calibrated.min() > 0)
        if uncalibrated:
            text += " (the noise-map test is uncalibrated with fewer than 3 references: shown, not counted)"
        return text

    def figures(self, df, config, out):
        attack = _part(df, Part.ATTACK)
        if not len(attack):
            return []

        @styled
        def draw():
            objectives = [o for o in OBJECTIVES if o in set(attack.objective)]
            fig, axes = subplots(1, len(objectives), figsize=(3.4 * len(objectives) + 1.6, 3.0), squeeze=False)
            counts = []
            for ax, objective in zip(axes[0], objectives):
                part = attack[attack.objective == objective]
                for method, group in part.groupby("method", sort=False):
                    eps = sorted(group.eps.unique())
                    stats = [summarize(group[group.eps == e]["success"]) for e in eps]
                    counts += [s[3] for s in stats]
                    line_with_interval(ax, eps, stats, method)
                single_x(ax, part.eps)
                ax.set_ylim(-0.03, 1.03)
                ax.set_xlabel("eps (L-infinity, pixels in [0, 1])")
                top = ax.secondary_xaxis("top", functions=(lambda e: e * 255, lambda v: v / 255))
                top.set_xlabel("eps x 255", fontsize=7)
                top.tick_params(labelsize=7)
                ax.set_ylabel("share attacked successfully, class kept\n(higher = less trustworthy)")
                ax.set_title(f"{objective} attack")
            legend_outside(axes[0][-1], title="method")
            fig.suptitle(f"input manipulation: success against the budget ({CI_TEXT}; {n_text(counts)})")
            return save_figure(fig, Path(out) / "audit_success_vs_eps.png")

        return [draw()]
