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


def _register() -> None:
    # Each module adds its command(s) to ``main`` on import.
    import importlib

    for name in ("caption", "urls", "info", "export_cmd", "train", "evaluate", "bench"):
        try:
            importlib.import_module(f"capcli.cli.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"capcli.cli.{name}":
                raise


_register()
