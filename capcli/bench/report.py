"""Tables for ``capcli bench``: scenarios, ratios against their targets, and the machine."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from capcli.bench.scenarios import BIG_UNIQUE, STAGES, Report, Result

LEGEND = f"""\
limit: encoder.onnx alone on ready-made input tensors (same photos and batch size), the fastest of capcli's
lanes and one session on all cores (under CUDA also on float input, and with the outputs left on the GPU).
reading alone: the photos read and preprocessed by capcli's reader
threads, no model (also on one thread, to show how reading scales).
capcli: files on disk -> JSONL records, as `capcli caption -` runs (big JPEGs: {BIG_UNIQUE} distinct ones made
from the photos, upscaled, with grain, cycled). tutorial: the PyTorch checkpoint, one image at a time, eager.
Stages in ms per image: read (CPU time summed over reader threads, overlapped with inference), encode and
decode loop (summed over capcli's lanes), write, idle (lane time outside the model: waiting for images,
batching). Peak: RSS high-water mark of the scenario's process. Figures taken while other processes kept
cores busy are flagged: compare ratios only between unflagged rows (or use --rounds)."""


def render(report: Report, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console.width = 160  # a file or a pipe: rich would wrap at 80 columns
    console.print(_machine_line(report), highlight=False)
    console.print(scenario_table(report))
    console.print(ratio_table(report))
    console.print(LEGEND, highlight=False)


def _machine_line(report: Report) -> str:
    m, c = report.machine, report.config
    cpu = f"{m['cpu']}, {m['physical_cores']} physical cores ({m['logical_cpus']} logical), {m['memory_gib']} GiB"
    runtime = f"onnxruntime {m['onnxruntime']} on {m.get('device', '?')} ({', '.join(m.get('providers', []))})"
    if m.get("intra_op_threads"):
        runtime += f", {m.get('lanes', 1)} lane(s) x {m['intra_op_threads']} intra-op threads"
    lines = [f"machine: {cpu}", f"runtime: {runtime}; available: {', '.join(m['providers_available'])}"]
    if m.get("model"):
        lines.append(f"model: {m['model']}" + (" (int8 decoder)" if m.get("decoder") == "int8" else ""))
    if m.get("gpu"):
        lines.append(f"gpu: {m['gpu']}")
    if m.get("torch"):
        lines.append(
            f"tutorial: torch {m['torch']} on {m.get('torch_device', 'cpu')}, {m['torch_threads']} CPU threads"
        )
    lines.append(
        f"batch {c['batch_size']}, {c['n']} images from {c['images']}, {c['rounds']} round(s) "
        f"(fastest shown); load average at the end {m['load_average_end']}"
    )
    return "\n".join(lines)


def scenario_table(report: Report) -> Table:
    table = Table(title="capcli bench")
    table.add_column("scenario")
    table.add_column("images", justify="right")
    table.add_column("images/s", justify="right")
    for stage in STAGES:
        table.add_column(stage, justify="right")
    table.add_column("peak MiB", justify="right")
    table.add_column("note")
    for r in report.results:
        if r.skipped:
            table.add_row(r.label, *[""] * (3 + len(STAGES)), f"skipped: {r.skipped}")
            continue
        per_image = [f"{1000 * r.stages[s] / r.images:.1f}" if s in r.stages and r.images else "" for s in STAGES]
        table.add_row(r.label, str(r.images), f"{r.images_per_s:.2f}", *per_image, f"{r.peak_rss_mib:.0f}", _note(r))
    return table


def _note(r: Result) -> str:
    notes = []
    if len(r.rates) > 1:
        notes.append("rounds " + ", ".join(f"{x:.1f}" for x in r.rates))
    if r.info.get("other_cores", 0) >= 0.2:
        notes.append(f"[yellow]other processes used {r.info['other_cores']:.1f} cores meanwhile[/]")
    if "warm_up" in r.info:
        notes.append(f"untimed warm-up {r.info['warm_up']['images']} at {r.info['warm_up']['images_per_s']:.1f}/s")
    if "rates_by_arrangement" in r.info:
        notes.append(
            "lanes x threads: " + ", ".join(f"{k} {v:.1f}/s" for k, v in r.info["rates_by_arrangement"].items())
        )
    if "rates_by_threads" in r.info:
        notes.append("threads: " + ", ".join(f"{k} {v:.1f}/s" for k, v in r.info["rates_by_threads"].items()))
    if r.failed:
        notes.append(f"{r.failed} error records")
    if "same_captions_as_capcli_greedy" in r.info:
        notes.append(f"{100 * r.info['same_captions_as_capcli_greedy']:.0f}% same captions as capcli greedy")
    return "; ".join(notes)


def ratio_table(report: Report) -> Table:
    table = Table(title="ratios (images/s unless stated)")
    table.add_column("ratio")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("")
    for r in report.ratios:
        verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: ""}[r.ok]
        table.add_row(r.name, "n/a" if r.value is None else f"{r.value:.2f}", r.target, verdict)
    return table
