"""One page per scheme, generated from the scheme modules themselves (``lnref.schemes``).

Each page holds the scheme's one-line equation and its docstring with the equations rendered as
math (``equations.to_tex``), what the module declares (norms, streams, options, refusals), its
source, its per-layer profile at initialization beside Pre-LN and Post-LN (``lnref.probes``
through ``lnref.profile``, drawn by the same code as ``lnref profile --png``), and the commands
that check it. A scheme added to ``lnref.schemes`` gets its page with no edit here.
"""

from __future__ import annotations

import inspect
import io
import re
from collections.abc import Callable
from types import ModuleType

from equations import to_tex

from lnref import profile, profile_charts
from lnref.schemes import get_scheme, options_of, refusals_of, scheme_names, stream_names

# The profile drawn on every page: a depth where Post-LN and Pre-LN already part ways, small
# enough that every scheme is probed in seconds.
PROFILE = {
    "depth": 18,
    "seeds": 3,
    "build": {"d_model": 32, "n_heads": 2, "d_ff": 128, "norm": "layernorm", "activation": "relu"},
    "batch": 2,
    "seq": 8,
}
REFERENCES = ("pre", "post")
METRICS = ("grad.ffn.w2", "hidden_grad_norm")
DECLARATIONS = (
    ("NORMS", "per sublayer (`{}` is attn, cross, ffn)"),
    ("LAYER_NORMS", "per layer, over d_model features"),
    ("HEAD_NORMS", "per layer, over each head's features"),
    ("FFN_NORMS", "per layer, over the FFN's hidden features"),
    ("STACK_NORMS", "once per stack"),
)

HOOKS = {  # the protocol's optional functions, as lnref/schemes/__init__.py describes them
    "embed": "the stack's first stage (default: the identity)",
    "readout": "the stack's last stage (default: the last state)",
    "layer_params": "extra parameters of each layer",
    "initialize": "a change to the initialization, once every parameter exists",
}

Write = Callable[[str, str | bytes], None]


def generate(write: Write) -> list[str]:
    """Write ``schemes/index.md``, a page and two figures per scheme, and ``schemes/SUMMARY.md``."""
    names = scheme_names()
    sweep = profile.run_sweep(
        names, [PROFILE["depth"]], PROFILE["build"], range(PROFILE["seeds"]), PROFILE["batch"], PROFILE["seq"]
    )
    nav = ["* [All schemes](index.md)"]
    for name in names:
        module = get_scheme(name)
        for metric in METRICS:
            write(f"schemes/{name}-{metric}.png", _figure(sweep, name, metric))
        write(f"schemes/{name}.md", page(name, module))
        nav.append(f"* [{name}: {_title(module)}]({name}.md)")
    write("schemes/index.md", index(names))
    write("schemes/SUMMARY.md", "\n".join(nav) + "\n")
    return list(names)


def index(names: tuple[str, ...]) -> str:
    from click.testing import CliRunner

    from lnref.cli.schemes import schemes

    rows = [f"| [`{n}`]({n}.md) | ${to_tex(get_scheme(n).SUMMARY)}$ | {get_scheme(n).PAPER} |" for n in names]
    listing = CliRunner().invoke(schemes, []).output
    return "\n".join(
        [
            "# The schemes",
            "",
            "Every LayerNorm placement lnref implements is one short module in `lnref/schemes/`, the paper's",
            "equations in code. `S` is a sublayer (self-attention, cross-attention in decoder stacks, the FFN);",
            "`LN` is the norm kind the model is built with (`--norm`). Each page below is generated from the",
            "module: its docstring, what it declares, its source and its profile at initialization.",
            "",
            "| scheme | placement | paper |",
            "| --- | --- | --- |",
            *rows,
            "",
            "The same list on the command line:",
            "",
            "```console",
            "$ lnref schemes",
            listing.rstrip(),
            "```",
            "",
        ]
    )


def page(name: str, module: ModuleType) -> str:
    doc = inspect.getdoc(module) or ""
    first, *rest = doc.split("\n\n") if doc else [""]
    lines = [
        f"# `{name}`: {_title(module)}",
        "",
        f"**Paper.** {module.PAPER}",
        "",
        f"**Placement** (as `lnref schemes` prints it, `{module.SUMMARY}`):",
        "",
        f"$$ {to_tex(module.SUMMARY)} $$",
        "",
        "## The equations",
        "",
        _prose(first),
        "",
        *(_block(paragraph) for paragraph in rest),
        "## What the module declares",
        "",
        *_declarations(name, module),
        "",
        "## The module",
        "",
        f"`lnref/schemes/{name}.py`" if module.__name__ == f"lnref.schemes.{name}" else f"`{module.__name__}`",
        "",
        "```python",
        inspect.getsource(module).rstrip(),
        "```",
        "",
        *_profile_section(name),
        "## Check it",
        "",
        "```bash",
        f"lnref gradcheck --scheme {name} --layers 48                  # every gradient against finite differences",
        f"lnref gradcheck --scheme {name} --layers 48 --mode blockwise",
        f"lnref export --scheme {name} --layers 6 -o {name}.npz        # a golden file for a port",
        "```",
        "",
    ]
    return "\n".join(lines)


def _title(module: ModuleType) -> str:
    doc = inspect.getdoc(module) or ""
    head = doc.split("\n\n")[0].replace("\n", " ")
    return head.split(" (")[0].rstrip(".") or module.__name__.rpartition(".")[2]


def _block(paragraph: str) -> str:
    """A docstring paragraph: an indented block is equations (display math), the rest prose."""
    lines = paragraph.splitlines()
    if all(line.startswith("    ") for line in lines if line.strip()):
        rows = " \\\\\n".join("& " + to_tex(line) for line in lines if line.strip())
        return "$$\n\\begin{aligned}\n" + rows + "\n\\end{aligned}\n$$\n"
    return _prose(paragraph) + "\n"


def _prose(paragraph: str) -> str:
    """Docstring prose as Markdown: ``code`` stays code; outside it, < and > are text, not HTML."""
    parts = re.split(r"(``[^`]+``|`[^`]+`)", paragraph.replace("\n", " "))
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;") for part in parts)


def _declarations(name: str, module: ModuleType) -> list[str]:
    rows = ["| declared | names | what |", "| --- | --- | --- |"]
    for attribute, where in DECLARATIONS:
        values = getattr(module, attribute, ())
        if values:
            rows.append(f"| `{attribute}` | {', '.join(f'`{v}`' for v in values)} | {where} |")
    streams = stream_names(module, 0)
    later = stream_names(module, 1)
    shown = ", ".join(f"`{s}`" for s in streams) + (
        f"; entering layer 1: {', '.join(later)}" if later != streams else ""
    )
    rows.append(f"| streams | {shown} | the state carried from layer to layer |")
    for hook, meaning in HOOKS.items():
        if hasattr(module, hook):
            doc = (inspect.getdoc(getattr(module, hook)) or "").split("\n\n")[0].replace("\n", " ")
            rows.append(f"| `{hook}` | defined | {meaning}{': ' + _prose(doc) if doc else ''} |")
    options = options_of(module)
    if options:
        rows += ["", "Options (`--option NAME=VALUE`, or `build(..., options={...})`):", ""]
        rows += ["| option | default | values | meaning |", "| --- | --- | --- | --- |"]
        for option, spec in options.items():
            choices = ", ".join(map(str, spec.choices)) if spec.choices else "any"
            rows.append(f"| `{option}` | `{spec.default}` | {choices} | {spec.help} |")
    refusals = refusals_of(module)
    if refusals:
        rows += ["", "Refused model options:", ""]
        rows += [f"- `{option}`: {why}" for option, why in refusals.items()]
    return rows


def _profile_section(name: str) -> list[str]:
    others = [r for r in REFERENCES if r != name]
    listed = ",".join([name, *others])
    settings = PROFILE["build"]
    command = (
        f"lnref profile --scheme {listed} --layers {PROFILE['depth']} --d-model {settings['d_model']} "
        f"--heads {settings['n_heads']} --d-ff {settings['d_ff']} --seq {PROFILE['seq']} --seeds {PROFILE['seeds']}"
    )
    lines = [
        "## Per-layer profile at initialization",
        "",
        f"`{name}` beside {' and '.join(f'`{r}`' for r in others)}: at {PROFILE['depth']} layers, mean over "
        f"{PROFILE['seeds']} seeds (band: smallest to largest seed), computed when this site was built.",
        "",
    ]
    for metric in METRICS:
        lines += [f"![{profile.METRIC_LABELS[metric]}]({name}-{metric}.png)", ""]
    lines += ["```bash", f"{command} --metric {METRICS[0]} --png profile.png", "```", ""]
    return lines


def _figure(sweep: profile.Sweep, name: str, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    shown = (name, *(r for r in REFERENCES if r != name))
    depth = PROFILE["depth"]
    results = {(scheme, depth): sweep.results[(scheme, depth)] for scheme in shown}
    part = profile.Sweep(
        shown, sweep.depths, sweep.build_options, sweep.seeds, sweep.batch, sweep.seq, sweep.stream, results
    )
    figure = profile_charts.draw_figure(plt, ticker, part, metric)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
