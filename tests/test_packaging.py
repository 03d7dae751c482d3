"""Packaging: ranges in pyproject.toml and pins in constraints.txt, an install that keeps an environment's torch,
the library without the pipeline extra, `gfm --version`, and a CLI whose every flag says what it is."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import distribution, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import gfm
from gfm.cli import EXAMPLES, PIPELINE_MODULES, build_parser

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
GFM = Path(sys.executable).parent / "gfm"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """The base dependencies plus those of ``extras``, as written in pyproject.toml."""
    lines = PYPROJECT["dependencies"] + [r for e in extras for r in PYPROJECT["optional-dependencies"][e]]
    return [Requirement(r) for r in lines]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, ver = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_norm(name)] = ver
    return pins


def _closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution that installing ``reqs`` pulls in, following the installed packages' metadata."""
    seen: set[str] = set()
    todo = [(r, "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = _norm(req.name)
        todo += [(Requirement(sub), e) for e in req.extras for sub in distribution(req.name).requires or []]
        if name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(sub), "") for sub in distribution(req.name).requires or []]
    return seen


# --- pyproject.toml and constraints.txt -----------------------------------------------------------------------


def test_pyproject_asks_for_ranges_not_pins():
    groups = {"dependencies": PYPROJECT["dependencies"], **PYPROJECT["optional-dependencies"]}
    exact = [f"{group}: {r}" for group, reqs in groups.items() for r in reqs
             if any(s.operator in ("==", "===") for s in Requirement(r).specifier)]
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"
    assert {"pipeline", "test"} <= set(PYPROJECT["optional-dependencies"])


def test_base_dependencies_leave_out_the_pipeline():
    base = {_norm(r.name) for r in _requirements()}
    pipeline = {_norm(r.name) for r in _requirements(("pipeline",))} - base
    assert {"snakemake", "snakemake-executor-plugin-slurm", "dvc", "matplotlib", "scikit-learn"} <= pipeline
    # the CLI's message for a missing pipeline module names a distribution the extra really provides
    assert set(PIPELINE_MODULES.values()) <= pipeline


def test_constraints_pin_everything_make_venv_installs():
    """`make venv` installs pip, setuptools and gfm[pipeline,test] with -c constraints.txt: every distribution
    that pulls in has a pin, and this environment (made by make venv) holds exactly the pinned versions."""
    pins = _pins()
    installed = _closure(_requirements(("pipeline", "test"))) | {"pip", "setuptools"}
    missing = sorted(installed - set(pins))
    assert not missing, f"installed by make venv but not pinned in constraints.txt: {missing}"
    drift = {n: (pins[n], version(n)) for n in installed if version(n).split("+")[0] != pins[n]}
    assert not drift, f"(pin, installed) differ; run make venv: {drift}"
    makefile = (ROOT / "Makefile").read_text()
    installs = [line.strip() for line in makefile.splitlines() if "pip install" in line and "$(BIN)" in line]
    assert any(".[pipeline,test]" in line for line in installs), installs
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_dvc_parses_yaml_with_the_c_parser():
    # Without ruamel.yaml.clib every params.yaml and dvc.lock read is pure Python: a no-op `dvc status` on the
    # default study is much slower (BENCHMARKS.md, "A no-op"). ruamel >= 0.19 makes the C parser optional.
    from dvc.utils.serialize._yaml import parse_yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed: DVC falls back to the pure-Python parser"
    assert YAML(typ="safe").Parser is CParser
    assert parse_yaml("a: [1, {b: c}]", "x.yaml") == {"a": [1, {"b": "c"}]}


def test_version_is_kept_in_one_place():
    """pyproject.toml reads the version from gfm/_version.py; the installed metadata agrees (else the editable
    install is stale: make venv)."""
    assert "version" in PYPROJECT["dynamic"] and "version" not in PYPROJECT
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "gfm._version.__version__"}
    assert version(PYPROJECT["name"]) == gfm.__version__
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PYPROJECT["license"] == "MIT"


@pytest.mark.parametrize("torch_version", [None, "2.5.1"], ids=["this-venv", "older-torch"])
def test_install_keeps_the_environments_torch(tmp_path, torch_version):
    """`pip install '.[pipeline,test]'` into an environment that already has everything, torch included (this
    venv's torch, or one made to look like an older torch 2.5.1), would install gfm and nothing else: no
    torch downgrade, upgrade or rebuild. pip's config files are ignored so the answer depends on pyproject.toml
    only; nothing is fetched (all requirements are satisfied), so it runs offline."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src" / "gfm", project / "src" / "gfm", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    if torch_version is not None:
        # a dist-info found ahead of site-packages is what pip (and importlib.metadata) take as installed
        fake = tmp_path / "fake" / f"torch-{torch_version}.dist-info"
        fake.mkdir(parents=True)
        (fake / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {torch_version}\n")
        (fake / "RECORD").write_text("")
        env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), *filter(None, [env.get("PYTHONPATH")])])
        seen = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                              env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert seen == torch_version
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--quiet",
                           "--retries", "0", "--timeout", "10", "--report", str(report),
                           f"{project}[pipeline,test]"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    would_install = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert would_install == {PYPROJECT["name"]: gfm.__version__}, would_install


def test_the_distribution_name_is_not_pypis_gfm_and_every_hint_uses_it():
    """PyPI's `gfm` is an unrelated Markdown converter: `pip install 'gfm[pipeline]'` would install it."""
    assert PYPROJECT["name"] == "gfm-pipeline"
    hints = [p for p in (ROOT / "src").rglob("*.py") if "gfm[" in p.read_text() or "install gfm " in p.read_text()]
    assert not hints, f"install hints naming PyPI's gfm: {hints}"
    import gfm.cli
    import gfm.drivers.process

    for module in (gfm.cli, gfm.drivers.process):
        assert "'gfm-pipeline[pipeline]'" in Path(module.__file__).read_text(), module.__name__


def test_the_public_api_has_real_names_and_is_listed():
    public = {"open_trajectories", "record", "record_runs", "load_forecaster", "forecast_run", "prefix_from_arrays",
              "jump_ahead"}
    assert set(dir(gfm)) == public | {"__version__"}
    for name in public:
        assert getattr(gfm, name).__name__ == name, name
    assert "load_forecaster(model_dir" in " ".join(__import__("pydoc").render_doc(gfm.load_forecaster, renderer=__import__("pydoc").plaintext).split())


# --- the library without the pipeline extra -------------------------------------------------------------------

BLOCK_PIPELINE = textwrap.dedent(f"""
    import sys

    # As if the pipeline extra were not installed: None in sys.modules makes `import sklearn` raise
    # ModuleNotFoundError and importlib.util.find_spec("sklearn") return None, which is what torch's own
    # probes for optional packages see when one is missing.
    BLOCKED = {sorted(PIPELINE_MODULES)!r}
    sys.modules.update(dict.fromkeys(BLOCKED))
    try:
        import snakemake  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the blocker let snakemake through")


    def leaked():
        return sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in BLOCKED and mod is not None)
""")

LIBRARY_USE = textwrap.dedent("""
    import sys
    import torch
    import gfm, gfm.recording.recorder, gfm.store.writer
    from gfm.forecasters import Trajectories, make_forecaster

    torch.set_num_threads(1)
    path = sys.argv[1]
    for r in range(6):
        torch.manual_seed(r)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = torch.randn(32, 3)
        y = x @ torch.randn(3, 1)
        with gfm.record(path, model, opt, mode="w" if r == 0 else "a", dataset_seed=0) as rec:
            for _ in range(12):
                loss = ((model(x) - y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss)
    ts = gfm.open_trajectories(path)
    assert (ts.n_runs, ts.n_records, ts.n_params) == (6, 13, 4), (ts.n_runs, ts.n_records, ts.n_params)
    train, val, test = (Trajectories.from_store(ts, ids) for ids in ([0, 1, 2], [3], [4, 5]))
    fc = make_forecaster("gfm", {"width": 8, "steps": 10, "eval_every": 5}, prefix_end=4, horizons=[8, 12])
    fc.fit(train, val, rng=torch.Generator().manual_seed(0))
    pred = fc.forecast(test.prefix(4), horizons=[12])
    assert pred.shape == (2, 1, 4) and bool(torch.isfinite(pred).all()), pred.shape
    assert not leaked(), leaked()
    print("ok")
""")


def _run_blocked(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCK_PIPELINE + code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_library_works_without_the_pipeline_extra(tmp_path):
    """gfm.record, gfm.open_trajectories and a forecaster's fit + forecast with snakemake, dvc, matplotlib,
    scikit-learn and markdown-it-py unimportable: what `pip install .` (no extra) gives."""
    proc = _run_blocked(LIBRARY_USE, str(tmp_path / "mine.zarr"), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout[-2000:] + proc.stderr[-3000:]


def test_pipeline_command_without_the_extra_names_it(tmp_path):
    """A digits store needs scikit-learn: without the extra, `gfm generate` is one line naming the package and
    the extra, exit 2, no traceback."""
    params = ROOT / "params.quick.yaml"
    raw = yaml.safe_load(params.read_text())
    store = next(k for k, s in raw["stores"].items() if raw["tasks"][s["task"]]["kind"] == "digits")
    cli = "from gfm.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
    proc = _run_blocked(cli, "generate", "--params", str(params), "--store", store, "--out",
                        str(tmp_path / "d.zarr"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: gfm generate needs scikit-learn") and "`pipeline` extra" in proc.stderr, \
        proc.stderr


# --- light commands without torch -----------------------------------------------------------------------------

BLOCK_TORCH = textwrap.dedent("""
    import sys


    class NoTorch:
        \"\"\"Any import of torch fails, as if it were not installed.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ModuleNotFoundError(f"torch is blocked in this test: {name}")


    sys.meta_path.insert(0, NoTorch())
    from gfm.cli import main

    code = main(sys.argv[1:])
    assert "torch" not in sys.modules, "imported torch"
    raise SystemExit(code)
""")

# Commands that only read params, YAML or JSON and write text: they run where torch is not installed (a login
# node, a CI job that checks the pipeline's files) and start fast. `gfm validate` is not one of them yet: it
# builds each entry of `models:` to check its options and its size against limits: (gfm.stages.train.model_problems),
# and the forecasters' option classes and size estimates live in their torch modules.
LIGHT_COMMANDS = {
    "pipeline": ["pipeline"],
    "schema": ["schema"],
    "train-index": ["train-index", "--params", str(ROOT / "tests" / "params.tiny.yaml"), "--store",
                    "mlp_regression-sgd", "--out", "{tmp}/index.json"],
}


@pytest.mark.parametrize("command", LIGHT_COMMANDS)
def test_light_commands_run_without_torch(command, tmp_path):
    args = [a.format(tmp=tmp_path) for a in LIGHT_COMMANDS[command]]
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- the command line -----------------------------------------------------------------------------------------


def test_gfm_version_prints_the_package_version():
    proc = subprocess.run([str(GFM), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"gfm {gfm.__version__}\n", (proc.stdout, proc.stderr)


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_flag_of_every_command_says_what_it_is():
    problems = []
    for name, parser in _commands().items():
        for action in parser._actions:
            label = f"gfm {name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                problems.append(f"{label}: no help")
            # a value flag shows what it takes (`--in STORE.zarr`, `--runs {test,val}`), not argparse's
            # upper-cased dest (`--in INP`)
            if action.option_strings and action.nargs != 0 and action.metavar is None and not action.choices:
                problems.append(f"{label}: no metavar")
    assert not problems, problems
    usage = _commands()["split"].format_usage()
    assert "--in STORE.zarr" in usage and "INP" not in usage, usage


def _gfm_calls(example: str) -> list[list[str]]:
    """The argument lists of the `gfm ...` calls in an example (continued lines joined, `&&` chains split)."""
    calls = []
    for line in example.replace("\\\n", " ").splitlines():
        segment: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word != "&&":
                segment.append(word)
                continue
            if segment[:1] == ["gfm"]:
                calls.append(segment[1:])
            segment = []
    return calls


def test_every_command_ends_its_help_with_an_example_that_parses():
    commands = _commands()
    assert set(EXAMPLES) == set(commands), set(EXAMPLES) ^ set(commands)
    parser = build_parser()
    for name, sub in commands.items():
        text = sub.format_help()
        assert "example:" in text and EXAMPLES[name].splitlines()[0] in text, (name, text)
        calls = _gfm_calls(EXAMPLES[name])
        assert any(call[:1] == [name] for call in calls), (name, calls)
        for call in calls:
            assert parser.parse_args(call).command == call[0]  # an unknown or misspelt flag exits here


# What `pip install .` must be able to import: the package face, the CLI, and every module behind the
# library API and the stage commands (generate ... accelerate, import, info, check) with every task kind.
# The pipeline-only modules (gfm.report.summary and the HTML/figure code behind it, gfm.drivers' DVC calls) may import
# the extra's packages; their commands then stop with the one-line message tested above.
BASE_MODULES = ["gfm", "gfm.cli", "gfm.recording.recorder", "gfm.recording.runset", "gfm.recording.jump", "gfm.store.writer", "gfm.forecasters", "gfm.stages.generate",
                "gfm.stages.split", "gfm.stages.train", "gfm.stages.forecast", "gfm.stages.evaluate", "gfm.stages.generalize", "gfm.stages.accelerate",
                "gfm.recording.importer", "gfm.tools.check", "gfm.tasks"] + sorted(
    f"gfm.tasks.{p.stem}" for p in (ROOT / "src" / "gfm" / "tasks").glob("*.py") if p.stem != "__init__")


def test_base_modules_import_without_the_pipeline_extra():
    """The pipeline's packages are imported inside the functions that need them (the digits task's
    scikit-learn, the figures' matplotlib, DVC's API), so these modules load without them."""
    code = "import importlib\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n" \
           "import gfm.cli\ngfm.cli.build_parser()\nassert not leaked(), leaked()\n"
    proc = _run_blocked(code, *BASE_MODULES, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_citation_and_changelog_carry_this_version():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(cff["version"]) == gfm.__version__ and cff["preferred-citation"]["identifiers"][0]["value"] == \
        "arXiv:2505.20221"
    assert f"## [{gfm.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
