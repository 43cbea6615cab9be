"""Where a model runs: ``--device`` parsing, without importing onnxruntime or torch.

Every command that takes ``--device`` (caption, url-list, eval, bench, info,
train) parses it here, so one spelling is accepted everywhere and a bad one
is a usage error before anything heavy is loaded.
"""

from __future__ import annotations

import re

from capcli.errors import UsageError

DEVICE_METAVAR = "auto|cpu|cuda[:N]"
_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> (kind, device id).

    >>> parse_device("cuda:1")
    ('cuda', 1)

    Raises :class:`capcli.errors.UsageError` (a ``ValueError``) for anything else.
    """
    match = _DEVICE.fullmatch(device.strip().lower())
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    return match.group(1), int(match.group(2) or 0)
