"""MANO for UTNet: the layer (smplx underneath), chumpy-free loading, the MANO stand-in, the pose prior.

    from utnet.mano import ManoLayer, sample_natural_hand_pose
    layer = ManoLayer()                      # the stand-in; ManoLayer("MANO_RIGHT.pkl") for MANO
    out = layer(global_orient, hand_pose, betas)   # .vertices [B,778,3], .joints [B,21,3], metres
"""
from utnet.mano.layer import ManoLayer, ManoOutput
from utnet.mano.loading import MANOModel, convert_mano_file, load_mano_model
from utnet.mano.pose_prior import JOINT_LIMITS, named_hand_pose, sample_natural_hand_pose
from utnet.mano.standin import build_standin, standin_path

__all__ = [
    "ManoLayer", "ManoOutput", "MANOModel", "load_mano_model", "convert_mano_file",
    "sample_natural_hand_pose", "named_hand_pose", "JOINT_LIMITS", "build_standin", "standin_path",
]
