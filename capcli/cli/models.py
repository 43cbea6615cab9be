"""``capcli models``: list, add and remove named models (the model store, :mod:`capcli.store`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from capcli import store
from capcli.cli import Group, main


@main.group("models", cls=Group, invoke_without_command=True)
@click.pass_context
def models_group(ctx: click.Context) -> None:
    """List, add and remove named models; `--model NAME` then chooses one.

    \b
    The store is $CAPCLI_HOME/models; $CAPCLI_HOME defaults to capcli's
    folder in your data directory (~/.local/share/capcli on Linux,
    ~/Library/Application Support/capcli on macOS, %LOCALAPPDATA%\\capcli
    on Windows). `default` is the model shipped with capcli.
    Without a subcommand: the list.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@models_group.command("list")
def list_command() -> None:
    """Each model's name, data set, recorded dev metrics, size on disk and path."""
    from capcli.bundle import named_bundles

    rows = [("NAME", "DATA SET", "DEV METRICS", "SIZE", "PATH")]
    rows += [(name, *_describe(path), str(path)) for name, path in named_bundles().items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]))
    click.echo(f"(store: {store.models_dir()})", err=True)


@models_group.command("add")
@click.argument("name")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Replace an installed model of that name.")
def add_command(name: str, bundle: str, force: bool) -> None:
    """Copy the bundle directory BUNDLE into the store as NAME (validated first).

    NAME: 1 to 64 lower-case letters, digits, '.', '_' or '-', not `default`.
    """
    from capcli.bundle import install_bundle

    path = install_bundle(name, Path(bundle).absolute(), force=force)
    click.echo(f"installed {name!r} at {path}", err=True)


@models_group.command("remove")
@click.argument("name")
def remove_command(name: str) -> None:
    """Delete the installed model NAME from the store."""
    path = store.remove(name)
    click.echo(f"removed {name!r} ({path})", err=True)


def _describe(path: Path) -> tuple[str, str, str]:
    """(data set, dev metrics, size) from the bundle's model.json and files, without loading the graphs."""
    from capcli.bundle import MODEL_JSON, read_meta_json
    from capcli.errors import CapcliError

    size = f"{sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6:.1f} MB"
    try:
        provenance: dict[str, Any] = read_meta_json(path / MODEL_JSON).get("provenance", {})
    except CapcliError as exc:
        return "?", f"unreadable ({exc})", size
    dataset = provenance.get("dataset") or "+".join(provenance.get("data", {})) or "?"  # grounded: its parts
    text = _recorded(provenance.get("metrics", {})) or ", ".join(
        f"{key.removeprefix('dev_')} {f'{value:.3f}' if isinstance(value, float) else value}"
        for key, value in provenance.get("dev_metrics", {}).items()
    )
    return str(dataset), text or "-", size


def _recorded(metrics: dict[str, Any]) -> str:
    """The full-protocol dev figures of ``benchmarks/record_metrics.py`` ({data set: {"dev_beam3": {...}}}), which
    are what the README reports, as "flickr8k beam3 BLEU-4 0.254, CIDEr 0.624; ..."; "" when there are none."""
    return "; ".join(
        f"{dataset} {key.removeprefix('dev_')} BLEU-4 {scores['BLEU-4']:.3f}, CIDEr {scores['CIDEr']:.3f}"
        for dataset, result in metrics.items()
        for key, scores in result.items()
        if key.startswith("dev_") and isinstance(scores, dict) and {"BLEU-4", "CIDEr"} <= scores.keys()
    )
