"""Fused numerical kernels of the lnref autodiff engine.

Twin design
-----------
Every kernel is written twice, side by side in its family's module:

``<name>_reference``
    Plain vectorized NumPy. This is the readable statement of the math and the
    reference the loop twin is tested against.

``_<name>_loop``
    The same computation as explicit loops, compiled by Numba (``@njit(cache=True)``,
    in a ``_<name>_kernel`` that writes into the arrays the loop twin allocates). Never
    ``fastmath`` and never ``parallel=True``: the summation order is fixed by the source,
    so results are deterministic and bit-reproducible from call to call. With Numba's JIT
    disabled these run as ordinary (slow) Python, which keeps them directly testable.

The two twins agree to 1e-12 relative in float64 (they differ only in the order of
floating-point additions): the tolerance of ``tests/test_kernels.py``.

The public ``<name>`` checks its inputs (``checks.py``) and calls the twin that the seam
picks (``seam.py``: Numba's loops by default, for some kernels only up to a size; the NumPy
twins when Numba's JIT is disabled, ``LNREF_KERNELS=numpy`` is set, or Numba is missing).
Tests choose a twin, or put a broken kernel in a twin's place, through the seam as well.

A first run compiles the kernels it uses, then Numba's on-disk cache serves them;
``warmup.py``, which the ``lnref`` command alone imports, tells beforehand whether that
first run is coming and compiles its kernels in a forked process, whose compiler's memory
ends with it.

The modules
-----------
``seam``               which twin runs: :class:`~lnref.autograd.kernels.seam.Twin`, overrides
``checks``             the input checks every public kernel runs
``norms``              LayerNorm, RMSNorm
``scale_norm``         ScaleNorm (and the L2 normalization at gain 1)
``pointwise_norms``    DyT and Derf, the element-wise replacements of a norm
``sinkhorn``           Sinkhorn-Knopp rounds over square matrices (mHC's residual mixing)
``scaled_linear``      alpha (x w) + b, optionally gain sigmoid(.), the gated maps that give
                       mHC's mixing weights from its streams
``softmax``            row softmax (and the stable row loop attention shares)
``attention``          scaled dot-product attention, 4-D and multi-head on (B, T, d)
``attention_blocked``  attention's big-head path: BLAS products, the batch on threads
``linear``             the linear map (and the matrix product the sublayers are built of)
``attention_sublayer`` projections, attention and output projection in one call each way
``attention_heads_pieces`` the same with LayerNorms of each head's q, k, v (HybridNorm), a head
                       scale and a LayerNorm before W_o (NormFormer, Sub-LN)
``attention_l2_heads`` the sublayer with each head of q and k L2-normalized times a gain (nGPT)
``feed_forward``       linear, activation, linear in one call each way
``feed_forward_normed`` the same with a LayerNorm on the hidden units (Sub-LN, NormFormer)
``feed_forward_scaled`` the same with a scale on the hidden units (nGPT's s_u)
``residual_normed``    a residual branch with a LayerNorm on its input, a + S(LN(a)), the
                       replayed pass's fusion of the three (Pre-LN's branches)
``residual_normed_heads_pieces``, ``residual_normed_feed_forward_normed`` the same for the
                       sublayers with pieces inside (Sub-LN's, NormFormer's)
``normed_sum``         a LayerNorm of a residual sum, LN(a + S(a)) (Post-LN's branches)
``normed_scaled_sum``  the same with the skip scaled, LN(w * a + S(a)) (Admin's, DeepNorm's)
``branches``           what the two share: the add, their loop twins, checks, choice of path
``sphere``             a step between two directions on the unit sphere, normalized
                       interpolation (nGPT's update)
``weighted_sum``       sum_k w_k x_k, the learned mixtures of streams (DLCL, DenseFormer, HC)
``stream_mixing``      y_c = sum_i a[i, c] x_i + b[c] s, m such mixtures at once (HC's depth)
``mixed_normed``       a normed sublayer between the two, the replayed pass's fusion of the
                       three (HC's and mHC's sublayers on stacked copies)
``mixing_mappings``    the mixtures' weights per token from the stacked copies (vec(x), its
                       norm, three gated maps, Sinkhorn: mHC's mappings), the replayed pass's
                       fusion of them with the mixed sublayer that reads them
``two_stream_normed``  a normed sublayer between two streams with their norms and adds, the
                       replayed pass's fusion of a SiameseNorm sublayer on the stacked streams
``activations``        GELU, ReLU
``warmup``             a first run's compilation

Conventions
-----------
* Inputs are C-contiguous float64 or float32 arrays, all of one dtype; the public kernels
  make them contiguous and raise ``TypeError`` on anything else (no silent upcast or
  downcast). Outputs have the input dtype.
* For float32 data the loop kernels accumulate in float64 scalars and round once when
  storing; the NumPy twins compute in float32 throughout. The two therefore agree only to
  float32 precision on float32 inputs.
* LayerNorm, RMSNorm and softmax kernels are 2-D ``(n, d)``: rows are independent and the
  caller reshapes leading dimensions away. The norms raise ``ValueError`` on a row holding
  NaN or inf. Attention takes 4-D ``(B, H, T, Dh)`` arrays (``attention_*``) or the model's
  3-D ``(B, T, d)`` projections split into heads in place (``multi_head_attention_*``). The
  linear map takes rows ``(n, d_in)``, the attention sublayer ``(B, T, d)``. GELU and ReLU
  take any shape.
* Cotangents are named ``d<name>``: ``dy`` is the gradient of the loss with respect to ``y``.
"""

from lnref.autograd.kernels import seam
from lnref.autograd.kernels.activations import (
    gelu_backward,
    gelu_backward_reference,
    gelu_forward,
    gelu_forward_reference,
    relu_backward,
    relu_backward_reference,
    relu_forward,
    relu_forward_reference,
    sigmoid_reference,
)
from lnref.autograd.kernels.attention import (
    attention_backward,
    attention_backward_reference,
    attention_forward,
    attention_forward_reference,
    multi_head_attention_backward,
    multi_head_attention_forward,
)
from lnref.autograd.kernels.attention_heads_pieces import (
    heads_pieces_attention_backward,
    heads_pieces_attention_backward_reference,
    heads_pieces_attention_forward,
    heads_pieces_attention_forward_reference,
)
from lnref.autograd.kernels.attention_l2_heads import (
    l2_heads_attention_backward,
    l2_heads_attention_backward_reference,
    l2_heads_attention_forward,
    l2_heads_attention_forward_reference,
)
from lnref.autograd.kernels.attention_sublayer import (
    attention_sublayer_backward,
    attention_sublayer_backward_reference,
    attention_sublayer_forward,
    attention_sublayer_forward_reference,
)
from lnref.autograd.kernels.feed_forward import (
    FFN_ACTIVATIONS,
    feed_forward_backward,
    feed_forward_backward_reference,
    feed_forward_forward,
    feed_forward_forward_reference,
)
from lnref.autograd.kernels.feed_forward_normed import (
    normed_feed_forward_backward,
    normed_feed_forward_backward_reference,
    normed_feed_forward_forward,
    normed_feed_forward_forward_reference,
)
from lnref.autograd.kernels.feed_forward_scaled import (
    scaled_feed_forward_backward,
    scaled_feed_forward_backward_reference,
    scaled_feed_forward_forward,
    scaled_feed_forward_forward_reference,
)
from lnref.autograd.kernels.linear import (
    linear_backward,
    linear_backward_reference,
    linear_forward,
    linear_forward_reference,
)
from lnref.autograd.kernels.mixed_normed import (
    mixed_normed_attention_backward,
    mixed_normed_attention_backward_reference,
    mixed_normed_attention_forward,
    mixed_normed_attention_forward_reference,
    mixed_normed_feed_forward_backward,
    mixed_normed_feed_forward_backward_reference,
    mixed_normed_feed_forward_forward,
    mixed_normed_feed_forward_forward_reference,
)
from lnref.autograd.kernels.mixing_mappings import (
    mixing_mappings_backward,
    mixing_mappings_backward_reference,
    mixing_mappings_forward,
    mixing_mappings_forward_reference,
)
from lnref.autograd.kernels.normed_scaled_sum import (
    normed_scaled_sum_attention_backward,
    normed_scaled_sum_attention_backward_reference,
    normed_scaled_sum_attention_forward,
    normed_scaled_sum_attention_forward_reference,
    normed_scaled_sum_feed_forward_backward,
    normed_scaled_sum_feed_forward_backward_reference,
    normed_scaled_sum_feed_forward_forward,
    normed_scaled_sum_feed_forward_forward_reference,
)
from lnref.autograd.kernels.normed_sum import (
    normed_sum_attention_backward,
    normed_sum_attention_backward_reference,
    normed_sum_attention_forward,
    normed_sum_attention_forward_reference,
    normed_sum_feed_forward_backward,
    normed_sum_feed_forward_backward_reference,
    normed_sum_feed_forward_forward,
    normed_sum_feed_forward_forward_reference,
)
from lnref.autograd.kernels.norms import (
    NONFINITE_ROWS,
    layer_norm_backward,
    layer_norm_backward_reference,
    layer_norm_forward,
    layer_norm_forward_reference,
    rms_norm_backward,
    rms_norm_backward_reference,
    rms_norm_forward,
    rms_norm_forward_reference,
)
from lnref.autograd.kernels.pointwise_norms import (
    derf_backward,
    derf_backward_reference,
    derf_forward,
    derf_forward_reference,
    dyt_backward,
    dyt_backward_reference,
    dyt_forward,
    dyt_forward_reference,
)
from lnref.autograd.kernels.residual_normed import (
    residual_normed_attention_backward,
    residual_normed_attention_backward_reference,
    residual_normed_attention_forward,
    residual_normed_attention_forward_reference,
    residual_normed_feed_forward_backward,
    residual_normed_feed_forward_backward_reference,
    residual_normed_feed_forward_forward,
    residual_normed_feed_forward_forward_reference,
)
from lnref.autograd.kernels.residual_normed_feed_forward_normed import (
    residual_normed_normed_feed_forward_backward,
    residual_normed_normed_feed_forward_backward_reference,
    residual_normed_normed_feed_forward_forward,
    residual_normed_normed_feed_forward_forward_reference,
)
from lnref.autograd.kernels.residual_normed_heads_pieces import (
    residual_normed_heads_pieces_attention_backward,
    residual_normed_heads_pieces_attention_backward_reference,
    residual_normed_heads_pieces_attention_forward,
    residual_normed_heads_pieces_attention_forward_reference,
)
from lnref.autograd.kernels.scale_norm import (
    scale_norm_backward,
    scale_norm_backward_reference,
    scale_norm_forward,
    scale_norm_forward_reference,
)
from lnref.autograd.kernels.scaled_linear import (
    scaled_linear_backward,
    scaled_linear_backward_reference,
    scaled_linear_forward,
    scaled_linear_forward_reference,
)
from lnref.autograd.kernels.seam import USE_NUMBA, available_cpus, numba_requested
from lnref.autograd.kernels.sinkhorn import (
    sinkhorn_backward,
    sinkhorn_backward_reference,
    sinkhorn_forward,
    sinkhorn_forward_reference,
)
from lnref.autograd.kernels.softmax import (
    softmax_backward,
    softmax_backward_reference,
    softmax_forward,
    softmax_forward_reference,
)
from lnref.autograd.kernels.sphere import (
    normalized_lerp_backward,
    normalized_lerp_backward_reference,
    normalized_lerp_forward,
    normalized_lerp_forward_reference,
)
from lnref.autograd.kernels.stream_mixing import (
    mix_streams_backward,
    mix_streams_backward_reference,
    mix_streams_forward,
    mix_streams_forward_reference,
)
from lnref.autograd.kernels.two_stream_normed import (
    two_stream_normed_attention_backward,
    two_stream_normed_attention_backward_reference,
    two_stream_normed_attention_forward,
    two_stream_normed_attention_forward_reference,
    two_stream_normed_feed_forward_backward,
    two_stream_normed_feed_forward_backward_reference,
    two_stream_normed_feed_forward_forward,
    two_stream_normed_feed_forward_forward_reference,
)
from lnref.autograd.kernels.weighted_sum import (
    weighted_sum_backward,
    weighted_sum_backward_reference,
    weighted_sum_forward,
    weighted_sum_forward_reference,
)

__all__ = [
    "FFN_ACTIVATIONS",
    "NONFINITE_ROWS",
    "USE_NUMBA",
    "attention_backward",
    "attention_backward_reference",
    "attention_forward",
    "attention_forward_reference",
    "attention_sublayer_backward",
    "attention_sublayer_backward_reference",
    "attention_sublayer_forward",
    "attention_sublayer_forward_reference",
    "available_cpus",
    "derf_backward",
    "derf_backward_reference",
    "derf_forward",
    "derf_forward_reference",
    "dyt_backward",
    "dyt_backward_reference",
    "dyt_forward",
    "dyt_forward_reference",
    "feed_forward_backward",
    "feed_forward_backward_reference",
    "feed_forward_forward",
    "feed_forward_forward_reference",
    "gelu_backward",
    "gelu_backward_reference",
    "gelu_forward",
    "gelu_forward_reference",
    "heads_pieces_attention_backward",
    "heads_pieces_attention_backward_reference",
    "heads_pieces_attention_forward",
    "heads_pieces_attention_forward_reference",
    "l2_heads_attention_backward",
    "l2_heads_attention_backward_reference",
    "l2_heads_attention_forward",
    "l2_heads_attention_forward_reference",
    "layer_norm_backward",
    "layer_norm_backward_reference",
    "layer_norm_forward",
    "layer_norm_forward_reference",
    "linear_backward",
    "linear_backward_reference",
    "linear_forward",
    "linear_forward_reference",
    "mix_streams_backward",
    "mix_streams_backward_reference",
    "mixing_mappings_backward",
    "mixing_mappings_backward_reference",
    "mixing_mappings_forward",
    "mixing_mappings_forward_reference",
    "mixed_normed_attention_backward",
    "mixed_normed_attention_backward_reference",
    "mixed_normed_attention_forward",
    "mixed_normed_attention_forward_reference",
    "mixed_normed_feed_forward_backward",
    "mixed_normed_feed_forward_backward_reference",
    "mixed_normed_feed_forward_forward",
    "mixed_normed_feed_forward_forward_reference",
    "mix_streams_forward",
    "mix_streams_forward_reference",
    "multi_head_attention_backward",
    "multi_head_attention_forward",
    "normalized_lerp_backward",
    "normalized_lerp_backward_reference",
    "normalized_lerp_forward",
    "normalized_lerp_forward_reference",
    "normed_feed_forward_backward",
    "normed_feed_forward_backward_reference",
    "normed_feed_forward_forward",
    "normed_feed_forward_forward_reference",
    "normed_scaled_sum_attention_backward",
    "normed_scaled_sum_attention_backward_reference",
    "normed_scaled_sum_attention_forward",
    "normed_scaled_sum_attention_forward_reference",
    "normed_scaled_sum_feed_forward_backward",
    "normed_scaled_sum_feed_forward_backward_reference",
    "normed_scaled_sum_feed_forward_forward",
    "normed_scaled_sum_feed_forward_forward_reference",
    "normed_sum_attention_backward",
    "normed_sum_attention_backward_reference",
    "normed_sum_attention_forward",
    "normed_sum_attention_forward_reference",
    "normed_sum_feed_forward_backward",
    "normed_sum_feed_forward_backward_reference",
    "normed_sum_feed_forward_forward",
    "normed_sum_feed_forward_forward_reference",
    "numba_requested",
    "relu_backward",
    "relu_backward_reference",
    "relu_forward",
    "relu_forward_reference",
    "residual_normed_attention_backward",
    "residual_normed_attention_backward_reference",
    "residual_normed_attention_forward",
    "residual_normed_attention_forward_reference",
    "residual_normed_feed_forward_backward",
    "residual_normed_feed_forward_backward_reference",
    "residual_normed_feed_forward_forward",
    "residual_normed_feed_forward_forward_reference",
    "residual_normed_heads_pieces_attention_backward",
    "residual_normed_heads_pieces_attention_backward_reference",
    "residual_normed_heads_pieces_attention_forward",
    "residual_normed_heads_pieces_attention_forward_reference",
    "residual_normed_normed_feed_forward_backward",
    "residual_normed_normed_feed_forward_backward_reference",
    "residual_normed_normed_feed_forward_forward",
    "residual_normed_normed_feed_forward_forward_reference",
    "rms_norm_backward",
    "rms_norm_backward_reference",
    "rms_norm_forward",
    "rms_norm_forward_reference",
    "scale_norm_backward",
    "scale_norm_backward_reference",
    "scale_norm_forward",
    "scale_norm_forward_reference",
    "scaled_feed_forward_backward",
    "scaled_feed_forward_backward_reference",
    "scaled_feed_forward_forward",
    "scaled_feed_forward_forward_reference",
    "scaled_linear_backward",
    "scaled_linear_backward_reference",
    "scaled_linear_forward",
    "scaled_linear_forward_reference",
    "seam",
    "sigmoid_reference",
    "sinkhorn_backward",
    "sinkhorn_backward_reference",
    "sinkhorn_forward",
    "sinkhorn_forward_reference",
    "softmax_backward",
    "softmax_backward_reference",
    "softmax_forward",
    "softmax_forward_reference",
    "two_stream_normed_attention_backward",
    "two_stream_normed_attention_backward_reference",
    "two_stream_normed_attention_forward",
    "two_stream_normed_attention_forward_reference",
    "two_stream_normed_feed_forward_backward",
    "two_stream_normed_feed_forward_backward_reference",
    "two_stream_normed_feed_forward_forward",
    "two_stream_normed_feed_forward_forward_reference",
    "weighted_sum_backward",
    "weighted_sum_backward_reference",
    "weighted_sum_forward",
    "weighted_sum_forward_reference",
]
