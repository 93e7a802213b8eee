"""LRP composites: which rule each layer of a model gets.

A :class:`Composite` is data: an ordered list of ``(predicate, rule)`` pairs; a layer gets the
rule of the first predicate that holds for it, else the rule of :data:`BASE_RULES` for its kind
(activations, standalone BatchNorm and normalisation layers pass relevance: the identity rule
with the normaliser held constant, as AttnLRP and Zennit treat them;
products of two activations use :class:`~manipex.explainers.rules.Product`, the gate held
constant; parameter-free linear layers such as a
residual sum, average pooling, means and interpolation share it proportionally, max-pooling is
winner-takes-all, concatenation and reshapes route it back). This is Zennit's idea
(``LayerMapComposite``), without hooks and with weight gradients kept.

Predicates take a :class:`~manipex.explainers.graph.Layer`: :func:`first_layer`, :func:`conv`,
:func:`dense`, :func:`kinds`, :func:`module_type`, or any function of your own::

    from manipex.explainers.composites import Composite, first_layer, conv, dense
    from manipex.explainers.rules import ZBox, Gamma, Epsilon
    mine = Composite([(first_layer, ZBox(-1.0, 1.0)), (conv, Gamma(0.1)), (dense, Epsilon(0.01))])
    manipex.explain(model, x, "lrp", composite=mine)

Built-in composites, by name (``explain(..., "lrp", composite=name)``), are made by factories
from the LRP options (``low``, ``high``, ``epsilon``, ``alpha``, ``beta``, ``gamma``,
``stabilizer``); :func:`register_composite` adds a name of your own.

========================  ==========================================================================
``zb_zplus``              zB on the first layer, z+ (bias left out) on every other conv/dense layer
                          (Dombrowski et al. 2019, Eq. 2-3); LRP's default (``"auto"``) on models
                          without attention
``epsilon``               ε on every conv/dense layer (bias included; Captum's ``EpsilonRule``)
``alpha_beta``            αβ on every conv/dense layer, bias left out (Bach et al. 2015)
``epsilon_plus``          z+ on convolutions, ε on dense layers (Zennit's ``EpsilonPlus``)
``epsilon_plus_flat``     the same with the flat rule on the first layer (Zennit's ``EpsilonPlusFlat``)
``epsilon_gamma_box``     zB on the first convolution, γ on the other convolutions, ε on dense layers
                          (Zennit's ``EpsilonGammaBox``; Montavon et al. 2019, Sec. 10.2)
``attn_lrp``              transformers (LRP's default, ``"auto"``, on models that attend), AttnLRP
                          (Achtibat et al. 2024): ε on conv/dense layers, the
                          identity rule on activations, the normaliser held constant in LayerNorm
                          (:class:`~manipex.explainers.rules.LinearizedNorm`), the softmax rule
                          (:class:`~manipex.explainers.rules.Softmax`), the uniform rule on matrix
                          and element-wise products of two activations
``cp_lrp``                transformers, CP-LRP (Ali et al. 2022): as ``attn_lrp`` with the attention
                          matrix held constant in ``A @ v`` (no relevance to queries and keys)
``attn_lrp_gamma``,       the same with γ (option ``gamma``) instead of ε on conv/dense layers, as
``cp_lrp_gamma``          LXT recommends for vision transformers
========================  ==========================================================================

Every composite uses AttnLRP's softmax and uniform matmul rules on attention (the base rules), so
the CNN composites also run on transformers. Where the transformer composites conserve: every
rule but the softmax's conserves on a model without biases (up to the stabilisers); the softmax
rule does not (its implicit bias absorbs a share, AttnLRP Sec. 3.3), so ``attn_lrp``'s map sums
to the logit only up to that share, and ``cp_lrp``, which sends nothing through the softmax,
conserves. Additive constants (position embeddings, class tokens, biases) absorb their share in
every composite.

The three Zennit composites follow Zennit 0.5 exactly, including its bias handling (z+ and γ
keep the positive bias in the denominator); the first three follow manipex's papers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

from .._registry import Registry
from .graph import Layer
from .rules import (AlphaBeta, Epsilon, Flat, Gamma, Gradient, LinearizedNorm, Matmul, Norm, Pass, Product, Rule,
                    Softmax, ZBox, ZPlus)

Predicate = Callable[[Layer], bool]


def first_layer(layer: Layer) -> bool:
    """The conv/dense layer(s) that read the model input (no other such layer before)."""
    return layer.first and layer.kind in ("conv", "dense")


def conv(layer: Layer) -> bool:
    """A convolution (Conv1d/2d/3d, a following BatchNorm merged)."""
    return layer.kind == "conv"


def dense(layer: Layer) -> bool:
    """A fully connected layer (Linear, a following BatchNorm merged)."""
    return layer.kind == "dense"


def kinds(*names: str) -> Predicate:
    """Layers of any of the given kinds (see :class:`~manipex.explainers.graph.Layer`)."""
    return lambda layer: layer.kind in names


def module_type(*types: type) -> Predicate:
    """Layers whose module is an instance of one of ``types``, e.g. ``module_type(nn.Conv1d)``."""
    return lambda layer: isinstance(layer.module, types)


def both(a: Predicate, b: Predicate) -> Predicate:
    """Layers for which both predicates hold."""
    return lambda layer: a(layer) and b(layer)


def base_rules(stabilizer: float = 1e-6) -> List[Tuple[Predicate, Rule]]:
    """The rules of layers without weights, shared by every composite."""
    return [
        (kinds("activation", "batchnorm", "norm"), Pass()),
        (kinds("product"), Product()),
        (kinds("matmul"), Matmul(stabilizer=stabilizer)),
        (kinds("softmax"), Softmax()),
        (kinds("add", "avgpool", "mean", "upsample", "scale"), Norm(stabilizer)),
        (kinds("maxpool", "cat", "reshape", "identity"), Gradient()),
    ]


BASE_RULES = base_rules()


@dataclass(frozen=True)
class Composite:
    """An ordered map from layers to rules; the first matching predicate wins.

    Args:
        rules: ``(predicate, rule)`` pairs, tried in order.
        name: shown in messages and reports.
        stabilizer: of the proportional rule on parameter-free layers (residual sums,
            average pooling), which :data:`BASE_RULES` supplies when no pair matches.
    """

    rules: Sequence[Tuple[Predicate, Rule]]
    name: str = "custom"
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        for i, pair in enumerate(self.rules):
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[0]) and isinstance(pair[1], Rule)):
                raise TypeError(
                    f"Composite: entry {i} must be a (predicate, Rule) pair, got {pair!r}; rules "
                    "are instances of manipex.explainers.rules.Rule"
                )
        object.__setattr__(self, "_all", tuple(self.rules) + tuple(base_rules(self.stabilizer)))

    def rule_for(self, layer: Layer) -> Rule:
        """The rule of ``layer``."""
        for predicate, rule in self._all:
            if predicate(layer):
                return rule
        return Gradient()  # pragma: no cover - every kind is in the base rules


CompositeFactory = Callable[..., Composite]
_COMPOSITES: Registry[CompositeFactory] = Registry("LRP composite")


def register_composite(name: str, factory: CompositeFactory, *, overwrite: bool = False) -> None:
    """Make ``composite=name`` build ``factory(**lrp_options)`` (``low``, ``high``,
    ``epsilon``, ``alpha``, ``beta``, ``gamma``, ``stabilizer``; take ``**_`` for the rest)."""
    _COMPOSITES.register(name, factory, overwrite=overwrite)


def composites() -> List[str]:
    """Names of the registered composites."""
    return _COMPOSITES.names()


def get_composite(composite: Union[str, Composite], options: Dict[str, Any]) -> Composite:
    """A composite by name (built from the LRP ``options``) or as given."""
    if isinstance(composite, Composite):
        return composite
    if not isinstance(composite, str) or composite not in _COMPOSITES:
        raise ValueError(
            f"explain(method='lrp'): composite must be a Composite or one of {', '.join(composites())}; "
            f"got {composite!r}"
        )
    return _COMPOSITES[composite](**options)


def _zb_zplus(low, high, stabilizer, **_):
    return Composite([(first_layer, ZBox(low, high, stabilizer)), (kinds("conv", "dense"), ZPlus(stabilizer))],
                     "zb_zplus", stabilizer)


def _epsilon(epsilon, stabilizer, **_):
    return Composite([(kinds("conv", "dense"), Epsilon(epsilon))], "epsilon", stabilizer)


def _alpha_beta(alpha, beta, stabilizer, **_):
    return Composite([(kinds("conv", "dense"), AlphaBeta(alpha, beta, stabilizer))], "alpha_beta", stabilizer)


def _epsilon_plus(epsilon, stabilizer, **_):
    return Composite([(conv, ZPlus(stabilizer, bias=True)), (dense, Epsilon(epsilon))], "epsilon_plus", stabilizer)


def _epsilon_plus_flat(epsilon, stabilizer, **_):
    return Composite([(first_layer, Flat(stabilizer)), (conv, ZPlus(stabilizer, bias=True)), (dense, Epsilon(epsilon))],
                     "epsilon_plus_flat", stabilizer)


def _epsilon_gamma_box(low, high, epsilon, gamma, stabilizer, **_):
    return Composite([(both(first_layer, conv), ZBox(low, high, stabilizer)), (conv, Gamma(gamma, stabilizer)),
                      (dense, Epsilon(epsilon))], "epsilon_gamma_box", stabilizer)


def _transformer(name: str, hold_attention: bool, linear: Rule, stabilizer: float) -> Composite:
    return Composite([(kinds("conv", "dense"), linear), (kinds("norm"), LinearizedNorm(stabilizer)),
                      (kinds("matmul"), Matmul(hold_attention, stabilizer)), (kinds("softmax"), Softmax()),
                      (kinds("product"), Product(uniform=True))], name, stabilizer)


def _attn_lrp(epsilon, stabilizer, **_):
    return _transformer("attn_lrp", False, Epsilon(epsilon), stabilizer)


def _cp_lrp(epsilon, stabilizer, **_):
    return _transformer("cp_lrp", True, Epsilon(epsilon), stabilizer)


def _attn_lrp_gamma(gamma, stabilizer, **_):
    return _transformer("attn_lrp_gamma", False, Gamma(gamma, stabilizer), stabilizer)


def _cp_lrp_gamma(gamma, stabilizer, **_):
    return _transformer("cp_lrp_gamma", True, Gamma(gamma, stabilizer), stabilizer)


for _name, _factory in [("attn_lrp", _attn_lrp), ("cp_lrp", _cp_lrp), ("attn_lrp_gamma", _attn_lrp_gamma),
                        ("cp_lrp_gamma", _cp_lrp_gamma)]:
    register_composite(_name, _factory)

for _name, _factory in [("zb_zplus", _zb_zplus), ("epsilon", _epsilon), ("alpha_beta", _alpha_beta),
                        ("epsilon_plus", _epsilon_plus), ("epsilon_plus_flat", _epsilon_plus_flat),
                        ("epsilon_gamma_box", _epsilon_gamma_box)]:
    register_composite(_name, _factory)

__all__ = [
    "Composite", "BASE_RULES", "base_rules", "register_composite", "composites", "get_composite",
    "first_layer", "conv", "dense", "kinds", "module_type", "both",
]
