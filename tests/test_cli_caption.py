"""``capcli caption`` end to end with a fake captioner: records, exit codes, resume, signals, pipes.

The fake stands in for the ONNX bundle (``capcli.captioning.load_model`` is replaced), so
these tests pin the command's behaviour without a trained model; the same
paths with a real exported bundle are covered by the end-to-end test.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from capcli import captioning, progress
from capcli.cli import main
from capcli.writers import read_records

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, ["caption", *args], input=input)


def make_pngs(folder: Path, n: int) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.new("L", (4, 4), i * 5 % 256).save(path)
        paths.append(str(path))
    return paths


def jsonl(text: str | bytes) -> list[dict]:
    return [json.loads(line) for line in (text.decode() if isinstance(text, bytes) else text).splitlines()]


# --- records and exit codes ----------------------------------------------------------------------


def test_a_folder_of_real_photos_plus_bad_inputs_exits_3_with_one_record_each(photos: Path, fake) -> None:
    (photos / "broken.jpg").write_bytes(b"")
    (photos / "notes.txt").write_text("not an image, not picked by the walk")
    result = run(str(photos), str(photos / "missing.jpg"))
    assert result.exit_code == 3, result.output
    records = jsonl(result.stdout)
    names = sorted(p.name for p in photos.iterdir() if p.suffix == ".jpg")
    assert [Path(r["source"]).name for r in records] == names + ["missing.jpg"]
    assert [r["index"] for r in records] == list(range(len(records)))
    by_name = {Path(r["source"]).name: r for r in records}
    assert by_name["broken.jpg"]["error_kind"] == "empty_file"
    assert by_name["missing.jpg"]["error_kind"] == "not_found"
    captions = [r["caption"] for r in records if r["status"] == "ok"]
    assert len(captions) == 5 and len(set(captions)) == 5 and all(c.startswith("Brightness") for c in captions)
    assert "5 captioned, 2 failed (empty_file 1, not_found 1)" in result.stderr
    assert "on cpu" in result.stderr


def test_csv_output_file_all_ok_exits_0(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 5)
    out = tmp_path / "out.csv"
    result = run(str(tmp_path / "in"), "-o", str(out), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    records = read_records(str(out), "csv")
    assert [r["source"] for r in records] == paths and {r["status"] for r in records} == {"ok"}
    assert out.read_bytes().startswith(b"index,source,status,caption,score,error_kind,error,n_frames\r\n")
    assert fake.calls == 3


def test_stdin_list_and_odd_names(tmp_path: Path, fake) -> None:
    weird = os.path.join(str(tmp_path), os.fsdecode(b'caf\xe9, "quoted"\nname.png'))
    Image.new("RGB", (4, 4)).save(weird, format="PNG")
    plain = make_pngs(tmp_path / "in", 1)[0]
    result = run("-", weird, input=os.fsencode(plain) + b"\n")
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["source"] for r in records] == [plain, weird]
    assert os.path.exists(records[1]["source"])  # the name read back opens the file
    out = tmp_path / "o.csv"
    assert run(weird, "-o", str(out)).exit_code == 0
    [record] = read_records(str(out), "csv")
    assert os.path.exists(record["source"])


def test_no_model_is_one_clear_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import capcli.bundle

    monkeypatch.delenv("CAPCLI_MODEL", raising=False)
    monkeypatch.setattr(capcli.bundle, "default_bundle_path", lambda: None)  # as if none were packaged
    for args in (["x.jpg"], ["x.jpg", "--model", str(tmp_path / "nope")]):
        result = run(*args)
        assert result.exit_code == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("Error: ") and ("no model" in line or "nope" in line)
        assert result.stdout == "" and "Traceback" not in result.output


def test_unwritable_output_exit_1(tmp_path: Path, fake) -> None:
    result = run(*make_pngs(tmp_path, 1), "-o", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot write") and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["x.jpg", "--batch-size", "0"],
        ["x.jpg", "--format", "xml"],
        ["x.jpg", "--resume"],  # resuming needs an output file
        ["-", "-"],
        [],
    ],
)
def test_usage_errors_exit_2(args, fake) -> None:
    assert run(*args).exit_code == 2


# --- interruption and resume ---------------------------------------------------------------------


def test_ctrl_c_writes_finished_batches_then_exits_130_and_resume_completes(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 9)
    out = tmp_path / "out.jsonl"
    fake.on_batch = lambda n: n == 2 and os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during batch 2
    result = run(str(tmp_path / "in"), "-o", str(out), "--batch-size", "2", "--workers", "1")
    assert result.exit_code == 130, result.output
    assert "interrupted: 4 captioned" in result.stderr
    assert [r["source"] for r in read_records(str(out), "jsonl")] == paths[:4]  # batch 2 was finished
    assert out.read_bytes().endswith(b"\n")

    fake.on_batch = None
    result = run(str(tmp_path / "in"), "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert "5 captioned, 0 failed, 4 skipped" in result.stderr
    assert [r["source"] for r in read_records(str(out), "jsonl")] == paths


def test_second_ctrl_c_or_keyboard_interrupt_still_exits_130(tmp_path: Path, fake) -> None:
    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    fake.on_batch = interrupt
    make_pngs(tmp_path / "in", 4)
    out = tmp_path / "out.csv"
    result = run(str(tmp_path / "in"), "-o", str(out), "--batch-size", "1", "--workers", "1")
    assert result.exit_code == 130
    assert len(read_records(str(out), "csv")) == 1 and out.read_bytes().endswith(b"\r\n")


def test_retry_errors_reruns_only_the_failures(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 3)
    late = tmp_path / "in" / "late.png"
    out = tmp_path / "out.csv"
    assert run(*paths, str(late), "-o", str(out)).exit_code == 3
    Image.new("RGB", (4, 4)).save(late)
    result = run(*paths, str(late), "-o", str(out), "--retry-errors")
    assert result.exit_code == 0 and "1 captioned, 0 failed, 3 skipped" in result.stderr
    records = read_records(str(out), "csv")
    assert {r["status"] for r in records} == {"ok"}
    assert [r["source"] for r in records] == paths + [str(late)]


def test_retry_errors_keeps_the_file_in_input_order(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 6)
    for broken in paths[1::2]:
        Path(broken).write_bytes(b"")  # 1, 3 and 5 fail
    out = tmp_path / "out.jsonl"
    assert run(*paths, "-o", str(out)).exit_code == 3
    for fixed in paths[1::2]:
        Image.new("L", (4, 4), 9).save(fixed)
    result = run(*paths, "-o", str(out), "--retry-errors")
    assert result.exit_code == 0, result.output
    records = read_records(str(out), "jsonl")
    assert [r["index"] for r in records] == list(range(6)) and [r["source"] for r in records] == paths
    assert {r["status"] for r in records} == {"ok"}


# --- resume with repeated inputs, and refusing to overwrite ------------------------------------------------


def test_resume_restores_one_record_per_input_position_with_repeated_inputs(tmp_path: Path, fake) -> None:
    a, b = make_pngs(tmp_path / "in", 2)
    out = tmp_path / "d.jsonl"
    assert run(a, b, a, b, "-o", str(out)).exit_code == 0
    out.write_bytes(out.read_bytes().splitlines(keepends=True)[0])  # cut to the first record
    result = run(a, b, a, b, "-o", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert "3 captioned, 0 failed, 1 skipped" in result.stderr
    records = read_records(str(out), "jsonl")
    assert [(r["index"], r["source"]) for r in records] == [(0, a), (1, b), (2, a), (3, b)]


def test_resume_at_scale_with_every_input_given_five_times(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 20) * 5  # 100 inputs
    out = tmp_path / "d.csv"
    stdin = "\n".join(paths).encode()
    assert run("-", "-o", str(out), input=stdin).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:38]) + lines[38][:9])  # the header, 37 records and a torn one
    result = run("-", "-o", str(out), "--resume", input=stdin)
    assert result.exit_code == 0, result.output
    assert "63 captioned, 0 failed, 37 skipped" in result.stderr
    records = read_records(str(out), "csv")
    assert [int(r["index"]) for r in records] == list(range(100)) and [r["source"] for r in records] == paths


def test_resume_with_other_inputs_is_refused(tmp_path: Path, fake) -> None:
    a, b, c = make_pngs(tmp_path / "in", 3)
    out = tmp_path / "d.jsonl"
    assert run(a, b, "-o", str(out)).exit_code == 0
    before = out.read_bytes()
    result = run(a, c, b, "-o", str(out), "--resume")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "record 1" in line and "same inputs" in line
    assert out.read_bytes() == before


def test_an_output_that_holds_records_is_not_replaced_without_overwrite(tmp_path: Path, fake) -> None:
    paths = make_pngs(tmp_path / "in", 3)
    out = tmp_path / "done.jsonl"
    assert run(*paths, "-o", str(out)).exit_code == 0
    before = out.read_bytes()
    result = run(paths[0], "-o", str(out))
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "done.jsonl already exists" in line and "--resume" in line and "--overwrite" in line
    assert out.read_bytes() == before and fake.calls == 1  # refused before any work
    result = run(paths[0], "-o", str(out), "--overwrite")
    assert result.exit_code == 0 and len(read_records(str(out), "jsonl")) == 1
    empty = tmp_path / "empty.csv"
    empty.touch()  # an empty file holds nothing to lose
    assert run(paths[0], "-o", str(empty)).exit_code == 0
    assert run(paths[0], "-o", os.devnull).exit_code == 0
    assert run(paths[0]).exit_code == 0  # stdout: as before


# --- smaller ones --------------------------------------------------------------------------------------


def test_a_nul_byte_in_a_stdin_path_is_invalid_input(tmp_path: Path, fake) -> None:
    [good] = make_pngs(tmp_path / "in", 1)
    result = run("-", input=good.encode() + b"\n" + good.encode() + b"\0junk\n")
    assert result.exit_code == 3, result.output
    records = jsonl(result.stdout)
    assert records[0]["status"] == "ok"
    assert records[1]["error_kind"] == "invalid_input" and "NUL" in records[1]["error"]


def test_a_directory_without_images_is_named_on_stderr_and_exits_0(tmp_path: Path, fake) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.jpg").mkdir()  # a directory named like a photo
    (tmp_path / "x.jpg" / "notes.txt").write_text("no photo here")
    result = run(str(tmp_path / "empty"), str(tmp_path / "x.jpg"))
    assert result.exit_code == 0 and result.stdout == ""  # like find over an empty tree: nothing to do is fine
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 2 and "empty: no image files" in warnings[0] and "x.jpg: no image files" in warnings[1]
    assert "0 captioned, 0 failed" in result.stderr
    [photo] = make_pngs(tmp_path / "in", 1)
    result = run(str(tmp_path / "empty"), photo)
    assert result.exit_code == 0 and len(jsonl(result.stdout)) == 1 and "Warning: " in result.stderr


# --- progress on stderr --------------------------------------------------------------------------------


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress' clock moves 5 s per record, so a status line comes every second record, without sleeping."""
    clock = itertools.count(0.0, 5.0).__next__
    monkeypatch.setattr(captioning, "ProgressLine", functools.partial(progress.ProgressLine, clock=clock))


def status_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("capcli: ")]


def test_progress_in_a_log_has_the_total_of_a_directory_every_10_s(tmp_path: Path, fake, ticking) -> None:
    make_pngs(tmp_path / "in", 5)
    result = run(str(tmp_path / "in"), "--progress", "-o", str(tmp_path / "out.jsonl"), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert status_lines(result.stderr) == [
        "capcli: 2/5 images (40.0%), 0.2 images/s, ETA 15s, 0 errors",
        "capcli: 4/5 images (80.0%), 0.2 images/s, ETA 5s, 0 errors",
    ]
    assert result.stderr.splitlines()[-1].startswith("5 captioned, 0 failed")  # then the summary


def test_progress_totals_of_a_file_list_stdin_and_a_url_list(tmp_path: Path, fake, ticking) -> None:
    paths = make_pngs(tmp_path / "in", 3)
    given = run(*paths, str(tmp_path / "missing.png"), "--progress")
    assert status_lines(given.stderr) == [
        "capcli: 2/4 images (50.0%), 0.2 images/s, ETA 10s, 0 errors",
        "capcli: 4/4 images (100.0%), 0.2 images/s, ETA 0s, 1 error",
    ]
    piped = run("-", "--progress", input="\n".join(paths).encode())
    assert status_lines(piped.stderr) == ["capcli: 2/3 images (66.7%), 0.2 images/s, ETA 5s, 0 errors"]
    listing = tmp_path / "list.csv"
    listing.write_text("url,name\n,a\n,b\n,c\n")  # three rows without a URL: error records, nothing fetched
    urls = CliRunner().invoke(main, ["url-list", str(listing), "--progress"])
    assert urls.exit_code == 3, urls.output
    assert status_lines(urls.stderr) == ["capcli: 2/3 images (66.7%), 0.2 images/s, ETA 5s, 2 errors"]


def test_no_progress_in_a_log_unless_asked(tmp_path: Path, fake, ticking) -> None:
    make_pngs(tmp_path / "in", 5)
    result = run(str(tmp_path / "in"), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0, result.output
    [summary] = result.stderr.splitlines()  # the summary alone
    assert summary.startswith("5 captioned, 0 failed")


# --- a real process: pipes, kill -9, SIGINT --------------------------------------------------------

FAKE_MAIN = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import fake_captioner, PRE
    from capcli import Model, captioning
    from capcli.cli import main
    delay, hold, gate = float({delay!r}), {hold!r}, {gate!r}

    def on_batch(n):
        time.sleep(delay)
        while n == hold and not os.path.exists(gate):
            time.sleep(0.01)

    captioning.load_model = lambda settings: Model(fake_captioner(on_batch=on_batch), PRE)
    main(prog_name="capcli")
""")


def fake_capcli(tmp_path: Path, delay: float = 0.0, hold: int | None = None) -> list[str]:
    """A capcli with the fake captioner, ``delay`` seconds per batch. Batch number ``hold`` waits until
    the file ``tmp_path / "go"`` exists, so the run cannot end before the test has acted, however slow it is."""
    script = tmp_path / "fake_capcli.py"
    gate = str(tmp_path / "go")
    script.write_text(FAKE_MAIN.format(tests=str(Path(__file__).parent), delay=delay, hold=hold, gate=gate))
    return [sys.executable, str(script)]


def test_pipe_to_head_ends_quietly(tmp_path: Path) -> None:
    make_pngs(tmp_path / "in", 40)
    cmd = fake_capcli(tmp_path, delay=0.01) + ["caption", str(tmp_path / "in"), "--batch-size", "2"]
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "sh", *cmd], capture_output=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(jsonl(proc.stdout)) == 1
    assert proc.stderr == b""  # no traceback, no "Exception ignored", no summary


def test_a_full_disk_leaves_whole_records_and_one_error_line(tmp_path: Path) -> None:
    """The file-size limit (RLIMIT_FSIZE) stands in for a full disk: writes past it fail with EFBIG."""
    resource = pytest.importorskip("resource")
    paths = make_pngs(tmp_path / "in", 40)
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"

        def small_disk() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

        cmd = fake_capcli(tmp_path) + ["caption", *paths, "-o", str(out), "--batch-size", "4"]
        proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=REPO, preexec_fn=small_disk)
        assert proc.returncode == 1, proc.stderr.decode()
        errors = [line for line in proc.stderr.decode().splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "File too large" in errors[0] and "last whole record" in errors[0]
        assert b"Traceback" not in proc.stderr
        data = out.read_bytes()
        assert 2000 < len(data) <= 3000 and data.endswith(b"\n")
        records = read_records(str(out), fmt)
        assert [r["source"] for r in records] == paths[: len(records)]


def test_kill_9_mid_run_then_resume_gives_exactly_one_record_per_input(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "in", 60)
    out = tmp_path / "out.jsonl"
    args = ["caption", str(tmp_path / "in"), "-o", str(out), "--batch-size", "3"]
    proc = subprocess.Popen(fake_capcli(tmp_path, delay=0.03, hold=5) + args, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 10):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    written = out.read_bytes().count(b"\n")
    assert 10 <= written < 60
    with open(out, "ab") as f:
        f.write(b'{"index": 99, "source": "half a rec')  # what a kill mid-write could leave
    done = subprocess.run(fake_capcli(tmp_path) + args + ["--resume"], capture_output=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr.decode()
    records = jsonl(out.read_bytes())  # every line parses: the partial one was cut
    assert [r["source"] for r in records] == paths
    assert [r["index"] for r in records] == list(range(60))


def test_sigint_to_a_real_process(tmp_path: Path) -> None:
    make_pngs(tmp_path / "in", 60)
    out = tmp_path / "out.csv"
    cmd = fake_capcli(tmp_path, delay=0.05, hold=3) + ["caption", str(tmp_path / "in"), "-o", str(out)]
    proc = subprocess.Popen(cmd + ["--batch-size", "2"], stderr=subprocess.PIPE, cwd=REPO)
    while not out.exists() or out.read_bytes().count(b"\n") < 4:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    (tmp_path / "go").touch()  # batch 3 ends after the Ctrl-C: it is the last
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()
    assert b"interrupted:" in stderr and b"Traceback" not in stderr
    records = read_records(str(out), "csv")
    assert 2 <= len(records) < 60 and out.read_bytes().endswith(b"\r\n")


def test_a_second_ctrl_c_stops_a_big_batch_at_once(tmp_path: Path) -> None:
    """The shipped model on batches of 128: the first Ctrl-C waits for the batches being captioned (seconds on
    a small CPU), the second abandons them, leaving only whole records. (It ends them within one encoder run of
    ENCODE_CHUNK images: test_runtime counts the runs.)"""
    from example_photos import example_paths

    out = tmp_path / "out.jsonl"
    listing = tmp_path / "listing.txt"
    listing.write_text("\n".join(str(p) for p in example_paths() * 77))  # 385 inputs
    cmd = [sys.executable, "-m", "capcli", "caption", "-", "--batch-size", "128", "--device", "cpu", "-o", str(out)]
    with listing.open("rb") as stdin:
        proc = subprocess.Popen(cmd, stdin=stdin, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline:  # the model is loaded: captioning starts
        time.sleep(0.02)
    time.sleep(1.5)  # the first batches are read and being captioned
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    written = out.read_bytes().count(b"\n")  # records of the batches finished before the second Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"interrupted:" in stderr
    data = out.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    # No batch being captioned at the second Ctrl-C was finished (the one being written then may complete).
    assert len(data.splitlines()) <= -(-written // 128) * 128
    assert all(json.loads(line)["status"] == "ok" for line in data.splitlines())


# --- with a real exported bundle -------------------------------------------------------------------


@pytest.fixture
def real_bundle(request: pytest.FixtureRequest) -> Path:
    pytest.importorskip("capcli.export", reason="the exporter is needed to build a bundle")
    return request.getfixturevalue("tiny_bundle")


def test_real_bundle_jsonl_csv_and_head(photos: Path, real_bundle: Path, tmp_path: Path) -> None:
    capcli = [sys.executable, "-m", "capcli", "caption", "--model", str(real_bundle), "--device", "cpu"]
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"out.{fmt}"
        proc = subprocess.run(capcli + [str(photos), "-o", str(out)], capture_output=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr.decode()
        records = read_records(str(out), fmt)
        assert [Path(r["source"]).name for r in records] == sorted(p.name for p in photos.iterdir())
        assert all(r["status"] == "ok" and r["caption"].endswith(".") for r in records)
        assert not any("<" in r["caption"] for r in records)  # no special tokens
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -1', "sh", *capcli, *[str(photos)] * 20],
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0 and len(jsonl(proc.stdout)) == 1
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr


# --- issue 5's fixtures folder: every awkward case in one run ------------------------------------------


def make_cases(folder: Path) -> dict[str, str | None]:
    """Write one file per case; map its name to the expected error_kind (None: captioned)."""
    from test_images import encode, halves, png_claiming

    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    files = {
        "empty.jpg": (b"", "empty_file"),
        "text.jpg": (b"hello, I am not a picture", "not_an_image"),
        "truncated.jpg": (encode(noise, "JPEG")[:300], "truncated"),
        "truncated.png": (encode(noise, "PNG")[:1000], "truncated"),
        "bomb.png": (png_claiming(100_000, 100_000), "too_large"),
        "past-pillow-limit.png": (png_claiming(10_000, 9_000), "too_large"),  # Pillow only warns on these
        "over-limit.png": (encode(Image.new("L", (300, 300)), "PNG"), "too_large"),  # --max-pixels 50000
        "photo.heic": (struct.pack(">I", 24) + b"ftypheic" + bytes(12), "unsupported_format"),
        "rotated.jpg": (encode(halves(), "JPEG", exif=exif.tobytes()), None),
        "mode-1.png": (encode(Image.new("1", (4, 4), 1), "PNG"), None),
        "mode-LA.png": (encode(Image.new("LA", (4, 4), (0, 0)), "PNG"), None),
        "mode-P-transparent.png": (encode(pal, "PNG", transparency=1), None),
        "mode-RGBA.png": (encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"), None),
        "mode-CMYK.jpg": (encode(Image.new("CMYK", (4, 4)), "JPEG"), None),
        "mode-I16.png": (encode(Image.fromarray(np.full((4, 4), 40000, np.uint16)), "PNG"), None),
        "mode-F.tif": (encode(Image.fromarray(np.eye(4, dtype=np.float32)), "TIFF"), None),
        "anim.gif": (encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), None),
        "anim.webp": (encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), None),
        "one-pixel.png": (encode(Image.new("RGB", (1, 1)), "PNG"), None),
        "strip.png": (encode(Image.new("RGB", (1, 10_000)), "PNG"), None),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    (folder / "loop").symlink_to(folder)  # a directory symlink loop: walked once, no record
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    return {name: kind for name, (_, kind) in files.items()} | {"dangling.jpg": "not_found"}


def test_every_awkward_case_in_one_run(tmp_path: Path, fake) -> None:
    expected = make_cases(tmp_path / "cases")
    out = tmp_path / "out.jsonl"
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        result = run(str(tmp_path / "cases"), "-o", str(out), "--max-pixels", "50000")
    assert result.exit_code == 3, result.output
    assert not [w for w in warned if issubclass(w.category, Image.DecompressionBombWarning)]  # the record says it
    records = read_records(str(out), "jsonl")
    assert sorted(Path(r["source"]).name for r in records) == sorted(expected)  # one record per file
    got = {Path(r["source"]).name: r.get("error_kind") for r in records}
    assert got == expected
    frames = {Path(r["source"]).name: r.get("n_frames") for r in records}
    assert frames["anim.gif"] == frames["anim.webp"] == 3
    failed = sum(kind is not None for kind in expected.values())
    assert f"{len(expected) - failed} captioned, {failed} failed" in result.stderr
