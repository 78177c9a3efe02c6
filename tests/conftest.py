import os

import torch

# The Triton kernels run on CPU tensors through Triton's interpreter when no GPU is present.
# The variable must be set before triton decorates any kernel, so before fusedrnn.kernels
# is imported by any test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# FUSEDRNN_BACKEND would change what "auto" means under the tests' feet
os.environ.pop("FUSEDRNN_BACKEND", None)
