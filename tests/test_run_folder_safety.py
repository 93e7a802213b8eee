"""Issue 26, run folders: a run, a resume and a report never write through a symbolic link (the
file it points to is a user's), a report never imports the factory a folder's meta.json names,
and rows whose config is unknown are never resumed."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from manipex._files import LinkedFileError, replacing  # noqa: E402
from manipex.cli import main  # noqa: E402
from manipex.experiments import run  # noqa: E402
from manipex.experiments.config import ConfigError  # noqa: E402
from manipex.experiments.report import report_from_folder  # noqa: E402
from manipex.experiments.store import FolderLock, ResultStore  # noqa: E402
from manipex.figures import save_figure  # noqa: E402

QUICK = {"n": 2, "batch": 2, "steps": 5, "methods": ["gradient"], "defenses": ["none"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished quick run: the files a run writes, relative to its folder."""
    out = tmp_path_factory.mktemp("finished")
    run("quick", overrides=QUICK, out=out, quiet=True)
    folder = out / "quick"
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert {Path("results.jsonl"), Path("meta.json"), Path("report.html")} <= set(files)
    assert any(p.suffix == ".png" for p in files)
    return folder, files


def victims(root: Path, n: int):
    """``n`` files of a user, outside every run folder, with known bytes."""
    root.mkdir()
    out = []
    for i in range(n):
        path = root / f"precious{i}.txt"
        path.write_bytes(f"the user's file {i}\n".encode())
        out.append(path)
    return out


@pytest.mark.parametrize("command", ["run", "resume", "report"])
def test_a_link_planted_at_any_file_a_run_writes_leaves_its_target_untouched(finished, tmp_path, command):
    """A link at every file of a finished run (results, meta, report, figures, maps) pointing to
    a user's file: the run, its resume and its report refuse the folder, naming a link, and every
    user file keeps its bytes."""
    folder, files = finished
    out = tmp_path / "out"
    target = out / "quick"
    users = victims(tmp_path / "home", len(files) + 1)
    for rel, victim in zip(files + [Path("results.jsonl.lock")], users):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.name in ("meta.json",) and command != "run":  # a real meta: the folder reads as a run folder
            (target / rel).write_bytes((folder / rel).read_bytes())
            continue
        os.symlink(victim, target / rel)
    before = {p: p.read_bytes() for p in users}
    if command == "report":
        with pytest.raises(LinkedFileError, match="is a symbolic link: manipex never writes through a link"):
            report_from_folder(target)
    else:
        with pytest.raises(LinkedFileError, match=r"quick/\S+ is a symbolic link"):
            run("quick", overrides=QUICK, out=out, quiet=True)
    assert {p: p.read_bytes() for p in users} == before
    code = main(["report", str(target)])
    assert code == 2 and {p: p.read_bytes() for p in users} == before


def test_every_writer_of_a_run_folder_refuses_or_replaces_a_link(tmp_path):
    """Below the folder check: results are appended and the lock taken only where no link sits
    (named in the error); files written whole (figures, maps, models, checkpoints, report, meta)
    replace a link with a new file, and the file it pointed to keeps its bytes."""
    user = tmp_path / "user.txt"
    user.write_bytes(b"keep me\n")
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(user, folder / "results.jsonl")
    with pytest.raises(LinkedFileError, match="results.jsonl is a symbolic link"):
        ResultStore(folder).append("unit", [{"v": 1}])
    os.symlink(user, folder / "results.jsonl.lock")
    with pytest.raises(LinkedFileError, match="results.jsonl.lock is a symbolic link"):
        FolderLock(folder / "results.jsonl.lock", folder).acquire()
    os.symlink(user, folder / "figure.png")
    fig = plt.figure()
    save_figure(fig, folder / "figure.png", formats=["pdf"])
    plt.close(fig)
    assert not (folder / "figure.png").is_symlink() and (folder / "figure.png").read_bytes()[:4] == b"\x89PNG"
    os.symlink(user, folder / "maps.safetensors")
    with replacing(folder / "maps.safetensors") as tmp:
        Path(tmp).write_bytes(b"new")
    assert (folder / "maps.safetensors").read_bytes() == b"new" and not (folder / "maps.safetensors").is_symlink()
    assert user.read_bytes() == b"keep me\n"


def test_a_report_imports_nothing_and_needs_no_weights_file(tmp_path, monkeypatch):
    """``manipex report`` on a folder whose meta.json names a factory module: the module (a
    marker on sys.path that writes a file when imported) is never imported, and the weights
    file it names may be gone; a run with the same config imports it, as it must."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_factory_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                  "def build():\n    raise SystemExit('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "sent" / "audit"
    folder.mkdir(parents=True)
    config = {"arch": "evil_factory_mod:build", "weights": str(tmp_path / "moved" / "model.pt"), "methods": ["gradient"]}
    (folder / "meta.json").write_text(json.dumps({"experiment": "audit", "config": config}))
    (folder / "results.jsonl").write_text("")
    page = report_from_folder(folder)
    assert page.is_file() and not marker.exists() and "evil_factory_mod" not in sys.modules
    assert main(["report", str(folder)]) == 0 and not marker.exists()


def test_rows_whose_config_is_unknown_are_not_resumed(finished, tmp_path):
    """meta.json removed from a folder with finished units: the run is refused (naming the
    missing record and --fresh), the rows stay as they were; --fresh starts over."""
    folder, _ = finished
    out = tmp_path / "out"
    (out / "quick").mkdir(parents=True)
    rows = (folder / "results.jsonl").read_bytes()
    (out / "quick" / "results.jsonl").write_bytes(rows)
    with pytest.raises(ConfigError, match="no meta.json, so the config they were made with is unknown.*--fresh"):
        run("quick", overrides={**QUICK, "steps": 6}, out=out, quiet=True)
    assert (out / "quick" / "results.jsonl").read_bytes() == rows and not (out / "quick" / "meta.json").exists()
    run("quick", overrides={**QUICK, "steps": 6}, out=out, quiet=True, fresh=True)
    assert json.loads((out / "quick" / "meta.json").read_text())["config"]["steps"] == 6


def test_every_file_of_a_run_gets_the_mode_a_plain_open_would_give(finished):
    """report.html, meta.json, figures and maps are written through temporary files (mkstemp's
    0600); they end with the mode of results.jsonl beside them (0666 less the umask)."""
    import stat

    from manipex._files import created_mode

    folder, files = finished
    modes = {str(rel): stat.S_IMODE((folder / rel).stat().st_mode) for rel in files}
    assert set(modes.values()) == {created_mode()}, modes
