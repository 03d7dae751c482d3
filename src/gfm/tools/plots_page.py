"""The page `dvc plots show` / `dvc plots diff` write (dvc_plots/index.html), drawn without network access.

DVC fills an HTML template: ``{plot_divs}`` becomes one ``<div>`` per plot, each calling ``vegaEmbed`` on its
Vega-Lite spec, and ``{scripts}`` becomes DVC's ``<script src>`` tags for Vega, Vega-Lite and vega-embed on a
CDN, so its default page is blank on a machine without internet. DVC writes only the HTML file (nothing beside
it), so the project's template (:data:`TEMPLATE`, named by ``plots.html_template`` in ``.dvc/config``) holds no
``{scripts}`` and carries the three libraries inline: the minified builds of their npm packages as published,
their licenses beside the template. To move to other versions:

    npm pack --pack-destination /tmp vega@<v> vega-lite@<v> vega-embed@<v>
    python -m gfm.tools.plots_page /tmp/vega-<v>.tgz /tmp/vega-lite-<v>.tgz /tmp/vega-embed-<v>.tgz  # in the repository

A workspace (:mod:`gfm.tools.workspace`) gets the template with workflow/ and the config option from
:func:`use_offline_page`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from gfm.base.atomic import write_text_atomic
from gfm.base.errors import GFMError, shorten

__all__ = ["TEMPLATE", "CONFIG_VALUE", "LIBRARIES", "Library", "page", "read_page", "vendor", "use_offline_page"]

TEMPLATE = "workflow/plots/page/template.html"
"""The template, relative to the project root (a workspace has it under the same path)."""
CONFIG_VALUE = f"../{TEMPLATE}"
"""``plots.html_template`` as written in ``.dvc/config``: DVC resolves a relative path from ``.dvc/``."""
LIBRARIES = ("vega", "vega-lite", "vega-embed")
"""In load order: Vega-Lite needs Vega, vega-embed needs both."""


@dataclass(frozen=True)
class Library:
    name: str          # the npm package
    version: str
    license: str       # its SPDX identifier (package.json); the text is LICENSE.<name> beside the template
    js: str            # build/<name>.min.js of the package, as published (ending in one newline)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.js.encode()).hexdigest()


_HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Vega, Vega-Lite and vega-embed inline, and no placeholder for DVC's CDN links to them, so that this page
         draws without network access. Written by `python -m gfm.tools.plots_page` (src/gfm/tools/plots_page.py). -->
"""

_LIB = """    <!-- {name} {version} ({license}, LICENSE.{name} in workflow/plots/page): build/{name}.min.js, sha256 {sha256} -->
    <script>
{js}
    </script>
"""

# DVC's page calls vegaEmbed(selector, spec) once per plot and drops the promise. Drawn as SVG, the marks are
# part of the page (crisp when zoomed, and readable by the offline render test); a plot that fails says so in
# its place instead of staying blank, and each plot's <div> records the outcome in data-rendered.
_TAIL = """    <script>
    (function () {
        const embed = window.vegaEmbed;
        window.vegaEmbed = Object.assign(function (el, spec, options) {
            const div = typeof el === "string" ? document.querySelector(el) : el;
            return embed(el, spec, Object.assign({renderer: "svg"}, options)).then(function (result) {
                div.dataset.rendered = "ok";
                return result;
            }, function (error) {
                div.dataset.rendered = "error";
                div.prepend("This plot could not be drawn: " + error);
            });
        }, embed);
    })();
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""

_LIB_RE = re.compile(r"    <!-- ([\w-]+) (\S+) \((\S+), LICENSE\.[\w-]+ in [^)]*\): build/[\w.-]+\.min\.js, sha256 (\w+) -->\n"
                     r"    <script>\n(.*?)\n    </script>\n", flags=re.S)


def page(libraries: list[Library]) -> str:
    """The template text with ``libraries`` inline, in the given order."""
    for lib in libraries:
        # the HTML parser ends a <script> at the first "</script"; DVC replaces these placeholders anywhere
        if re.search(r"</script|<!--|\{(plot_divs|scripts|refresh_tag)\}", lib.js, flags=re.I):
            raise GFMError(f"{lib.name} {lib.version}: its build holds '</script', '<!--' or a DVC placeholder; "
                           "it cannot be inlined into the page as it is")
    body = "".join(_LIB.format(name=lib.name, version=lib.version, license=lib.license, sha256=lib.sha256,
                               js=lib.js.rstrip("\n")) for lib in libraries)
    return _HEAD + body + _TAIL


def read_page(text: str) -> list[Library]:
    """The libraries inline in a template :func:`page` wrote (with the checksums it recorded, unchecked)."""
    return [Library(name, version, license, js + "\n") for name, version, license, _sha, js in _LIB_RE.findall(text)]


def _from_tarball(path: Path, name: str) -> tuple[Library, str]:
    """The library and its license text from an ``npm pack`` tarball of package ``name``."""
    try:
        with tarfile.open(path) as tar:
            def text(member: str) -> str:
                return tar.extractfile(f"package/{member}").read().decode()
            meta = json.loads(text("package.json"))
            js = text(f"build/{name}.min.js").rstrip("\n") + "\n"   # the page puts the closing tag on its own line
            lib = Library(meta["name"], meta["version"], meta.get("license", "see LICENSE"), js)
            licence = text("LICENSE")
    except (OSError, KeyError, tarfile.TarError, ValueError, AttributeError) as e:
        raise GFMError(f"{path}: not an npm tarball of {name} with build/{name}.min.js and LICENSE "
                       f"({shorten(str(e), 200, quote=False)}); make it with: npm pack {name}@<version>") from None
    if lib.name != name:
        raise GFMError(f"{path}: holds the package {lib.name!r}, expected {name!r}")
    return lib, licence


def vendor(tarballs: list[str | Path], out_dir: str | Path) -> Path:
    """Write the template and the licenses into ``out_dir`` from the ``npm pack`` tarballs of
    :data:`LIBRARIES` (in that order). Everything is read and checked before anything is written."""
    if len(tarballs) != len(LIBRARIES):
        raise GFMError(f"{len(tarballs)} tarball(s) given; expected {len(LIBRARIES)}, of {', '.join(LIBRARIES)} "
                       "in that order")
    found = [_from_tarball(Path(t), name) for t, name in zip(tarballs, LIBRARIES)]
    text = page([lib for lib, _ in found])
    out = Path(out_dir)
    for lib, licence in found:
        write_text_atomic(out / f"LICENSE.{lib.name}", licence)
    return write_text_atomic(out / Path(TEMPLATE).name, text)


def use_offline_page(project: str | Path) -> None:
    """Point ``plots.html_template`` of the DVC project ``project`` at :data:`TEMPLATE`, unless it names a
    template already (a choice made there is kept)."""
    from configobj import ConfigObj, ConfigObjError

    path = Path(project) / ".dvc" / "config"
    try:
        config = ConfigObj(str(path), interpolation=False)
    except (ConfigObjError, OSError, UnicodeDecodeError) as e:
        raise GFMError(f"{path}: not readable as DVC's config ({shorten(str(e), 200, quote=False)}); fix or remove it") from None
    plots = config.setdefault("plots", {})
    if not isinstance(plots, dict):
        raise GFMError(f"{path}: 'plots' is a value, not a section; remove it or make it [plots]")
    if "html_template" in plots:
        return
    plots["html_template"] = CONFIG_VALUE
    config.filename = None
    write_text_atomic(path, "\n".join(config.write()) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m gfm.tools.plots_page VEGA.tgz VEGA-LITE.tgz VEGA-EMBED.tgz``, run in the repository root."""
    try:
        out_dir = Path(TEMPLATE).parent
        if not out_dir.is_dir():
            raise GFMError(f"{out_dir}: no such directory here; run this in the repository root")
        out = vendor(sys.argv[1:] if argv is None else argv, out_dir)
    except GFMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}: written ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
