"""The README's experiment commands, run as written in the workspace a user gets.

The commands are read from the README's **Experiments** paragraph (every line of its ```bash block), so an
edit of the README that this test does not know fails here. The workspace is made once, the way a user makes
one: `gfm workspace` with the tiny params (it is a git repository with DVC's ignores and a first commit), run
the way `make run` does it (one `snakemake --cores all`, then `gfm commit`), and the finished run committed as
the README says. The tiny params have the store the README's command names, so the commands need no change.
The experiment changes one store's learning rate, so it re-runs that store's stages and the stages that read
every store (headline, generalize, report). The same finished workspace also feeds `snakemake --report`.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TINY, run_tool, tool_env

pytestmark = pytest.mark.timeout(2400)

README = ROOT / "README.md"


def readme_commands(text: str) -> list[str]:
    """The shell lines of the ```bash block(s) of the README's **Experiments** paragraph, comments cut."""
    start = text.index("**Experiments.**")
    end = text.find("\n**", start + 1)
    section = text[start:end if end != -1 else len(text)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks, "the Experiments paragraph has no ```bash block of commands"
    commands = []
    for line in "\n".join(blocks).splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line:
            commands.append(line)
    return commands


def baseline_commands(text: str) -> list[str]:
    """The README's command that commits a finished run in a workspace (`git add ...` in the paragraph's text)."""
    start = text.index("**Experiments.**")
    section = " ".join(text[start:text.find("\n**", start + 1)].split())
    commands = re.findall(r"`(git add [^`]+)`", section)
    assert commands, "the Experiments paragraph does not say how to commit a finished run in a workspace"
    return commands


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**tool_env(), "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished, committed run of the tiny params in a workspace made by `gfm workspace`, nothing patched."""
    ws = tmp_path_factory.mktemp("experiments") / "tiny"
    run_tool(["gfm", "workspace", str(ws), "--params", str(TINY)], ROOT)
    run_tool(["snakemake", "--cores", "all", "--quiet"], ws, timeout=1200)
    run_tool(["gfm", "commit"], ws, timeout=600)
    for command in baseline_commands(README.read_text()):
        _run(command, ws)
    tracked = run_tool(["git", "ls-files"], ws).stdout.split()
    assert "metrics.json" in tracked and "dvc.lock" in tracked, tracked
    assert any(f.startswith("plots/error_vs_horizon/") for f in tracked), tracked
    assert not any(f.startswith("data/") and f != "data/.gitignore" for f in tracked), "git tracks outputs"
    assert not any(f.startswith(".dvc/") and f not in (".dvc/config", ".dvc/.gitignore") for f in tracked), \
        "git tracks DVC's cache or state"
    assert not run_tool(["git", "status", "--porcelain"], ws).stdout.strip(), "the run is not all committed"
    # the report names the file the workspace's params.yaml is a copy of
    assert "Config: `params.yaml`, the workspace's copy of `params.tiny.yaml`" in (ws / "reports" / "summary.md").read_text()
    return ws


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _check_exp_run(ws: Path, argv: list[str], proc: subprocess.CompletedProcess) -> None:
    store = next(a.split("=", 1)[0].split(".")[1] for a in argv if a.startswith("stores."))
    ran = _stages_run(proc.stdout)
    own = {f"{stage}@{store}" for stage in ("generate", "split", "train", "forecast", "evaluate")}
    assert own <= ran, f"the store's stages did not all run: {sorted(own - ran)}"
    assert ran - own <= {"headline", "generalize", "report"}, f"other stages re-ran: {sorted(ran - own)}"
    assert "headline" in ran
    name = argv[argv.index("-n") + 1]
    listed = run_tool(["dvc", "exp", "list", "--name-only"], ws).stdout.split()
    assert name in listed, listed


def _check_exp_show(ws: Path, argv: list[str], proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout
    assert "optimizer.lr" in out, out[-3000:]          # the changed param
    assert re.search(r"final_xlv\.least_squares_1d_gd-sgd\.\w+", out), out[-3000:]   # the moved headline numbers
    shown = set(re.findall(r"\b(?:final_xlv|stores)\.[\w.-]+", out))
    assert shown, out[-3000:]
    assert "mse_by_horizon" not in out and "final_mse" not in out, "the full metrics are shown as DVC metrics"


def _check_metrics_diff(ws: Path, argv: list[str], proc: subprocess.CompletedProcess) -> None:
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("metrics.json")]
    changed = {r[1] for r in rows}
    assert changed, proc.stdout
    assert all(k.startswith("final_xlv.least_squares_1d_gd-sgd.") for k in changed), changed
    head = json.loads(run_tool(["git", "show", "HEAD:metrics.json"], ws).stdout)["final_xlv"]
    assert {f"final_xlv.least_squares_1d_gd-sgd.{m}" for m in head["least_squares_1d_gd-sgd"]} >= changed


def _check_plots_diff(ws: Path, argv: list[str], proc: subprocess.CompletedProcess) -> None:
    html = (ws / "dvc_plots" / "index.html").read_text()
    specs = re.findall(r"var spec = (.*?);\s*vegaEmbed\(", html, flags=re.S)
    assert specs, "no plot in dvc_plots/index.html"
    for spec in map(json.loads, specs):
        revs = {v["rev"] for v in spec["data"]["values"]}
        assert revs == {"workspace", "HEAD"}, f"{spec.get('title')}: revisions {revs}"


def _check_exp_apply(ws: Path, argv: list[str], proc: subprocess.CompletedProcess) -> None:
    assert run_tool(["dvc", "status", "--json"], ws).stdout.strip() in ("{}", "")
    assert "Nothing to be done" in run_tool(["snakemake", "-n"], ws).stdout


CHECKS = {
    ("dvc", "exp", "run"): _check_exp_run,
    ("dvc", "exp", "show"): _check_exp_show,
    ("dvc", "metrics", "diff"): _check_metrics_diff,
    ("dvc", "plots", "diff"): _check_plots_diff,
    ("dvc", "exp", "apply"): _check_exp_apply,
}


def test_readme_experiment_commands_run_as_written(finished):
    commands = readme_commands(README.read_text())
    seen = []
    for command in commands:
        argv = shlex.split(command)
        key = tuple(argv[:3])
        assert key in CHECKS, f"README command {command!r} has no check here: add one to tests/test_experiments.py"
        proc = _run(command, finished)
        CHECKS[key](finished, argv, proc)
        seen.append(key)
    assert seen == list(CHECKS), f"README commands {seen} are not the ones this test checks, in order"


def test_snakemake_report_holds_the_figures_with_captions(finished, tmp_path):
    out = tmp_path / "report.html"
    run_tool(["snakemake", "--report", str(out)], finished, timeout=600)
    html = out.read_text()
    figures = sorted(p.name for p in (finished / "reports" / "figures").glob("*.png"))
    assert figures
    decoder = json.JSONDecoder()
    for name in figures:
        key = f'"reports/figures/{name}": '
        assert key in html, f"{name} is not in the Snakemake report"
        entry, _ = decoder.raw_decode(html, html.index(key) + len(key))
        assert entry["caption"].startswith("<p>") and len(entry["caption"]) > 80, f"{name}: no caption"
        assert entry["mime_type"] == "image/png" and ";base64,iVBORw0KGgo" in entry["data_uri"], f"{name}: no PNG"
    assert "Forecast error vs horizon on store" in html and "Validation curves" in html
