"""``manipex audit`` on the user's own model, end to end (issue 31): a factory ``mymodule:build_net``
in the current directory, its ``.pth`` state_dict, no ``--reference`` (references trained here with
the factory and a stated recipe), every key checked before any work, and ``--fresh`` to start over
on a folder that holds a run with another config."""
from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest
import torch
import torch._dynamo  # noqa: F401  (the first optimiser of a process imports it, which sets
# TORCHINDUCTOR_CACHE_DIR: imported here, before conftest's check that a test leaves the environment alone)

import manipex
from manipex.cli import main
from manipex.experiments import ResultStore, run
from manipex.experiments.store import FolderInUseError

FACTORY = textwrap.dedent("""
    from torch import nn

    CALLS = []

    def build_net():
        CALLS.append(1)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(4 * 14 * 14, 10))

    def wide():  # another architecture: build_net's weights do not fit it
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8 * 14 * 14, 10))

    def not_a_model():
        return 3

    class AuxNet(nn.Sequential):  # in train mode also auxiliary logits, as Inception's
        def forward(self, x):
            out = super().forward(x)
            return (out, out) if self.training else out

    def with_aux_logits():
        return AuxNet(*build_net())

    _ONE = build_net()

    def the_same_each_call():  # would train the audited model itself as a reference
        return _ONE
""")
#: the smallest audit that runs every part (cf. tests/test_audit.py SMALL), references trained on
#: 256 images for one epoch
SMALL_ARGS = ["--n", "2", "--steps", "5", "--eps", "0.1", "--methods", "gradient", "--defenses", "beta_smoothing",
              "--betas", "3", "--noise-n", "16", "--weight-noise", "0", "--n-train", "256", "--reference-epochs", "1",
              "--quiet", "--threads", "1"]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder with the user's ``mymodule.py`` and ``mynet.pth`` (build_net trained briefly), as
    the current directory; ``mymodule`` is forgotten afterwards (sys.path is the import's own
    business: it must leave it as it was, which conftest checks)."""
    (tmp_path / "mymodule.py").write_text(FACTORY)
    namespace: dict = {}
    exec(compile(FACTORY, "mymodule", "exec"), namespace)
    x, y = manipex.data.load("mnist5k", split="train")
    torch.manual_seed(0)
    model = manipex.models.train_classifier(namespace["build_net"](), x[:1000], y[:1000], epochs=2, progress=False)
    torch.save(model.state_dict(), tmp_path / "mynet.pth")
    torch.save(namespace["wide"]().state_dict(), tmp_path / "wide.pth")
    monkeypatch.chdir(tmp_path)
    assert "mymodule" not in sys.modules
    yield tmp_path
    sys.modules.pop("mymodule", None)


def test_audit_of_a_factory_model_in_the_current_directory_trains_its_references(user_folder, capsys):
    out = user_folder / "runs"
    path_before = list(sys.path)
    assert main(["audit", "mynet.pth", "--arch", "mymodule:build_net", "--out", str(out), *SMALL_ARGS]) == 0
    assert sys.path == path_before
    import mymodule

    assert mymodule.__file__ == str(user_folder / "mymodule.py")
    # the module's own _ONE, the audited model, the check that the factory builds a new model, and one
    # call per reference
    assert len(mymodule.CALLS) == 1 + 2 + 3
    folder = out / "audit"
    refs = sorted(p.name for p in (folder / "references").iterdir())
    assert refs == ["reference1.safetensors", "reference2.safetensors", "reference3.safetensors"]
    meta = manipex.models.read_metadata(folder / "references" / "reference2.safetensors")["metadata"]
    assert meta["recipe"] == {"arch": "mymodule:build_net", "kwargs": {}, "epochs": 1, "lr": 1e-3, "batch_size": 64,
                              "seed": 2, "images": 256, "optimizer": "Adam"}
    printed = capsys.readouterr().out
    assert "(d) Reference models" in printed and "factory mymodule:build_net" in printed
    page = (folder / "report.html").read_text(encoding="utf-8")
    for fact in ("Reference models", "trained here: 3 (none given)", "factory mymodule:build_net", "Adam",
                 "256 images of mnist5k", "1, 2, 3"):
        assert fact in page, fact
    rows = ResultStore(folder).frame()
    detection = rows[rows.part == "detection"].iloc[0]
    assert detection.references == 3 and detection.calibrated == 1
    assert (detection.reference_epochs, detection.reference_lr, detection.reference_batch_size) == (1, 1e-3, 64)
    assert detection.reference_seeds == "1, 2, 3"
    # a resumed run reuses the references it trained (each file records its recipe)
    mymodule.CALLS.clear()
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "references").iterdir()}
    lines = [line for line in (folder / "results.jsonl").read_text().splitlines()
             if not line.startswith('{"unit": "detection')]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["audit", "mynet.pth", "--arch", "mymodule:build_net", "--out", str(out), *SMALL_ARGS]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "references").iterdir()} == stamps
    assert ResultStore(folder).frame().equals(rows)


def test_the_recipe_keys_train_the_references_they_name(user_folder, capsys):
    out = user_folder / "runs"
    args = [a for a in SMALL_ARGS]
    assert main(["audit", "mynet.pth", "--arch", "mymodule:build_net", "--out", str(out), *args, "--n-references",
                 "1", "--reference-lr", "0.002", "--reference-batch-size", "32", "--reference-seed", "7"]) == 0
    meta = manipex.models.read_metadata(out / "audit" / "references" / "reference1.safetensors")["metadata"]
    assert (meta["recipe"]["lr"], meta["recipe"]["batch_size"], meta["recipe"]["seed"]) == (0.002, 32, 7)
    # the same seed gives the same reference: built and trained under torch.manual_seed(7)
    import mymodule

    x, y = manipex.data.load("mnist5k", split="train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        again = manipex.models.train_classifier(mymodule.build_net(), x[:256], y[:256], epochs=1, lr=0.002,
                                                batch_size=32, seed=7, progress=False)
    saved = manipex.models.load(out / "audit" / "references" / "reference1.safetensors", mymodule.build_net())
    for a, b in zip(saved.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert "uncalibrated" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--arch", "mymodule:no_such_factory"], "config key 'arch': module 'mymodule'"),
    (["--arch", "no_such_module_here:build_net"], "cannot import module 'no_such_module_here'"),
    (["--arch", "mymodule:wide"], "config key 'weights': 'mynet.pth' does not fit architecture 'mymodule:wide'"),
    (["--arch", "mymodule:not_a_model"], "returned an object of type int, not an nn.Module"),
    (["--arch", "mymodule:the_same_each_call"], "must build a new model each call"),
    (["--arch", "mymodule:with_aux_logits"], "cannot be trained here (one step on two images in train mode"),
    (["--arch", "mymodule:build_net", "--reference", "wide.pth"], "config key 'references': 'wide.pth' does not fit"),
    (["--arch", "mymodule:build_net", "--reference", "missing.pth"], "config key 'references': 'missing.pth' does not"),
    (["--arch", "mymodule:build_net", "--data", "mnist", "--root", "idx"],
     "config key 'references': none given, so references are trained here on the training images"),
], ids=["no_factory", "no_module", "weights_do_not_fit", "not_a_module", "same_module", "train_mode_tuple",
        "reference_does_not_fit",
        "reference_missing", "no_training_images"])
def test_a_wrong_key_is_refused_at_once_before_any_work(user_folder, capsys, args, message):
    x, y = manipex.data.load("mnist5k", split="test")
    (user_folder / "idx").mkdir()
    from conftest import write_idx

    write_idx(user_folder / "idx", (x[:30, 0] * 255).round().to(torch.uint8).numpy(), y[:30].numpy())
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):  # a test split only
        (user_folder / "idx" / name).unlink()
    capsys.readouterr()
    start = time.perf_counter()
    code = main(["audit", "mynet.pth", *args, "--out", str(user_folder / "runs"), *SMALL_ARGS])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert seconds < 5, f"refused after {seconds:.1f} s"
    assert not (user_folder / "runs" / "audit" / "results.jsonl").exists()
    assert not (user_folder / "runs" / "audit" / "meta.json").exists()


def test_import_factory_finds_the_current_directory_and_restores_sys_path(tmp_path, monkeypatch):
    from manipex.experiments.sources import import_factory

    (tmp_path / "cwd_factory_mod.py").write_text("def make():\n    return 'mine'\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        assert import_factory("cwd_factory_mod:make")() == "mine"
        assert sys.path == before
        with pytest.raises(ValueError, match="current directory"):
            import_factory("cwd_factory_missing_mod:make")
        assert sys.path == before
    finally:
        sys.modules.pop("cwd_factory_mod", None)


# -- a folder holding a run with another config -----------------------------------------------------

FAST_ARGS = ["--n", "2", "--batch", "1", "--steps", "1", "--methods", "gradient", "--defenses", "none", "--quiet",
             "--threads", "1"]


@pytest.fixture
def cache(mnist_model, model_cache, monkeypatch):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(model_cache))


def test_another_config_names_the_keys_and_fresh_starts_over(tmp_path, cache, capsys):
    folder = tmp_path / "quick"
    assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path)]) == 0
    (folder / "notes.txt").write_text("the user's own file")
    before = (folder / "results.jsonl").read_bytes()
    capsys.readouterr()
    start = time.perf_counter()
    assert main(["run", "quick", *FAST_ARGS, "--steps", "2", "--lr", "0.02", "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert "holds a run with another config" in err
    assert "'steps' was 1, now 2" in err and "'lr' was 0.01, now 0.02" in err
    assert "--fresh" in err and "--out" in err
    assert (folder / "results.jsonl").read_bytes() == before  # nothing deleted without --fresh
    # --fresh whose new config fails its checks puts the earlier run back
    assert main(["run", "quick", *FAST_ARGS, "--steps", "2", "--weights", str(tmp_path / "notes.txt"), "--out",
                 str(tmp_path), "--fresh"]) == 2
    assert main(["run", "quick", *FAST_ARGS, "--steps", "2", "--num-classes", "7", "--fresh", "--out",
                 str(tmp_path)]) == 2
    assert "'num_classes'" in capsys.readouterr().err
    assert (folder / "results.jsonl").read_bytes() == before and (folder / "meta.json").exists()
    assert not list(folder.glob(".manipex-fresh-*"))
    # --fresh starts over
    assert main(["run", "quick", *FAST_ARGS, "--steps", "2", "--lr", "0.02", "--out", str(tmp_path), "--fresh"]) == 0
    assert "--fresh: the earlier run" in capsys.readouterr().err
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["config"]["steps"], meta["config"]["lr"]) == (2, 0.02)
    assert len(ResultStore(folder).done()) == 2 and (folder / "results.jsonl").read_bytes() != before
    assert (folder / "notes.txt").read_text() == "the user's own file"  # only what manipex wrote goes
    assert not list(folder.glob(".manipex-fresh-*"))


def test_fresh_does_not_touch_a_folder_another_process_writes(tmp_path, cache, capsys):
    folder = tmp_path / "quick"
    assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path)]) == 0
    before = sorted(p.name for p in folder.iterdir())
    capsys.readouterr()
    for rank in (0, 1):  # a run writing the folder, or a shard of it
        holder = ResultStore(folder, rank).lock().acquire()
        try:
            start = time.perf_counter()
            assert main(["run", "quick", *FAST_ARGS, "--steps", "2", "--out", str(tmp_path), "--fresh"]) == 2
            assert time.perf_counter() - start < 5
            assert "being written by another manipex run" in capsys.readouterr().err
        finally:
            holder.release()
        assert sorted(p.name for p in folder.iterdir()) == before
    with pytest.raises(FolderInUseError):  # the same through the Python API
        with ResultStore(folder).lock():
            run("quick", overrides={"n": 2, "batch": 1, "steps": 2, "methods": ["gradient"], "defenses": ["none"]},
                out=tmp_path, quiet=True, fresh=True)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_audit_fresh_on_a_folder_with_another_config(user_folder, capsys):
    out = user_folder / "runs"
    common = ["audit", "mynet.pth", "--arch", "mymodule:build_net", "--out", str(out), *SMALL_ARGS,
              "--n-references", "1"]
    assert main(common) == 0
    capsys.readouterr()
    assert main(common + ["--reference-seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "'reference_seed' was 1, now 5" in err and "--fresh" in err and "--out" in err
    assert main(common + ["--reference-seed", "5", "--fresh"]) == 0
    meta = manipex.models.read_metadata(out / "audit" / "references" / "reference1.safetensors")["metadata"]
    assert meta["recipe"]["seed"] == 5
