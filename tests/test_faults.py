"""Faults a run folder and the command line must survive: damaged result lines, two runs on one
folder, an --out that is a file or cannot be written, every user error as one line with exit code
2, and config files fuzzed (random keys, types, nesting, YAML aliases, huge values, NaN)."""
from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manipex.cli import main
from manipex.experiments import EXPERIMENTS, ConfigError, ResultStore, get_experiment, load_config, run
from manipex.experiments import store as store_module
from manipex.experiments.config import MAX_ITEMS, MAX_MESSAGE, MAX_TEXT
from manipex.experiments.quick import Quick
from manipex.experiments.store import DamagedResultsWarning, FolderInUseError

#: the fastest real run: two units of one attack step
FAST = {"n": 2, "batch": 1, "steps": 1, "methods": ["gradient"], "defenses": ["none"]}
FAST_ARGS = ["--n", "2", "--batch", "1", "--steps", "1", "--methods", "gradient", "--defenses", "none", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def cache(mnist_model, model_cache, monkeypatch):
    """Runs load the default model from the session's cache; the environment for subprocesses."""
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(model_cache))
    return {**ENV, "MANIPEX_CACHE_DIR": str(model_cache)}


def _one_line_error(err: str, command: str) -> None:
    """A user error: exactly one line on stderr, from the command, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"manipex {command}: "), err


# -- damaged lines of results.jsonl -------------------------------------------------------------------

DAMAGED = {
    "not_json": b'{"unit": "u1", "rows": [{"v"',
    "null": b"null",
    "list": b"[1, 2]",
    "not_a_record": b'{"x": 1}',
    "wrong_types": b'{"unit": 1, "rows": "a"}',
    "rows_not_a_list": b'{"unit": "u1", "rows": 3}',
    "row_not_a_dict": b'{"unit": "u1", "rows": [{"v": 1}, 3]}',
    "nested_value": b'{"unit": "u1", "rows": [{"v": [1, 2]}]}',
    "empty_unit": b'{"unit": "", "rows": []}',
    "not_utf8": b'{"unit": "u1", "rows": [{"v": "\xff\xfe"}]}',
    "huge_int": b'{"unit": "u1", "rows": [{"v": ' + b"9" * 5000 + b"}]}",
}
#: where damaged lines go among five valid records (indexes into the final list of lines)
POSITIONS = {"first": [0], "middle": [3], "last": [5], "several": [0, 2, 4, 7]}


def _valid(i: int) -> bytes:
    return json.dumps({"unit": f"u{i}", "rows": [{"image": 0, "v": i}, {"image": 1, "v": -i}]}).encode()


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.parametrize("position", sorted(POSITIONS))
@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_lines_are_skipped_reported_and_every_valid_row_kept(kind, position, tmp_path):
    lines = [_valid(i) for i in range(5)]
    for index in POSITIONS[position]:
        lines.insert(index, DAMAGED[kind])
    _write_lines(tmp_path / "results.jsonl", lines)
    store = ResultStore(tmp_path)
    with pytest.warns(DamagedResultsWarning) as caught:
        done = store.done()
    assert done == {f"u{i}" for i in range(5)}
    numbers = [i + 1 for i, line in enumerate(lines) if line == DAMAGED[kind]]
    assert store.damaged == [(tmp_path / "results.jsonl", n) for n in numbers]
    message = str(caught[0].message)
    assert str(tmp_path / "results.jsonl") in message
    assert f"line {', '.join(map(str, numbers))}" in message
    df = store.frame()  # the same store warns once
    assert len(df) == 10 and sorted(df.v) == sorted([i for i in range(5)] + [-i for i in range(5)])
    assert list(df.columns[:1]) == ["unit"]


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_unit_whose_only_record_is_damaged_is_not_done(kind, tmp_path):
    lines = [_valid(0), DAMAGED[kind], _valid(2)]  # u1's record is lost
    _write_lines(tmp_path / "results.jsonl", lines)
    with pytest.warns(DamagedResultsWarning):
        assert ResultStore(tmp_path).done() == {"u0", "u2"}


def test_damage_in_another_shard_is_named_with_its_file(tmp_path):
    _write_lines(tmp_path / "results.jsonl", [_valid(0)])
    _write_lines(tmp_path / "results-rank1.jsonl", [_valid(1), b"\x00\x01garbage", _valid(2)])
    store = ResultStore(tmp_path)
    with pytest.warns(DamagedResultsWarning, match=r"results-rank1\.jsonl: 1 damaged line skipped \(line 2\)"):
        assert store.done() == {"u0", "u1", "u2"}
    assert store.damaged_text() == "results-rank1.jsonl: line 2"


def test_a_whole_last_record_without_its_newline_is_kept_and_completed(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(_valid(0) + b"\n" + _valid(1))  # the newline is missing, the record is whole
    store = ResultStore(tmp_path)
    assert store.done() == {"u0", "u1"} and store.damaged == []
    store.append("u2", [{"v": 2}])
    assert ResultStore(tmp_path).done() == {"u0", "u1", "u2"}


def test_a_torn_last_line_is_not_damage_and_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(_valid(0) + b'\n{"unit": "u1", "ro')  # a writer killed mid-line (or still writing)
    store = ResultStore(tmp_path)
    assert store.done() == {"u0"} and store.damaged == []
    store.append("u1", [{"v": 1}])
    assert path.read_bytes().count(b"\n") == 2 and ResultStore(tmp_path).done() == {"u0", "u1"}


def test_reading_a_store_creates_and_changes_nothing(tmp_path):
    folder = tmp_path / "not" / "there"
    store = ResultStore(folder)
    assert store.done() == set() and len(store.frame()) == 0 and store.meta() is None
    assert not (tmp_path / "not").exists()
    torn = _valid(0) + b'\n{"unit": "u1", "ro'
    _write_lines(tmp_path / "r" / "x", [])
    (tmp_path / "r" / "results.jsonl").write_bytes(torn)
    ResultStore(tmp_path / "r").frame()
    assert (tmp_path / "r" / "results.jsonl").read_bytes() == torn  # a run may be writing it: left alone


@pytest.mark.parametrize("kind, where", [("not_json", "first"), ("not_utf8", "last"), ("row_not_a_dict", "several"),
                                         ("null", "middle")])
def test_damaged_run_folder_reports_and_resumes_only_the_lost_unit(kind, where, tmp_path, cache, monkeypatch,
                                                                    capsys):
    three = {**FAST, "n": 3}
    run("quick", overrides=three, out=tmp_path, quiet=True)
    folder = tmp_path / "quick"
    results = folder / "results.jsonl"
    expected = ResultStore(folder).frame()
    good = results.read_bytes().splitlines()
    assert len(good) == 3
    lost = json.loads(good[1])["unit"]
    bad = DAMAGED[kind]
    lines = {"first": [bad, good[0], good[2]], "middle": [good[0], bad, good[2]], "last": [good[0], good[2], bad],
             "several": [bad, good[0], bad, good[2], bad]}[where]  # the record of the second unit is gone
    _write_lines(results, lines)
    numbers = ", ".join(str(i + 1) for i, line in enumerate(lines) if line == bad)
    (folder / "report.html").unlink()
    capsys.readouterr()

    assert main(["report", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"{results}: " in captured.err and f"(line {numbers})" in captured.err
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "damaged line" in page and "<table" in page

    calls = []
    original = Quick.run_unit

    def counting(self, unit, ctx, config):
        calls.append(unit.id)
        return original(self, unit, ctx, config)

    monkeypatch.setattr(Quick, "run_unit", counting)
    with pytest.warns(DamagedResultsWarning):
        run("quick", overrides=three, out=tmp_path, quiet=True)
    assert calls == [lost]
    with pytest.warns(DamagedResultsWarning):  # the damaged lines stay where they were, and are still named
        after = ResultStore(folder).frame()
    assert after.equals(expected)
    assert "damaged" in capsys.readouterr().out


# -- two runs on one folder ---------------------------------------------------------------------------

def test_second_run_on_a_folder_in_use_is_refused_at_once_and_report_still_works(tmp_path, cache, capsys):
    folder = tmp_path / "quick"
    assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path)]) == 0
    before = (folder / "results.jsonl").read_bytes()
    capsys.readouterr()
    holder = ResultStore(folder).lock().acquire()  # what a running `manipex run` holds
    try:
        start = time.perf_counter()
        assert main(["run", "quick", *FAST_ARGS, "--n", "4", "--out", str(tmp_path)]) == 2
        assert time.perf_counter() - start < 5, "refused at once, not after computing"
        err = capsys.readouterr().err
        _one_line_error(err, "run")
        assert f"{folder} is being written by another manipex run (pid {os.getpid()}); wait for it or use " \
               "another --out" in err
        assert (folder / "results.jsonl").read_bytes() == before
        assert main(["report", str(folder)]) == 0  # reading while a run writes
    finally:
        holder.release()
    assert not (folder / "results.jsonl.lock").exists()
    assert main(["run", "quick", *FAST_ARGS, "--n", "4", "--out", str(tmp_path)]) == 2  # another config, as before
    assert "another config" in capsys.readouterr().err


HOLD_LOCK = """
import sys, time
from manipex.experiments.store import ResultStore
ResultStore(sys.argv[1]).lock().acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lock_held_by_a_killed_process_is_stale(tmp_path, cache, capsys):
    folder = tmp_path / "quick"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True,
                              env=cache)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        _one_line_error(err, "run")
        assert f"(pid {holder.pid})" in err
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    assert (folder / "results.jsonl.lock").exists()  # left behind, but no longer held
    assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path)]) == 0
    assert len(ResultStore(folder).done()) == 2


def test_two_real_runs_at_once_compute_every_unit_once(tmp_path, cache, capsys):
    args = ["run", "quick", *FAST_ARGS, "--steps", "20", "--out", str(tmp_path)]
    first = subprocess.Popen([sys.executable, "-m", "manipex.cli", *args], env=cache, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "quick" / "results.jsonl.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert lock.exists(), "the first run takes the lock before any work"
    assert main(args) == 2
    assert f"(pid {first.pid})" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    units = [json.loads(line)["unit"] for line in (tmp_path / "quick" / "results.jsonl").read_bytes().splitlines()]
    assert len(units) == len(set(units)) == 2


def test_shards_of_a_distributed_run_are_locked_each(tmp_path):
    zero = ResultStore(tmp_path, 0).lock().acquire()
    one = ResultStore(tmp_path, 1).lock().acquire()  # another rank of the same run
    try:
        with pytest.raises(FolderInUseError, match="another manipex run"):
            ResultStore(tmp_path, 1).lock().acquire()
    finally:
        zero.release()
        one.release()
    assert not list(tmp_path.iterdir())


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_without_flock_a_lock_file_of_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    """Where there is no flock (Windows): an exclusive file with the holder's pid and host."""
    monkeypatch.setattr(store_module, "fcntl", None)
    path = tmp_path / "results.jsonl.lock"
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    lock = ResultStore(tmp_path).lock().acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(FolderInUseError, match=rf"\(pid {os.getpid()}\)"):
        ResultStore(tmp_path).lock().acquire()
    lock.release()
    assert not path.exists()
    path.write_text(json.dumps({"pid": _dead_pid(), "host": "another-host"}))  # its pid means nothing here
    with pytest.raises(FolderInUseError, match="on host another-host"):
        ResultStore(tmp_path).lock().acquire()


# -- --out and the other command-line errors ----------------------------------------------------------

def test_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "run")
    assert "is a file, not a folder" in err
    assert main(["run", "quick", *FAST_ARGS, "--out", str(tmp_path / "f" / "deeper")]) == 2
    _one_line_error(capsys.readouterr().err, "run")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_out_that_cannot_be_written(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out in (locked, locked / "sub"):
            assert main(["run", "quick", *FAST_ARGS, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            _one_line_error(err, "run")
            assert "Permission denied" in err
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, where no one may create folders")
def test_out_where_no_folder_can_be_created(capsys):
    for out in ("/proc/manipex-test", "/proc"):
        assert main(["run", "quick", *FAST_ARGS, "--out", out]) == 2
        err = capsys.readouterr().err
        _one_line_error(err, "run")
        assert "cannot create the run folder" in err


def _files(tmp_path: Path) -> dict:
    import pickle

    files = {"file": tmp_path / "a_file"}
    files["file"].write_text("not a folder")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"weight": Path("an object, not a tensor")}))
    (tmp_path / "garbage.pt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(2000)))
    (tmp_path / "zip.pt").write_bytes(b"PK\x03\x04" + bytes(500))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.safetensors").write_bytes(bytes(random.Random(1).randrange(256) for _ in range(2000)))
    damaged = tmp_path / "damaged_meta" / "quick"
    _write_lines(damaged / "results.jsonl", [json.dumps({"unit": "gradient/none/00000", "rows": []}).encode()])
    (damaged / "meta.json").write_bytes(b'{"experiment": "quick", "config": {')
    return files


CLI_ERRORS = {
    "out_is_a_file": (["run", "quick", *FAST_ARGS, "--out", "{tmp}/a_file"], "run", "is a file"),
    "report_on_a_file": (["report", "{tmp}/a_file"], "report", "not a folder"),
    "report_missing": (["report", "{tmp}/missing/run/quick"], "report", "does not exist"),
    "report_damaged_meta": (["report", "{tmp}/damaged_meta/quick"], "report", "meta.json is damaged"),
    "run_damaged_meta": (["run", "quick", *FAST_ARGS, "--out", "{tmp}/damaged_meta"], "run", "meta.json is damaged"),
    "weights_pickle": (["run", "quick", *FAST_ARGS, "--weights", "{tmp}/pickle.pt", "--out", "{tmp}/o"], "run",
                       "refused to unpickle"),
    "weights_garbage": (["run", "quick", *FAST_ARGS, "--weights", "{tmp}/garbage.pt", "--out", "{tmp}/o"], "run",
                        "'weights'"),
    "weights_zip": (["run", "quick", *FAST_ARGS, "--weights", "{tmp}/zip.pt", "--out", "{tmp}/o"], "run", "'weights'"),
    "weights_empty": (["run", "quick", *FAST_ARGS, "--weights", "{tmp}/empty.pt", "--out", "{tmp}/o"], "run",
                      "'weights'"),
    "weights_safetensors": (["run", "quick", *FAST_ARGS, "--weights", "{tmp}/garbage.safetensors", "--out", "{tmp}/o"],
                            "run", "'weights'"),
    "batch_0": (["run", "quick", "--batch", "0", "--out", "{tmp}/o"], "run", "'batch' must be >= 1"),
    "eps_nan": (["run", "quick", "--eps", "nan", "--out", "{tmp}/o"], "run", "'eps' must be a finite number"),
    "eps_above_1": (["run", "quick", "--set", "eps=1.5", "--out", "{tmp}/o"], "run", "'eps' must be <= 1"),
    "set_without_value": (["run", "quick", "--set", "oops", "--out", "{tmp}/o"], "run", "--set expects key=value"),
    "unknown_experiment": (["run", "x" * 5000], "run", "unknown experiment"),
    "unknown_device": (["run", "quick", "--device", "tpu9", "--out", "{tmp}/o"], "run", "unknown device"),
    "missing_config": (["run", "--config", "{tmp}/nope.toml", "--out", "{tmp}/o"], "run", "does not exist"),
    "config_is_a_folder": (["run", "--config", "{tmp}/dir.toml", "--out", "{tmp}/o"], "run", "is a folder"),
    "audit_n_0": (["audit", "--n", "0", "--out", "{tmp}/o"], "audit", "'n' must be >= 1"),
    "list_unknown": (["list", "nosuch"], "list", "unknown experiment"),
    "explain_image_size": (["explain", "--image-size", "0", "--out", "{tmp}/o"], "explain", "'image_size'"),
    "explain_out_is_a_file": (["explain", "--n", "1", "--methods", "gradient", "--quiet", "--out", "{tmp}/a_file"],
                              "explain", "a_file"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_errors_are_one_line_with_exit_code_2(case, tmp_path, cache, capsys):
    _files(tmp_path)
    (tmp_path / "dir.toml").mkdir()
    argv, command, words = CLI_ERRORS[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, command)
    assert words in err
    assert len(err) < 1200
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, "a refused command creates nothing"


def test_real_command_line_errors_print_no_traceback(tmp_path):
    (tmp_path / "f").write_text("x")
    for argv, command in ((["run", "quick", "--out", str(tmp_path / "f")], "run"),
                          (["report", str(tmp_path / "missing" / "x")], "report")):
        done = subprocess.run([sys.executable, "-m", "manipex.cli", *argv], capture_output=True, text=True, env=ENV,
                              timeout=120)
        assert done.returncode == 2
        _one_line_error(done.stderr, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_bug_is_one_line_with_exit_code_1_and_debug_shows_it(monkeypatch, capsys):
    import manipex.experiments

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(manipex.experiments, "run", broken)
    assert main(["run", "quick"]) == 1
    err = capsys.readouterr().err
    _one_line_error(err, "run")
    assert "RuntimeError: boom second line" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["run", "quick", "--debug"])
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "run", "quick"])
    monkeypatch.setenv("MANIPEX_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["run", "quick"])
    with pytest.raises(ConfigError, match="unknown experiment"):  # user errors too, for bug reports
        main(["run", "nosuch"])


def test_interrupted_run_exits_130_and_says_units_are_kept(monkeypatch, capsys):
    import manipex.experiments

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(manipex.experiments, "run", interrupted)
    assert main(["run", "quick"]) == 130
    err = capsys.readouterr().err
    _one_line_error(err, "run")
    assert "finished units are kept" in err


# -- config bounds ----------------------------------------------------------------------------------------

NUMERIC = [(name, f) for name in sorted(EXPERIMENTS) for f in get_experiment(name).Config.fields().values()
           if f.kind in ("int", "float", "list[float]", "optional_float")]


@pytest.mark.parametrize("name, field", NUMERIC, ids=[f"{n}.{f.name}" for n, f in NUMERIC])
def test_every_number_is_finite_and_bounded_above(name, field):
    def value(v):
        return [v] if field.kind == "list[float]" else v

    top = field.le if field.le is not None else field.lt
    assert top is not None, "every number has an upper bound"
    above = top + 1 if field.kind == "int" else top * 2 + 1
    with pytest.raises(ConfigError, match=rf"config key '{field.name}' must be <"):
        load_config(name, None, {field.name: value(above)})
    if field.kind != "int":
        for bad in (math.nan, math.inf, -math.inf, 10 ** 400):
            with pytest.raises(ConfigError, match=rf"config key '{field.name}' must be a finite number"):
                load_config(name, None, {field.name: value(bad)})
    else:
        with pytest.raises(ConfigError, match=rf"config key '{field.name}' must be"):
            load_config(name, None, {field.name: 10 ** 5000})


@pytest.mark.parametrize("overrides, message", [
    ({"eps": 1.5}, "'eps' must be <= 1"),
    ({"seed": 2 ** 32}, "'seed' must be <= 4294967295"),
    ({"image_size": 4097}, "'image_size' must be <= 4096"),
    ({"methods": []}, "'methods' must be a non-empty list"),
    ({"methods": ["gradient", "lrp", "gradient"]}, "'methods' lists 'gradient' twice"),
    ({"methods": ["gradient"] * (MAX_ITEMS + 1)}, f"at most {MAX_ITEMS} items"),
    ({"root": "x" * (MAX_TEXT + 1)}, f"at most {MAX_TEXT} characters"),
    ({"root": "a\0b"}, "without NUL"),
    ({"root": "~no_such_user_here/x"}, "a check of the keys failed"),
    ({"methods": ["y" * 100_000]}, "'methods'"),
])
def test_specific_bounds(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("quick", None, overrides)
    assert len(str(err.value)) < 1000


def test_toml_nan_is_refused_naming_the_key(tmp_path):
    (tmp_path / "c.toml").write_text("eps = nan\n")
    with pytest.raises(ConfigError, match="config key 'eps' must be a finite number, got nan"):
        load_config(None, tmp_path / "c.toml", {})


def test_more_images_than_the_split_is_refused_before_meta_json_and_a_fixed_rerun_works(tmp_path, cache,
                                                                                       monkeypatch):
    folder = tmp_path / "quick"
    with pytest.raises(ConfigError, match=r"config key 'n': 501 attacked images need 1002 images"):
        run("quick", overrides={**FAST, "n": 501}, out=tmp_path, quiet=True)
    assert not (folder / "meta.json").exists() and not tmp_path.joinpath("quick").exists()
    # a run that wrote meta.json and failed before its first unit holds nothing: another config may follow

    def failing(self, unit, ctx, config):
        raise ConfigError("failed in the first unit")

    original = Quick.run_unit
    monkeypatch.setattr(Quick, "run_unit", failing)
    with pytest.raises(ConfigError, match="first unit"):
        run("quick", overrides={**FAST, "steps": 2}, out=tmp_path, quiet=True)
    assert (folder / "meta.json").exists() and not ResultStore(folder).done()
    monkeypatch.setattr(Quick, "run_unit", original)
    assert run("quick", overrides=FAST, out=tmp_path, quiet=True)
    assert len(ResultStore(folder).done()) == 2


# -- fuzzed config files ------------------------------------------------------------------------------------

_ALPHABET = "abcxyz_019 .-/~\\\"'#=[]{},\t" + "éßΔβ中文😀\u200b\u2028"


def _text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 5, 20, 200, 5000, 100_000]) if rng.random() < 0.3 else rng.randint(0, 12)
    return "".join(rng.choice(_ALPHABET) for _ in range(min(n, 300))) * max(1, n // 300)


def _toml_scalar(rng: random.Random) -> str:
    return rng.choice([
        lambda: str(rng.randint(-10, 10 ** rng.randint(1, 12))),
        lambda: "9" * rng.choice([19, 400, 5000]),
        lambda: rng.choice(["nan", "+nan", "-nan", "inf", "+inf", "-inf", "1e308", "1e999", "-0.0", "5e-324"]),
        lambda: repr(rng.uniform(-10, 10)),
        lambda: rng.choice(["true", "false", "1979-05-27T07:32:00Z", "0x1F", "0o7", "1_000"]),
        lambda: json.dumps(_text(rng), ensure_ascii=False),
        lambda: "'" + _text(rng).replace("'", "").replace("\n", "") + "'",
    ])()


def _value(rng: random.Random, scalar, pair: str, depth: int = 0) -> str:
    """A random value in TOML (``pair`` " = ") or YAML flow style (": "), built from ``scalar``."""
    r = rng.random()
    if r < 0.05:
        k = rng.choice([40, 300, 1200])
        return "[" * k + "1" + "]" * k
    if r < 0.08 and depth == 0:  # long: more values than a config may hold
        return "[" + ", ".join(str(rng.randint(0, 9)) for _ in range(rng.choice([1000, 12000]))) + "]"
    if r < 0.3 and depth < 4:
        return "[" + ", ".join(_value(rng, scalar, pair, depth + 1) for _ in range(rng.choice([0, 1, 2, 5]))) + "]"
    if r < 0.35 and depth < 4:
        return "{" + ", ".join(f"k{i}{pair}{_value(rng, scalar, pair, depth + 1)}" for i in range(rng.randint(0, 3))) + "}"
    return scalar(rng)


def _toml_value(rng: random.Random) -> str:
    return _value(rng, _toml_scalar, " = ")


def _yaml_scalar(rng: random.Random) -> str:
    return rng.choice([
        lambda: str(rng.randint(-10, 10 ** rng.randint(1, 12))),
        lambda: "9" * rng.choice([19, 400, 5000]),
        lambda: rng.choice([".nan", ".inf", "-.inf", ".NaN", "1e999", "1e-3", "5E-5", "-0.0", "0x1F", "0o7", "1_000",
                            "1:20", "~", "null", "yes", "no", "on", "2001-12-14", "2001-13-45", "!!binary aGVsbG8=",
                            "!!timestamp junk", "!!bool maybe", "!!float", "!!int abc", "!!set {a, b}",
                            "!!python/object/apply:os.getcwd []", "!!omap [1]", "!custom x"]),
        lambda: json.dumps(_text(rng), ensure_ascii=rng.random() < 0.5),
        lambda: _text(rng).replace("\n", " ").strip() or "x",
    ])()


def _yaml_value(rng: random.Random) -> str:
    return _value(rng, _yaml_scalar, ": ")


def _laughs(rng: random.Random, merge: bool) -> str:
    width, levels = rng.randint(2, 12), rng.randint(2, 9)
    if merge:
        lines = ["methods:", "  l0: &l0 {" + ", ".join(f"x{i}: {i}" for i in range(width)) + "}"]
        lines += [f"  l{i}: &l{i} {{<<: [{', '.join(f'*l{i - 1}' for _ in range(width))}], y{i}: 1}}"
                  for i in range(1, levels)]
    else:
        lines = ["methods:", "  l0: &l0 [" + ", ".join(["gradient"] * width) + "]"]
        lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _fuzz_file(rng: random.Random, index: int, folder: Path) -> Path:
    """One random config file: TOML or YAML, random keys (mostly real ones), values, nesting,
    aliases, huge or non-finite numbers, odd text; some corrupted or not text at all."""
    yaml = rng.random() < 0.5
    name = rng.choice(sorted(EXPERIMENTS))
    fields = list(get_experiment(name).Config.fields())
    lines = []
    if rng.random() < 0.5:
        named = name if rng.random() < 0.8 else _text(rng)
        lines.append(f"experiment: {json.dumps(named)}" if yaml else f"experiment = {json.dumps(named)}")
    for _ in range(rng.randint(0, 6)):
        key = rng.choice(fields) if rng.random() < 0.8 else (_text(rng) or "k")
        if yaml:
            shown = key if key.isidentifier() else json.dumps(key)
            lines.append(f"{shown}: {_yaml_value(rng)}")
        else:
            lines.append(f"{json.dumps(key, ensure_ascii=False)} = {_toml_value(rng)}")
    if yaml and rng.random() < 0.15:
        lines = [_laughs(rng, merge=rng.random() < 0.5)] + lines
    if yaml and rng.random() < 0.05:
        lines.append(rng.choice(["r: &r [*r]", "? [1, 2]\n: 3", "1: 2", "~: 1", "---\nn: 2", "n: 4\nn: 5"]))
    if not yaml and rng.random() < 0.05:
        lines.append(rng.choice(["[section]\nn = 2", "a.b.c = 1", "n = 4\nn = 5"]))
    data = "\n".join(lines).encode("utf-8", errors="surrogatepass")
    r = rng.random()
    if r < 0.08:  # corrupted: bytes flipped, cut or inserted
        data = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data)
    elif r < 0.10:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000)))
    elif r < 0.11:
        data = data.decode("utf-8", errors="surrogatepass").encode("utf-16", errors="surrogatepass")
    elif r < 0.12:
        data = b"# padding\n" * 120_000  # over the size limit
    path = folder / f"f{index}.{'yaml' if yaml else 'toml'}"
    path.write_bytes(data)
    return path


def _fuzz_files(folder: Path, count: int, seed: int = 20240601):
    rng = random.Random(seed)
    return [_fuzz_file(rng, i, folder) for i in range(count)]


def test_fuzzed_config_files_load_or_fail_with_a_short_config_error(tmp_path):
    files = _fuzz_files(tmp_path, 220)
    outcomes = {"ok": 0, "refused": 0}
    for path in files:
        try:
            load_config(None, path, {})
            outcomes["ok"] += 1
        except ConfigError as err:
            assert len(str(err)) <= MAX_MESSAGE < 1000, (path.read_bytes()[:200], str(err)[:300])
            outcomes["refused"] += 1
        except Exception as err:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{type(err).__name__} on {path.read_bytes()[:300]!r}: {str(err)[:300]}") from err
    assert outcomes["ok"] >= 5 and outcomes["refused"] >= 100, outcomes


@pytest.mark.parametrize("text, suffix, words", [
    ("methods:\n  a: &a [x,x,x,x,x,x,x,x,x]\n  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", "yaml", "more than 10000 values"),
    ("a: &a {x1: 1, x2: 2, x3: 3, x4: 4}\nb: &b {<<: [*a, *a, *a, *a]}\nc: &c {<<: [*b, *b, *b, *b]}\n"
     "d: &d {<<: [*c, *c, *c, *c]}\ne: &e {<<: [*d, *d, *d, *d]}\nf: &f {<<: [*e, *e, *e, *e]}\n"
     "g: {<<: [*f, *f, *f, *f]}\n", "yaml", "more than 10000 values"),
    ("n: &r [*r]\n", "yaml", "contains itself"),
    ("n = " + "[" * 5000 + "]" * 5000 + "\n", "toml", "nested"),
    ("n: " + "[" * 5000 + "]" * 5000 + "\n", "yaml", "nested"),
    ("n = " + "9" * 5000 + "\n", "toml", "not valid TOML"),
    ("n: " + "9" * 5000 + "\n", "yaml", "not valid YAML"),
    ("n: !!timestamp junk\n", "yaml", "not valid YAML"),
])
def test_config_bombs_are_refused_quickly_with_a_short_message(text, suffix, words, tmp_path):
    path = tmp_path / f"bomb.{suffix}"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=words) as err:
        load_config(None, path, {})
    assert time.perf_counter() - start < 5 and len(str(err.value)) < 1000


def test_config_file_over_one_megabyte_is_refused(tmp_path):
    path = tmp_path / "big.toml"
    path.write_bytes(b"# padding\n" * 120_000)
    with pytest.raises(ConfigError, match="larger than 1024 KB"):
        load_config(None, path, {})


def test_fuzzed_config_files_through_the_command_line(tmp_path):
    """A handful through the real command: exit code 2, one line, nothing created."""
    refused = []
    (tmp_path / "cfg").mkdir()
    for path in _fuzz_files(tmp_path / "cfg", 220):
        try:
            load_config(None, path, {})
        except ConfigError:
            refused.append(path)
    bombs = tmp_path / "cfg" / "laughs.yaml"
    bombs.write_text(_laughs(random.Random(3), merge=False))
    for path in [bombs] + refused[:: max(1, len(refused) // 3)][:3]:
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-m", "manipex.cli", "run", "--config", str(path), "--out", str(out)],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert done.returncode == 2, (path.read_bytes()[:200], done.stderr[-500:])
        _one_line_error(done.stderr, "run")
        assert len(done.stderr) < 1100 and not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_pipe_given_as_config_is_refused_at_once_not_read_forever(tmp_path):
    """Issue 26: a FIFO as ``--config`` hung forever (open blocks until a writer comes)."""
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(None, path, {})
    assert time.perf_counter() - start < 5


def test_a_toml_config_with_a_byte_order_mark_is_read_as_its_yaml_twin_is(tmp_path):
    """Issue 26: the same bytes with a UTF-8 BOM passed as YAML and were refused as TOML."""
    toml, yaml = tmp_path / "bom.toml", tmp_path / "bom.yaml"
    toml.write_bytes(b"\xef\xbb\xbfexperiment = \"quick\"\nsteps = 3\n")
    yaml.write_bytes(b"\xef\xbb\xbfexperiment: quick\nsteps: 3\n")
    from manipex.experiments.config import read_config

    assert read_config(toml) == read_config(yaml) == {"experiment": "quick", "steps": 3}


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_files_written_atomically_get_the_mode_open_gives(tmp_path):
    """Issue 26: report.html and meta.json (and saved checkpoints) were 0600, made by mkstemp,
    while results.jsonl beside them was 0644."""
    import stat as stat_

    import torch

    import manipex
    from manipex.experiments.store import ResultStore

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = stat_.S_IMODE(plain.stat().st_mode)
    store = ResultStore(tmp_path / "run")
    store.write_meta({"config": {}})
    saved = manipex.models.save(torch.nn.Linear(2, 2), tmp_path / "net.safetensors")
    from manipex.experiments.report import write_report

    class Experiment:
        title = "t"

    page = write_report(tmp_path / "run", Experiment(), {}, {}, [])
    for path in (tmp_path / "run" / "meta.json", saved, page):
        assert stat_.S_IMODE(os.stat(path).st_mode) == expected, path
