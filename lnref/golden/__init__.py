"""Golden files: one model's inputs, parameters, outputs, gradients and hidden states in
one self-contained file, so that another implementation can be unit-tested against lnref.

A golden file is a flat mapping name -> array (``.npz``, NumPy only, or ``.safetensors``,
the optional extra ``lnref[safetensors]``) plus a JSON text describing the model. The names
(documented in docs/golden-format.md):

    config                      the JSON text (npz: a 1-D uint8 array of UTF-8 bytes;
                                safetensors: the metadata entry "config")
    x, dy                       input (batch, seq, d_model) and output cotangent, same shape
    memory                      cross-attention memory (batch, memory_len, d_model), decoders only
    y, loss                     output (batch, seq, d_model) and loss = sum(y * dy), shape ()
    params/<name>               every parameter, lnref names (``layers.3.attn.wq``), W is (d_in, d_out)
    grads/<name>                d loss / d parameter, same shapes
    grads/input, grads/memory   d loss / d x (and d loss / d memory)
    hidden/<l>/<stream>         the state entering layer l (l = n_layers: the last layer's output)

An encoder-decoder model's file (``build(scheme, encoder_layers=N, decoder_layers=M)``) has
source, target and dy for x and dy; y and loss; memory, the encoder's output that its decoder
attends to (predicted, as y is); params/ and grads/ named after their stack
(``encoder.layers.3.attn.wq``); grads/source, grads/target; and hidden/encoder/<l>/<stream>
(l = 0..N), hidden/decoder/<l>/<stream> (l = 0..M) for each stack's states.

Three uses: ``export_golden`` writes a file, ``load_golden`` reads and validates one,
``from_golden`` rebuilds the model and checks that it reproduces every stored array bit for
bit; ``compare_files`` measures another implementation's arrays against a file. The modules:

    format        the fixed names and GoldenError
    compat        files of earlier format versions, read with the meaning they were written with
    containers    .npz and .safetensors: written atomically, read without trusting the file
    export        export_golden, and the arrays and config it writes
    validate      the checks of a file read from disk, before anything trusts it
    load          load_golden, from_golden and the Golden they read
    compare       compare_files, compare_arrays and their report, Comparison
    hints         what a failed comparison's pattern suggests (the other GELU flavour, another
                  eps, untransposed weights, a final norm missing, doubled or inside the loop)
    precision     inputs and parameters rounded to bfloat16 or float16
    suite         the conformance suite: export_suite, compare_suite, the records' keys

Comparison rule, per tensor, with e the expected and a the actual array:

    scale         = max |e'| over the tensor's group: every expected tensor e' whose name
                    equals this one's up to its last "." (grads/layers.3.attn.wq -> all of
                    grads/layers.3.attn.*); a name without "." after its last "/" (y, loss,
                    grads/input, hidden/3/x) is its own group
    max_abs_error = max |a - e|
    max_rel_error = max |a - e| / max(scale, tiny)         (tiny: the dtype's smallest normal)
    pass  iff  max |a - e| <= atol + rtol * scale

Why a group and not the tensor alone: some gradients are zero in exact arithmetic and hold
only round-off from cancelling terms as large as their siblings' gradients. The key bias b_k
is one (softmax is invariant to a shift shared by every key, so d loss / d b_k = 0); the
query/key weights of deep Post-LN layers, whose tokens have all but collapsed, are another
(~1e-12 of the value weights' gradients at 48 layers). Two correct float64 implementations
then differ by ~1e-16 of the group's scale, which is O(1) of the tensor's own. With
``per_tensor`` the scale is the tensor's own max |e|.
"""

from lnref.golden.compare import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    RULE,
    Comparison,
    TensorResult,
    compare_arrays,
    compare_files,
    group_of,
    read_name_map,
)
from lnref.golden.compat import READABLE_VERSIONS
from lnref.golden.containers import check_output_path, read_arrays
from lnref.golden.export import export_golden, golden_arrays, golden_config
from lnref.golden.format import (
    CONFIG_ENTRY,
    EXTENSIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOSS_DEFINITION,
    WEIGHT_LAYOUT,
    WEIGHT_NAMES,
    GoldenError,
    hidden_name,
    hidden_streams,
    is_weight_matrix,
    stack_depths,
)
from lnref.golden.load import Golden, from_golden, load_golden

__all__ = [
    "CONFIG_ENTRY",
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "EXTENSIONS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOSS_DEFINITION",
    "READABLE_VERSIONS",
    "RULE",
    "WEIGHT_LAYOUT",
    "WEIGHT_NAMES",
    "Comparison",
    "Golden",
    "GoldenError",
    "TensorResult",
    "check_output_path",
    "compare_arrays",
    "compare_files",
    "export_golden",
    "from_golden",
    "golden_arrays",
    "golden_config",
    "group_of",
    "hidden_name",
    "hidden_streams",
    "is_weight_matrix",
    "load_golden",
    "stack_depths",
    "read_arrays",
    "read_name_map",
]
