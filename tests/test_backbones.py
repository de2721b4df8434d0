"""Backbones: registry, state_dict compatibility with the originals, forward numerics, AMP
regions, gradient checkpointing, and the MAC counter of bench/flops.py."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from backbones import MODEL_NAMES, get_model
from backbones import iresnet as iresnet_module
from backbones.iresnet import IResNet
from backbones.lresnet import LResNet
from backbones.mobilefacenet import MobileFaceNet
from backbones.vit import VisionTransformer
from bench.flops import count_macs
from utils.errors import ConfigError

SPEC_FILES = {"iresnet18": "r18", "iresnet50": "r50", "iresnet100": "r100", "mbf": "mbf",
              "vit_t": "vit_t", "LResNet50E_IR": "LResNet50E_IR"}
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def parse_spec(path) -> list[dict]:
    """Rows of spec/state_dict_<name>.txt: key, shape, dtype, param|buffer[, requires_grad]."""
    rows = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        cols = line.split("\t")
        shape = tuple(int(n) for n in re.findall(r"\d+", cols[1]))
        grad = cols[4] if len(cols) > 4 else ("requires_grad=True" if cols[3] == "param" else "-")
        rows.append({"key": cols[0], "shape": shape, "dtype": DTYPES[cols[2]], "kind": cols[3],
                     "requires_grad": {"requires_grad=True": True, "requires_grad=False": False}.get(grad)})
    return rows


def meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs)


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine values, so eval mode is not an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


# ---------------------------------------------------------------- registry

def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        get_model("r51")
    message = str(err.value)
    assert "'r51'" in message
    assert all(name in message for name in MODEL_NAMES)


def test_registry_names():
    expected = {"r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large", "vit_t", "vit_t_dp005_mask0",
                "vit_s", "vit_s_dp005_mask_0", "vit_b", "vit_b_dp005_mask_005", "vit_l_dp005_mask_005",
                "vit_h", "LResNet50E_IR", "ir_se50", "ir_se50_sotafr",
                "mbf_tiny"}  # not in the original: the CPU demo's small MobileFaceNet
    assert set(MODEL_NAMES) == expected


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_name_gives_batch_by_num_features(name):
    model = meta_model(name, num_features=128)
    for training in (True, False):
        model.train(training)
        assert tuple(model(torch.empty(2, 3, 112, 112, device="meta")).shape) == (2, 128)


# upstream arcface_torch backbones/__init__.py: (embed_dim, depth, heads, drop_path_rate, using_checkpoint,
# mask ratio that took effect: upstream's random_masking ignored its ratio argument, so any ratio > 0 masked 10%)
VIT_UPSTREAM = {
    "vit_t": (256, 12, 8, 0.1, False, 0.1), "vit_t_dp005_mask0": (256, 12, 8, 0.05, False, 0.0),
    "vit_s": (512, 12, 8, 0.1, False, 0.1), "vit_s_dp005_mask_0": (512, 12, 8, 0.05, False, 0.0),
    "vit_b": (512, 24, 8, 0.1, True, 0.1), "vit_b_dp005_mask_005": (512, 24, 8, 0.05, True, 0.1),
    "vit_l_dp005_mask_005": (768, 24, 8, 0.05, True, 0.1), "vit_h": (1024, 48, 8, 0.1, True, 0.0),
}


@pytest.mark.parametrize("name", sorted(VIT_UPSTREAM))
def test_vit_hyperparameters(name):
    embed_dim, depth, heads, dpr, ckpt, mask_ratio = VIT_UPSTREAM[name]
    model = meta_model(name)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (embed_dim, depth, heads)
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(dpr)
    assert model.blocks[0].drop_path.drop_prob == 0.0
    assert model.num_patches == 144 and model.blocks[0].mlp.fc1.out_features == 4 * embed_dim
    assert model.gradient_checkpointing is ckpt
    assert meta_model(name, gradient_checkpointing=False).gradient_checkpointing is False
    assert model.mask_ratio == mask_ratio


def test_cnn_layouts():
    layers = {"r18": [2, 2, 2, 2], "r34": [3, 4, 6, 3], "r50": [3, 4, 14, 3], "r100": [3, 13, 30, 3],
              "r200": [6, 26, 60, 6], "ir_se50": [3, 4, 14, 3], "LResNet50E_IR": [3, 4, 14, 3]}
    for name, blocks in layers.items():
        model = meta_model(name)
        assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == blocks, name
    se = meta_model("ir_se50")
    assert all(b.se is not None and b.se.fc1.out_channels == b.bn3.num_features // 16
               for stage in (se.layer1, se.layer2, se.layer3, se.layer4) for b in stage)
    assert sum(p.numel() for p in se.parameters()) == 43_590_848 + 222_720
    large = meta_model("mbf_large")
    assert large.layers[0].layers[0].out_channels == 256 and len(large.layers[3].layers) == 8


def test_kwargs_dropout_and_checkpointing_rules():
    assert meta_model("r50").dropout.p == 0.0
    assert meta_model("r50", dropout=0.2).dropout.p == 0.2
    assert meta_model("LResNet50E_IR").fc[1].p == 0.5
    assert meta_model("LResNet50E_IR", dropout=0.0).fc[1].p == 0.0
    assert meta_model("mbf", dropout=0.0) is not None
    with pytest.raises(ConfigError, match="dropout"):
        meta_model("mbf", dropout=0.1)
    with pytest.raises(ConfigError, match="dropout"):
        meta_model("vit_t", dropout=0.1)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        meta_model("mbf", gradient_checkpointing=True)
    assert meta_model("r18").gradient_checkpointing is False
    assert meta_model("r18", gradient_checkpointing=True).gradient_checkpointing is True
    assert meta_model("LResNet50E_IR", gradient_checkpointing=True).gradient_checkpointing is True


# ---------------------------------------------------------------- state_dict compatibility

@pytest.mark.parametrize("spec_name", sorted(SPEC_FILES))
def test_state_dict_matches_original(spec_dir, spec_name):
    rows = parse_spec(spec_dir / f"state_dict_{spec_name}.txt")
    model = meta_model(SPEC_FILES[spec_name])
    state = model.state_dict()
    assert list(state) == [r["key"] for r in rows]
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    for r in rows:
        assert tuple(state[r["key"]].shape) == r["shape"], r["key"]
        assert state[r["key"]].dtype == r["dtype"], r["key"]
        assert (r["key"] in params) == (r["kind"] == "param"), r["key"]
        assert (r["key"] in buffers) == (r["kind"] == "buffer"), r["key"]
        if r["kind"] == "param":
            assert params[r["key"]].requires_grad is r["requires_grad"], r["key"]
    original = {r["key"]: torch.empty(r["shape"], dtype=r["dtype"], device="meta") for r in rows}
    model.load_state_dict(original, strict=True)


def test_strict_load_of_spec_shaped_weights_into_real_models(spec_dir):
    for spec_name in ("mbf", "vit_t"):  # iresnet18: test_saved_state_dict_reloads_strict_with_same_embedding
        rows = parse_spec(spec_dir / f"state_dict_{spec_name}.txt")
        model = get_model(SPEC_FILES[spec_name])
        original = {r["key"]: torch.ones(r["shape"], dtype=r["dtype"]) for r in rows}
        model.load_state_dict(original, strict=True)
        assert all(bool((t == 1).all()) for t in model.state_dict().values())


def test_parameter_counts_match_models_md():
    counts = {"r18": (24_025_600, 24_025_088), "r50": (43_590_848, 43_590_336), "r100": (65_156_160, 65_155_648),
              "mbf": (2_059_520, 2_059_520), "vit_t": (19_137_792, 19_137_792),
              "LResNet50E_IR": (43_590_848, 43_590_848)}
    for name, (total, trainable) in counts.items():
        model = meta_model(name)
        assert sum(p.numel() for p in model.parameters()) == total, name
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable, name


def test_saved_state_dict_reloads_strict_with_same_embedding(tmp_path):
    torch.manual_seed(0)
    model = get_model("r18")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        model.train()(x)  # moves the BN running statistics away from their initial values
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    fresh = get_model("r18")
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", map_location="cpu"), strict=True)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fresh.eval()(x))
    assert fresh.features.weight.requires_grad is False


# ---------------------------------------------------------------- forward numerics (eval mode)

def _bn(sd, prefix, x, eps=1e-5):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"],
                        sd[prefix + ".weight"], sd[prefix + ".bias"], False, 0.0, eps)


def reference_iresnet(sd, x, prelu: str, head: str):
    """models.md's iResNet / LResNet computation, written against the state_dict keys."""
    x = F.prelu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], padding=1)), sd[prelu + ".weight"])
    for stage in range(1, 5):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in sd:
            p, stride = f"layer{stage}.{i}.", 2 if i == 0 else 1
            out = F.conv2d(_bn(sd, p + "bn1", x), sd[p + "conv1.weight"], padding=1)
            out = F.prelu(_bn(sd, p + "bn2", out), sd[p + prelu + ".weight"])
            out = _bn(sd, p + "bn3", F.conv2d(out, sd[p + "conv2.weight"], stride=stride, padding=1))
            if p + "downsample.0.weight" in sd:
                x = _bn(sd, p + "downsample.1", F.conv2d(x, sd[p + "downsample.0.weight"], stride=stride))
            x = out + x
            i += 1
    if head == "features":
        x = torch.flatten(_bn(sd, "bn2", x), 1)
        return _bn(sd, "features", F.linear(x, sd["fc.weight"], sd["fc.bias"]))
    x = torch.flatten(_bn(sd, "fc.0", x), 1)
    return _bn(sd, "fc.4", F.linear(x, sd["fc.3.weight"], sd["fc.3.bias"]))


def test_iresnet_forward_equals_reference():
    torch.manual_seed(0)
    model = get_model("r18")
    randomize_norms(model)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = reference_iresnet(model.state_dict(), x, prelu="prelu", head="features")
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-4)


def test_lresnet_forward_equals_reference():
    torch.manual_seed(0)
    model = LResNet([1, 2, 1, 1], num_features=64).eval()
    randomize_norms(model)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = reference_iresnet(model.state_dict(), x, prelu="prelu1", head="fc")
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def reference_mbf(sd, x):
    def conv_block(x, p, stride=1, padding=0, groups=1, act=True):
        x = F.conv2d(x, sd[p + "layers.0.weight"], stride=stride, padding=padding, groups=groups)
        x = _bn(sd, p + "layers.1", x)
        return F.prelu(x, sd[p + "layers.2.weight"]) if act else x

    def depthwise(x, p, stride, residual):
        groups = sd[p + "layers.0.layers.0.weight"].shape[0]
        y = conv_block(x, p + "layers.0.")
        y = conv_block(y, p + "layers.1.", stride, 1, groups)
        y = conv_block(y, p + "layers.2.", act=False)
        return x + y if residual else y

    x = conv_block(x, "layers.0.", 2, 1)
    x = conv_block(x, "layers.1.", 1, 1, groups=64)
    for n in (2, 4, 6):
        x = depthwise(x, f"layers.{n}.", 2, False)
        j = 0
        while f"layers.{n + 1}.layers.{j}.layers.0.layers.0.weight" in sd:
            x = depthwise(x, f"layers.{n + 1}.layers.{j}.", 1, True)
            j += 1
    x = conv_block(x, "conv_sep.")
    x = conv_block(x, "features.layers.0.", groups=512, act=False).flatten(1)
    return _bn(sd, "features.layers.3", F.linear(x, sd["features.layers.2.weight"]))


def test_mbf_forward_equals_reference():
    torch.manual_seed(0)
    model = get_model("mbf").eval()
    randomize_norms(model)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_mbf(model.state_dict(), x), rtol=1e-4, atol=1e-4)


def reference_vit(sd, x, depth, heads):
    dim = sd["pos_embed"].shape[-1]
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = x + sd["pos_embed"]
    b, n, _ = x.shape
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim)
        x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        h = F.linear(F.relu6(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], 1e-5).reshape(b, -1)
    x = _bn(sd, "feature.1", F.linear(x, sd["feature.0.weight"]), eps=2e-5)
    return _bn(sd, "feature.3", F.linear(x, sd["feature.2.weight"]), eps=2e-5)


def test_vit_forward_equals_reference():
    torch.manual_seed(0)
    model = VisionTransformer(embed_dim=64, depth=2, num_heads=4, num_classes=32).eval()
    randomize_norms(model)
    with torch.no_grad():
        for prm in model.parameters():  # LayerNorm/bias values away from 1/0
            prm.add_(torch.randn_like(prm) * 0.02)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = reference_vit(model.state_dict(), x, depth=2, heads=4)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="112x112"):
        model(torch.randn(1, 3, 96, 112))


def test_vit_training_masks_tokens_and_fills_mask_token():
    torch.manual_seed(0)
    model = VisionTransformer(embed_dim=32, depth=1, num_heads=4, num_classes=16, mask_ratio=0.1).train()
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o.shape[1]))
    feats = model.forward_features(torch.randn(2, 3, 112, 112)).reshape(2, 144, 32)
    assert seen["tokens"] == int(144 * 0.9)
    filled = (feats == model.mask_token.reshape(1, 1, 32)).all(-1).sum(1)
    assert filled.tolist() == [144 - 129, 144 - 129]


def test_initialisation_schemes():
    torch.manual_seed(0)
    r18 = get_model("r18")
    assert 0.09 < r18.layer2[0].conv1.weight.std().item() < 0.11  # Normal(0, 0.1), not Kaiming
    assert torch.equal(r18.features.weight, torch.ones(512))
    lres = LResNet([1, 1, 1, 1])
    bound = (6 / (512 * 9 + 512 * 9)) ** 0.5  # Xavier-uniform
    w = lres.layer4[0].conv2.weight
    assert 0.9 * bound < w.abs().max().item() <= bound * (1 + 1e-6)
    assert torch.equal(lres.fc[3].bias, torch.zeros(512)) and lres.fc[4].weight.requires_grad


# ---------------------------------------------------------------- fp16 (autocast) regions

def _record_dtypes(model, names_out=(), names_in=()):
    seen, modules = {}, dict(model.named_modules())
    for n in names_out:
        modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.dtype))
    for n in names_in:
        modules[n].register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n + "<in", i[0].dtype))
    return seen


FP16_CASES = {
    "iresnet": (lambda fp16: IResNet([1, 1, 1, 1], fp16=fp16, num_features=64), ["layer4", "bn2"], ["fc"]),
    "lresnet": (lambda fp16: LResNet([1, 1, 1, 1], fp16=fp16, num_features=64), ["layer4", "fc.0"], ["fc.3"]),
    "mbf": (lambda fp16: MobileFaceNet(fp16=fp16, num_features=64), ["layers.7"], ["conv_sep"]),
    "vit": (lambda fp16: VisionTransformer(embed_dim=32, depth=1, num_heads=4, num_classes=64, fp16=fp16),
            ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1"], ["feature.0", "blocks.0.attn.proj"]),
}


@pytest.mark.parametrize("family", sorted(FP16_CASES))
def test_fp16_autocasts_upstream_regions_on_cpu_as_bfloat16(family):
    build, inside, outside = FP16_CASES[family]
    torch.manual_seed(0)
    model = build(True).eval()
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if hasattr(m, "fp16"):
            m.fp16 = False
    seen = _record_dtypes(model, inside, outside)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y = model(x)
        assert y.dtype == torch.float32
        for n in inside:
            assert seen[n] == torch.bfloat16, n
        for n in outside:
            assert seen[n + "<in"] == torch.float32, n
        assert F.cosine_similarity(y, reference(x)).min() > 0.98
        seen32 = _record_dtypes(reference, inside)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fp16=False switches an outer autocast off, like upstream
            reference(x)
    assert all(dtype == torch.float32 for dtype in seen32.values()), seen32


def test_vit_fp16_switch_reaches_every_block():
    model = VisionTransformer(embed_dim=32, depth=2, num_heads=4, num_classes=16)
    model.fp16, model.amp_dtype = True, torch.float16
    assert all(m.fp16 and m.amp_dtype == torch.float16 for m in model.modules() if hasattr(m, "amp_dtype"))


def test_amp_dtype_accepts_names():
    assert meta_model("r18", amp_dtype="float16").amp_dtype == torch.float16
    assert meta_model("vit_t", amp_dtype="bfloat16").amp_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="amp_dtype"):
        meta_model("r18", amp_dtype="fp8")


def test_amp_dtype_kwarg_is_used():
    model = IResNet([1, 1, 1, 1], fp16=True, num_features=16, amp_dtype=torch.float16)
    seen = _record_dtypes(model, ["layer1"])
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 112, 112))
    assert seen["layer1"] == torch.float16


# ---------------------------------------------------------------- gradient checkpointing

def _train_step(model, x, seed=0):
    torch.manual_seed(seed)
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


CKPT_CASES = {
    "r18": lambda: get_model("r18"),
    "vit": lambda: VisionTransformer(embed_dim=32, depth=3, num_heads=4, num_classes=32,
                                     drop_path_rate=0.5, mask_ratio=0.3),
}


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_checkpointing_gives_same_loss_gradients_and_bn_stats(case):
    torch.manual_seed(0)
    plain = CKPT_CASES[case]()
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing = True
    x = torch.randn(2, 3, 112, 112)
    loss_a, grads_a = _train_step(plain, x)
    loss_b, grads_b = _train_step(ckpt, x)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == sum(p.requires_grad for p in plain.parameters())
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5, msg=name)
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)  # BN statistics updated once
    counters = [v for k, v in ckpt.state_dict().items() if k.endswith("num_batches_tracked")]
    assert all(int(c) == 1 for c in counters)


@pytest.mark.parametrize("build", [
    lambda: IResNet([1, 1, 1, 1], num_features=16, gradient_checkpointing=True),
    lambda: IResNet([1, 1, 1, 1], num_features=16, gradient_checkpointing=True, se_reduction=16),
    lambda: LResNet([1, 1, 1, 1], num_features=16, gradient_checkpointing=True),
], ids=["iresnet", "ir_se", "lresnet"])
def test_checkpointing_runs_only_in_training_with_grad(monkeypatch, build):
    calls = []
    real = iresnet_module.checkpoint
    monkeypatch.setattr(iresnet_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = build()
    model.checkpoint_blocks = 4  # every block (the default plan for [1, 1, 1, 1] is the first one only)
    plain = copy.deepcopy(model)
    plain.gradient_checkpointing = False
    x = torch.randn(2, 3, 112, 112)
    torch.manual_seed(1)  # LResNet's dropout
    out = model.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out, plain.train()(x), rtol=0, atol=1e-6)
    assert len(calls) == 5  # the stem and four blocks
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
    calls.clear()
    with torch.no_grad():
        model.eval()(x)
        model.train()(x)
    model.eval()(x)
    assert calls == []


def test_checkpoint_plan_keeps_only_a_tail_that_fits_under_the_first_block():
    for name in ("r18", "r50", "r100", "LResNet50E_IR"):
        model = meta_model(name)
        blocks = [b for stage in model.stages() for b in stage]
        sizes, size = [], 112
        for block in blocks:
            sizes.append(iresnet_module.block_activation(block, size))
            size //= block.conv2.stride[0]
        k = model.checkpoint_blocks
        assert 1 <= k < len(blocks), name
        assert sum(sizes[k:]) <= sizes[0] < sum(sizes[k - 1:]), name
    first = meta_model("r50").layer1[0]  # input 64x112x112, stride 2 on conv2, with downsample
    assert iresnet_module.block_activation(first, 112) == 5 * 64 * 112 * 112 + 2 * 64 * 56 * 56


# ---------------------------------------------------------------- MAC counter (bench/flops.py)

def test_count_macs_matches_models_md():
    assert count_macs(meta_model("r50")) == 6_309_330_944
    assert count_macs(meta_model("r18")) == 2_609_954_816
    mbf = get_model("mbf").train()
    assert count_macs(mbf) == 437_520_896
    assert mbf.training  # mode restored
    assert count_macs(meta_model("vit_t")) == 1_377_480_704 + 127_401_984


# ---------------------------------------------------------------- bench/bench_memory.py

def test_bench_memory_child_and_results_section(tmp_path):
    from bench import bench_memory

    result = bench_memory.child("r18", batch_size=2, steps=1, checkpointing=True, threads=1)
    assert (result["checkpoint_blocks"], result["blocks"]) == (2, 8)
    assert result["peak_mib"] >= result["baseline_mib"] > 0 and result["step_s"] > 0 and result["cpu_s"] > 0
    path = tmp_path / "RESULTS_memory.md"
    bench_memory.write_section("r18, batch 2", "first", path)
    bench_memory.write_section("r50, batch 64", "other", path)
    bench_memory.write_section("r18, batch 2", "second", path)
    text = path.read_text()
    assert text.count("## r18, batch 2") == 1 and "second" in text and "first" not in text and "other" in text


def test_torch_older_than_supported_is_a_one_line_error():
    from utils.errors import EnvironmentVersionError, require_torch
    require_torch()                      # the installed torch is supported
    require_torch("2.4.0+cu121")
    require_torch("2.10.0a0")
    with pytest.raises(EnvironmentVersionError, match=r"torch 2\.1\.2\+cu121 is older than 2\.4.*pip install"):
        require_torch("2.1.2+cu121")


@pytest.mark.parametrize("setting, expected", [(None, True), (False, False), (True, True)])
def test_config_gradient_checkpointing_none_default_false_off(setting, expected):
    """vit_b checkpoints by default: None keeps that, False really turns it off (it used to mean the default)."""
    from easydict import EasyDict
    from utils.utils_distributed import DistInfo
    from training import build_backbone
    cfg = EasyDict(network="vit_b", fp16=False, embedding_size=512, gradient_checkpointing=setting,
                   channels_last=False, compile=False)
    with torch.device("meta"):
        _, module = build_backbone(cfg, DistInfo(0, 0, 1, torch.device("meta"), None))
    assert module.gradient_checkpointing is expected
