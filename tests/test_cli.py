"""The README's main command, at a small size."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from manipex.cli import main


def test_explain_writes_a_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(tmp_path / "cache"))
    from manipex.models import pretrained

    quick = dataclasses.replace(pretrained.DEFAULT_RECIPES["mnist"], epochs=1)
    monkeypatch.setitem(pretrained.DEFAULT_RECIPES, "mnist", quick)
    assert main(["explain", "--n", "2", "--out", str(tmp_path / "out"), "--quiet",
                 "--methods", "gradient", "lrp", "pattern_attribution"]) == 0
    out = capsys.readouterr().out
    path = Path(out.strip().split("wrote ")[-1])
    assert path.exists() and path.stat().st_size > 1000


def test_explain_rejects_unknown_method(capsys):
    assert main(["explain", "--methods", "saliency"]) == 2
    assert "unknown method 'saliency'" in capsys.readouterr().err


def test_methods_lists_all(capsys):
    main(["methods"])
    assert "integrated_gradients" in capsys.readouterr().out
