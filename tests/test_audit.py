"""``manipex audit``: a manipulated model is flagged, clean models of the same kind are not, on
checkpoints saved by manipex; the command line names a wrong argument."""
from __future__ import annotations

import pytest
import torch

import manipex
from manipex.cli import main
from manipex.experiments import run
from manipex.models import save

SMALL = {"n": 2, "steps": 5, "eps": [0.1], "methods": ["gradient"], "defenses": ["beta_smoothing"],
         "betas": [3.0], "noise_n": 16, "weight_noise": [0.0], "faithfulness_n": 16}


@pytest.fixture(scope="module")
def checkpoints(default_recipe_models, corner_manipulation, tmp_path_factory):
    """Three references and a clean model trained with the default recipe and other seeds, and
    the default model manipulated to put its gradient relevance in the corner."""
    folder = tmp_path_factory.mktemp("audit-models")
    paths = {seed: save(default_recipe_models(seed), folder / f"clean{seed}.safetensors") for seed in (1, 2, 3, 7)}
    paths["manipulated"] = save(corner_manipulation[2].model, folder / "manipulated.safetensors")
    return paths


def detection_of(tables):
    return tables["noise_maps"]


def decisions_of(tables):
    return tables["detection"]


def test_audit_flags_the_manipulated_model_and_not_a_clean_one(checkpoints, tmp_path):
    references = [str(checkpoints[s]) for s in (1, 2, 3)]
    m = run("audit", overrides={**SMALL, "weights": str(checkpoints["manipulated"]), "references": references},
            out=tmp_path / "m", quiet=True)
    c = run("audit", overrides={**SMALL, "weights": str(checkpoints[7]), "references": references},
            out=tmp_path / "c", quiet=True)
    flagged, clean = detection_of(m), detection_of(c)
    assert decisions_of(m).flagged.max() == 1 and decisions_of(c).flagged.max() == 0
    assert m["verdict"].loc["Was the model itself manipulated?", "finding"].startswith("MANIPULATED")
    assert not c["verdict"].loc["Was the model itself manipulated?", "finding"].startswith("MANIPULATED")
    assert flagged.loc["gradient", "p_value"] < 0.05 and clean.loc["gradient", "p_value"] > 0.05
    assert flagged.loc["gradient", "references"] == 3


def test_audit_command_on_a_checkpoint_writes_a_report_with_a_verdict(checkpoints, tmp_path, capsys):
    args = ["audit", str(checkpoints[7]), "--methods", "gradient", "--eps", "0.1", "--n", "2", "--steps", "5",
            "--quiet", "--out", str(tmp_path)]
    for s in (1, 2, 3):
        args += ["--reference", str(checkpoints[s])]
    assert main(args) == 0
    page = (tmp_path / "audit" / "report.html").read_text(encoding="utf-8")
    assert "<h2>Verdict</h2>" in page and "Was the model itself manipulated?" in page and "<img" in page
    assert "no evidence of manipulation" in capsys.readouterr().out


def test_audit_names_a_wrong_argument(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "config key 'weights'" in capsys.readouterr().err
    assert main(["audit", "--reference", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)]) == 2
    assert "config key 'references'" in capsys.readouterr().err
    assert main(["audit", "--alpha", "2", "--out", str(tmp_path)]) == 2
    assert "'alpha'" in capsys.readouterr().err


def test_audit_on_an_image_folder_with_a_resnet_at_random_init(tmp_path):
    """A user's graph model (a CIFAR ResNet, LRP through residual sums) on class folders of
    images, with labels from the model and three references given as checkpoints."""
    import numpy as np
    from PIL import Image

    from manipex import models

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "val" / c / f"{i}.png")
    paths = []
    for seed in range(4):
        torch.manual_seed(seed)
        paths.append(str(models.save(models.cifar_resnet(depth=8, num_classes=10, width=4), tmp_path / f"r{seed}.safetensors")))
    config = {**SMALL, "methods": ["lrp"], "defenses": ["agg_mean"], "noise_n": 8, "dataset": "image_folder",
              "root": str(tmp_path / "val"), "image_size": 32, "labels": "predicted", "weights": paths[0],
              "references": paths[1:]}
    tables = run("audit", overrides=config, out=tmp_path / "runs", quiet=True)
    detection = detection_of(tables)
    assert detection.loc["lrp", "references"] == 3 and 0 <= detection.loc["lrp", "p_value"] <= 1
    attack = tables["attack"]
    assert list(attack.index) == [("lrp", "targeted"), ("lrp", "topk")]


def test_audit_on_idx_files_with_a_model_saved_by_manipex(mnist_model, tmp_path):
    """MNIST in IDX files written here, the default model saved as a checkpoint, references
    trained here on those files (one: the uncalibrated path says so)."""
    import gzip

    import numpy as np

    x, y = manipex.data.load("mnist5k", split="test")
    images = (x[:300, 0] * 255).round().to(torch.uint8).numpy()
    labels = y[:300].to(torch.uint8).numpy()
    root = tmp_path / "mnist"
    root.mkdir()
    for prefix, (a, b) in {"train": (images[:200], labels[:200]), "t10k": (images[200:], labels[200:])}.items():
        for kind, array, magic in (("images-idx3-ubyte", a, 2051), ("labels-idx1-ubyte", b, 2049)):
            header = np.array([magic, *array.shape], dtype=">i4").tobytes()
            with gzip.open(root / f"{prefix}-{kind}.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    path = save(mnist_model, tmp_path / "model.safetensors")
    config = {**SMALL, "dataset": "mnist", "root": str(root), "weights": str(path), "n_references": 1,
              "train_epochs": 1}
    tables = run("audit", overrides=config, out=tmp_path / "runs", quiet=True)
    verdict = tables["verdict"]
    assert "uncalibrated" in verdict.loc["Was the model itself manipulated?", "finding"]


def test_the_verdict_says_when_no_defense_holds_and_curvature_does_not_fall():
    """A GELU network (the default ViT) is unchanged by beta-smoothing: the verdict must not call
    an equal rise a defense that holds, nor a flat curvature a fall."""
    import pandas as pd

    from manipex.experiments.audit import Audit

    empty = pd.DataFrame()
    same = pd.DataFrame({"defense": ["none", "beta_smoothing"], "pcc_rise": [0.152, 0.152]})
    flat = pd.DataFrame({"beta": [3.0, 1.0], "curvature": [3.1, 3.1]})
    text = Audit.verdict(empty, same, flat, empty, None)["finding"]
    assert text["Which defense holds?"].startswith("none:")
    assert "does not fall" in text["Curvature (Dombrowski Thm 1)"]
    held = pd.DataFrame({"defense": ["none", "beta_smoothing"], "pcc_rise": [0.30, 0.05]})
    falls = pd.DataFrame({"beta": [3.0, 1.0], "curvature": [8.0, 2.0]})
    text = Audit.verdict(empty, held, falls, empty, None)["finding"]
    assert text["Which defense holds?"].startswith("beta_smoothing:")
    assert "falls from 8 at beta = 3 to 2 at beta = 1" in text["Curvature (Dombrowski Thm 1)"]
    one = Audit.verdict(empty, held, flat[:1], empty, None)["finding"]
    assert "one beta" in one["Curvature (Dombrowski Thm 1)"]


def test_a_faithfulness_test_left_with_its_mass_half_is_counted_and_decides_only_when_it_flags():
    """Issue 25's ViT, from the stored rows: where clean references fail the ranking test's
    margin, the faithfulness test keeps its mass half (``mass_only``). It is counted in the Holm
    family; a flag is a verdict, no flag leaves the verdict inconclusive (half the test is out),
    and rows where the mass test failed the references too are not counted at all."""
    import pandas as pd

    from manipex.experiments.audit import Audit

    def row(p, manipulated, mass_only, refuting="0.239, 0.075, 0.089"):
        return {"method": "gradient", "images": 64, "ratio": 0.17, "mass_ratio": -0.1, "p_value": p,
                "manipulated": float(manipulated), "conclusive": float(manipulated), "margin": 0.5, "calibrated": 0.0,
                "detectable_ratio": 0.31, "reference_ratios": "", "checked_references": 3,
                "refuting_ratios": refuting, "mass_only": float(mass_only)}

    empty = pd.DataFrame()
    flagged = pd.DataFrame([row(3.9e-6, True, True)])
    table = Audit.decision_table(flagged, empty, 0.05)
    assert table["counted"].iloc[0] == 1 and table["flagged"].iloc[0] == 1
    assert "the mass test alone" in table["note"].iloc[0]
    assert Audit.detection_finding(flagged, empty, 0.05).startswith("MANIPULATED (flagged by faithfulness (gradient, p = 3.9e-06)")
    quiet = pd.DataFrame([row(0.53, False, True)])
    text = Audit.detection_finding(quiet, empty, 0.05)
    assert text.startswith("inconclusive:") and "its mass test alone finds no evidence" in text
    refuted = pd.DataFrame([row(0.0, False, False)])
    assert Audit.decision_table(refuted, empty, 0.05)["counted"].iloc[0] == 0
    assert "flags clean references too" in Audit.detection_finding(refuted, empty, 0.05)
    underflow = pd.DataFrame([row(0.0, True, True)])
    assert "p < 1e-12" in Audit.detection_finding(underflow, empty, 0.05)
