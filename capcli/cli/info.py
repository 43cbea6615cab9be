"""``capcli info``: which model and which onnxruntime providers a run would use."""

from __future__ import annotations

import json
import platform
from typing import Any

import click

from capcli import __version__
from capcli.cli import main
from capcli.cli.options import device_option
from capcli.errors import BundleError, CapcliError


@main.command("info")
@click.option(
    "--model",
    "model",
    type=click.Path(),
    default=None,
    help="Bundle directory or model name (default: $CAPCLI_MODEL, then the packaged model).",
)
@device_option(help="The device whose providers to report.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info_command(model: str | None, device: str, as_json: bool) -> None:
    """Show the model bundle, the providers available and used, and versions.

    Works without a model (it says so); exits 1 when the bundle is broken or
    the requested device cannot be used.
    """
    import numpy as np
    import onnxruntime as ort

    from capcli.bundle import SEARCH_GRAPHS, load_bundle, resolve_bundle_path
    from capcli.runtime import Captioner

    facts: dict[str, Any] = {
        "capcli": __version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "providers_available": ort.get_available_providers(),
    }
    try:
        where, origin = resolve_bundle_path(model)
    except BundleError as exc:  # no model at all; an unknown model name is a usage error (exit 2)
        facts["model"] = None
        facts["model_note"] = str(exc)
        _show(facts, as_json)
        return
    try:
        bundle = load_bundle(where)
        captioner = Captioner(bundle, device=device, beam=1)
    except CapcliError as exc:
        raise click.ClickException(f"model from {origin}: {exc}") from None
    prov = bundle.provenance
    facts.update(
        {
            "model": str(bundle.path),
            "model_from": origin,
            "backbone": bundle.backbone,
            "decoder": bundle.decoder,
            **({"concept_view": bundle.concept_view} if bundle.concept_view else {}),  # a two-view decoder's weight
            "vocab_size": len(bundle.vocab),
            "grid": list(bundle.grid),
            "image_size": list(bundle.preprocess.size),
            "max_len": bundle.max_len,
            "providers_used": captioner.providers,
            "device": captioner.device,
            "decoder_precision": captioner.precision,
            "encoder_input": "uint8 pixels" if captioner.takes_pixels else "float32",  # what goes to the device
            "search": captioner.search,  # the decode loop --search auto takes here
            "search_graphs": [graph for graph in map(bundle.search_graph, SEARCH_GRAPHS) if graph],
            # the trigram table's size, which --unseen-trigram-penalty needs
            **({"trigrams": len(bundle.trigrams)} if bundle.trigrams is not None else {}),
        }
    )
    if captioner.cuda_problem:
        facts["cuda_note"] = captioner.cuda_problem
    for key in ("dataset", "metrics", "licence"):
        if key in prov:
            facts[key] = prov[key]
    _show(facts, as_json)


def _show(facts: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(facts, ensure_ascii=False))
        return
    for key, value in facts.items():
        if key == "model" and value is None:
            value = "none"
        elif isinstance(value, list):
            value = "x".join(map(str, value)) if key in ("grid", "image_size") else ", ".join(map(str, value))
        elif key == "metrics" and isinstance(value, dict):
            value = _metrics_text(value)
        elif isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False)
        click.echo(f"{key + ':':<21} {value}")


def _metrics_text(metrics: dict[str, Any]) -> str:
    """``dev_beam3: BLEU-4 0.227, CIDEr 0.576; protocol: dataset flickr8k, ...`` on one line."""
    parts = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            items = (f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
            parts.append(f"{name}: {', '.join(items)}")
        else:
            parts.append(f"{name}: {value}")
    return "; ".join(parts)
