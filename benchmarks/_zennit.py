"""Shared by the benchmarks: import Zennit where torchvision is missing or broken."""
from __future__ import annotations

import sys
import types
from typing import List

from manipex.models.resnet import BasicBlock, Bottleneck


def import_zennit():
    """``(composites, canonizers, attribution)`` of Zennit, or None with the reason printed.

    Zennit imports torchvision (for its ResNet canonizers) at import time. Where torchvision is
    missing or broken, a minimal stub is put in ``sys.modules`` for the import and taken out
    again afterwards. Its ``BasicBlock`` and ``Bottleneck`` are manipex's zoo blocks, which
    have torchvision's attribute names and forward, so Zennit's ``ResNetCanonizer`` applies to
    manipex's ResNets as to torchvision's.
    """
    inserted: List[str] = []
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported, broken torchvision
        tv = types.ModuleType("torchvision")
        tv_models = types.ModuleType("torchvision.models")
        tv_resnet = types.ModuleType("torchvision.models.resnet")
        tv_resnet.BasicBlock, tv_resnet.Bottleneck = BasicBlock, Bottleneck
        tv.models, tv_models.resnet = tv_models, tv_resnet
        for module in (tv, tv_models, tv_resnet):
            sys.modules[module.__name__] = module
            inserted.append(module.__name__)
    try:
        import zennit.attribution
        import zennit.canonizers
        import zennit.composites

        return zennit.composites, zennit.canonizers, zennit.attribution
    except Exception as err:
        print(f"zennit: not available ({type(err).__name__}: {err})")
        return None
    finally:
        for name in inserted:
            sys.modules.pop(name, None)
