"""`dvc plots show` / `dvc plots diff` write a page that draws without network access (gfm.tools.plots_page).

The project's HTML template carries Vega, Vega-Lite and vega-embed inline (DVC's default page loads them from a
CDN). The render tests open the page DVC writes, unchanged, in headless Chromium with every host unreachable
and read the drawn SVG marks back from the DOM; one of them shows that a page needing the CDN draws nothing
under the same flags, so the others cannot pass by reaching the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from csv import DictReader
from pathlib import Path

import pytest
from configobj import ConfigObj

from conftest import BIN, ROOT, TINY, run_tool
from gfm.base.errors import GFMError
from gfm.tools.plots_page import CONFIG_VALUE, LIBRARIES, TEMPLATE, page, read_page, use_offline_page, vendor
from gfm.tools.workspace import sync_workspace

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="no Chromium on this machine (apt-get install chromium to run this)")
# Plots in the repository's committed plots/: one per store and kind.
PLOTS = {f"plots_{kind}_{p.stem}_csv" for kind in ("error_vs_horizon", "trajectory")
         for p in (ROOT / "plots" / kind).glob("*.csv")}
MAX_TEMPLATE_BYTES = 1_000_000   # the three minified builds are ~840 kB; every index.html DVC writes holds them


# ------------------------------------------------------------------------------------------ the browser

def render_dom(html: Path, profile: Path) -> str:
    """The DOM of ``html`` once headless Chromium has run its scripts (20 s of virtual time), with no network:
    every host name fails to resolve and every connection goes through a proxy on a port nobody listens on."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                           f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", html.as_uri()],
                          check=True, capture_output=True, text=True, timeout=180).stdout


def drawn_lines(dom: str) -> dict[str, tuple[str | None, int]]:
    """Each plot <div> of DVC's page -> (its data-rendered mark, the number of line marks drawn with a path)."""
    out = {}
    for div in re.split(r'(?=<div id="plots_)', dom)[1:]:
        name = re.match(r'<div id="([^"]+)"', div).group(1)
        rendered = re.search(r'^<div [^>]*data-rendered="([^"]*)"', div)
        groups = re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', div, flags=re.S)
        # a drawn line: a path that moves, then draws at least one segment (a series without points draws none)
        paths = [d for g in groups for d in re.findall(r' d="(M[^"]+)"', g) if "L" in d]
        out[name] = (rendered and rendered.group(1), len(paths))
    return out


def expected_lines(csv: Path) -> int:
    """The lines the plot of ``csv`` draws for one revision: one per model (error_vs_horizon; the template keeps
    mse > 0) or one per series in each parameter's panel (trajectory), each of two points or more."""
    rows = list(DictReader(csv.open()))
    keys = Counter((r["model"],) if "mse" in r else (r["param"], r["series"]) for r in rows
                   if "mse" not in r or float(r["mse"]) > 0)
    return sum(n >= 2 for n in keys.values())


def assert_every_plot_drawn(html: Path, tmp_path: Path, plots: Path, revisions: int = 1) -> None:
    """Every plot of the CSV files under ``plots`` (one directory per kind) draws all its lines in ``html``."""
    text = html.read_text()
    assert "<script src" not in text and "cdn.jsdelivr" not in text, "the page loads scripts from elsewhere"
    drawn = drawn_lines(render_dom(html, tmp_path / "profile"))
    expected = {f"plots_{csv.parent.name}_{csv.stem}_csv": revisions * expected_lines(csv)
                for csv in plots.glob("*/*.csv")}
    assert set(drawn) == set(expected)
    for name, (rendered, lines) in drawn.items():
        assert rendered == "ok", f"{name}: {rendered or 'vegaEmbed never finished'}"
        assert lines == expected[name] > 0, f"{name}: {lines} lines drawn, expected {expected[name]}"


# ------------------------------------------------------------------------------------------ the projects

def _plots_repo(dest: Path) -> Path:
    """A git + DVC repository holding what `dvc plots` reads in this one: dvc.yaml, params.yaml, the committed
    plots/, workflow/ (the plot templates and the page) and .dvc/config."""
    dest.mkdir()
    for item in ("dvc.yaml", "params.yaml", "plots", "workflow"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy2)(ROOT / item, dest / item)
    run_tool(["git", "init", "-q"], dest)
    run_tool(["dvc", "init", "-q"], dest)
    shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    run_tool(["git", "add", "-A"], dest)
    run_tool(["git", "commit", "-qm", "plots"], dest)
    return dest


@needs_chromium
def test_repository_plots_show_and_diff_draw_offline(tmp_path):
    """A plain `dvc plots show` on the committed plots/ (no pipeline run), then `dvc plots diff` against the
    commit after an edit: both pages draw every plot with no network."""
    repo = _plots_repo(tmp_path / "repo")
    run_tool(["dvc", "plots", "show"], repo)
    assert_every_plot_drawn(repo / "dvc_plots" / "index.html", tmp_path / "show", repo / "plots")
    csv = repo / "plots" / "error_vs_horizon" / "digits-adam.csv"
    head, *rows = csv.read_text().splitlines()
    doubled = [",".join([*r.split(",")[:2], str(2 * float(r.split(",")[2])), *r.split(",")[3:]]) for r in rows]
    csv.write_text("\n".join([head, *doubled]) + "\n")      # a changed run: its errors doubled
    shutil.rmtree(repo / "dvc_plots")
    run_tool(["dvc", "plots", "diff"], repo)
    html = repo / "dvc_plots" / "index.html"
    assert '"rev": "workspace"' in html.read_text() and '"rev": "HEAD"' in html.read_text()
    assert_every_plot_drawn(html, tmp_path / "diff", repo / "plots", revisions=2)


@needs_chromium
def test_workspace_plots_show_draws_offline(tmp_path):
    """`gfm workspace` brings the page and the config option along: `dvc plots show` there draws offline."""
    ws = sync_workspace(tmp_path / "ws", TINY, repo=ROOT)
    assert ConfigObj(str(ws / ".dvc" / "config"))["plots"]["html_template"] == CONFIG_VALUE
    shutil.copytree(ROOT / "plots", ws / "plots")          # what the headline stage writes there
    run_tool(["dvc", "plots", "show"], ws)
    assert_every_plot_drawn(ws / "dvc_plots" / "index.html", tmp_path, ws / "plots")


@needs_chromium
def test_a_page_that_needs_the_network_draws_nothing_under_these_flags(tmp_path):
    """The control: the same page with the libraries loaded from the CDN, as DVC's default page does, in the
    same browser: no plot is drawn, so the other render tests could not pass by reaching the network."""
    repo = _plots_repo(tmp_path / "repo")
    run_tool(["dvc", "plots", "show"], repo)
    text = (repo / "dvc_plots" / "index.html").read_text()
    for lib in read_page((ROOT / TEMPLATE).read_text()):
        text = text.replace(lib.js.rstrip("\n"), "</script><script src=\"https://cdn.jsdelivr.net/npm/"
                                                 f"{lib.name}@{lib.version}\">", 1)
    cdn = tmp_path / "cdn.html"
    cdn.write_text(text)
    assert text.count('<script src="https://cdn.jsdelivr.net') == len(LIBRARIES)
    drawn = drawn_lines(render_dom(cdn, tmp_path / "profile"))
    assert set(drawn) == PLOTS and all(lines == 0 for _, lines in drawn.values()), drawn


def _div(name: str, spec: dict) -> str:
    """A plot <div> as DVC's Vega renderer writes it."""
    return (f'<div id = "{name}">\n<script type = "text/javascript">\nvar spec = {json.dumps(spec)};\n'
            f"vegaEmbed('#{name}', spec);\n</script>\n</div>")


@needs_chromium
def test_a_plot_that_cannot_be_drawn_says_so_in_its_place(tmp_path):
    """One broken spec (an unknown mark) among good ones: the others are drawn, and the broken one shows why."""
    good = {"data": {"values": [{"x": x, "y": x * x} for x in range(4)]}, "mark": "line",
            "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}}}
    divs = [_div("plots_a_csv", good), _div("plots_bad_csv", {**good, "mark": "no-such-mark"}), _div("plots_c_csv", good)]
    html = tmp_path / "index.html"
    html.write_text((ROOT / TEMPLATE).read_text().replace("{plot_divs}", "\n".join(divs)).replace("{refresh_tag}", ""))
    dom = render_dom(html, tmp_path / "profile")
    assert drawn_lines(dom) == {"plots_a_csv": ("ok", 1), "plots_bad_csv": ("error", 0), "plots_c_csv": ("ok", 1)}
    assert re.search(r'<div id="plots_bad_csv"[^>]*>This plot could not be drawn: \w*Error: \w', dom)


# ------------------------------------------------------------------------------------------ the template

def test_template_holds_the_npm_builds_it_names_and_nothing_else():
    text = (ROOT / TEMPLATE).read_text()
    libs = read_page(text)
    assert [lib.name for lib in libs] == list(LIBRARIES)
    recorded = re.findall(r"build/[\w.-]+\.min\.js, sha256 (\w+) -->", text)
    assert recorded == [lib.sha256 for lib in libs], "an inlined build differs from the one whose checksum it names"
    for lib in libs:
        assert re.search(rf"""\bversion\s*[:=]\s*["']{re.escape(lib.version)}["']|["']{re.escape(lib.version)}["']""",
                         lib.js), f"{lib.name}: the build is not version {lib.version}"
        licence = (ROOT / TEMPLATE).parent / f"LICENSE.{lib.name}"
        assert "Copyright" in licence.read_text() and "Redistribution" in licence.read_text(), licence
    assert page(libs) == text, "the template was edited by hand: regenerate it with python -m gfm.tools.plots_page"
    assert "{plot_divs}" in text and "{scripts}" not in text      # no CDN links: DVC fills {scripts} with them
    assert len(text.encode()) < MAX_TEMPLATE_BYTES


def test_the_repository_config_names_the_template():
    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert config["plots"]["html_template"] == CONFIG_VALUE
    assert (ROOT / ".dvc" / CONFIG_VALUE).resolve() == (ROOT / TEMPLATE).resolve()


def test_a_workspace_sync_sets_the_option_once_and_keeps_a_template_chosen_there(tmp_path):
    ws = sync_workspace(tmp_path / "ws", TINY, repo=ROOT)
    config = ws / ".dvc" / "config"
    config.write_text("[core]\n    no_scm = True\n")                 # a workspace made before the option
    sync_workspace(ws, TINY, repo=ROOT)
    assert ConfigObj(str(config))["plots"]["html_template"] == CONFIG_VALUE
    config.write_text(config.read_text().replace(CONFIG_VALUE, "../mine.html"))
    sync_workspace(ws, TINY, repo=ROOT)
    assert config.read_text() == "[core]\n    no_scm = True\n[plots]\n    html_template = ../mine.html\n"


def test_a_config_that_is_not_dvcs_is_named_and_left_alone(tmp_path):
    (tmp_path / ".dvc").mkdir()
    config = tmp_path / ".dvc" / "config"
    for text, why in [("[core\nx = 1\n", "not readable as DVC's config"), ("plots = 1\n", "'plots' is a value")]:
        config.write_text(text)
        with pytest.raises(GFMError, match=re.escape(why)) as info:
            use_offline_page(tmp_path)
        assert "\n" not in str(info.value) and str(config) in str(info.value)
        assert config.read_text() == text


# ------------------------------------------------------------------------------------------ vendoring

def _tarball(path: Path, files: dict[str, str]) -> Path:
    """An npm-pack-like tarball: package/<file> for each of ``files``."""
    with tarfile.open(path, "w:gz") as tar:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _package(tmp_path: Path, name: str, js: str, **drop: bool) -> Path:
    files = {"package.json": json.dumps({"name": name, "version": "1.2.3", "license": "BSD-3-Clause"}),
             f"build/{name}.min.js": js, "LICENSE": f"Copyright {name}\n"}
    return _tarball(tmp_path / f"{name}.tgz", {k: v for k, v in files.items() if not drop.get(k.split("/")[0])})


def test_vendor_writes_the_page_and_licenses_from_npm_tarballs(tmp_path):
    tarballs = [_package(tmp_path, name, f"window.{name.replace('-', '_')}={{version:\"1.2.3\"}};\n")
                for name in LIBRARIES]
    out = vendor(tarballs, tmp_path / "out")
    libs = read_page(out.read_text())
    assert [(lib.name, lib.version, lib.license) for lib in libs] == [(n, "1.2.3", "BSD-3-Clause") for n in LIBRARIES]
    assert libs[0].sha256 == hashlib.sha256(b'window.vega={version:"1.2.3"};\n').hexdigest()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [Path(TEMPLATE).name] + [f"LICENSE.{n}" for n in LIBRARIES])


@pytest.mark.parametrize("case", ["no build", "no license", "wrong package", "script end", "placeholder", "two"])
def test_vendor_refuses_what_it_cannot_inline_and_writes_nothing(tmp_path, case):
    ok = {name: f"var {name.replace('-', '_')} = 1;\n" for name in LIBRARIES}
    js = {"script end": 'var s = "</script>";\n', "placeholder": 'var s = "{plot_divs}";\n'}.get(case, ok["vega"])
    tarballs = [_package(tmp_path, "vega", js, build=case == "no build", LICENSE=case == "no license"),
                _package(tmp_path, "vega-embed" if case == "wrong package" else "vega-lite", ok["vega-lite"]),
                _package(tmp_path, "vega-embed", ok["vega-embed"])]
    with pytest.raises(GFMError) as info:
        vendor(tarballs[:2] if case == "two" else tarballs, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_vendor_command_exits_2_with_one_line_and_keeps_the_template(tmp_path):
    before = (ROOT / TEMPLATE).read_bytes()
    for args, why in [([tmp_path / "x.tgz"], "1 tarball(s) given; expected 3, of vega, vega-lite, vega-embed"),
                      ([tmp_path / f"{name}.tgz" for name in LIBRARIES], "vega.tgz: not an npm tarball of vega")]:
        proc = subprocess.run([str(BIN / "python"), "-m", "gfm.tools.plots_page", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert why in proc.stderr
    assert (ROOT / TEMPLATE).read_bytes() == before
