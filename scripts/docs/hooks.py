"""MkDocs hook: serve MathJax from an installed package, so that the site renders its math offline.

The package ``django-static-mathjax`` (in the ``docs`` extra; it needs no Django to be read as
files) ships MathJax 3's browser build. Its TeX-to-HTML bundle and the directories that bundle
loads on demand (fonts, TeX extensions, the menu and accessibility parts) are added to the site
under ``assets/mathjax/``; ``docs/javascripts/mathjax-config.js`` configures it. No page loads
anything from another host.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

BUNDLE = "tex-chtml.js"
LOADED_ON_DEMAND = ("input", "output/chtml", "a11y", "ui", "adaptors", "sre")
TARGET = "assets/mathjax"


def mathjax_root() -> Path:
    """The directory of MathJax's browser build inside the installed package."""
    try:
        root = Path(str(resources.files("mathjax"))) / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        root = None
    if root is None or not (root / BUNDLE).is_file():
        raise RuntimeError('MathJax is not installed: pip install -e ".[docs]" (the package django-static-mathjax)')
    return root


def on_files(files: Files, config: Any) -> Files:
    root = mathjax_root()
    wanted = [root / BUNDLE]
    for folder in LOADED_ON_DEMAND:
        wanted.extend(path for path in sorted((root / folder).rglob("*")) if path.is_file())
    for path in wanted:
        relative = path.relative_to(root).as_posix()
        files.append(
            File(
                relative,
                src_dir=str(root),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
                dest_uri=f"{TARGET}/{relative}",
            )
        )
    return files
