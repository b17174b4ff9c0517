"""Backbone checkpoints of ViTPose (mmpose) and HaMeR: a reference ViT written here from the original's
definition, saved in each file layout, gives the same features through model.backbone.checkpoint; a
checkpoint that does not fit is a one-line error (exit 2) unless model.backbone.allow_partial."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import yaml
from torch import nn

from conftest import run_cli
from test_engine import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)
from utnet.config import load_config
from utnet.errors import UserError
from utnet.model.backbone import Backbone, build_backbone
from utnet.model.weights import checkpoint_grid

IMAGE_SIZE = (64, 48)
DIM, DEPTH, HEADS, MLP_RATIO = 64, 6, 2, 3  # timm's test_vit


# ------------------------------------------------ the original ViTPose / HaMeR ViT, written from its definition
class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):  # pre-norm residual blocks
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, dim, patch=16, ratio=1):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch // ratio, padding=4 + 2 * (ratio // 2 - 1))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ReferenceViT(nn.Module):
    """ViTPose's ViT: no class token; pos_embed's slot 0 is added to every patch token; last_norm."""

    def __init__(self, grid=(4, 3)):
        super().__init__()
        self.patch_embed = _PatchEmbed(DIM)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, DIM))
        self.blocks = nn.ModuleList(_Block(DIM, HEADS, MLP_RATIO) for _ in range(DEPTH))
        self.last_norm = nn.LayerNorm(DIM, eps=1e-6)
        with torch.no_grad():  # every tensor random (norms too), so a mapping mistake shows in the features
            for p in self.parameters():
                p.normal_(0.0, 0.5 if p.dim() == 1 else 1.0 / math.sqrt(p[0].numel()) if p.dim() > 1 else 1.0)
            self.pos_embed.normal_(0.0, 0.5)

    def forward(self, x):
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        return self.last_norm(x)


def _head(prefix: str, *shapes) -> dict:
    return {f"{prefix}.{i}.weight": torch.randn(*s) for i, s in enumerate(shapes)}


def _layouts(vit: ReferenceViT) -> dict:
    """The reference ViT's state in each file layout: (state, number of other tensors)."""
    backbone = {f"backbone.{k}": v.detach().clone() for k, v in vit.state_dict().items()}
    keypoint_head = {**_head("keypoint_head.deconv_layers", (DIM, 32, 4, 4), (32,)),
                     **_head("keypoint_head.final_layer", (17, 32, 1, 1))}
    full_hamer = {**backbone, **_head("mano_head.decpose", (96, 1024)), **_head("mano_head.transformer", (8, 8)),
                  **_head("discriminator.D_conv1", (32, 9, 1, 1)), "mano.shapedirs": torch.randn(778, 3, 10)}
    return {
        "mmpose": ({"meta": {"epoch": 210}, "state_dict": {**backbone, **keypoint_head}}, len(keypoint_head)),
        "hamer_vitpose_backbone": ({"state_dict": backbone}, 0),
        "hamer_full": ({"epoch": 3, "global_step": 1000, "state_dict": full_hamer}, len(full_hamer) - len(backbone)),
    }


def _config(*overrides):
    return load_config(None, ["data.image_size=[64, 48]", "model.backbone.name=test_vit",
                              "model.backbone.stem=patch", "model.backbone.stem_depth=1", *overrides])


@pytest.mark.parametrize("layout", ["mmpose", "hamer_vitpose_backbone", "hamer_full"])
@pytest.mark.parametrize("fusion", ["early", "late"])
def test_original_vit_checkpoints_give_the_reference_features(tmp_path, layout, fusion):
    torch.manual_seed(0)
    vit = ReferenceViT().eval()
    state, others = _layouts(vit)[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(state, path)
    logs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every backbone tensor loads: no missing/unexpected warning
        backbone = build_backbone(_config(f"model.backbone.checkpoint={path}", f"model.backbone.fusion={fusion}"
                                          ).model.backbone, IMAGE_SIZE, log=logs.append).eval()
    assert backbone.layout == "vitpose" and backbone.vit.cls_token is None
    assert backbone.vit.patch_embed.proj.padding == (2, 2)
    expected_format = "hamer" if layout == "hamer_full" else "vitpose"
    total = len(vit.state_dict())
    head = f"model.backbone.checkpoint: {path} ({expected_format} layout): loaded {total} of the backbone's {total} tensors"
    assert len(logs) == 1 and logs[0].startswith(head)
    assert logs[0][len(head):].startswith(f"; ignored {others} tensors of other modules (") if others else logs[0] == head
    torch.manual_seed(1)
    rgb = torch.randn(2, 3, *IMAGE_SIZE)
    with torch.no_grad():
        tokens, fmap = backbone(rgb, torch.zeros(2, 1, *IMAGE_SIZE))
        reference = vit(rgb)
    assert tokens.shape == reference.shape == (2, 12, DIM)
    torch.testing.assert_close(tokens, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(fmap[:, :, 2, 1], reference[:, 2 * 3 + 1], atol=1e-4, rtol=0)
    if fusion == "early":  # the depth filters start as today's: the mean of the RGB filters
        w = backbone.vit.patch_embed.proj.weight
        torch.testing.assert_close(w[:, 3], vit.patch_embed.proj.weight.mean(1))


def test_the_report_counts_the_ignored_modules(tmp_path):
    torch.manual_seed(0)
    state, _ = _layouts(ReferenceViT())["hamer_full"]
    path = tmp_path / "hamer.ckpt"
    torch.save(state, path)
    logs = []
    build_backbone(_config(f"model.backbone.checkpoint={path}").model.backbone, IMAGE_SIZE, log=logs.append)
    assert logs[0].endswith("; ignored 4 tensors of other modules (discriminator: 1, mano: 1, mano_head: 2)")


def test_the_padding_matters_and_the_named_formats_are_checked(tmp_path):
    """Without the original's 2-pixel padding (a timm-layout ViT given the same weights) the features
    differ: the padding is part of the mapping. A named vitpose format on a timm file is refused."""
    torch.manual_seed(0)
    vit = ReferenceViT().eval()
    path = tmp_path / "vitpose.pth"
    torch.save(_layouts(vit)["hamer_vitpose_backbone"][0], path)
    backbone = build_backbone(_config(f"model.backbone.checkpoint={path}").model.backbone, IMAGE_SIZE,
                              log=lambda line: None).eval()
    rgb = torch.randn(1, 3, *IMAGE_SIZE)
    backbone.vit.patch_embed.proj.padding = (0, 0)
    with torch.no_grad():
        assert (backbone(rgb, torch.zeros(1, 1, *IMAGE_SIZE))[0] - vit(rgb)).abs().max() > 1e-2

    import timm
    timm_state = timm.create_model("test_vit", pretrained=False, img_size=IMAGE_SIZE, num_classes=0).state_dict()
    timm_path = tmp_path / "timm.pth"
    torch.save(timm_state, timm_path)
    with pytest.raises(UserError, match=r"^model.backbone.checkpoint_format: 'hamer' but .* class token"):
        build_backbone(_config(f"model.backbone.checkpoint={timm_path}", "model.backbone.checkpoint_format=hamer"
                               ).model.backbone, IMAGE_SIZE)
    # a ViTPose file read as timm: nothing fits, the load stops
    with pytest.raises(UserError, match=r"^model.backbone.checkpoint: .* \(timm layout\) does not fit .* 78 of the "
                                        r"backbone's 78 tensors missing .* 77 unexpected \(first: backbone\."):
        build_backbone(_config(f"model.backbone.checkpoint={path}", "model.backbone.checkpoint_format=timm"
                               ).model.backbone, IMAGE_SIZE)
    # the auto format keeps a timm file in the timm layout (class token, no padding)
    timm_backbone = build_backbone(_config(f"model.backbone.checkpoint={timm_path}").model.backbone, IMAGE_SIZE,
                                   log=lambda line: None)
    assert timm_backbone.layout == "timm" and timm_backbone.vit.patch_embed.proj.padding == (0, 0)
    # the vitpose layout is rebuilt from the option alone (a run trained from such a file, without the file)
    assert build_backbone(_config("model.backbone.checkpoint_format=vitpose").model.backbone,
                          IMAGE_SIZE).vit.pos_embed.shape == (1, 12, DIM)


def test_the_position_embedding_of_another_grid_is_resampled_then_slot_0_added(tmp_path):
    """A 256x192 checkpoint (16x12 grid) on the 4x3 grid of 64x48 crops."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    vit = ReferenceViT(grid=(16, 12))
    path = tmp_path / "vitpose256.pth"
    torch.save(_layouts(vit)["mmpose"][0], path)
    backbone = build_backbone(_config(f"model.backbone.checkpoint={path}").model.backbone, IMAGE_SIZE,
                              log=lambda line: None)
    pos = vit.pos_embed.detach()
    expected = resample_abs_pos_embed(pos[:, 1:], [4, 3], old_size=[16, 12], num_prefix_tokens=0) + pos[:, :1]
    torch.testing.assert_close(backbone.vit.pos_embed.detach(), expected)
    assert checkpoint_grid(192, (4, 3)) == (16, 12) and checkpoint_grid(196, (4, 4)) == (14, 14)
    assert checkpoint_grid(12, (4, 3)) == (4, 3)


def test_a_checkpoint_that_does_not_fit_is_an_error_unless_partial_loads_are_allowed(tiny_data, tmp_path):  # noqa: F811
    """Through the CLI: a ViTPose file for another ViT (most tensors missing) stops `utnet train` with one
    line and exit 2 before anything is written; allow_partial loads it with a warning."""
    torch.manual_seed(0)
    state = _layouts(ReferenceViT())["mmpose"][0]
    # keep pos_embed, the patch projection, the first block and last_norm.bias: 16 of the backbone's 77 tensors load
    state["state_dict"] = {k: v for k, v in state["state_dict"].items()
                           if not k.startswith("backbone.blocks.") or k.startswith("backbone.blocks.0.")}
    del state["state_dict"]["backbone.last_norm.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    config = write_config(tmp_path, tiny_data, model={"backbone": {"name": "test_vit", "checkpoint": str(path)}})
    proc = run_cli("train", "--config", config, "--output-dir", tmp_path / "run")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert line.startswith(f"utnet train: model.backbone.checkpoint: {path} (vitpose layout) does not fit")
    assert "61 of the backbone's 77 tensors missing (first: blocks.1.norm1.weight, blocks.1.norm1.bias," in line
    assert "0 unexpected (first: none)" in line and "model.backbone.allow_partial: true" in line
    assert not (tmp_path / "run").exists()

    cfg = _config(f"model.backbone.checkpoint={path}", "model.backbone.allow_partial=true")
    with pytest.warns(UserWarning, match=r"partial load allowed: 61 of the backbone's 77 tensors missing"):
        build_backbone(cfg.model.backbone, IMAGE_SIZE, log=lambda line: None)
    with pytest.raises(Exception, match="checkpoint_format"):
        _config("model.backbone.checkpoint_format=mmpose")
    assert yaml.safe_load(run_cli("config", "--set", "model.backbone.allow_partial=true").stdout)[
        "model"]["backbone"]["allow_partial"] is True


def test_a_timm_checkpoint_still_loads_and_the_rule_counts_tensors_not_keys_of_new_modules(tmp_path):
    """A conv stem and late fusion's depth embedding are new by configuration: a timm checkpoint loads
    into them with a warning, not the partial-load error."""
    import timm
    state = {k: v.contiguous() for k, v in
             timm.create_model("test_vit", pretrained=False, img_size=IMAGE_SIZE, num_classes=0).state_dict().items()}
    path = tmp_path / "timm.pth"
    torch.save(state, path)
    backbone = Backbone("test_vit", IMAGE_SIZE, "late", stem="conv")
    with pytest.warns(UserWarning, match="patch_embed.proj.0.weight"):
        report = backbone.load_checkpoint(path)
    assert report["format"] == "timm" and report["loaded"] == report["expected"] == len(state) - 2


class _HyperParameters(dict):
    """Stands in for a config class a Lightning checkpoint pickles (HaMeR's hyper_parameters)."""


def test_a_checkpoint_pickling_other_objects_is_not_executed_but_explained(tmp_path):
    torch.manual_seed(0)
    state, _ = _layouts(ReferenceViT())["hamer_full"]
    path = tmp_path / "hamer_lightning.ckpt"
    torch.save({**state, "hyper_parameters": _HyperParameters(lr=1e-5)}, path)
    with pytest.raises(UserError, match=r"^model.backbone.checkpoint: .*hamer_lightning.ckpt holds pickled objects "
                                        r"other than tensors, which are not loaded .*\['state_dict'\]"):
        build_backbone(_config(f"model.backbone.checkpoint={path}").model.backbone, IMAGE_SIZE)
