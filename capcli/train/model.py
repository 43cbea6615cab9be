"""The captioning model: CNN grid encoder + Bahdanau attention + GRU/LSTM decoder.

"Show, Attend and Tell" (soft attention), split so that it maps 1:1 onto the
ONNX bundle: ``encoder.onnx`` = backbone grid -> projection -> attention keys
and initial state; ``decoder.onnx`` = one ``Decoder.step``.  Training (teacher
forcing) calls the very same ``step`` in a loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from capcli.train.backbones import Backbone, BackboneSpec, build_backbone, check_name, describe

State = tuple[torch.Tensor, ...]  # (h,) for GRU, (h, c) for LSTM; each (B, H)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; stored inside every checkpoint."""

    vocab_size: int
    backbone: str = "efficientnet-lite2"
    pretrained: bool = True
    decoder: str = "gru"  # "gru" | "lstm"
    feature_dim: int = 512  # D: projected region features
    attention_dim: int = 512  # A
    embed_dim: int = 256  # E
    hidden_dim: int = 512  # H
    dropout: float = 0.5
    max_len: int = 20  # words, not counting <start>/<end>
    finetune_blocks: int = 0  # top backbone stages trained; 0 = frozen backbone
    # Grounding (see capcli.train.tagger): the decoder also reads the backbone's own top ``concepts``
    # ImageNet classes, weighted by their renormalised probabilities, as one (concept_dim,) vector.
    concepts: int = 0  # 0 = no tagger and no concept input (the models before grounding)
    concept_dim: int = 256
    classes: int = 0  # the tagger's classes (1,000 for ImageNet); 0 = no tagger
    tagger_stages: int = 0  # top backbone stages the tagger keeps its own pristine copy of
    # Decoding only (see Decoder.init): on photos its view gate calls everyday scenes, the decoder's words
    # are a product of two experts, weight ``concept_view`` on the decoder reading the concept alone.
    concept_view: float = 0.0  # 0 = one view, the models before it

    def __post_init__(self) -> None:
        if self.decoder not in ("gru", "lstm"):
            raise ValueError(f"decoder must be 'gru' or 'lstm', not {self.decoder!r}")
        check_name(self.backbone)
        if self.concepts and not self.classes:
            raise ValueError("a concept input needs the tagger's classes (classes > 0)")
        if not 0.0 <= self.concept_view < 1.0 or (self.concept_view and not self.concepts):
            raise ValueError("concept_view is a weight in [0, 1) and needs a concept input")

    @property
    def grounded(self) -> bool:
        return self.concepts > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)

    @property
    def backbone_spec(self) -> BackboneSpec:
        """Input size, preprocessing, grid and channels of the backbone (see ``backbones.describe``)."""
        return describe(self.backbone)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.backbone_spec.image_size

    @property
    def backbone_channels(self) -> int:
        return self.backbone_spec.channels

    @property
    def grid(self) -> tuple[int, int]:
        return self.backbone_spec.grid


def region_grid(feature_map: torch.Tensor) -> torch.Tensor:
    """A backbone's feature map (B, C, h, w) -> its regions (B, h*w, C), row-major."""
    return feature_map.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Additive (Bahdanau) attention of N rows over the L regions of their M images.

    Rows are image-major: image ``m`` owns rows ``m*R .. m*R+R-1`` (R = N / M:
    1 in training, the beam width or the number of samples when decoding), so
    each image's keys are stored once, however many rows read them.  Keys are
    laid out (M, A, L): the score is then one (1, A) x (A, L) product per row,
    which onnxruntime runs faster than (L, A) x (A, 1) (add, tanh and score:
    35 vs 56 us per row at A=512, L=81 on one EPYC core).
    """

    def __init__(self, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, h: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        m, a, regions = keys.shape  # (M, A, L)
        q = self.query(h).reshape(m, -1, a, 1)  # (M, R, A, 1)
        e = torch.matmul(self.score.weight, torch.tanh(keys.unsqueeze(1) + q))  # (M, R, 1, L)
        return torch.softmax(e.reshape(-1, regions) + self.score.bias, dim=1)  # (N, L)


class Decoder(nn.Module):
    """Attention decoder whose ``step`` is exported as decoder.onnx."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, a, e, h = cfg.feature_dim, cfg.attention_dim, cfg.embed_dim, cfg.hidden_dim
        self.kind = cfg.decoder
        self.keys = nn.Linear(d, a)
        self.attention = Attention(h, a)
        self.embed = nn.Embedding(cfg.vocab_size, e)
        self.gate = nn.Linear(h, d)  # "doubly stochastic" gate beta = sigmoid(W h)
        c = cfg.concept_dim if cfg.grounded else 0  # the concept vector's width (0: no concept input)
        self.top_k = cfg.concepts
        if cfg.grounded:
            self.concept_embed = nn.Embedding(cfg.classes, c)
        cell = nn.GRUCell if cfg.decoder == "gru" else nn.LSTMCell
        self.cell = cell(e + d + c, h)
        n_states = 1 if cfg.decoder == "gru" else 2
        self.init_state = nn.ModuleList(nn.Linear(d + c, h) for _ in range(n_states))
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, cfg.vocab_size)
        self.concept_view = cfg.concept_view
        if cfg.concept_view:  # a logistic "everyday scene?" gate on what the initial state reads
            self.view_gate = nn.Linear(d + c, 1)

    def concept(self, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Top classes (B, k) with weights (B, k) summing to 1 -> concept vector (B, C)."""
        return (weights.unsqueeze(2) * self.concept_embed(classes)).sum(dim=1)  # (B, C)

    def concept_of(self, probs: torch.Tensor) -> torch.Tensor:
        """The tagger's class probabilities (B, K) -> concept vector (B, C) of its top ``concepts`` classes."""
        top, classes = probs.topk(self.top_k, dim=1)  # each (B, k)
        return self.concept(classes, top / top.sum(dim=1, keepdim=True))

    def summary(self, features: torch.Tensor | None, concept: torch.Tensor | None = None) -> torch.Tensor:
        """What the initial state (and the view gate) read: the mean region feature (zeros without a
        photo) and the concept, (B, D [+ C])."""
        if features is None:
            assert concept is not None
            mean = concept.new_zeros(concept.size(0), self.keys.in_features)  # (B, D)
        else:
            mean = features.mean(dim=1)  # (B, D)
        return mean if concept is None else torch.cat([mean, concept], dim=1)  # (B, D [+ C])

    def init(
        self, features: torch.Tensor | None, concept: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, State]:
        """Per-image work done once: attention keys (B, A, L) and the initial state.

        ``features=None``: captions without a photo (training on text alone), from the concept only.

        A two-view decoder (``concept_view`` > 0) on photos returns the state of both views and the
        weight of the second: the photo's own state, the concept-only state, then (B, 1) ``concept_view``
        where the view gate calls the photo an everyday scene, else 0 (see :meth:`step`).
        """
        keys = None if features is None else self.keys(features).transpose(1, 2).contiguous()  # (B, A, L)
        mean = self.summary(features, concept)  # (B, D [+ C])
        state = tuple(torch.tanh(layer(mean)) for layer in self.init_state)  # each (B, H)
        if self.concept_view and features is not None:
            _, alone = self.init(None, concept)
            weight = self.concept_view * (self.view_gate(mean) > 0).to(mean.dtype)  # (B, 1)
            state = (*state, *alone, weight)
        return keys, state

    def step(
        self,
        tokens: torch.Tensor,
        state: State,
        features: torch.Tensor | None,
        keys: torch.Tensor | None,
        concept: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """One word for N rows of M images (rows image-major, see :class:`Attention`).

        tokens (N,), state each (N, H), features (M, L, D), keys (M, A, L),
        concept (M, C) for a grounded decoder -> (logits (N, V), new state,
        attention weights (N, L)).

        A two-view decoder's state is :meth:`init`'s; its "logits" are then the log-probabilities
        ``(1 - w) log p(word | photo) + w log p(word | concept)``, renormalised (a product of experts).
        """
        h = state[0]  # (N, H)
        if features is None:  # no photo (training on text alone): no regions to attend to
            assert concept is not None
            m, alpha = concept.size(0), None
            context = h.new_zeros(h.size(0), self.keys.in_features)  # (N, D)
        else:
            alpha = self.attention(h, keys)  # (N, L)
            m, regions, d = features.shape
            context = torch.matmul(alpha.reshape(m, -1, regions), features).reshape(-1, d)  # (N, D)
            context = torch.sigmoid(self.gate(h)) * context  # (N, D)
        parts = [self.embed(tokens), context]
        if concept is not None:
            parts.append(concept.unsqueeze(1).expand(m, h.size(0) // m, -1).reshape(h.size(0), -1))  # (N, C)
        x = torch.cat(parts, dim=1)  # (N, E + D [+ C])
        if not (self.concept_view and features is not None):
            new_state = self._cell(x, state)
            return self.out(self.dropout(new_state[0])), new_state, alpha  # (N, V)
        # Two views, on the K rows whose photo the gate took (the others' concept-only state is never
        # read): those rows read no regions (context 0, as text-only training had it). Both views go
        # through the cell and the output layer as one stack of N + K rows: one product per weight.
        n, rows, w = len(state) // 2, h.size(0), state[-1]  # w (N, 1)
        picked = torch.nonzero(w[:, 0] > 0).squeeze(1)  # (K,)
        alone_x = torch.cat([parts[0], torch.zeros_like(context), parts[2]], dim=1)[picked]  # (K, E + D + C)
        both = self._cell(
            torch.cat([x, alone_x]),  # (N + K, E + D + C)
            tuple(torch.cat([own, alone[picked]]) for own, alone in zip(state[:n], state[n : 2 * n])),  # (N + K, H)
        )
        logprobs = torch.log_softmax(self.out(self.dropout(both[0])), dim=1)  # (N + K, V)
        own_lp, alone_lp, wk = logprobs[:rows], logprobs[rows:], w[picked]  # (N, V), (K, V), (K, 1)
        mixed = torch.log_softmax((1 - wk) * own_lp[picked] + wk * alone_lp, dim=1)  # (K, V)
        alone_state = (old.index_put((picked,), new[rows:]) for old, new in zip(state[n : 2 * n], both))
        return own_lp.index_put((picked,), mixed), (*(s[:rows] for s in both), *alone_state, w), alpha

    def _cell(self, x: torch.Tensor, state: State) -> State:
        """The recurrent cell: input (N, E + D [+ C]) and state each (N, H) -> the new state."""
        if self.kind == "gru":
            return (self.cell(x, state[0]),)
        return tuple(self.cell(x, (state[0], state[1])))


@dataclass
class Encoded:
    """The per-image outputs of the encoder: decoder context, initial state and the tagger's classes."""

    features: torch.Tensor  # (B, L, D)
    keys: torch.Tensor  # (B, A, L)
    state: State  # each (B, H)
    concept: torch.Tensor | None  # (B, C) for a grounded decoder
    tags: torch.Tensor | None  # (B, K) class probabilities, when the model has a tagger

    @property
    def context(self) -> tuple[torch.Tensor, ...]:
        """The decoder's per-image inputs in the bundle's order: features, keys[, concept]."""
        return (self.features, self.keys, *([self.concept] if self.concept is not None else []))


class CaptionModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone: Backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained)
        c, d = cfg.backbone_channels, cfg.feature_dim
        self.project = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, d), nn.ReLU())
        self.decoder = Decoder(cfg)
        self.tagger: nn.Module | None = None
        if cfg.classes:
            from capcli.train.tagger import build_tagger

            self.tagger = build_tagger(cfg.backbone, cfg.tagger_stages, pretrained=cfg.pretrained)
            self.tagger.requires_grad_(False)  # the backbone's own classifier stays as ImageNet trained it

    def backbone_grid(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> region grid (B, L, C): the cacheable part."""
        return region_grid(self.backbone(images))  # (B, L, C)

    def grid_and_tags(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) -> region grid (B, L, C) and the tagger's class probabilities (B, K).

        The stages below the tagger's copy run once for both.
        """
        assert self.tagger is not None
        shared, top = self.backbone.split(self.config.tagger_stages)
        x = shared(images)  # (B, C', h', w')
        return region_grid(top(x)), self.tagger(x)

    def frozen_and_trainable_backbone(self) -> tuple[nn.Sequential, nn.Sequential]:
        """Split at ``finetune_blocks``: cache the first part, train the second."""
        return self.backbone.split(self.config.finetune_blocks)

    def trainable_backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.frozen_and_trainable_backbone()[1].parameters()]

    def encode(self, images: torch.Tensor) -> Encoded:
        """Images (B, 3, H, W) -> what encoder.onnx computes once per image."""
        if self.tagger is None:
            grid, tags = self.backbone_grid(images), None  # (B, L, C)
        else:
            grid, tags = self.grid_and_tags(images)  # (B, L, C), (B, K)
        features = self.features(grid)  # (B, L, D)
        concept = self.decoder.concept_of(tags) if self.config.grounded else None  # (B, C)
        keys, state = self.decoder.init(features, concept)  # (B, A, L), each (B, H)
        return Encoded(features, keys, state, concept, tags)

    def features(self, grid: torch.Tensor) -> torch.Tensor:
        """Region grid (B, L, C) -> projected features (B, L, D)."""
        return self.project(grid)

    def forward(
        self, grid: torch.Tensor, captions: torch.Tensor, concept: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: predict captions[:, 1:] from captions[:, :-1].

        grid (B, L, C); captions (B, T) token ids starting with <start>;
        concept (B, C) for a grounded decoder.
        Returns logits (B, T-1, V) and attention weights (B, T-1, L).
        """
        return self.teacher_forced(self.features(grid), captions, concept)

    def teacher_forced(
        self, features: torch.Tensor | None, captions: torch.Tensor, concept: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` from projected features (B, L, D); None: captions without photos (no attention)."""
        keys, state = self.decoder.init(features, concept)
        logits, alphas = [], []
        for t in range(captions.size(1) - 1):
            step_logits, state, alpha = self.decoder.step(captions[:, t], state, features, keys, concept)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, dim=1), None if features is None else torch.stack(alphas, dim=1)
