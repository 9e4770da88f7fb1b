"""Show, Attend and Tell: a conv backbone encodes the image into a grid of features; a decoder writes the
caption word by word, attending over the grid. Two decoders share one interface:

- :class:`AttentionLSTMDecoder`: an LSTM with soft (additive) attention and a gating scalar (Xu et al. 2015);
- :class:`TransformerCaptionDecoder`: pre-norm Transformer layers with causal self-attention and
  cross-attention over the grid.

Both give ``forward(features, tokens) -> (logits, attention)`` for teacher forcing and
``init_state(features)`` / ``step(state, tokens) -> (logits, state, attention)`` for greedy and beam search;
a state is a tuple of batch-first tensors, so search can reorder it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cnnapps.apps.caption.config import DECODERS, TRANSFORMER_HEADS
from cnnapps.apps.caption.vocab import Vocabulary
from cnnapps.backbones.features import Backbone
from cnnapps.backbones.preprocess import Preprocess

State = tuple[torch.Tensor, ...]


class CaptionEncoder(nn.Module):
    """The backbone's last feature map pooled to a fixed ``grid`` x ``grid``: (N, grid * grid, channels)."""

    def __init__(self, backbone: Backbone, grid: int) -> None:
        super().__init__()
        if backbone.has_head:
            backbone.drop_head()
        self.backbone, self.grid = backbone, grid
        was_training = backbone.training
        with torch.no_grad():  # what forward_features gives (timm nets may differ from their stage table)
            probe = torch.zeros(1, backbone.preprocess.input_size[0], 64, 64)
            self.channels = int(backbone.eval().forward_features(probe).shape[1])
        backbone.train(was_training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.backbone.forward_features(images))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The grid of a last feature map already computed (a trunk pass shared with other heads)."""
        return F.adaptive_avg_pool2d(features, self.grid).flatten(2).transpose(1, 2)


class AttentionLSTMDecoder(nn.Module):
    """LSTM decoder with soft additive attention and a gating scalar beta on the attended context."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.3,
        **_: Any,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.feature_att = nn.Linear(feature_dim, attention_dim)
        self.hidden_att = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)
        self.init_h, self.init_c = nn.Linear(feature_dim, hidden_dim), nn.Linear(feature_dim, hidden_dim)
        self.gate = nn.Linear(hidden_dim, feature_dim)
        self.cell = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def init_state(self, features: torch.Tensor) -> State:
        mean = features.mean(1)
        return features, self.feature_att(features), torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor]:
        features, keys, h, c = state
        alpha = torch.softmax(self.score(torch.tanh(keys + self.hidden_att(h)[:, None])).squeeze(2), dim=1)
        context = (features * alpha[..., None]).sum(1) * torch.sigmoid(self.gate(h))
        h, c = self.cell(torch.cat([self.embed(tokens), context], 1), (h, c))
        return self.out(self.dropout(h)), (features, keys, h, c), alpha

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: logits (N, T, V) for each next word of ``tokens`` (N, T), attention (N, T, cells)."""
        state = self.init_state(features)
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            out, state, alpha = self.step(state, tokens[:, t])
            logits.append(out)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)


class _DecoderLayer(nn.Module):
    """Pre-norm Transformer decoder layer that also returns its cross-attention (averaged over heads)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device), 1)
        y = self.norms[0](x)
        x = x + self.dropout(self.self_attn(y, y, y, attn_mask=causal, need_weights=False)[0])
        y, weights = self.cross_attn(self.norms[1](x), memory, memory, need_weights=True)
        x = x + self.dropout(y)
        return x + self.dropout(self.ff(self.norms[2](x))), weights


class TransformerCaptionDecoder(nn.Module):
    """Transformer decoder over the projected grid (with learned positions); attention from the last layer."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        cells: int,
        d_model: int = 256,
        heads: int = TRANSFORMER_HEADS,
        layers: int = 2,
        max_len: int = 40,
        dropout: float = 0.1,
        **_: Any,
    ) -> None:
        super().__init__()
        self.project = nn.Linear(feature_dim, d_model)
        self.cell_pos = nn.Parameter(torch.zeros(1, cells, d_model))
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len + 2, d_model)
        self.layers = nn.ModuleList(_DecoderLayer(d_model, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.cell_pos, std=0.02)

    @property
    def max_words(self) -> int:
        """The longest caption with a trained position for every step (training fed <start> and max_len words)."""
        return self.pos.num_embeddings - 2

    def _decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(tokens.shape[1], device=tokens.device).clamp(max=self.pos.num_embeddings - 1)
        x = self.embed(tokens) + self.pos(positions)[None]
        weights = None
        for layer in self.layers:
            x, weights = layer(x, memory)
        return self.out(self.norm(x)), weights

    def init_state(self, features: torch.Tensor) -> State:
        memory = self.project(features) + self.cell_pos
        return memory, torch.zeros(features.shape[0], 0, dtype=torch.long, device=features.device)

    def step(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor]:
        memory, seen = state
        seen = torch.cat([seen, tokens[:, None]], 1)
        logits, weights = self._decode(memory, seen)
        return logits[:, -1], (memory, seen), weights[:, -1]

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory, _ = self.init_state(features)
        return self._decode(memory, tokens)


@dataclass
class CaptionSpec:
    """What rebuilds a captioner: stored in its model file with the vocabulary and preprocessing."""

    backbone: str
    decoder: str = "lstm"
    grid: int = 14
    max_len: int = 20
    feature_dim: int = 0
    tokens: list[str] = field(default_factory=list)
    preprocess: dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Captioner(nn.Module):
    """Encoder + decoder + vocabulary; ``forward(images, tokens)`` for training, search for inference."""

    def __init__(self, encoder: CaptionEncoder, spec: CaptionSpec) -> None:
        super().__init__()
        if spec.decoder not in DECODERS:
            raise ValueError(f"decoder {spec.decoder!r} is not one of {', '.join(DECODERS)}")
        self.encoder, self.spec = encoder, spec
        self.vocab = Vocabulary(tuple(spec.tokens))
        spec.feature_dim = encoder.channels
        if spec.decoder == "lstm":
            self.decoder = AttentionLSTMDecoder(len(self.vocab), encoder.channels, **spec.decoder_kwargs)
        else:
            kwargs = {"max_len": spec.max_len, **spec.decoder_kwargs}
            self.decoder = TransformerCaptionDecoder(len(self.vocab), encoder.channels, spec.grid**2, **kwargs)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.spec.preprocess)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(self.encoder(images), tokens)


def build_captioner(
    backbone: str,
    vocab: Vocabulary,
    decoder: str = "lstm",
    grid: int = 14,
    max_len: int = 20,
    weights: str | None = "imagenet",
    preprocess: Preprocess | None = None,
    trunk: Backbone | None = None,
    **decoder_kwargs: Any,
) -> Captioner:
    """A captioner on the registry backbone ``backbone`` (``weights`` seeds it; or the ready ``trunk``)."""
    from cnnapps.apps.common.config import ConfigError
    from cnnapps.apps.modelfile import HEAD_SETTING_LIMITS
    from cnnapps.backbones import create_backbone

    most = HEAD_SETTING_LIMITS["grid"]
    if not 1 <= grid <= most:  # before training: a model file of a larger grid is refused when read
        raise ConfigError(f"grid: must be between 1 and {most}, not {grid}")
    trunk = trunk if trunk is not None else create_backbone(backbone, weights=weights)
    spec = CaptionSpec(
        backbone,
        decoder,
        grid,
        max_len,
        tokens=list(vocab.tokens),
        preprocess={
            k: list(v) if isinstance(v, tuple) else v for k, v in (preprocess or trunk.preprocess).to_dict().items()
        },
        decoder_kwargs=decoder_kwargs,
    )
    return Captioner(CaptionEncoder(trunk, grid), spec)


class CaptionHead:
    """The captioning head in model files: the grid pooling and the decoder, with the vocabulary as labels."""

    trunk_path = "encoder.backbone"
    kinds = DECODERS

    def describe(self, model: Captioner) -> Any:
        from cnnapps.apps.modelfile import HeadInfo

        spec = model.spec
        kwargs = {"grid": spec.grid, "max_len": spec.max_len, "feature_dim": spec.feature_dim,
                  "decoder_kwargs": dict(spec.decoder_kwargs)}  # fmt: skip
        return HeadInfo("caption", spec.decoder, kwargs, list(spec.tokens))

    def build(self, trunk: Backbone, info: Any, preprocess: dict[str, Any], model_file: Any) -> Captioner:
        from cnnapps.bundle import BundleError

        if info.kind not in DECODERS:
            raise BundleError(f"{model_file.path}: a caption head of kind {info.kind!r} (known: {', '.join(DECODERS)})")
        kw = info.kwargs
        grid, max_len = kw.get("grid", 14), kw.get("max_len", 20)
        for key, value in (("grid", grid), ("max_len", max_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a whole number of at least 1, not {value!r}")
        spec = CaptionSpec(model_file.trunk["name"], info.kind, grid, max_len, tokens=list(info.labels),
                           preprocess=dict(preprocess), decoder_kwargs=dict(kw.get("decoder_kwargs", {})))  # fmt: skip
        return Captioner(CaptionEncoder(trunk, spec.grid), spec)

    def from_v1(self, meta: dict[str, Any]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        from cnnapps.apps.modelfile import HeadInfo

        c = meta["captioner"]
        kwargs = {"grid": c["grid"], "max_len": c["max_len"], "feature_dim": c.get("feature_dim", 0),
                  "decoder_kwargs": c.get("decoder_kwargs", {})}  # fmt: skip
        head = HeadInfo("caption", c["decoder"], kwargs, c["tokens"])
        return {"name": c["backbone"], "kwargs": {}}, head, c["preprocess"]

    def apply_options(self, model: Captioner, options: dict[str, Any]) -> None:
        """A one-line error for a ``beam`` or ``max_len`` this head cannot decode with (they are read per call)."""
        from cnnapps.apps.caption.predictor import decoding_length

        decoding_length(model, options.get("beam", 1), options.get("max_len"))

    def predict_shared(self, model: Captioner, shared: Any, options: dict[str, Any]) -> list[Any]:
        """Captions from a trunk pass shared with other heads (``beam``, ``max_len`` from the options)."""
        from cnnapps.apps.caption.predictor import caption_grid, decoding_length

        beam = options.get("beam", 1)
        max_len = decoding_length(model, beam, options.get("max_len"))
        grid = model.encoder.from_features(shared.features)
        return caption_grid(model, grid, beam, max_len, shared.geometries, tuple(shared.images.shape[-2:]))


HEAD = CaptionHead()


def save_captioner(path: str | os.PathLike, model: Captioner, metrics: dict[str, Any] | None = None,
                   trunk_kwargs: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Write the model file: trunk, decoder, vocabulary (as the head's labels) and preprocessing."""
    from cnnapps.apps.modelfile import save_model

    save_model(path, "caption", model, model.spec.backbone, trunk_kwargs, model.spec.preprocess, metrics)


def load_captioner(path: str | os.PathLike, head: str | None = None) -> Captioner:
    """A captioner from its model file (vocabulary, decoder and preprocessing come from the file)."""
    from cnnapps.apps.modelfile import build_model, read_model_file

    return build_model(read_model_file(path), head, "caption")


def caption_loss(
    logits: torch.Tensor, targets: torch.Tensor, attention: torch.Tensor, pad: int, alpha_c: float
) -> torch.Tensor:
    """Cross-entropy on the words (padding ignored) plus the doubly stochastic attention penalty:
    ``alpha_c * mean((1 - sum over steps of attention per cell)^2)``, which asks every cell to be looked at."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad)
    if alpha_c:
        mask = (targets != pad).float()[..., None]
        loss = loss + alpha_c * ((1.0 - (attention * mask).sum(1)) ** 2).mean()
    return loss
