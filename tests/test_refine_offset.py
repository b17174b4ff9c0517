"""`refine_offset`: the refiner's offsets (refined minus coarse vertices), by hand and through a model."""
import pytest
import torch

import losses
from test_losses import REDUCTIONS, leaves, make_inputs, term


def test_refine_offset_by_hand_for_each_reduction_and_loss_type():
    pred, batch = make_inputs()
    d = pred["verts_3d"] - pred["coarse"]["verts_3d"]
    for loss_type, per_element in (("l1", d.abs()), ("mse", d.square())):
        for reduction, expected in (("sum", per_element.sum()), ("batch_mean", per_element.sum() / d.shape[0]),
                                    ("mean", per_element.mean())):
            value, raw, _ = term("refine_offset", weight=0.25, reduction=reduction, loss_type=loss_type)(pred, batch)
            assert raw.item() == pytest.approx(expected.item(), rel=1e-5), (loss_type, reduction)
            assert value.item() == pytest.approx(0.25 * expected.item(), rel=1e-5)
    assert term("refine_offset").config.loss_type == "mse"


def test_refine_offset_is_zero_without_offsets_and_pulls_both_meshes_together():
    pred, batch = make_inputs()
    same = dict(pred, verts_3d=pred["coarse"]["verts_3d"].clone())
    assert term("refine_offset")(same, batch)[1].item() == 0.0
    for reduction in REDUCTIONS:
        inputs = leaves(pred)
        term("refine_offset", reduction=reduction)(inputs, batch)[0].backward()
        d = (pred["verts_3d"] - pred["coarse"]["verts_3d"])
        # descending the gradient moves the refined mesh towards the coarse one and vice versa
        assert torch.equal(torch.sign(inputs["verts_3d"].grad), torch.sign(d))
        assert torch.equal(torch.sign(inputs["coarse"]["verts_3d"].grad), -torch.sign(d))


def test_refine_offset_missing_coarse_mesh_names_the_term_and_key():
    pred, batch = make_inputs()
    pred["coarse"].pop("verts_3d")
    with pytest.raises(losses.LossInputError, match=r"refine_offset.*pred\['coarse'\].*verts_3d"):
        term("refine_offset")(pred, batch)


def test_refine_offset_is_zero_on_the_untrained_model_and_trains_the_refiner():
    """The refiner starts as the identity (offsets 0); the term reaches the refiner's parameters."""
    from utnet.config import load_config
    from utnet.model import build_model

    cfg = load_config(None, ["model.backbone.name=vit_tiny_patch16_224", "data.image_size=[64,48]"])
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = {"rgb": torch.randn(2, 3, 64, 48), "depth": torch.rand(2, 1, 64, 48)}
    pred = model(batch)
    value = term("refine_offset")(pred, {})[0]
    assert value.item() == 0.0
    with torch.no_grad():
        model.refiner.out.bias.fill_(0.1)  # 1 mm offsets everywhere
    value = term("refine_offset", loss_type="l1")(model(batch), {})[0]
    assert value.item() == pytest.approx(1.0, rel=1e-4)
    value.backward()
    assert model.refiner.out.bias.grad.abs().sum() > 0
