"""``capcli eval``: BLEU-1..4, METEOR, ROUGE-L and CIDEr of a bundle (or a captions file) on a split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from capcli.cli import main
from capcli.cli.options import dataset_options, runtime_options


@main.command("eval")
@click.option(
    "--model",
    metavar="PATH|NAME",
    default=None,
    help="Bundle directory or model name to evaluate [default: $CAPCLI_MODEL, then the packaged model].",
)
@click.option(
    "--captions",
    "captions_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Score this captions file (capcli JSONL/CSV output, or image,caption) instead of running a model.",
)
@dataset_options
@click.option("--split", default="dev", show_default=True, help="train, dev (val) or test.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of the split.")
@runtime_options(workers=2, workers_help="Threads reading images ahead of the model.")
@click.option("--no-meteor", is_flag=True, help="Skip METEOR (its Java process needs 2 GB of memory).")
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write {metrics, protocol} as JSON to this file.",
)
@click.option(
    "--captions-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --model: also write the generated captions as JSONL (re-score with --captions).",
)
def eval_command(
    model: str | None,
    captions_file: str | None,
    dataset: str,
    data: str,
    images: str | None,
    split: str,
    limit: int | None,
    beam: int,
    length_penalty: float,
    max_len: int | None,
    batch_size: int,
    device: str,
    precision: str,
    workers: int,
    no_meteor: bool,
    json_out: str | None,
    captions_out: str | None,
    **decoding: Any,
) -> None:
    """Caption a data set split with a bundle and score it the standard way.

    \b
    Prints BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap, PTB
    tokenizer; Java required) with the protocol: data set, split, images,
    references, beam. With --captions FILE, scores existing captions instead
    (rows matched to the split's images by path or file name).

    \b
    Examples:
      capcli eval --model models/f8k --dataset flickr8k --data data/flickr8k --split dev
      capcli eval --captions runs/f8k/best_dev_captions.jsonl --dataset flickr8k --data data/flickr8k
    """
    from capcli import evaluation
    from capcli.datasets import load_split

    if captions_file and (model or captions_out):
        raise click.UsageError("--captions scores a file: it does not go with --model or --captions-out")
    console = Console(stderr=True, soft_wrap=True)
    data_split = load_split(dataset, Path(data), split, Path(images) if images else None).limited(limit)
    console.print(data_split.describe(), markup=False)
    if captions_file:
        hypotheses = evaluation.read_hypotheses(Path(captions_file), data_split)
        protocol = {"captions": captions_file}
        if hypotheses.unmatched:
            console.print(f"{hypotheses.unmatched:,} rows of {captions_file} name no image of this split")
    else:
        writer = _captions_writer(captions_out)
        try:
            hypotheses, protocol = evaluation.caption_split(
                data_split,
                model,
                beam=beam,
                max_len=max_len,
                length_penalty=length_penalty,
                device=device,
                precision=precision,
                batch_size=batch_size,
                workers=workers,
                on_record=writer.write if writer else None,
                **decoding,
            )
        finally:
            if writer is not None:
                writer.close()
    missing = len(data_split.samples) - len(hypotheses.captions)
    if missing:
        console.print(f"warning: {missing:,} images of the split have no caption and are not scored")
    report = evaluation.score(data_split, hypotheses, protocol, meteor=not no_meteor)
    click.echo("\n".join(report.lines()))
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def _captions_writer(path: str | None):
    if path is None:
        return None
    from capcli.writers import open_output

    writer, _ = open_output(path, "jsonl")
    return writer
