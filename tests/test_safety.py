"""No code from data (RELIABILITY.md): the source never deserialises with pickle, unsafe YAML, eval or
torch.load without weights_only; artifacts are only safetensors, JSON, CSV and Zarr; crafted model
directories and names are refused with a clear error and run nothing."""

from __future__ import annotations

import ast
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, TINY
from gfm.base.errors import GFMError, ParamsError
from gfm.cli import main
from gfm.config import parse_params
from gfm.forecasters import Trajectories, make_forecaster, read_model
from gfm.forecasters.base import ForecasterError, ModelFileError
from gfm.forecasters.model_files import MAX_HEADER_BYTES, save_model
from gfm.store.reader import open_trajectories
from test_reliability import KEY, staged  # noqa: F401  (module fixture: split/train/forecast/evaluate/report)

# --- the source scan -----------------------------------------------------------------------------------
_BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


_OWN_DIRECTORY = ast.dump(ast.parse("pkgutil.iter_modules(__path__)", mode="eval").body)


def _own_modules(tree: ast.AST) -> set[int]:
    """The computed imports of exactly ``for m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{m.name}")``: a package importing the modules of its own directory
    (gfm.forecasters registers its forecasters so). Safe: the names are the package's own files, never a value
    read from params or data."""
    allowed = set()
    for loop in ast.walk(tree):
        if not (isinstance(loop, ast.For) and isinstance(loop.target, ast.Name)
                and ast.dump(loop.iter) == _OWN_DIRECTORY):
            continue
        name = ast.dump(ast.parse(f'f"{{__name__}}.{{{loop.target.id}.name}}"', mode="eval").body)
        allowed |= {id(call) for call in ast.walk(loop) if isinstance(call, ast.Call)
                    and _dotted(call.func) == "importlib.import_module" and len(call.args) == 1
                    and ast.dump(call.args[0]) == name}
    return allowed


def scan_python(source: str, where: str) -> list[str]:
    """Every way this source could execute code read from a file, one line each."""
    found = []
    tree = ast.parse(source)
    own_modules = _own_modules(tree)
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{line}: imports {a.name}" for a in node.names if a.name.split(".")[0] in _BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _BANNED_MODULES:
            found.append(f"{line}: imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            short = name.rsplit(".", 1)[-1]
            if name in {"eval", "exec", "compile", "builtins.eval", "builtins.exec"}:
                found.append(f"{line}: calls {name}")
            elif name == "torch.load" or name.endswith(".torch.load"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{line}: torch.load without weights_only=True")
            elif name.startswith("yaml.") and short in {"load", "load_all"}:
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in _SAFE_YAML_LOADERS:
                    found.append(f"{line}: {name} without a safe Loader")
            elif name.startswith("yaml.") and short in {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}:
                found.append(f"{line}: {name}")
            elif short == "load" and name.split(".")[0] in {"np", "numpy"}:
                ap = _kw(node, "allow_pickle")
                if not (ap is None or isinstance(ap, ast.Constant) and ap.value is False):
                    found.append(f"{line}: {name} with allow_pickle")
            elif short in {"read_pickle", "to_pickle"}:
                found.append(f"{line}: {name}")
            elif name in {"__import__", "importlib.import_module"} and not (
                    node.args and isinstance(node.args[0], ast.Constant)) and id(node) not in own_modules:
                found.append(f"{line}: {name} of a computed name")
    return found


_SMK_PATTERNS = [re.compile(p) for p in (r"\bpickle\b", r"\btorch\.load\(", r"\byaml\.(unsafe_|full_)?load\(",
                                          r"(?<![\w.])eval\(", r"(?<![\w.])exec\(")]


def scan_workflow(text: str, where: str) -> list[str]:
    """Snakemake files are Python-like but not parseable by ``ast``: a pattern scan."""
    return [f"{where}:{i}: {pat.pattern}" for i, line in enumerate(text.splitlines(), 1)
            for pat in _SMK_PATTERNS if pat.search(line.split("#", 1)[0])]


def _sources() -> list[Path]:
    files = [p for d in ("src", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    return [p for p in files if ".venv" not in p.parts and "egg-info" not in str(p)]


def test_no_source_file_can_run_code_from_data():
    found = [f for p in _sources() for f in scan_python(p.read_text(), str(p.relative_to(ROOT)))]
    smk = [ROOT / "Snakefile", *(ROOT / "workflow").rglob("*.smk"), ROOT / "workflow" / "Snakefile"]
    found += [f for p in smk if p.is_file() for f in scan_workflow(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []
    assert len(_sources()) > 20  # the scan really saw the package and its tests


@pytest.mark.parametrize("snippet", [
    "import pickle", "from pickle import loads", "import dill as d", "import joblib",
    "eval('1')", "exec(code)", "compile(s, 'f', 'exec')",
    "torch.load(f)", "torch.load(f, weights_only=False)", "torch.load(f, map_location='cpu')",
    "yaml.load(text)", "yaml.load(text, Loader=yaml.Loader)", "yaml.load(text, yaml.UnsafeLoader)",
    "yaml.unsafe_load(text)", "yaml.full_load(text)", "np.load(p, allow_pickle=True)", "pd.read_pickle(p)",
    "__import__(name)", "importlib.import_module(cfg['kind'])",
    "for m in pkgutil.iter_modules(path):\n    importlib.import_module(f'{__name__}.{m.name}')",
    "for m in pkgutil.iter_modules(__path__):\n    importlib.import_module(f'{__name__}.{cfg}')",
    "for m in pkgutil.iter_modules(__path__):\n    importlib.import_module(m.name)",
])
def test_the_scan_catches_each_forbidden_form(snippet):
    assert scan_python(snippet, "x.py"), snippet


@pytest.mark.parametrize("snippet", [
    "torch.load(f, weights_only=True)", "yaml.safe_load(text)", "yaml.load(text, Loader=yaml.SafeLoader)",
    "yaml.load(text, Loader=yaml.CSafeLoader)", "np.load(p)", "json.loads(s)", "__import__('zarr')",
    "model.eval()", "load_file(path)",
    "for m in pkgutil.iter_modules(__path__):\n    importlib.import_module(f'{__name__}.{m.name}')",
])
def test_the_scan_allows_the_safe_forms(snippet):
    assert scan_python(snippet, "x.py") == []


def test_the_workflow_scan_catches_and_allows():
    assert scan_workflow("    run:\n        x = pickle.loads(b)\n", "r.smk")
    assert scan_workflow("        cfg = yaml.load(open(p))\n", "r.smk")
    assert scan_workflow('        x = eval(params.expr)\n', "r.smk") and not scan_workflow("        m.eval()\n", "r.smk")


# --- what artifacts hold ---------------------------------------------------------------------------------
_ALLOWED_SUFFIXES = {".json", ".csv", ".safetensors", ".md", ".html", ".png"}


def test_artifacts_are_only_safetensors_json_csv_and_zarr(staged, tiny_store):  # noqa: F811
    _, root, _ = staged
    files = [p for base in (root, tiny_store) for p in base.rglob("*") if p.is_file()]
    assert len(files) > 50
    for p in files:
        in_zarr = any(part.endswith(".zarr") for part in p.parts)
        if in_zarr:
            assert p.name == "zarr.json" or "c" in p.parts, p  # metadata or a chunk/shard file
        else:
            assert p.suffix in _ALLOWED_SUFFIXES, p
        head = p.read_bytes()[:2]
        assert head != b"PK" and not head.startswith(b"\x80"), f"{p}: zip (torch.save) or pickle bytes"


# --- crafted model directories -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lstm_dir(tiny_store, tmp_path_factory) -> Path:
    """A genuine saved LSTM forecaster (it has tensors to tamper with)."""
    ts = open_trajectories(tiny_store)
    traj = Trajectories.from_store(ts, list(range(12)))
    fc = make_forecaster("lstm", {"hidden": 8, "steps": 8, "batch_size": 64}, prefix_end=8, horizons=[16, 24, 32, 40])
    fc.fit(traj.select(range(8)), traj.select(range(8, 12)), rng=torch.Generator().manual_seed(0))
    return save_model(fc, tmp_path_factory.mktemp("models") / "lstm")


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _set_config(d: Path, **changes) -> None:
    meta = json.loads((d / "config.json").read_text())
    meta.update(changes)
    (d / "config.json").write_text(json.dumps(meta))


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "weights.safetensors"))


def _oversized_header(d):
    (d / "weights.safetensors").write_bytes(struct.pack("<Q", MAX_HEADER_BYTES * 64) + b"{}" + b"\0" * 64)


def _header_past_the_end(d):
    (d / "weights.safetensors").write_bytes(struct.pack("<Q", 4096) + b'{"a": 1}')


def _truncated(d):
    (d / "weights.safetensors").write_bytes(b"\x01\x02")


def _float64(d):
    save_file({k: v.double() for k, v in _tensors(d).items()}, str(d / "weights.safetensors"))


def _int64(d):
    t = _tensors(d)
    k = sorted(t)[0]
    t[k] = t[k].long()
    save_file(t, str(d / "weights.safetensors"))


def _traversal_name(d):
    t = _tensors(d)
    t["../../../etc/passwd"] = t.pop(sorted(t)[0])
    save_file(t, str(d / "weights.safetensors"))


def _wrong_shape(d):
    t = _tensors(d)
    t[sorted(t)[0]] = torch.zeros(3, 3)
    save_file(t, str(d / "weights.safetensors"))


def _missing_tensor(d):
    t = _tensors(d)
    t.pop(sorted(t)[0])
    save_file(t, str(d / "weights.safetensors"))


def _pickle_as_weights(d):
    # a protocol-0 pickle that would run `touch PWNED` if anything unpickled it
    (d / "weights.safetensors").write_bytes(b"cposix\nsystem\n(S'touch " + str(d / "PWNED").encode() + b"'\ntR.")


def _zip_as_weights(d):  # what torch.save writes
    (d / "weights.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 100)


CRAFTED = {
    "oversized header": (_oversized_header, "header"),
    "header past the end": (_header_past_the_end, "header"),
    "truncated file": (_truncated, "truncated"),
    "float64 tensors": (_float64, "dtype 'F64'"),
    "int64 tensor": (_int64, "dtype 'I64'"),
    "path traversal in a tensor name": (_traversal_name, "not a plain identifier"),
    "tensor of the wrong shape": (_wrong_shape, "do not fit"),
    "missing tensor": (_missing_tensor, "do not fit"),
    "pickle posing as safetensors": (_pickle_as_weights, "header"),
    "torch.save zip posing as safetensors": (_zip_as_weights, "header"),
    "unknown class": (lambda d: _set_config(d, kind="os.system"), "unknown forecaster 'os.system'"),
    "code as the class name": (lambda d: _set_config(d, kind="__import__('os').system('touch PWNED')"), "unknown forecaster"),
    "unknown option": (lambda d: _set_config(d, config={"hidden": 8, "__reduce__": "x"}), "__reduce__"),
    "wrong format tag": (lambda d: _set_config(d, format="pickle"), "not a gfm-forecaster"),
    "newer format version": (lambda d: _set_config(d, version=99), "not a gfm-forecaster"),
    "prefix_end not a number": (lambda d: _set_config(d, prefix_end="8; rm -rf /"), "must be an integer"),
    "horizons not a list": (lambda d: _set_config(d, horizons="all"), "must be an integer"),
    "extra not a mapping": (lambda d: _set_config(d, extra=[1, 2]), "'extra' must be a mapping"),
    "config not JSON": (lambda d: (d / "config.json").write_text("{'kind': 'lstm'"), "not valid JSON"),
    "config missing": (lambda d: (d / "config.json").unlink(), "missing"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_model_directories_are_refused(case, lstm_dir, tmp_path, capsys):
    craft, message = CRAFTED[case]
    d = _copy(lstm_dir, tmp_path / "model")
    craft(d)
    with pytest.raises((ModelFileError, ForecasterError)) as info:
        read_model(d)
    assert isinstance(info.value, GFMError) and message in str(info.value), str(info.value)
    assert main(["check", str(d)]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and message in out, out
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()


def test_the_genuine_model_loads_and_checks_clean(lstm_dir, capsys):
    assert read_model(lstm_dir).name == "lstm"
    assert main(["check", str(lstm_dir)]) == 0
    assert "ok (model: lstm" in capsys.readouterr().out


def test_forecast_cli_refuses_a_crafted_model_with_one_line(staged, tiny_store, tmp_path, capsys):  # noqa: F811
    _, root, sp = staged
    models = tmp_path / "models"
    shutil.copytree(root / "models", models)
    _set_config(models / "linear" / "1", kind="subprocess.run")
    code = main(["forecast", "--params", str(TINY), "--store", KEY, "--model", "linear", "--in", str(tiny_store),
                 "--split", str(sp), "--models", str(models), "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown forecaster 'subprocess.run'" in err
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.partial").exists()


# --- names that become paths ---------------------------------------------------------------------------
def _tiny_dict() -> dict:
    import yaml

    return yaml.safe_load(TINY.read_text())


@pytest.mark.parametrize("where, name", [
    ("tasks", "../escape"), ("tasks", "a/b"), ("tasks", "."), ("tasks", "_hidden"), ("tasks", "x y"),
    ("models", "../m"), ("models", "m/n"), ("models", ".."),
])
def test_names_that_become_paths_are_plain_identifiers(where, name):
    data = _tiny_dict()
    first = next(iter(data[where]))
    data[where][name] = data[where].pop(first)
    with pytest.raises(ParamsError) as info:
        parse_params(data)
    assert any(p.startswith(f"{where}.{name}") for p in info.value.problems), info.value.problems


def test_store_keys_must_be_task_dash_optimizer():
    data = _tiny_dict()
    data["stores"]["../../x"] = data["stores"].pop("mlp_regression-sgd")
    with pytest.raises(ParamsError, match=r"stores\.\.\./\.\./x: store keys are '<task>-<optimizer>'"):
        parse_params(data)
