"""capcli.cli.Command: a Ctrl-C while capcli exits after an interrupted run still exits 130, never -2."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import os, signal, time
    import click
    from capcli.cli import Command
    from capcli.errors import ExitStatus

    @click.command(cls=Command)
    @click.option("--how")
    def run(how):
        if how == "raise":
            raise KeyboardInterrupt
        return ExitStatus.INTERRUPTED

    # The second Ctrl-C arrives after the exit mapper, while its SystemExit(130) is on its way out.
    try:
        run()
    finally:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["raise", "return"])
def test_a_ctrl_c_during_exit_after_an_interrupt_exits_130(how: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM, "--how", how], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert ("interrupted" in done.stderr) == (how == "raise")


def test_other_exits_keep_the_default_sigint_handler() -> None:
    from click.testing import CliRunner

    from capcli.cli import main

    before = signal.getsignal(signal.SIGINT)
    assert CliRunner().invoke(main, ["models", "list"]).exit_code in (0, 1)
    assert signal.getsignal(signal.SIGINT) is before
