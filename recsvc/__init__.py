"""recsvc: product recommendations for e-commerce, trained offline and served over gRPC."""

import os

# implicit and numpy's BLAS must not start a thread pool per call: implicit parallelises
# itself, and nested pools slow ALS down badly. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
