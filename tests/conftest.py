"""Import lib before any test module, so that it switches Triton's interpreter on (when CUDA
is absent) before anything else imports Triton (e.g. torch.nn.attention.bias)."""

import lib  # noqa: F401
