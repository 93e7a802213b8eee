"""Train every default model's recipe and write the shipped weights (manipex/models/files).

    python scripts/make_default_models.py            # all recipes
    python scripts/make_default_models.py mnist      # one

Each recipe trains deterministically (one intra-op thread), so this reproduces the shipped
files bit for bit on a CPU of the instruction set they were made on; tests/test_reproducible.py
checks that. Old files of a recipe (another digest) are removed. Prints the digest, accuracy and
training time of each model.
"""
from __future__ import annotations

import sys

from manipex.models import pretrained, save


def main(names: list[str]) -> None:
    pretrained.SHIPPED_DIR.mkdir(exist_ok=True)
    for name in names or list(pretrained.DEFAULT_RECIPES):
        recipe = pretrained.DEFAULT_RECIPES[name]
        model, metadata = pretrained.train_recipe(recipe, progress=True)
        path = pretrained.shipped_path(name)
        for old in pretrained.SHIPPED_DIR.glob(f"{name}-*.safetensors"):
            if old != path:
                old.unlink()
        save(model, path, arch=recipe.arch, metadata=metadata)
        path.chmod(0o644)  # package data: readable by every user of an installation
        print(f"{path.name}: weights {metadata['state_sha256'][:16]}, test accuracy {metadata['test_accuracy']:.3f}, "
              f"trained in {metadata['train_seconds']} s on {metadata['cpu_capability']} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
