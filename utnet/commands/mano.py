"""`utnet mano info [PATH]` and `utnet mano convert IN OUT`."""
from __future__ import annotations

import argparse

HELP = "MANO model files: show what is loaded (info) or write a chumpy-free copy (convert)"

_SOURCE_NOTE = {
    "official": "the official MANO file, read without chumpy",
    "cleaned": "a MANO file of plain numpy arrays",
    "stand-in": "the procedurally built MANO stand-in, NOT MANO: numbers measured on it are not MANO numbers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from utnet.commands.common import add_config_arguments

    sub = parser.add_subparsers(dest="mano_action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print what a MANO file holds (default: the config's mano.model_path)",
                          description="Print the source (official/cleaned/stand-in), vertex/face/joint counts and "
                                      "zero-pose sizes of a MANO model.")
    info.add_argument("path", nargs="?", default=None,
                      help="MANO_RIGHT.pkl (official or cleaned); default: mano.model_path of the config, "
                           "and the MANO stand-in when that is null")
    add_config_arguments(info)
    convert = sub.add_parser("convert", help="write a chumpy-free copy of a MANO file that plain smplx.MANO loads",
                             description="Read an official (chumpy) or cleaned MANO_RIGHT.pkl without chumpy and "
                                         "write its arrays as a plain numpy pickle.")
    convert.add_argument("input", help="MANO_RIGHT.pkl to read")
    convert.add_argument("output", help="file to write (or a directory: the input's file name is kept)")


def run(args: argparse.Namespace) -> int:
    if args.mano_action == "convert":
        return _convert(args)
    return _info(args)


def _convert(args) -> int:
    from utnet.mano import convert_mano_file, load_mano_model

    source = load_mano_model(args.input).source
    out = convert_mano_file(args.input, args.output)
    print(f"wrote {out} ({source} -> plain numpy pickle; smplx.MANO(model_path=..., use_pca=False, "
          f"flat_hand_mean=True) loads it)")
    return 0


def _info(args) -> int:
    from utnet.commands.common import config_from_args
    from utnet.mano import ManoLayer

    cfg = config_from_args(args)
    path = args.path if args.path is not None else cfg.mano.model_path
    layer = ManoLayer(path, tip_vertex_ids=cfg.mano.tip_vertex_ids)
    sizes = layer.measurements_mm()
    rows = [
        ("source", f"{layer.source} ({_SOURCE_NOTE[layer.source]})"),
        ("file", layer.model_path),
        ("vertices", str(layer.v_template.shape[0])),
        ("faces", str(layer.faces.shape[0])),
        ("joints", f"{layer.J_regressor.shape[0]} skinned + 5 fingertip vertices "
                   f"{', '.join(map(str, layer.tip_vertex_ids))} (thumb, index, middle, ring, pinky) = 21"),
        ("shape space", f"{layer.shapedirs_flat.shape[0]} betas"),
        ("hand length", f"{sizes['hand_length_mm']:.1f} mm (wrist joint to middle fingertip, zero pose and betas)"),
        ("palm width", f"{sizes['palm_width_mm']:.1f} mm (across the knuckles)"),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        print(f"{key + ':':<{width}} {value}")
    return 0
