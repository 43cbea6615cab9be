"""The ``capcli`` command: a click group; each command lives in its own module.

Commands parse arguments and call the library; the library raises capcli's
own errors (:mod:`capcli.errors`) and :class:`Command` maps them to exit codes
for every command in one place (as httpie's ``main()`` around ``program()``):

- :class:`~capcli.errors.UsageError` -> ``Error: ...``, exit 2
- any other :class:`~capcli.errors.CapcliError` -> ``Error: ...``, exit 1
- ``KeyboardInterrupt`` -> ``interrupted`` (or the command's own words, see
  :func:`on_interrupt`), exit 130
- a command that returns an :class:`~capcli.errors.ExitStatus` exits with it.

Commands import heavy libraries (onnxruntime, torch) inside their bodies so
that ``capcli --help`` stays fast and the caption path never imports torch.
"""

from __future__ import annotations

import signal
import threading
import warnings
from typing import Any

import click

from capcli import __version__
from capcli.errors import CapcliError, ExitStatus, UsageError

_ON_INTERRUPT = "capcli.on_interrupt"  # ctx.meta key: what the exit mapper says on Ctrl-C


def on_interrupt(message: str) -> None:
    """Have the exit mapper say ``message`` instead of ``interrupted`` if Ctrl-C stops this command ("": nothing).

    For commands whose interruption leaves something to tell: how to resume the
    run from its saved checkpoint, which file was not written.
    """
    click.get_current_context().meta[_ON_INTERRUPT] = message


class Command(click.Command):
    """A click command whose capcli errors, interrupts and returned statuses become exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(int(ExitStatus.USAGE))
        except CapcliError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(int(ExitStatus.FATAL))
        except KeyboardInterrupt:
            message = ctx.meta.get(_ON_INTERRUPT, "interrupted")
            if message:
                click.echo(message, err=True)
            _exiting_after_interrupt()
            ctx.exit(int(ExitStatus.INTERRUPTED))
        if isinstance(result, ExitStatus):
            if result == ExitStatus.INTERRUPTED:
                _exiting_after_interrupt()
            ctx.exit(int(result))
        return result


def _exiting_after_interrupt() -> None:
    """From here on Ctrl-C is ignored: the run is over and its output whole. A KeyboardInterrupt raised while
    Python shuts down, or a SIGINT after Python has put back the default handler in its last steps (it keeps
    an ignored one), would end the process with SIGINT's -2 instead of 130."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class Group(click.Group):
    command_class = Command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each command's whole first line, never cut short with "..."."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    # Pillow warns on opening an image past its bomb limit; capcli checks --max-pixels itself (a too_large
    # record, or, under a larger --max-pixels, the caption asked for), so in the CLI the warning is noise.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module=r"PIL\.")


# Each module adds its command(s) to ``main`` on import.
from capcli.cli import bench, caption, evaluate, export_cmd, info, models, review, train, train_grounded, urls  # noqa: E402,F401
