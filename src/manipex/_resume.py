"""Resumable training runs: the state file a fine-tuning run saves after every epoch.

Shared by :func:`manipex.attacks.manipulate_model` and :func:`manipex.defenses.train_robust`.
A file is written atomically (a temporary file, then ``os.replace``), so a run killed while
saving keeps the previous epoch; it is read with ``weights_only=True`` (no pickled code runs);
and it is refused, and left as it is, unless the same function wrote it with the same settings:
a path that holds anything else may be the user's own weights.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ._files import replacing

#: what every state file holds besides its format and settings key
_FIELDS = {"key", "model", "optimizer", "epoch", "history"}


def config_key(**config: Any) -> str:
    """A short hash of a run's settings: a state file resumes only the run that wrote it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunState:
    """The state file of one run of ``owner`` (a public function's name) with settings ``key``.

    Args:
        path: the file (its folder is created); a folder, or a folder that cannot be written,
            is refused before any training.
        owner: the function that writes it, e.g. ``"manipulate_model"``; its files carry the
            format ``manipex.<owner>/1``.
        key: :func:`config_key` of the run's settings.
    """

    def __init__(self, path: Union[str, os.PathLike], *, owner: str, key: str) -> None:
        self.path, self.owner, self.key = Path(path), owner, key
        self.format = f"manipex.{owner}/1"
        if self.path.is_dir():
            raise ValueError(f"{owner}: checkpoint {str(self.path)!r} is a folder; pass a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path.parent, os.W_OK):
            raise PermissionError(f"{owner}: cannot write the checkpoint in {str(self.path.parent)!r}")

    def load(self) -> Optional[Dict[str, Any]]:
        """The state an earlier run with the same settings saved, or None when there is no file."""
        if not self.path.exists():
            return None
        refuse = (f"{self.owner}: checkpoint {str(self.path)!r} exists and is not a {self.owner} checkpoint; it is "
                  "left untouched. Pass a new path (or delete the file if it is yours to delete)")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # never runs pickled code
        except Exception:  # noqa: BLE001 -- garbage, pickled code, or another format: all refused alike
            raise ValueError(refuse) from None
        if not isinstance(state, dict) or state.get("format") != self.format or not _FIELDS <= set(state):
            raise ValueError(refuse)
        if state["key"] != self.key:
            raise ValueError(f"{self.owner}: checkpoint {str(self.path)!r} holds a run with other settings "
                             "(method, objective, schedule or data); pass another path, or delete it to start over")
        return state

    def save(self, *, model: Dict[str, Any], optimizer: Dict[str, Any], epoch: int, history: Any) -> None:
        """Write the state after ``epoch`` epochs (state dicts of the model and the optimizer)."""
        with replacing(self.path) as tmp:
            torch.save({"format": self.format, "key": self.key, "model": model, "optimizer": optimizer,
                        "epoch": epoch, "history": history}, tmp)


def restore(state: Optional[Dict[str, Any]], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> Tuple[int, List[Any]]:
    """Load a state :meth:`RunState.load` returned into ``model`` and ``optimizer``:
    ``(epochs done, history)``; ``(0, [])`` for a run that starts afresh (``state`` None)."""
    if state is None:
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), list(state["history"])
