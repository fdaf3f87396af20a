"""Regenerate docs/gallery/*.png and docs/gallery.md: the classic figures at initialization.

Each figure is made by one ``lnref profile`` command, run as a separate process exactly as
printed in the gallery, so that anyone can reproduce an image by pasting its command.
Run from anywhere; paths are resolved against the repository root:

    python scripts/make_gallery.py            # every figure, then the page
    python scripts/make_gallery.py --list     # print the commands only
    python scripts/make_gallery.py --only post_vs_pre_by_depth

Needs matplotlib (``pip install 'lnref[plot]'``). Everything is seeded, so the same code
gives the same images. A few minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GALLERY_DIR = "docs/gallery"
PAGE = "docs/gallery.md"

# One size for every figure: wide enough for clean averages, small enough to stay quick.
COMMON = ["--d-model", "64", "--d-ff", "256", "--seq", "16", "--seeds", "5"]


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    args: tuple
    caption: str

    @property
    def path(self):
        return f"{GALLERY_DIR}/{self.name}.png"

    @property
    def command(self):
        return ["lnref", "profile", *self.args, *COMMON, "--png", self.path]


FIGURES = (
    Figure(
        "post_vs_pre_by_depth",
        "Post-LN vs Pre-LN: FFN W2 gradient norm by layer at 6, 12 and 18 layers, and at the last layer by depth",
        ("--scheme", "post,pre", "--layers", "6,12,18"),
        "In the style of Xiong et al. 2020, Fig. 3. At the last layer (right panel) the Post-LN "
        "gradient norm stays level as the stack deepens from 6 to 18 layers, while the Pre-LN one "
        "falls with depth. Within a stack, Pre-LN's gradient norm decreases from the first layer to "
        "the last; Post-LN's stays within a narrow range at 6 and 12 layers and, at 18 layers, is "
        "largest in the lowest layers, where it also varies most across seeds.",
    ),
    Figure(
        "b2t_vs_post_encoder_18",
        "B2T vs Post-LN, 18-layer encoder: hidden-state gradient norm by layer",
        ("--scheme", "post,b2t", "--layers", "18", "--metric", "hidden_grad_norm"),
        "Both start from the same gradient at the output (state 18). Going down the Post-LN stack the "
        "gradient norm shrinks through the upper layers to about a third of its output value, then "
        "grows again in the lowest layers with a wide spread over seeds; B2T's stays within a factor "
        "of about two of its output value at every layer, with a narrower spread.",
    ),
    Figure(
        "b2t_vs_post_decoder_18",
        "B2T vs Post-LN, 18-layer decoder with cross-attention: hidden-state gradient norm by layer",
        ("--scheme", "post,b2t", "--layers", "18", "--cross-attention", "--metric", "hidden_grad_norm"),
        "With cross-attention to a fixed memory, the Post-LN gradient norm falls from its output value "
        "to about a fifth of it at state 5 and stays below half of it at every state under 16; B2T's "
        "stays above half of its output value at every state.",
    ),
    Figure(
        "all_schemes_48_ffn_w2",
        "Every scheme, 48 layers: FFN W2 gradient norm by layer",
        ("--scheme", "all", "--layers", "48"),
        "DeepNorm's gradient norm is nearly the same (about 23) at every layer, and Post-LN, ResiDual "
        "and B2T stay within a factor of about four from bottom to top. Pre-LN, Admin, Sandwich-LN and "
        "Peri-LN fall by a factor of six to ten from the first layer to the last, and DLCL by about "
        "twenty. "
        "Mix-LN stays near Post-LN through its first 12 (Post-LN) layers, then drops onto the Pre-LN "
        "curve. ReZero's gates start at 0, so its FFN weights get no gradient at initialization: it "
        "has no point on the log axis, as its legend entry says.",
    ),
    Figure(
        "all_schemes_48_hidden_grad",
        "Every scheme, 48 layers: hidden-state gradient norm by layer",
        ("--scheme", "all", "--layers", "48", "--metric", "hidden_grad_norm"),
        "The gradient with respect to the state entering each layer (ResiDual: its Post-LN stream x_a). "
        "ReZero, whose layers are the identity at initialization, and DeepNorm keep the output "
        "gradient's size at every state (their lines overlap), and Admin stays between about 30 and 50. "
        "Behind their final norm, Pre-LN, Sandwich-LN, Peri-LN and Mix-LN start several times below "
        "the output gradient at the last state and grow towards the input. DLCL's last state gets a "
        "gradient a little above the output's, but the combined states that feed its layers get the "
        "smallest gradients of all in the upper layers. Post-LN, B2T and ResiDual dip below the output "
        "value in the middle and upper layers and rise again towards the input.",
    ),
)


def run_figure(figure):
    """Run the figure's command (as ``python -m lnref``, so no install is needed)."""
    command = [sys.executable, "-m", "lnref", *figure.command[1:]]
    with tempfile.TemporaryDirectory() as records:
        # Fresh runs every time: records kept from an earlier regeneration would be resumed.
        command += ["--out", os.path.join(records, "runs.jsonl")]
        _run(figure, command)


def _run(figure, command):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The matrices are small: BLAS threads only fight over the cores (same bits either way).
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"make_gallery: {figure.name} failed (exit {done.returncode}): {shlex.join(figure.command)}")
    print(f"make_gallery: {figure.path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def page():
    """The text of docs/gallery.md."""
    lines = [
        "# Gallery: gradient and hidden-state profiles at initialization",
        "",
        "Every image is made by the `lnref profile` command printed under it (run from the",
        "repository root) and all of them are regenerated, with this page, by",
        "`python scripts/make_gallery.py`. The numbers come from `lnref.probes`, the same code the",
        "proofs use. The loss is `sum(y * dy)` with a seeded standard-normal `dy`; inputs are",
        "seeded standard-normal too. Lines are the mean over seeds 0-4 and the shaded band spans",
        "the smallest to the largest seed's value; the y axes are logarithmic.",
        "Hidden-state panels index states: x_l enters layer l and x_L is the last layer's output,",
        "before the stack's final norm.",
        "The script runs each command with `OPENBLAS_NUM_THREADS=1` (unless it is already set): the",
        "matrices are small, so BLAS threads only slow the run down; the numbers do not change.",
        "",
    ]
    for figure in FIGURES:
        lines += [
            f"## {figure.title}",
            "",
            f"![{figure.title}](gallery/{figure.name}.png)",
            "",
            "```",
            shlex.join(figure.command),
            "```",
            "",
            figure.caption,
            "",
        ]
    return "\n".join(lines)


def write_atomically(path, text):
    directory = os.path.dirname(path)
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".gallery-", suffix=".md")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument("--only", metavar="NAME", action="append", help="make only this figure (repeatable)")
    args = parser.parse_args(argv)
    names = [figure.name for figure in FIGURES]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown figure {unknown[0]}; figures: {', '.join(names)}")
    if args.list:
        for figure in FIGURES:
            print(shlex.join(figure.command))
        return
    os.makedirs(os.path.join(ROOT, GALLERY_DIR), exist_ok=True)
    for figure in FIGURES:
        if args.only is None or figure.name in args.only:
            run_figure(figure)
    write_atomically(os.path.join(ROOT, PAGE), page())
    print(f"make_gallery: wrote {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
