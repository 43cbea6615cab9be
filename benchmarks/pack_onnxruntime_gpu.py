"""Pack the onnxruntime-gpu wheel small enough to carry to a lent GPU machine in one call.

    python benchmarks/pack_onnxruntime_gpu.py WHEEL OUT_DIR [--arch 90] [--part-mb 62]
    python3 benchmarks/pack_onnxruntime_gpu.py --install DIR    # there: unpack DIR's parts into DIR/site, check

The wheel (255.6 MB for cp312 1.31.1) is mostly the CUDA provider's GPU code, compiled once per GPU
architecture (sm_75, 80, 86, 89, 90, 120 in 1.31.1).  The lent machines are H100s and H200s, both sm_90:
this zeroes every other architecture's code in place (each fatbin's entry headers and sizes stay as they
were, so the libraries keep their layout and the CUDA driver still finds the sm_90 entry it loads), leaves
out ``libonnxruntime.so`` (the C API's library: the Python module has the runtime built in and the CUDA
provider does not link it), packs the rest (the package and its dist-info) as one xz tarball and splits
it into parts of at most ``--part-mb`` MB: for 1.31.1, one part of about 60 MB instead of 203 MB.

On the machine, with the parts in the checkout's git-ignored ``.device/`` folder, ``--install .device``
unpacks them into ``.device/site`` (then ``PYTHONPATH=.device/site``) and runs a small graph there on CUDA
and on the CPU: cuDNN's convolution and onnxruntime's own kernels, the code this tool thins out.

Not project code: a tool for measuring capcli on this workplace's lent machines (docs/performance.md).
"""

from __future__ import annotations

import argparse
import io
import lzma
import struct
import sys
import tarfile
import time
import zipfile
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
ENTRY_ARCH_OFFSET = 28  # within a fatbin entry's header: the sm_XY number
LEFT_OUT = "libonnxruntime.so"  # the C API's library


def section(elf: bytes | bytearray, wanted: str) -> tuple[int, int] | None:
    """(file offset, size) of the ELF64 little-endian section named ``wanted``."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return None
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    names_at = struct.unpack_from("<Q", elf, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        header = shoff + i * shentsize
        name_at = struct.unpack_from("<I", elf, header)[0] + names_at
        name = bytes(elf[name_at : elf.index(b"\0", name_at)]).decode()
        if name == wanted:
            offset, size = struct.unpack_from("<QQ", elf, header + 0x18)
            return offset, size
    return None


def keep_only_arch(elf: bytearray, arch: int) -> tuple[int, set[int]]:
    """Zero, in place, the GPU code of every architecture but ``arch`` -> (bytes zeroed, architectures seen)."""
    found = section(elf, ".nv_fatbin")
    if found is None:
        return 0, set()
    start, size = found
    fatbins = memoryview(elf)[start : start + size]
    zeroed, seen, pos = 0, set(), 0
    while pos + 16 <= size:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", fatbins, pos)
        if magic != FATBIN_MAGIC:  # padding between the fatbins
            pos += 8
            continue
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry < end:
            _kind, _flags, entry_header, payload = struct.unpack_from("<HHIQ", fatbins, entry)
            entry_arch = struct.unpack_from("<I", fatbins, entry + ENTRY_ARCH_OFFSET)[0]
            seen.add(entry_arch)
            if entry_arch != arch:
                body = entry + entry_header
                fatbins[body : body + payload] = bytes(payload)
                zeroed += payload
            entry += entry_header + payload
        pos = end
    if arch not in seen:
        raise SystemExit(f"no sm_{arch} code in this library (it has {sorted(seen)}): nothing would run")
    return zeroed, seen


def pack(wheel: Path, out_dir: Path, arch: int, part_mb: int) -> list[Path]:
    """The wheel's files, other architectures zeroed, as ``out_dir/<dist>.tar.xz.part-NN``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(wheel) as whl, tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in whl.infolist():
            if item.is_dir() or Path(item.filename).name.startswith(LEFT_OUT):
                continue
            data = bytearray(whl.read(item))
            if item.filename.endswith(".so") or ".so." in item.filename:
                zeroed, seen = keep_only_arch(data, arch)
                if seen:
                    print(f"{item.filename}: sm_{sorted(seen)}, {zeroed / 1e6:.0f} MB of other architectures zeroed")
            info = tarfile.TarInfo(item.filename)
            info.size, info.mode = len(data), (item.external_attr >> 16) & 0o777 or 0o644
            info.mtime = int(time.mktime((*item.date_time, 0, 0, -1)))
            tar.addfile(info, io.BytesIO(data))
    packed = lzma.compress(buffer.getvalue(), preset=6)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = wheel.name.split("-")[0].replace("_", "-")
    step = part_mb * 10**6
    parts = []
    for n, at in enumerate(range(0, len(packed), step)):
        part = out_dir / f"{stem}.tar.xz.part-{n:02d}"
        part.write_bytes(packed[at : at + step])
        parts.append(part)
    print(f"{len(packed) / 1e6:.1f} MB in {len(parts)} parts: {', '.join(p.name for p in parts)}")
    return parts


def install(folder: Path) -> None:
    """Join the parts in ``folder``, unpack them into ``folder/site`` and check the runtime there."""
    parts = sorted(folder.glob("*.tar.xz.part-*"))
    if not parts:
        raise SystemExit(f"no *.tar.xz.part-* in {folder}")
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:xz") as tar:
        tar.extractall(folder / "site", filter="data")
    sys.path.insert(0, str(folder / "site"))
    check()


def check() -> None:
    """Run a small graph on CUDA and on the CPU: cuDNN's convolution, then onnxruntime's own CUDA kernels
    (the code this tool thins out); exit 1 unless CUDA ran it and both agree."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], np.linspace(-1, 1, 216, dtype=np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"]),
        helper.make_node("Mul", ["conv", "conv"], ["square"]),
        helper.make_node("Softmax", ["square"], ["soft"], axis=1),
        helper.make_node("ReduceMean", ["soft"], ["y"], keepdims=0),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_model(
        helper.make_graph(nodes, "check", [x], [y], [weight]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    )
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* pip packages, as capcli loads them
        ort.preload_dlls()
    outputs, used = {}, {}
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        session = ort.InferenceSession(graph.SerializeToString(), providers=[provider])
        outputs[provider], used[provider] = session.run(None, feed)[0], session.get_providers()[0]
    gap = float(np.abs(outputs["CUDAExecutionProvider"] - outputs["CPUExecutionProvider"]).max())
    print(
        f"onnxruntime {ort.__version__}: asked CUDA, ran on {used['CUDAExecutionProvider']}; largest difference {gap:.2e}"
    )
    if used["CUDAExecutionProvider"] != "CUDAExecutionProvider" or gap > 1e-4:
        raise SystemExit("the unpacked runtime does not compute on the GPU as on the CPU")


def main() -> None:
    if sys.argv[1:2] == ["--install"] and len(sys.argv) == 3:
        install(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", type=int, default=90, help="the GPU architecture kept (90: H100, H200)")
    parser.add_argument("--part-mb", type=int, default=62, help="largest part, MB (one call carries 64 MiB)")
    args = parser.parse_args()
    pack(args.wheel, args.out_dir, args.arch, args.part_mb)


if __name__ == "__main__":
    main()
