"""A restricted unpickler: manipex never executes code from pickles that users hand it.

Only the globals needed to rebuild numpy arrays are resolved; every other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``, arbitrary classes, ...) raises
:class:`pickle.UnpicklingError` before it can be called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""The only ``(module, name)`` globals a pickle may reference: enough for numpy arrays."""


class RestrictedUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` that resolves only :data:`ALLOWED_GLOBALS`.

    Plain containers (dict, list, tuple, bytes, str, int, float) need no globals and load as usual.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global or raise :class:`pickle.UnpicklingError`."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from a pickle: only numpy arrays "
                "and plain containers are allowed"
            ) from None


def restricted_loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Args:
        data: The pickle.
        encoding: How Python 2 ``str`` objects are decoded (``"bytes"`` keeps them as bytes).
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
