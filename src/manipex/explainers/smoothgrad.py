"""SmoothGrad (Smilkov et al. 2017) over any other method.

``h(x) = 1/n sum_s base(x + sigma_x * e_s)`` with ``e_s ~ N(0, I)`` and, by default,
``sigma_x = sigma * (max(x) - min(x))`` per sample (Smilkov's noise level relative to the
input range). The class explained is the one of the clean ``x``.

The noise ``e_s`` is drawn per sample from a generator seeded with ``seed``, one draw of one
input's shape per sample, shared by all images of the batch: the map of an image does not
depend on the batch it is in nor on ``batch_size``, and a fixed ``seed`` makes the map a
deterministic, exactly differentiable function of ``x`` and the weights.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_real, predicted_target
from .base import Explainer, get_explainer
from .gradient import check_batch_size, chunk_length
from .recompute import recomputed


class SmoothGrad(Explainer):
    """SmoothGrad; Captum's ``NoiseTunnel(..., nt_type="smoothgrad")``.

    Options:
        base: the method to smooth (any registered method but ``smoothgrad``).
        base_options: dict of options of the base method.
        samples: number of noisy copies (Smilkov et al. use 50).
        sigma: noise standard deviation, relative to each input's range (``relative=True``,
            Smilkov's 0.15) or absolute (``relative=False``).
        relative: see ``sigma``.
        batch_size: rows per evaluation of the base method (None: all samples at once;
            ``"auto"``, the default: as integrated gradients', see
            :data:`~manipex.explainers.gradient.AUTO_ROWS`);
            chunks are summed without detaching; with ``create_graph`` each chunk's graph is
            rebuilt in the backward pass instead of kept
            (:func:`~manipex.explainers.recompute.recomputed`): the peak memory of one chunk.
        seed: seed of the noise; None draws one from torch's global generator.
    """

    name = "smoothgrad"
    options = {"base": "gradient", "base_options": None, "samples": 50, "sigma": 0.15,
               "relative": True, "batch_size": "auto", "seed": None}

    def validate_options(self):
        c, where = self.config, "explain(method='smoothgrad')"
        if c["base"] == "smoothgrad":
            raise ValueError(f"{where}: base cannot be 'smoothgrad' itself")
        if c["base_options"] is not None and not isinstance(c["base_options"], dict):
            raise TypeError(f"{where}: base_options must be None or a dict of the base method's options, "
                            f"got {type(c['base_options']).__name__}")
        self.base = get_explainer(c["base"], **(c["base_options"] or {}))
        check_int(c["samples"], where=where, name="samples", ge=1)
        check_real(c["sigma"], where=where, name="sigma", ge=0)
        check_bool(c["relative"], where=where, name="relative")
        check_int(c["seed"], where=where, name="seed", ge=0, le=2**63 - 1, allow_none=True)
        check_batch_size(c["batch_size"], self.name)

    def attribute(self, model, x, target, create_graph):
        c = self.config
        target = predicted_target(model, x, target, where="explain(method='smoothgrad')")
        n, rest = x.shape[0], x.shape[1:]

        def sigma_of(inputs: Tensor) -> Tensor:
            sigma = torch.as_tensor(float(c["sigma"]), dtype=x.dtype, device=x.device)
            if c["relative"]:
                flat = inputs.flatten(1)
                sigma = sigma * (flat.amax(1) - flat.amin(1)).reshape(n, *([1] * len(rest)))
            return sigma

        seed = c["seed"] if c["seed"] is not None else int(torch.randint(0, 2**62, ()).item())
        generator = torch.Generator(device="cpu").manual_seed(seed)
        per_chunk = chunk_length(c["batch_size"], n, c["samples"], x, create_graph)
        total = torch.zeros_like(x)
        for start in range(0, c["samples"], per_chunk):
            k = min(per_chunk, c["samples"] - start)
            noise = torch.stack([torch.randn(rest, generator=generator, dtype=x.dtype) for _ in range(k)])
            noise = noise.to(x.device).unsqueeze(1)  # (k, 1, ...): one draw per sample, all images

            def chunk(inputs: Tensor, noise: Tensor = noise, k: int = k) -> Tensor:
                noisy = (inputs.unsqueeze(0) + sigma_of(inputs).unsqueeze(0) * noise).reshape(k * n, *rest)
                return self.base.compute(model, noisy, target.repeat(k), create_graph).reshape(k, n, *rest).sum(0)

            # chunks of a create_graph map are rebuilt in the backward pass, one at a time
            total = total + (recomputed(chunk, x, model) if create_graph and per_chunk < c["samples"] else chunk(x))
        return total / c["samples"]
