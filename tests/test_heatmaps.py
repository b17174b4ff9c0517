"""The keypoint heatmap decoder (model.keypoint_heatmaps) and its loss term (keypoint_heatmap)."""
from __future__ import annotations

import math

import pytest
import torch

import losses
from losses.keypoint_heatmap import gaussian_heatmaps
from losses.units import crop_units_to_grid, grid_to_crop_units
from utnet.config import ConfigError, load_config
from utnet.model import build_model
from utnet.model.heatmaps import UPSAMPLING

from test_model import _config, mano_batch


def test_gaussian_targets_are_centred_on_the_keypoint_in_heatmap_cells():
    """A keypoint at the centre of cell (row 5, column 2) of a 24 x 32 heatmap: value 1 there and
    exp(-d^2 / (2 sigma^2)) at the cells d away; the crop's corners are the heatmap's corners."""
    H, W, sigma = 24, 32, 1.5
    keypoint = torch.tensor([(2 + 0.5) / W - 0.5, (5 + 0.5) / H - 0.5])
    corners = torch.tensor([[-0.5, -0.5], [0.5, 0.5]])
    target = gaussian_heatmaps(torch.cat([keypoint[None], corners])[None], H, W, sigma)
    assert target.shape == (1, 3, H, W)
    centred = target[0, 0]
    assert centred.argmax().item() == 5 * W + 2
    assert centred[5, 2].item() == pytest.approx(1.0, abs=1e-6)
    assert centred[5, 4].item() == pytest.approx(math.exp(-4 / (2 * sigma ** 2)), rel=1e-5)
    assert centred[8, 6].item() == pytest.approx(math.exp(-25 / (2 * sigma ** 2)), rel=1e-5)
    # the crop's top-left corner is half a cell from the centre of cell (0, 0) along each axis
    assert target[0, 1, 0, 0].item() == pytest.approx(math.exp(-0.5 / (2 * sigma ** 2)), rel=1e-5)
    assert target[0, 2, H - 1, W - 1].item() == pytest.approx(math.exp(-0.5 / (2 * sigma ** 2)), rel=1e-5)


def test_heatmap_loss_is_each_joints_summed_squared_error_averaged_over_the_valid_joints():
    torch.manual_seed(0)
    keypoints = torch.rand(2, 21, 2) - 0.5
    target = gaussian_heatmaps(keypoints, 8, 6, 1.5)
    heatmaps = target + 0.1 * torch.randn_like(target)
    valid = torch.ones(2, 21)
    batch = {"keypoints_2d": keypoints, "keypoints_2d_valid": valid}
    term = losses.LossSet.from_config({"keypoint_heatmap": {"weight": 3.0, "reduction": "mean", "sigma": 1.5}})
    total, _ = term({"keypoint_heatmaps": heatmaps}, batch)
    per_joint = (heatmaps - target).square().sum(dim=(2, 3))  # [2, 21]
    torch.testing.assert_close(total, 3.0 * per_joint.mean())
    assert term({"keypoint_heatmaps": target}, batch)[0].item() == pytest.approx(0.0, abs=1e-12)
    valid[1, 4] = 0  # an invalid joint does not count, whatever its heatmap
    expected = (per_joint.sum() - per_joint[1, 4]) / 41
    torch.testing.assert_close(term({"keypoint_heatmaps": heatmaps}, batch)[0], 3.0 * expected)
    summed = losses.LossSet.from_config({"keypoint_heatmap": {"weight": 1.0, "reduction": "sum"}})
    torch.testing.assert_close(summed({"keypoint_heatmaps": heatmaps}, batch)[0], per_joint.sum() - per_joint[1, 4])
    with pytest.raises(ValueError, match="keypoint_heatmaps"):
        term({"keypoint_heatmaps": heatmaps[:, :20]}, batch)


def test_heatmap_decoder_tiles_the_token_grid_and_trains_the_backbone_only_through_its_term():
    """model.keypoint_heatmaps: pred['keypoint_heatmaps'] is [B,21,4Hp,4Wp]; the keypoint_heatmap term
    gives every backbone parameter a gradient and the MANO head none; the decoder is in the head's
    parameter group; without the flag the model has no decoder and the config refuses the term."""
    cfg = _config("data.image_size=[64, 48]", "model.backbone.stem=conv", "model.keypoint_heatmaps=true",
                  "model.heatmap_channels=16")
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = mano_batch(model, 2)
    pred = model(batch)
    Hp, Wp = model.backbone.grid_size
    assert pred["keypoint_heatmaps"].shape == (2, 21, UPSAMPLING * Hp, UPSAMPLING * Wp) == (2, 21, 16, 12)
    convs = [m for m in model.keypoint_heatmaps.decoder if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d))]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(192, 16), (16, 16), (16, 21)]  # heatmap_channels
    head_group = {id(p) for p in model.param_groups()["head"]}
    assert {id(p) for p in model.keypoint_heatmaps.parameters()} <= head_group
    loss_set = losses.LossSet.from_config({"keypoint_heatmap": {"weight": 1.0}})
    total, _ = loss_set(pred, batch)
    total.backward()
    assert all(p.grad is not None and (p.grad != 0).any() for p in model.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.head.parameters())
    cfg.model.keypoint_heatmaps = False
    plain = build_model(cfg)
    assert plain.keypoint_heatmaps is None and "keypoint_heatmaps" not in plain(batch)
    with pytest.raises(ConfigError, match=r"loss.hm: supervises pred\['keypoint_heatmaps'\], which only a model with"):
        load_config(None, ["model.keypoint_heatmaps=false", "loss.hm={type: keypoint_heatmap, weight: 0}"])


def test_heatmap_decoder_centres_a_tokens_response_on_that_tokens_crop_area():
    """Sub-cell alignment: with every decoder weight 1 and biases 0, a single token's feature spreads
    symmetrically, so its heatmap response has its centroid at the token's centre, in heatmap cells
    ((q + 0.5) * UPSAMPLING, (p + 0.5) * UPSAMPLING) for token row p, column q: the same place in the
    crop as the targets' cells (gaussian_heatmaps). A decoder off by one cell or half a cell fails."""
    from utnet.model.heatmaps import KeypointHeatmapHead

    head = KeypointHeatmapHead(embed_dim=8, channels=4)
    with torch.no_grad():
        for module in head.decoder:
            if isinstance(module, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
                module.weight.fill_(1.0)
                module.bias.zero_()
    Hp, Wp = 6, 8
    for p, q in [(2, 3), (3, 5), (1, 1)]:  # interior tokens: the footprint is not cut by the border
        fmap = torch.zeros(1, 8, Hp, Wp, dtype=torch.float64)
        fmap[0, :, p, q] = 1.0
        heat = head.double()(fmap)[0, 0]
        assert heat.shape == (UPSAMPLING * Hp, UPSAMPLING * Wp) and (heat >= 0).all()
        ys = torch.arange(heat.shape[0], dtype=torch.float64) + 0.5  # cell centres, in cells
        xs = torch.arange(heat.shape[1], dtype=torch.float64) + 0.5
        centroid = torch.stack([(heat.sum(0) * xs).sum(), (heat.sum(1) * ys).sum()]) / heat.sum()
        token_centre_crop = grid_to_crop_units(torch.tensor([q + 0.5, p + 0.5], dtype=torch.float64), Hp, Wp)
        expected = crop_units_to_grid(token_centre_crop, *heat.shape)  # where the targets put that point
        assert expected.tolist() == [(q + 0.5) * UPSAMPLING, (p + 0.5) * UPSAMPLING]
        torch.testing.assert_close(centroid, expected, rtol=0, atol=1e-9)


def test_heatmap_decoder_learns_where_the_joints_are():
    """Trained on the heatmap term alone for 60 steps on 4 fixed samples, the decoder's per-joint argmax
    moves onto the ground truth: the mean distance falls to under half its first value."""
    cfg = _config("data.image_size=[64, 48]", "model.backbone.stem=conv", "model.keypoint_heatmaps=true",
                  "model.heatmap_channels=32")
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = mano_batch(model, 4)
    loss_set = losses.LossSet.from_config({"keypoint_heatmap": {"weight": 1.0}})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def argmax_error_cells():
        with torch.no_grad():
            heatmaps = model(batch)["keypoint_heatmaps"]
        B, K, H, W = heatmaps.shape
        flat = heatmaps.flatten(2).argmax(-1)
        peaks = torch.stack([flat % W + 0.5, flat // W + 0.5], -1)
        truth = crop_units_to_grid(batch["keypoints_2d"], H, W)
        return (peaks - truth).norm(dim=-1).mean().item()

    before = argmax_error_cells()
    for _ in range(60):
        total, _ = loss_set(model(batch), batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    after = argmax_error_cells()
    assert after < 0.5 * before, (before, after)
