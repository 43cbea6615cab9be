"""The tutorial way for ``capcli bench``: the PyTorch checkpoint captioning one image at a time, eager."""

from __future__ import annotations

import json
import time
from typing import Any

from capcli.bench.scenarios import Result, Scenario, read_paths


def run_tutorial(s: Scenario, spec: dict[str, Any]) -> Result:
    import torch
    from PIL import Image
    from torchvision import transforms

    from capcli.text import detokenize
    from capcli.train.checkpoint import load_checkpoint

    started = time.perf_counter()
    device = _torch_device(spec["device"])
    ckpt = load_checkpoint(spec["checkpoint"])
    model, vocab = ckpt.model.eval().to(device), ckpt.vocab
    pre = model.backbone.spec.preprocess
    transform = transforms.Compose(
        [
            transforms.Resize(pre.size, interpolation=transforms.InterpolationMode(pre.interpolation)),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    from capcli.decode import SearchSpec

    search = _torch_greedy if s.beam == 1 else _torch_beam
    # capcli's rules, so that both ways caption alike; the tutorial loops apply them in torch.
    rules = SearchSpec.runtime(vocab, model.config.max_len)

    def caption(path: str) -> tuple[str, list[float]]:
        t0 = time.perf_counter()
        with Image.open(path) as image:
            x = transform(image.convert("RGB")).unsqueeze(0).to(device)  # (1, 3, H, W)
        t1 = time.perf_counter()
        encoded = model.encode(x)  # features (1, L, D), keys (1, A, L), state each (1, H)[, concept (1, C)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the stage ends when the GPU is done
        t2 = time.perf_counter()
        ids = search(model, encoded, rules, s.beam)
        t3 = time.perf_counter()
        return detokenize([vocab.tokens[i] for i in ids]), [t1 - t0, t2 - t1, t3 - t2]

    paths = read_paths(spec["listing"])
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "torch_device": str(device)}
    stages = dict.fromkeys(("read", "encode", "decode", "write"), 0.0)
    with torch.no_grad(), open(spec["output"], "w", encoding="utf-8") as out:
        caption(paths[0])  # warm-up
        result = Result(s.key, s.label, load_seconds=time.perf_counter() - started, info=info, output=spec["output"])
        clock = time.perf_counter()
        for index, path in enumerate(paths):
            text, spent = caption(path)
            at = time.perf_counter()
            out.write(json.dumps({"index": index, "source": path, "status": "ok", "caption": text}) + "\n")
            out.flush()
            for name, seconds in zip(stages, [*spent, time.perf_counter() - at]):
                stages[name] += seconds
        result.seconds = time.perf_counter() - clock
    result.images = len(paths)
    result.stages = stages
    return result


def _torch_device(device: str) -> Any:
    """The tutorial runs where capcli is asked to: CUDA for cuda[:N], and for auto when torch sees a GPU."""
    import torch

    from capcli.runtime import parse_device

    kind, index = parse_device(device)
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    return torch.device(f"cuda:{index}" if use_cuda else "cpu")


def _history_rules(logprobs: Any, histories: list[list[int]], rules: Any) -> None:
    """capcli's rules that look back (no repeated trigram, no word said twice, no dangling last word) on a torch
    (rows, V) tensor."""
    import numpy as np
    import torch

    from capcli.decode import block_dangling_end, block_repeats, block_said

    if not histories[0]:
        return
    words = np.array(histories, dtype=np.int64)  # (rows, t)
    banned = np.zeros(tuple(logprobs.shape))
    block_repeats(banned, words, rules.no_repeat_ngram)
    block_said(banned, words, rules.said_once_mask(banned.shape[1]))
    block_dangling_end(banned, words, rules)
    logprobs[torch.from_numpy(np.isinf(banned)).to(logprobs.device)] = -float("inf")


def _torch_greedy(model: Any, encoded: Any, rules: Any, beam: int) -> list[int]:
    """Tutorial greedy decoding: one token per step, Python loop, until <end>."""
    import torch

    token = torch.tensor([rules.start_id], device=encoded.features.device)
    state = encoded.state
    ids: list[int] = []
    for t in range(rules.max_len):
        logits, state, _ = model.decoder.step(token, state, *encoded.context)
        logprobs = torch.log_softmax(logits, dim=1)  # (1, V)
        logprobs[:, list(rules.banned)] = -float("inf")
        if t == 0:
            logprobs[:, rules.end_id] = -float("inf")
        _history_rules(logprobs, [ids], rules)
        token = logprobs.argmax(dim=1)  # (1,)
        if int(token) == rules.end_id:
            break
        ids.append(int(token))
    return ids


def _torch_beam(model: Any, encoded: Any, rules: Any, beam: int) -> list[int]:
    """Tutorial beam search for one image (the sgrvinod way: the beam shrinks as hypotheses end)."""
    import torch

    k, device = beam, encoded.features.device  # the image's context (features, keys[, concept]) serves all k rows
    state = tuple(s.expand(k, -1).contiguous() for s in encoded.state)  # each (k, H)
    tokens = torch.full((k,), rules.start_id, device=device)
    scores = torch.zeros(k, device=device)
    scores[1:] = -float("inf")  # the k rows start identical: only one is live
    seqs: list[list[int]] = [[] for _ in range(k)]
    done: list[tuple[float, list[int]]] = []
    for t in range(rules.max_len + 1):
        logits, state, _ = model.decoder.step(tokens, state, *encoded.context)
        logprobs = torch.log_softmax(logits, dim=1)  # (k, V)
        logprobs[:, list(rules.banned)] = -float("inf")
        if t == 0:
            logprobs[:, rules.end_id] = -float("inf")
        if t == rules.max_len:
            end = logprobs[:, rules.end_id].clone()
            logprobs.fill_(-float("inf"))
            logprobs[:, rules.end_id] = end
        _history_rules(logprobs, seqs, rules)
        v = logprobs.size(1)
        top, flat = (scores[:, None] + logprobs).view(-1).topk(k)  # (k,)
        rows, words = flat // v, flat % v
        live = []
        for score, row, word in zip(top.tolist(), rows.tolist(), words.tolist()):
            if word == rules.end_id:
                done.append((score / (len(seqs[row]) + 1) ** rules.length_penalty, seqs[row]))
            else:
                live.append((score, row, word))
        k = len(live)
        if k == 0:
            break
        keep = torch.tensor([row for _, row, _ in live], device=device)
        seqs = [seqs[row] + [word] for _, row, word in live]
        scores = torch.tensor([score for score, _, _ in live], device=device)
        tokens = torch.tensor([word for _, _, word in live], device=device)
        state = tuple(s[keep] for s in state)
    return max(done, key=lambda d: d[0])[1] if done else seqs[0]
