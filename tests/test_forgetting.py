"""Forgetting measures: weight drift per group, linear CKA, probe texts, the drift plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_bert, tiny_backbone
from transformers import AutoModel, AutoTokenizer

from bitune.errors import DataError, ModelError
from bitune.forgetting import (
    encoder_cka,
    linear_cka,
    load_probe_texts,
    plot_drift,
    weight_drift,
)
from bitune.model.layer_groups import resolve_layer_groups

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "wiki.test.tokens"


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_drift_is_zero_for_an_unchanged_model(model_type: str) -> None:
    backbone = tiny_backbone(model_type, num_layers=3)
    groups = resolve_layer_groups(backbone)
    drift = weight_drift(_snapshot(backbone), backbone, groups)
    expected = ["embeddings", "layers.0", "layers.1", "layers.2"]
    expected += ["extras"] if groups.extras else []
    expected += ["pooler"] if groups.pooler is not None else []
    assert list(drift) == expected
    assert all(value == 0.0 for value in drift.values())


def test_drift_shows_only_the_touched_layer() -> None:
    backbone = tiny_backbone("bert", num_layers=3)
    groups = resolve_layer_groups(backbone)
    before = _snapshot(backbone)
    with torch.no_grad():
        for param in groups.layers[1].parameters():
            param.mul_(1.5)  # every weight of layer 1 grows by half: relative drift exactly 0.5
    drift = weight_drift(before, backbone, groups)
    assert drift["layers.1"] == pytest.approx(0.5, rel=1e-6)
    assert {k for k, v in drift.items() if v > 0} == {"layers.1"}


def test_drift_needs_a_matching_snapshot() -> None:
    backbone = tiny_backbone("bert")
    groups = resolve_layer_groups(backbone)
    snapshot = _snapshot(backbone)
    del snapshot["pooler.dense.weight"]
    with pytest.raises(ModelError, match="pooler.dense.weight"):
        weight_drift(snapshot, backbone, groups)


def test_linear_cka_of_identical_inputs_is_one() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_ignores_rotation_scale_and_shift() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(60, 5, generator=gen, dtype=torch.float64) + x[:, :5]  # related to x, but not the same
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.1 < base < 0.99
    assert linear_cka(x @ rotation, y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(3.7 * x + 2.0, y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(y, x) == pytest.approx(base, abs=1e-12)


def test_linear_cka_is_low_for_unrelated_inputs_and_not_scale_invariant_per_feature() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 4, generator=gen)
    assert linear_cka(x, torch.randn(500, 4, generator=gen)) < 0.1
    stretched = x * torch.tensor([10.0, 1.0, 1.0, 1.0])  # anisotropic scaling does change CKA
    assert linear_cka(x, stretched) < 0.9


def test_linear_cka_rejects_mismatched_rows_and_flags_constants() -> None:
    with pytest.raises(ValueError, match="same rows"):
        linear_cka(torch.zeros(4, 2), torch.zeros(5, 2))
    assert math.isnan(linear_cka(torch.ones(4, 2), torch.randn(4, 2)))


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _batches(tokenizer, texts: list[str], size: int = 4) -> list[dict[str, torch.Tensor]]:
    batches = []
    for start in range(0, len(texts), size):
        encoded = tokenizer(
            texts[start : start + size], padding=True, truncation=True, max_length=32, return_tensors="pt"
        )
        batches.append({**encoded, "labels": torch.zeros(len(texts[start : start + size]), dtype=torch.long)})
    return batches


def test_encoder_cka_of_a_model_with_itself_is_one_and_modes_are_restored(tiny_bert_dir: Path) -> None:
    model = AutoModel.from_pretrained(tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batches = _batches(tokenizer, load_probe_texts(None, 12))
    model.train()
    model.embeddings.eval()  # a mixed state, as after freezing: it must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    assert encoder_cka(model, model, batches) == pytest.approx(1.0, abs=1e-9)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_encoder_cka_falls_as_the_encoder_drifts(tiny_bert_dir: Path) -> None:
    reference = AutoModel.from_pretrained(tiny_bert_dir)
    tuned = AutoModel.from_pretrained(tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    batches = _batches(tokenizer, load_probe_texts(None, 16))
    gen = torch.Generator().manual_seed(0)
    scores = []
    for noise in (0.05, 0.3):  # a small nudge, then a large one
        with torch.no_grad():
            for param in tuned.encoder.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * noise)
        scores.append(encoder_cka(tuned, reference, batches))
    assert 0.999 > scores[0] > scores[1] > 0


def test_bundled_probe_texts_are_prose() -> None:
    texts = load_probe_texts(None, 1000)
    assert len(texts) >= 120
    assert all(len(t) >= 40 and t == t.strip() for t in texts)
    assert load_probe_texts(None, 10) == texts[:10]


def test_probe_texts_clean_wikitext(tmp_path: Path) -> None:
    raw = tmp_path / "wiki.tokens"
    raw.write_text(
        " \n"
        " = Valkyrie = \n"
        " \n"
        " The ship was a well @-@ known design of 1 @,@ 200 tonnes and 3 @.@ 5 metres draught . \n"
        " = = History = = \n"
        " Short line . \n"
        " It served in the northern fleet until the end of the war , then became a museum . \n",
        encoding="utf-8",
    )
    assert load_probe_texts(str(raw), 10) == [
        "The ship was a well-known design of 1,200 tonnes and 3.5 metres draught .",
        "It served in the northern fleet until the end of the war , then became a museum .",
    ]
    assert load_probe_texts(str(raw), 1) == load_probe_texts(str(raw), 10)[:1]


def test_probe_file_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=r"nope\.txt.*forgetting\.probe_file"):
        load_probe_texts(str(missing), 8)
    short = tmp_path / "short.txt"
    short.write_text("too short\n\n = Title = \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short\.txt"):
        load_probe_texts(str(short), 8)


@pytest.mark.skipif(not WIKITEXT.exists(), reason=f"wikitext-2 test split not present at {WIKITEXT}")
def test_wikitext2_test_split_loads() -> None:
    texts = load_probe_texts(str(WIKITEXT), 256)
    assert len(texts) >= 100
    assert not any(" @-@ " in t or t.startswith("=") for t in texts)


def test_plot_drift_writes_a_png(tmp_path: Path) -> None:
    drift = {
        "round1/head": {"embeddings": 0.0, "layers.0": 0.0, "layers.1": 0.0, "pooler": 0.0},
        "round1/bottom": {"pooler": 0.01, "layers.1": 0.002, "layers.0": 0.03, "embeddings": 0.05},
    }
    path = plot_drift(drift, tmp_path / "plots" / "drift.png")
    assert path == tmp_path / "plots" / "drift.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
