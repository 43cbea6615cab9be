"""The ``capcli`` command: a click group; each command lives in its own module.

Commands import heavy libraries (onnxruntime, torch) inside their bodies so
that ``capcli --help`` stays fast and the caption path never imports torch.
"""

from __future__ import annotations

import click

from capcli import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capcli")
def main() -> None:
    """Caption images in bulk with a small attention model on onnxruntime.

    \b
    Exit codes:
      0    every input captioned
      1    fatal error (no model, broken bundle, unwritable output)
      2    usage error
      3    finished, but some inputs produced error records
      130  interrupted (Ctrl-C); output ends on a whole line
    """


# Each module adds its command(s) to ``main`` on import.
from capcli.cli import bench, caption, evaluate, export_cmd, info, review, train, train_grounded, urls  # noqa: E402,F401
