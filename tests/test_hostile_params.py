"""Hostile params files (RELIABILITY.md, "Hostile params"): alias bombs, deep nesting, duplicate keys, sizes that
validate but cannot run, seeds out of range, wrong types, files that are not YAML text at all.

Every case is refused by `gfm validate` and by `gfm generate` alike: exit code 2, a bounded number of stderr
lines (each ``error: <file>: ...`` and under 500 characters), no traceback, within a few seconds, and generate
neither starts (its ``run`` is replaced by a tripwire) nor writes anything at its output path. Most cases run
in-process through ``gfm.cli.main``; three run the real ``python -m gfm`` end to end.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfm.base.errors import MAX_PROBLEMS
from gfm.cli import main

ROOT = Path(__file__).resolve().parents[1]

# A small valid study written here, so that this corpus does not move when the shared params files do.
BASE = """\
seed: 0
device: cpu
generate:
  dataset_seeds: [1, 2]
  progress: false
store:
  chunk_runs: 4
  chunk_steps: 8
  shard_runs: 8
tasks:
  mlp_regression:
    kind: mlp_regression
    dim: 1
    hidden: [4]
    n_samples: 16
    batch_size: 8
    runs_per_dataset: 4
    steps: 8
stores:
  mlp_regression-sgd: {task: mlp_regression, optimizer: {name: sgd, lr: 0.05}}
forecast:
  prefix_end: 2
  horizons: [4, 8]
report:
  target_task: mlp_regression
"""
STORE = "mlp_regression-sgd"
MAX_LINES = MAX_PROBLEMS + 1
SECONDS = 5.0


def with_task(**fields) -> str:
    """BASE with the task's fields replaced (values written as YAML flow text)."""
    task = {"kind": "mlp_regression", "dim": "1", "hidden": "[4]", "n_samples": "16", "batch_size": "8",
            "runs_per_dataset": "4", "steps": "8", **fields}
    body = "".join(f"    {k}: {v}\n" for k, v in task.items())
    head, rest = BASE.split("  mlp_regression:\n", 1)
    return head + "  mlp_regression:\n" + body + rest[rest.index("stores:"):]


def replace(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


def laughs(levels: int, width: int, *, where: str = "bomb") -> str:
    """The "billion laughs": each level a list of ``width`` aliases of the level below."""
    lines = [f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return BASE + f"{where}:\n" + "\n".join(lines) + "\n"


def map_laughs(levels: int) -> str:
    lines = ["  m0: &m0 {a: lol, b: lol, c: lol, d: lol, e: lol, f: lol, g: lol, h: lol}"]
    lines += [f"  m{i}: &m{i} {{a: *m{i-1}, b: *m{i-1}, c: *m{i-1}, d: *m{i-1}, e: *m{i-1}, f: *m{i-1}, "
              f"g: *m{i-1}, h: *m{i-1}}}" for i in range(1, levels)]
    return BASE + "bomb:\n" + "\n".join(lines) + "\n"


# (case id, file content as str or bytes (None: a directory), substring every run's stderr must contain)
CASES: list[tuple[str, str | bytes | None, str]] = [
    # --- alias bombs: refused while loading, before any walk of the expanded tree
    ("bomb-lists-9x9", laughs(9, 9), "expands to more than 100,000 values"),
    ("bomb-redteam-1kb", laughs(10, 10), "expands to more than 100,000 values"),
    ("bomb-maps", map_laughs(8), "expands to more than 100,000 values"),
    ("bomb-wide-fanout", BASE + "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 1000) + "]\n",
     "expands to more than 100,000 values"),
    ("bomb-in-valid-key", with_task(hidden="&h [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]").replace(
        "stores:", "x1: &x1 [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\nx2: &x2 [*x1, *x1, *x1, *x1, *x1, *x1, *x1, *x1, *x1, *x1]\n"
                   "x3: &x3 [*x2, *x2, *x2, *x2, *x2, *x2, *x2, *x2, *x2, *x2]\n"
                   "x4: [*x3, *x3, *x3, *x3, *x3, *x3, *x3, *x3, *x3, *x3]\nstores:"),
     "expands to more than 100,000 values"),
    ("bomb-merge-keys", BASE + "b0: &b0 {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}\n"
     + "".join(f"b{i}: &b{i} {{" + ", ".join(f"c{j}: *b{i - 1}" for j in range(50)) + "}\n" for i in range(1, 4)),
     "expands to more than 100,000 values"),
    ("alias-cycle-list", BASE + "a: &x [*x]\n", "an alias refers to a node that contains it"),
    ("alias-cycle-map", BASE + "a: &x {b: {c: *x}}\n", "an alias refers to a node that contains it"),
    ("alias-deep-through-aliases", BASE + "a: &a " + "[" * 40 + "]" * 40 + "\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\n",
     "nested deeper than 64 levels once aliases are expanded"),
    ("alias-undefined", BASE + "a: *nowhere\n", "found undefined alias"),
    # --- deep nesting: refused while composing (never a RecursionError)
    ("deep-flow-lists-10000", BASE + "x: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested deeper than 64 levels"),
    ("deep-flow-maps-10000", BASE + "x: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "nested deeper than 64 levels"),
    ("deep-block-maps-200", BASE + "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
     "nested deeper than 64 levels"),
    ("deep-block-lists-5000", BASE + "x:\n" + "- " * 5000 + "1\n", "nested deeper than 64 levels"),
    ("deep-in-valid-key", with_task(hidden="[" * 100 + "4" + "]" * 100), "nested deeper than 64 levels"),
    # --- duplicate keys: refused with both line numbers, never "last one wins"
    ("dup-top-level", BASE + "seed: 1\n", "seed: key defined twice (lines 1 and 26)"),
    ("dup-store", BASE.replace("forecast:", f"  {STORE}: {{task: mlp_regression, optimizer: {{name: sgd, lr: 5.0}}}}\nforecast:"),
     f"stores.{STORE}: key defined twice (lines 20 and 21)"),
    ("dup-same-line", replace("lr: 0.05}", "lr: 0.05, lr: 5.0}"), f"stores.{STORE}.optimizer.lr: key defined twice (both on line 20)"),
    ("dup-task-field", with_task(steps="8\n    steps: 80"), "tasks.mlp_regression.steps: key defined twice (lines 18 and 19)"),
    ("dup-in-list-item", BASE + "generalize:\n  pairs:\n    - {source: a, source: b, target: c}\n",
     "generalize.pairs[0].source: key defined twice"),
    ("dup-number-keys", BASE + "x: {1: a, 1.0: b}\n", "x.1.0: key defined twice (both on line 26)"),
    # --- sizes that would validate but not run (limits:, int64 bounds)
    ("huge-runs-1e30", with_task(runs_per_dataset=str(10**30)), "tasks.mlp_regression.runs_per_dataset: got"),
    ("huge-runs-1e12", with_task(runs_per_dataset=str(10**12)), "above limits.max_total_steps"),
    ("huge-steps-1e15", with_task(steps=str(10**15)), "tasks.mlp_regression.steps: got 1.0e+15; above limits.max_run_steps"),
    ("huge-dim-1e9", with_task(dim=str(10**9)), "tasks.mlp_regression: the network has"),
    ("huge-hidden", with_task(hidden="[1000000, 1000000]"), "above limits.max_params"),
    ("huge-block", with_task(hidden="[2000, 2000]", runs_per_dataset="256", steps="200").replace("shard_runs: 8", "shard_runs: 256"),
     "a write block needs"),
    ("huge-store", with_task(hidden="[300, 300]", runs_per_dataset="20000", steps="2000"),
     "above limits.max_store_bytes"),
    ("huge-samples", with_task(n_samples=str(10**9)), "of data and working memory), above limits.max_block_bytes = 8.0 GiB; lower store.shard_runs or tasks.mlp_regression.n_samples"),
    ("huge-accelerate-budget", BASE + f"accelerate:\n  stores: {{{STORE}: {{task: mlp_regression, optimizer: sgd}}}}\n"
                                      f"  budget: {10**12}\n", "accelerate.budget: got"),
    ("huge-clevel", replace("shard_runs: 8", f"shard_runs: 8\n  clevel: {10**30}"), "store.clevel: got"),
    ("huge-float-inf", replace("lr: 0.05", "lr: 1e400"), f"stores.{STORE}.optimizer.lr: got inf"),
    ("huge-int-5000-digits", replace("seed: 0", "seed: " + "9" * 5000), "an integer with more than 4,300 digits"),
    ("huge-int-as-float-field", replace("lr: 0.05", f"lr: {10**400}"), "lr: got an integer of about 401 digits"),
    # --- seeds: NumPy SeedSequence takes non-negative ints, stores keep them as int64
    ("seed-2**63", replace("dataset_seeds: [1, 2]", f"dataset_seeds: [1, {2**63}]"), "generate.dataset_seeds[1]: got 9223372036854775808; expected an integer of at most 63 bits"),
    ("seed-negative", replace("dataset_seeds: [1, 2]", "dataset_seeds: [-1, 2]"), "generate.dataset_seeds[0]: got -1"),
    ("seed-2**64", replace("seed: 0", f"seed: {2**64}"), "seed: got 18446744073709551616"),
    ("train-seed-2**63", BASE + f"train:\n  seed: {2**63}\n", "train.seed: got 9223372036854775808"),
    # --- wrong types and shapes
    ("type-steps-string", with_task(steps="many"), "tasks.mlp_regression.steps: got 'many'; expected an integer"),
    ("type-steps-float", with_task(steps="1e3"), "got 1000.0; expected an integer (write 1000"),
    ("type-tasks-list", replace("stores:", "tasks_: 0\nstores:").replace("tasks:\n", "tasks: [a, b]\nold_tasks:\n"),
     "tasks: got ['a', 'b']; expected a mapping"),
    ("type-stores-string", BASE.split("stores:")[0] + "stores: everything\n", "stores: got 'everything'"),
    ("type-top-list", "- a\n- list\n", "<top>: got ['a', 'list']; expected a mapping"),
    ("type-top-scalar", "just a string\n", "<top>: got 'just a string'; expected a mapping"),
    ("type-timestamp", replace("seed: 0", "seed: 2024-01-01"), "seed: got datetime.date(2024, 1, 1); expected an integer"),
    # --- cross-references and missing sections
    ("ref-target-task", replace("target_task: mlp_regression", "target_task: imagenet"),
     "report.target_task: got 'imagenet'; expected a task some store trains: mlp_regression"),
    ("empty-mapping", "{}\n", "stores: missing"),
    ("empty-stores", BASE.split("stores:")[0] + "stores: {}\n", "stores: got an empty mapping"),
    ("ref-horizon-beyond-records", replace("horizons: [4, 8]", "horizons: [4, 800]").replace(
        "{name: sgd, lr: 0.05}}", "{name: sgd, lr: 0.05}, models: [m]}") + "models: {m: {kind: last_value}}\n",
     "forecast.horizons: last horizon 800 is beyond the last recorded step"),
    ("ref-store-task", replace("task: mlp_regression,", "task: nope,"), f"stores.{STORE}.task: got 'nope'"),
    # --- files that are not YAML text
    ("file-empty", "", "<top>: got None; expected a mapping"),
    ("file-not-utf8", BASE.encode() + b"title: caf\xe9\n", "not UTF-8 text (byte 0xe9 at line 26"),
    ("file-binary", bytes(range(256)) * 8, "not UTF-8 text"),
    ("file-nul", b"seed: 0\x00\n", "not valid YAML"),
    ("file-directory", None, "is a directory"),
    ("file-two-documents", BASE + "---\nseed: 1\n", "expected a single document in the stream, but found another document"),
    ("file-too-big", "#" * (5 * 2**20), "larger than 4 MiB"),
    ("tag-python-object", BASE + "x: !!python/object:os.system {}\n", "could not determine a constructor"),
    ("tag-python-apply", "seed: !!python/object/apply:os.system ['touch PWNED']\n", "could not determine a constructor"),
    ("tag-unknown-local", BASE + "x: !secret 1\n", "could not determine a constructor for the tag '!secret'"),
    # --- user text that would make long or broken lines
    ("key-100k-plain", BASE + "k" * 100_000 + ": 1\n", "not valid YAML"),
    ("key-100k-explicit", BASE + '? "' + "k" * 100_000 + '"\n: 1\n', "unknown key"),
    ("key-control-chars", BASE + '"a\\x01b\\nc\\u2028d": 1\n', "a\\x01b\\nc\\u2028d: unknown key"),
    ("value-1mb-string", replace("device: cpu", "device: " + "x" * 2**20), "device: got 'xxxx"),
    ("many-problems", BASE + "".join(f"unknown_{i}: {i}\n" for i in range(5000)),
     f"... and {5000 - MAX_PROBLEMS:,} more problems"),
]


class Tripwire:
    """Stands in for ``gfm.stages.generate.run``: a refused file must never get this far."""

    calls = 0

    def __call__(self, *args, **kwargs):
        Tripwire.calls += 1
        raise AssertionError("generate.run was reached with a params file that should have been refused")


@pytest.fixture
def no_generate(monkeypatch):
    import gfm.stages.generate

    Tripwire.calls = 0
    monkeypatch.setattr(gfm.stages.generate, "run", Tripwire())
    yield
    assert Tripwire.calls == 0


def _write(tmp_path: Path, content: str | bytes | None) -> Path:
    path = tmp_path / "params.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _check_stderr(err: str, path: Path, expected: str) -> list[str]:
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert 1 <= len(lines) <= MAX_LINES, len(lines)
    assert all(len(line) < 500 for line in lines), max(len(line) for line in lines)
    assert all(line.startswith(f"error: {path}: ") for line in lines), lines[:3]
    assert any(expected in line for line in lines), (expected, lines[:5])
    return lines


def test_corpus_is_large_and_distinct():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_base_is_valid(tmp_path, capsys):
    """The corpus mutates a study that validates: every refusal below is about the mutation."""
    path = _write(tmp_path, BASE)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert "ok (1 tasks, 1 stores, 8 runs)" in capsys.readouterr().out


@pytest.mark.parametrize("name, content, expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_params_are_refused(name, content, expected, tmp_path, capsys, no_generate, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may appear beside the file either (tag-python-apply: no PWNED)
    path = _write(tmp_path, content)
    out = tmp_path / "out" / "store.zarr"
    t0 = time.perf_counter()
    code = main(["validate", str(path)])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, err[:500]
    lines = _check_stderr(err, path, expected)
    assert seconds < SECONDS, f"{name}: refused after {seconds:.1f} s"

    code = main(["generate", "--params", str(path), "--store", STORE, "--out", str(out), "--quiet"])
    g_err = capsys.readouterr().err
    assert code == 2 and g_err.strip().splitlines() == lines  # the same refusal, word for word
    assert not out.exists() and not out.with_name(out.name + ".partial").exists() and not out.parent.exists()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name", ["bomb-redteam-1kb", "deep-flow-lists-10000", "dup-store"])
def test_end_to_end_subprocess(name, tmp_path):
    """The real command line: a 1 KB alias bomb, 10,000-deep nesting, a store defined twice."""
    _, content, expected = next(c for c in CASES if c[0] == name)
    path = _write(tmp_path, content)
    out = tmp_path / "store.zarr"
    for args in (["validate", str(path)], ["generate", "--params", str(path), "--store", STORE, "--out", str(out)]):
        proc = subprocess.run([sys.executable, "-m", "gfm", *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        _check_stderr(proc.stderr, path, expected)
        assert len(proc.stderr) < 2000
    assert not out.exists()


# ------------------------------------------------------------------------------------ what must still work

@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("1E5", 1e5), ("+2e3", 2e3), ("1.0e-5", 1e-5), (".5", 0.5),
                                         ("+.5", 0.5), ("3", 3), ("0.05", 0.05), ("1_000", 1000)])
def test_numbers_in_the_forms_users_write(text, value, tmp_path, capsys):
    from gfm.config import load_params

    path = _write(tmp_path, replace("lr: 0.05", f"lr: {text}"))
    lr = load_params(path).stores[STORE].optimizer.lr
    assert lr == value and isinstance(lr, float)
    assert main(["validate", str(path)]) == 0


def test_integers_stay_integers():
    from gfm.base.params_yaml import parse_yaml

    data = parse_yaml("a: 3\nb: -7\nc: 1e3\nd: 0x10\ne: -2e3\nf: 1.5\n")
    assert data == {"a": 3, "b": -7, "c": 1000.0, "d": 16, "e": -2000.0, "f": 1.5}
    assert [type(data[k]) for k in "abcdef"] == [int, int, float, int, float, float]


def test_anchors_for_shared_lists_still_work(tmp_path):
    """params.yaml shares model lists between stores with ``&ls_models`` / ``*ls_models``."""
    from gfm.config import load_params

    text = replace("{name: sgd, lr: 0.05}}", "{name: sgd, lr: 0.05}, models: &ms [a, b]}").replace(
        "forecast:", "  mlp_regression-adam: {task: mlp_regression, optimizer: {name: adam, lr: 0.01}, models: *ms}\nforecast:")
    text += "models: {a: {kind: last_value}, b: {kind: linear}}\n"
    p = load_params(_write(tmp_path, text))
    assert p.stores["mlp_regression-adam"].models == p.stores[STORE].models == ("a", "b")
    assert "&ls_models" in (ROOT / "params.yaml").read_text()
    load_params(ROOT / "params.yaml")


def test_merge_keys_keep_their_meaning():
    from gfm.base.params_yaml import parse_yaml

    assert parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")["d"] == {"x": 3, "y": 2}


def test_the_size_message_names_the_estimate_and_the_way_out(tmp_path, capsys):
    path = _write(tmp_path, CASES[[c[0] for c in CASES].index("huge-block")][1])
    assert main(["validate", str(path)]) == 2
    line = next(x for x in capsys.readouterr().err.splitlines() if "write block" in x)
    assert f"stores.{STORE}: a write block needs" in line and "GiB (256 runs x 201 records x 4,008,001 params x 4 B x 1 array = 768.3 GiB, plus" in line
    assert "above limits.max_block_bytes = 8.0 GiB; lower store.shard_runs or raise the limit" in line


def test_a_limit_can_be_raised_on_purpose(tmp_path, capsys):
    text = with_task(hidden="[2000, 2000]", runs_per_dataset="256", steps="200").replace("shard_runs: 8", "shard_runs: 256")
    text += "limits:\n  max_block_bytes: 4000000000000\n  max_store_bytes: 4000000000000\n"
    assert main(["validate", str(_write(tmp_path, text))]) == 0, capsys.readouterr().err
