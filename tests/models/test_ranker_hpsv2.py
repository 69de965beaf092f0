"""HPSv2 ranker: HPSv2's evaluation transform, one-line errors, and the real OpenCLIP loading path.

The loading/scoring test builds a tiny OpenCLIP model from a config dict with the installed
``open_clip`` (the real upstream code) and saves it as an HPSv2-style checkpoint
(``{"state_dict": ...}``). It skips when ``open_clip_torch`` is not installed (the ``hpsv2`` extra).
OpenCLIP imports torchvision at import time but the ranker never calls it; where torchvision is
absent or cannot load (PyPI's CUDA wheel next to a CPU torch), the test puts an empty stand-in
module in ``sys.modules`` for the import only.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from debias3d.models.ranker import hpsv2 as mod

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    class _Any:
        def __init__(self, *a, **k):
            pass

        def __getattr__(self, name):
            return _Any()

    def module(name: str) -> types.ModuleType:
        m = types.ModuleType(name)

        def getattr_(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Any

        m.__getattr__ = getattr_  # type: ignore[attr-defined]
        return m

    mods = {n: module(n) for n in ("torchvision", "torchvision.ops", "torchvision.transforms")}
    mods["torchvision.ops.misc"] = module("torchvision.ops.misc")
    mods["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    mods["torchvision.transforms.functional"] = module("torchvision.transforms.functional")
    mods["torchvision.transforms"].InterpolationMode = _Any()
    for name, m in mods.items():  # parents expose their submodules, as after a real import
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, m)
    return mods


@pytest.fixture
def open_clip(monkeypatch):
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip_torch not installed (pip install 'debias3d[hpsv2]')")
    import transformers  # noqa: F401  (reads torchvision's availability before any stand-in exists)

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a CUDA wheel that cannot load on this torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            monkeypatch.delitem(sys.modules, name)
        for name, m in _torchvision_stand_in().items():
            monkeypatch.setitem(sys.modules, name, m)
    return importlib.import_module("open_clip")


def _checkpoint(open_clip, path, seed=0):
    torch.manual_seed(seed)
    open_clip.factory._MODEL_CONFIGS["tiny-test"] = TINY
    model = open_clip.create_model("tiny-test", pretrained=None, output_dict=True).eval()
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
    return model


def _upstream_score(open_clip, model, images, prompts):
    # upstream img_score.py: image_features @ text_features.T, diagonal
    x = mod.preprocess_images(images, 32)
    out = model(x, open_clip.get_tokenizer("tiny-test")(prompts))
    return torch.diagonal(out["image_features"] @ out["text_features"].T)


def test_real_open_clip_checkpoint_loads_and_scores(open_clip, tmp_path, monkeypatch):
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    model = _checkpoint(open_clip, ckpt)
    r = mod.HPSv2Ranker.from_pretrained(ckpt, architecture=TINY, batch_size=3)
    assert r.input_size == 32
    views = [torch.rand(4, 3, 40, 40), torch.rand(2, 3, 40, 40)]
    prompts = ["a red vase", "two blue cups"]
    got = r.view_scores(views, prompts)
    want = [_upstream_score(open_clip, model, v, [p] * len(v)) for v, p in zip(views, prompts, strict=True)]
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5)
    # same weights through safetensors
    # a vocabulary given by $DEBIAS3D_HPSV2_BPE is the one the tokenizer reads
    bpe = tmp_path / mod.BPE_NAME
    bpe.write_bytes((Path(open_clip.__file__).parent / mod.BPE_NAME).read_bytes())
    monkeypatch.setenv("DEBIAS3D_HPSV2_BPE", str(bpe))
    r_env = mod.HPSv2Ranker(checkpoint=ckpt, architecture=TINY)
    assert torch.equal(r_env.tokenizer(prompts), open_clip.get_tokenizer("tiny-test")(prompts))
    assert torch.allclose(r_env.view_scores(views, prompts)[1], got[1], atol=1e-6)
    bpe.write_bytes(b"not gzip")
    with pytest.raises(mod.HPSv2Unavailable, match="not a readable BPE vocabulary"):
        mod.HPSv2Ranker(checkpoint=ckpt, architecture=TINY)
    monkeypatch.delenv("DEBIAS3D_HPSV2_BPE")
    st = mod.convert_checkpoint(ckpt, tmp_path / "hps.safetensors")
    r2 = mod.HPSv2Ranker(checkpoint=st, architecture=TINY)
    assert torch.allclose(r2.view_scores(views[:1], prompts[:1])[0], got[0], atol=1e-6)
    # a checkpoint of another architecture is a one-line error naming the file
    other = dict(TINY, embed_dim=8)
    with pytest.raises(ValueError, match="does not match OpenCLIP") as info:
        mod.HPSv2Ranker(checkpoint=ckpt, architecture=other, architecture_name="tiny-other")
    assert "\n" not in str(info.value) and str(ckpt) in str(info.value)


def test_missing_checkpoint_is_one_line_before_building(open_clip, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model built before the checkpoint was checked")

    monkeypatch.setattr(open_clip, "create_model", boom)
    with pytest.raises(FileNotFoundError, match="HPS_v2.1_compressed.pt") as info:
        mod.HPSv2Ranker(checkpoint=tmp_path / "missing.pt", architecture=TINY)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="ranker_weights"):
        mod.HPSv2Ranker(checkpoint=None, architecture=TINY)


def test_missing_open_clip_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(mod.HPSv2Unavailable, match=r"pip install 'debias3d\[hpsv2\]'") as info:
        mod.HPSv2Ranker(checkpoint="HPS_v2.1_compressed.pt")
    assert "\n" not in str(info.value)


def test_missing_vocabulary_is_one_line(monkeypatch, tmp_path):
    fake = types.ModuleType("open_clip")
    fake.__file__ = str(tmp_path / "open_clip" / "__init__.py")
    monkeypatch.delenv("DEBIAS3D_HPSV2_BPE", raising=False)
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    with pytest.raises(
        mod.HPSv2Unavailable, match=r"bpe_simple_vocab_16e6\.txt\.gz.*DEBIAS3D_HPSV2_BPE"
    ) as info:
        mod.HPSv2Ranker(checkpoint="HPS_v2.1_compressed.pt")
    assert "\n" not in str(info.value)
    bpe = tmp_path / mod.BPE_NAME
    bpe.write_bytes(b"")
    monkeypatch.setenv("DEBIAS3D_HPSV2_BPE", str(bpe))
    assert mod.find_bpe_vocab(fake) == bpe


def test_pickled_object_checkpoint_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": types.SimpleNamespace(a=1)}, p)
    with pytest.raises(ValueError, match="not a tensor-only torch checkpoint"):
        mod.load_hpsv2_state_dict(p)


def test_preprocess_is_hpsv2_resize_max_size():
    from debias3d.models.ranker.hpsv2 import OPENAI_MEAN, OPENAI_STD, preprocess_images

    mean, std = torch.tensor(OPENAI_MEAN), torch.tensor(OPENAI_STD)
    # longer side to 224, shorter side zero-padded (black before normalisation), centred
    x = preprocess_images(torch.ones(2, 3, 64, 128))
    assert x.shape == (2, 3, 224, 224)
    assert torch.allclose(x[0, :, 112, 112], (1 - mean) / std, atol=1e-4)
    assert torch.allclose(x[0, :, 5, 112], (0 - mean) / std, atol=1e-6)  # padding row
    assert torch.allclose(x[0, :, 218, 112], (0 - mean) / std, atol=1e-6)
    # an image already at the size is not resampled (upstream skips the resize when scale == 1)
    img = torch.rand(1, 3, 224, 224)
    assert torch.allclose(preprocess_images(img), (img - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    with pytest.raises(ValueError, match="M, 3, H, W"):
        preprocess_images(torch.ones(3, 8, 8))


def test_open_clip_vit_h_14_has_upstream_hpsv2_layout(open_clip):
    """The model the ranker builds (``open_clip.create_model("ViT-H-14")``) has exactly the keys and
    shapes of upstream HPSv2's own ViT-H-14 (its vendored OpenCLIP at 866735e), so the released
    checkpoint loads with nothing missing or unused. Built on the meta device: no 2.5 GB allocation."""
    import json
    from pathlib import Path

    fixture = json.loads((Path(__file__).parent / "fixtures" / "hpsv2_vit_h_14_state_dict.json").read_text())
    want = fixture["state_dict"]
    with torch.device("meta"):
        model = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14"), output_dict=True)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(got) == set(want)
    assert got == want
    assert (
        len(want) == 686 and want["visual.proj"] == [1280, 1024] and want["text_projection"] == [1024, 1024]
    )
