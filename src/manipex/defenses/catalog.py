"""The defenses of a shown map, by name: what map each shows, and how an adaptive attacker who
knows the defense attacks it (the defense-aware evaluation of Dombrowski et al. 2019, Sec. 4,
and Rieger & Hansen 2020).

| name | the map shown | the adaptive attack |
|---|---|---|
| ``none`` | the method's map as is | through the Softplus surrogate with β growth |
| ``beta_smoothing`` | the map on the Softplus(β) model (Dombrowski Sec. 4) | exactly, no further surrogate |
| ``smoothgrad`` | SmoothGrad of the method (Smilkov et al. 2017; Dombrowski Thm 2) | through its samples |
| ``agg_mean`` | the mean of the method with gradient, guided backprop and LRP (Rieger 2020) | through all members |

:func:`defended` gives the method, its options and the attack's options of a defense; the
experiments and the audit take their defenses from :data:`DEFENSES`.
"""  # noqa: E501 -- the rows of the table above cannot be wrapped
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .._registry import Registry

#: ``member_options(method) -> options``: the options of a method inside a defense (the
#: members of AGG-Mean); by default each method's own defaults.
MemberOptions = Callable[[str], Dict[str, Any]]


@dataclass(frozen=True)
class Defense:
    """How a defense changes the map a user is shown, and how an adaptive attacker (who knows
    the defense) optimises it. ``shown(method, options, settings)`` gives the method and options
    of the shown map; ``attack`` are :func:`~manipex.attacks.manipulate_input` options."""

    name: str
    description: str
    shown: Callable[[str, Dict[str, Any], Mapping[str, Any]], Tuple[str, Dict[str, Any]]]
    attack: Mapping[str, Any]


def _agg_mean_members(method: str, settings: Mapping[str, Any]):
    member = settings.get("member_options") or (lambda m: {})
    return [(m, member(m)) for m in [method] + [k for k in ("gradient", "guided_backprop", "lrp") if k != method]]


DEFENSES: Registry[Defense] = Registry("defense")
for _defense in (
    Defense("none", "the method's map as is; attacked through the Softplus surrogate with beta growth",
            lambda m, o, s: (m, o), {}),
    Defense("beta_smoothing", "the map on the Softplus(softplus_beta) model (Dombrowski Sec. 4); attacked "
            "exactly, no further surrogate", lambda m, o, s: (m, {**o, "softplus_beta": s["softplus_beta"]}),
            {"beta": None}),
    Defense("smoothgrad", "SmoothGrad of the method, smoothgrad_samples samples, sigma = 0.1 (Smilkov 2017; "
            "Dombrowski Thm 2); attacked through its samples",
            lambda m, o, s: ("smoothgrad", {"base": m, "base_options": o, "samples": s["smoothgrad_samples"],
                                            "sigma": 0.1, "seed": s["seed"]}), {}),
    Defense("agg_mean", "the mean of the method with gradient, guided backprop and LRP (Rieger 2020)",
            lambda m, o, s: ("agg_mean", {"methods": _agg_mean_members(m, s)}), {}),
):
    DEFENSES.register(_defense.name, _defense)


def defended(method: str, defense: str, options: Optional[Dict[str, Any]] = None, *, softplus_beta: float = 1.0,
             smoothgrad_samples: int = 5, seed: int = 0,
             member_options: Optional[MemberOptions] = None) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """``(method, options, attack options)`` of the map that ``defense`` shows for ``method``
    with ``options``: β of β-smoothing, the SmoothGrad samples and seed, the options of
    AGG-Mean's members (``member_options``). ``ValueError`` naming the defenses for an unknown one."""
    spec = DEFENSES.get(defense)
    settings = {"softplus_beta": softplus_beta, "smoothgrad_samples": smoothgrad_samples, "seed": seed,
                "member_options": member_options}
    shown_method, shown_options = spec.shown(method, dict(options or {}), settings)
    return shown_method, shown_options, dict(spec.attack)


__all__ = ["DEFENSES", "Defense", "defended"]
