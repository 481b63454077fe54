"""Quantisation schemes: one file per scheme, all registered in `base`.

Importing this package registers the built-in schemes (nf4, fp4, int8).
"""

from pqm_jax.quant import base, fp4, int8, nf4  # noqa: F401  (imports register the schemes)
from pqm_jax.quant.base import (  # noqa: F401
    QuantizedTensor,
    dequantize,
    get_scheme,
    is_quantized,
    quantize,
    registered_schemes,
)
