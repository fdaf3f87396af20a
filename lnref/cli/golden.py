"""``lnref export`` and ``lnref compare``: lnref as a unit-test oracle for other implementations.

``export`` writes a golden file (docs/golden-format.md); ``compare`` measures another
implementation's arrays against it. Exit codes: 0 ok, 1 a tensor failed, 2 usage or input error.
"""

from __future__ import annotations

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
@model_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    required=True,
    help="File to write: .npz (NumPy) or .safetensors (needs lnref[safetensors]).",
)
@click.option("--memory-len", type=COUNT, default=None, help="Memory length with --cross-attention (default: --seq).")
def export(output, memory_len, **options):
    """Write a golden file: config, x, dy, parameters, y, loss, every gradient, hidden states.

    The inputs x and dy (and the memory) are seeded normal samples from --seed; the file is
    written atomically (a temporary file in the same directory, then renamed). With
    --encoder-layers and --decoder-layers: an encoder-decoder model's file (source, target, dy,
    and the memory the encoder computes).
    """
    if memory_len is not None and not options["cross_attention"]:
        fail("--memory-len needs --cross-attention")
    with input_errors():
        from lnref.golden import check_output_path, export_golden

        check_output_path(output)  # before building: Admin profiles at build time
        model = model_from_options(**options)
        arrays = export_golden(
            model,
            output,
            batch=options["batch"],
            seq=options["seq"],
            memory_len=memory_len,
            source_len=options["source_len"],
        )
    from lnref.gradcheck.report import layers_text

    grads = sum(name.startswith("grads/") for name in arrays)
    params = sum(name.startswith("params/") for name in arrays)
    layers = layers_text(model.config)
    click.echo(
        f"wrote {output}: {options['scheme']}, {layers}, {options['dtype']}; {len(arrays)} arrays "
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
    """
    if rtol is not None and rtol < 0 or atol < 0:
        fail("--rtol and --atol must be >= 0")
    with input_errors():
        from lnref.golden import compare_files, read_name_map

        mapping = read_name_map(name_map) if name_map is not None else None
        report = compare_files(
            expected,
            actual,
            rtol=rtol,
            atol=atol,
            name_map=mapping,
            transpose_weights=transpose_weights,
            require_all=require_all,
            per_tensor=per_tensor,
        )
    click.echo(report.to_json() if as_json else report.to_text())
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
