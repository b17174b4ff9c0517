"""UTNet's loss terms: a registry of plugins, each a `LossTerm` with a pydantic `Config`.

    import losses
    loss_set = losses.LossSet.from_config({"joint_3d": {"weight": 0.05, "reduction": "sum"}})
    total, logs = loss_set(pred, batch)   # logs: loss/<name> (weighted), loss_raw/<name>

This package depends on torch and pydantic only (never on `utnet`), so plugins can be written
and tested without the framework. Third-party terms register with `@losses.register_loss(name)`
in a module that is either listed in the experiment's `loss_plugins` or named by an entry point
of the group `utnet.losses`.
"""
from losses.base import LossConfig, LossInputError, LossTerm, reduce_error
from losses.loss_set import LossSet
from losses.registry import (
    ENTRY_POINT_GROUP,
    LossConfigError,
    LossRegistrationError,
    broken_plugins,
    check_loss_config,
    plugin_origin,
    register_loss,
    registered_losses,
    resolve_loss_config,
)

# Built-in terms register themselves on import.
from losses import aux, joint_3d, keypoint_2d, keypoint_heatmap, mano_prior, refine_offset, vertex_3d  # noqa: E402,F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP", "LossConfig", "LossConfigError", "LossInputError", "LossRegistrationError",
    "LossSet", "LossTerm", "broken_plugins", "check_loss_config", "plugin_origin", "reduce_error",
    "register_loss", "registered_losses", "resolve_loss_config",
]
