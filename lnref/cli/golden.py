"""``lnref export``, ``lnref export-suite`` and ``lnref compare``: lnref as a unit-test oracle for
other implementations.

``export`` writes a golden file (docs/golden-format.md), ``export-suite`` a directory of them
covering every scheme, norm kind and option (the conformance suite); ``compare`` measures
another implementation's arrays against a file, or its files against a whole suite. Exit
codes: 0 ok, 1 a tensor or case failed, 2 usage or input error.
"""

from __future__ import annotations

import os
import sys

import click

from lnref.cli.options import (
    COUNT,
    EXIT_FAILED,
    EXIT_OK,
    FiniteFloat,
    fail,
    input_errors,
    model_from_options,
    model_options,
)


@click.command()
@model_options(dtypes=("float64", "float32", "bfloat16", "float16"))
@click.option(
    "--at",
    "point",
    type=click.Choice(["init", "generic"]),
    default="init",
    show_default=True,
    help="The parameters: the initialization, or a generic point (every tensor moved by 0.1 rms N(0, 1)).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    help="File to write: .npz (NumPy) or .safetensors (needs lnref[safetensors]).",
)
@click.option("--memory-len", type=COUNT, default=None, help="Memory length with --cross-attention (default: --seq).")
def export(output, memory_len, point, **options):
    """Write a golden file: config, x, dy, parameters, y, loss, every gradient, hidden states.

    The inputs x and dy (and the memory) are seeded normal samples from --seed; the file is
    written atomically (a temporary file in the same directory, then renamed). --dtype
    bfloat16 or float16 rounds the inputs and parameters to that precision and computes every
    output in float64 from them (needs lnref[lowp] for bfloat16). With --encoder-layers and
    --decoder-layers: an encoder-decoder model's file (source, target, dy, and the memory the
    encoder computes).
    """
    if memory_len is not None and not options["cross_attention"]:
        fail("--memory-len needs --cross-attention")
    dtype = options["dtype"]
    rounded_to = dtype if dtype in ("bfloat16", "float16") else None
    with input_errors():
        from lnref.golden import check_output_path, export_golden
        from lnref.golden.precision import low_precision_dtype

        check_output_path(output)  # before building: Admin profiles at build time
        if rounded_to is not None:
            low_precision_dtype(rounded_to)  # the extra it needs, before any work
        model = model_from_options(**{**options, "dtype": "float64" if rounded_to else dtype})
        arrays = export_golden(
            model,
            output,
            batch=options["batch"],
            seq=options["seq"],
            memory_len=memory_len,
            point=point,
            rounded_to=rounded_to,
            source_len=options["source_len"],
        )
    from lnref.gradcheck.report import layers_text

    grads = sum(name.startswith("grads/") for name in arrays)
    params = sum(name.startswith("params/") for name in arrays)
    layers = layers_text(model.config)
    precision = f"float64 from inputs rounded to {dtype}" if rounded_to else dtype
    click.echo(
        f"wrote {output}: {options['scheme']}, {layers}, {precision}; {len(arrays)} arrays "
        f"({params} parameters, {grads} gradients, loss {float(arrays['loss']):.17g})"
    )


@click.command()
@click.argument("expected", type=click.Path())
@click.argument("actual", type=click.Path())
@click.option(
    "--rtol",
    type=FiniteFloat(),
    default=None,
    help="Relative tolerance (default: 1e-10 for float64 files, 1e-3 for float32).",
)
@click.option("--atol", type=FiniteFloat(), default=0.0, show_default=True, help="Absolute tolerance.")
@click.option(
    "--map",
    "name_map",
    type=click.Path(),
    default=None,
    help='JSON object {"actual name": "expected name"} renaming ACTUAL\'s arrays.',
)
@click.option(
    "--transpose-weights",
    is_flag=True,
    help="Transpose ACTUAL's 2-D weight matrices (frameworks storing (d_out, d_in)).",
)
@click.option(
    "--require-all", is_flag=True, help="Count names of EXPECTED that ACTUAL lacks as failures (default: list them)."
)
@click.option("--per-tensor", is_flag=True, help="Scale each tensor's errors by its own max|e| instead of its group's.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def compare(expected, actual, rtol, atol, name_map, transpose_weights, require_all, per_tensor, as_json):
    """Compare every tensor of EXPECTED (a golden file) with the same name in ACTUAL.

    A tensor passes iff max|a - e| <= atol + rtol * scale, scale = the largest |e| in its
    group (names equal up to the last '.', e.g. grads/layers.3.attn.*; y, loss, grads/input
    and hidden/* are groups of their own). max_rel_err = max|a - e| / scale. ACTUAL may
    hold a subset (e.g. only y and grads/...).

    EXPECTED a directory written by lnref export-suite: ACTUAL a directory holding the port's
    file of each case under the case's file name; one line per case, then "N passed, M failed".
    """
    if rtol is not None and rtol < 0 or atol < 0:
        fail("--rtol and --atol must be >= 0")
    with input_errors():
        from lnref.golden import compare_files, read_name_map
        from lnref.golden.suite import compare_suite

        mapping = read_name_map(name_map) if name_map is not None else None
        options = dict(
            rtol=rtol,
            atol=atol,
            name_map=mapping,
            transpose_weights=transpose_weights,
            require_all=require_all,
            per_tensor=per_tensor,
        )
        if os.path.isdir(expected):
            report = compare_suite(expected, actual, **options)
        else:
            report = compare_files(expected, actual, **options)
    click.echo(report.to_json() if as_json else report.to_text())
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@click.command("export-suite")
@click.option(
    "-o", "--output", type=click.Path(file_okay=False), required=True, help="Directory to write the suite to."
)
@click.option("--scheme", "schemes", default="all", show_default=True, help="Comma-separated schemes/aliases, or all.")
@click.option("--layers", default="1,2,6", show_default=True, help="Depths, comma-separated.")
def export_suite(output, schemes, layers):
    """Write the conformance suite: a golden file for every scheme x norm kind x option.

    Each scheme's base model (LayerNorm, ReLU, encoder) and one change at a time: each other
    norm kind, causal, a decoder with cross-attention, each other activation, each QK-norm
    variant, each choice of the scheme's own options, at each depth; a small model at a generic
    point. A manifest.json names the cases; a port writes its arrays for each case under the
    same file name in a directory of its own, then: lnref compare DIR ACTUAL_DIR.
    """
    with input_errors():
        from lnref.golden.suite import export_suite as write_suite
        from lnref.golden.suite import size_of
        from lnref.schemes import ALIASES, SCHEMES, get_scheme

        every = SCHEMES + tuple(ALIASES)  # an alias: its preset model alone
        chosen = every if schemes == "all" else tuple(name.strip() for name in schemes.split(","))
        for name in chosen:
            get_scheme(name)
        try:
            depths = tuple(int(n) for n in layers.split(","))
        except ValueError:
            fail(f"--layers: {layers!r} is not a comma-separated list of integers")
        if not depths or min(depths) < 1:
            fail("--layers: every depth must be >= 1")

        def progress(done, total):
            if done % 50 == 0 or done == total:
                click.echo(f"{done}/{total} cases", err=True)

        cases = write_suite(output, chosen, depths, progress=progress)
    megabytes = size_of(output) / 2**20
    aliases = sum(name in ALIASES for name in chosen)
    schemes = len(chosen) - aliases
    of = f"{schemes} scheme{'s' if schemes != 1 else ''}" + (
        f" and {aliases} alias{'es' if aliases != 1 else ''}" if aliases else ""
    )
    click.echo(f"wrote {output}: {len(cases)} cases of {of}, {megabytes:.1f} MB; manifest.json lists them")
