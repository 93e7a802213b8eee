"""Train default models' recipes and write the shipped weights (manipex/models/files).

    python scripts/make_default_models.py                  # the recipes without a shipped file
    python scripts/make_default_models.py vit_mnist        # these, by name (trained again)
    python scripts/make_default_models.py --all            # every recipe (trained again)

A shipped file is named by its recipe's digest, so a changed recipe has no file and is made by
the first form, while the files of unchanged recipes are left as they are (not rewritten). Each
recipe trains deterministically (one intra-op thread), so this reproduces the shipped files bit
for bit on a CPU of the instruction set they were made on; tests/test_reproducible.py checks that.
Old files of a recipe (another digest) are removed. Prints the digest, accuracy and training time
of each model.
"""
from __future__ import annotations

import sys

from manipex.models import pretrained, save


def make(name: str) -> None:
    """Train the recipe ``name`` and write its shipped file (removing its files of other digests)."""
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


def main(args: list[str]) -> int:
    pretrained.SHIPPED_DIR.mkdir(exist_ok=True)
    if args == ["--all"]:
        names = list(pretrained.DEFAULT_RECIPES)
    elif args:
        unknown = [a for a in args if a not in pretrained.DEFAULT_RECIPES]
        if unknown:
            print(f"unknown default model(s) {', '.join(unknown)}; known: {', '.join(pretrained.DEFAULT_RECIPES)} "
                  "(or --all)", file=sys.stderr)
            return 2
        names = args
    else:
        names = [n for n in pretrained.DEFAULT_RECIPES if not pretrained.shipped_path(n).is_file()]
        if not names:
            print("every default model has its shipped file; name one (or --all) to train it again")
    for name in names:
        make(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
