"""Data pipeline throughput: the real train pipeline (reader + crop + augmentation + normalisation,
in-process, one worker) against decoding the same files alone (cv2.imread RGB + depth, pickle load).

Writes a small synthetic set to a temporary folder first, in synth's format (JPEG RGB, lossless depth PNG
compressed with Huffman coding), so the decoding floor is close to that of HO3D v3's files (JPEG RGB, compressed depth PNG). Prints one JSON object as its last line:
{"loader_samples_per_s", "raw_decode_samples_per_s", "ratio", ...}.
"""
from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import cv2
import torch

from utnet.config import ExperimentConfig
from utnet.data import build_dataset, write_synthetic


def raw_decode(records) -> None:
    for rec in records:
        cv2.imread(str(rec.rgb_path), cv2.IMREAD_COLOR)
        cv2.imread(str(rec.depth_path), cv2.IMREAD_UNCHANGED)
        with open(rec.meta_path, "rb") as f:
            pickle.load(f, encoding="latin1")


def pipeline(dataset) -> None:
    for i in range(len(dataset)):
        dataset[i]


def best_rate(fn, arg, n, rounds) -> float:
    """Samples per CPU-second of the fastest of `rounds` passes. CPU time of this process, not wall
    time: the machine is shared, and one worker's throughput is what the ratio is about."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn(arg)
        best = min(best, time.process_time() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="frames per sequence of the temporary set (2 sequences)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--version", choices=("v2", "v3"), default="v2",
                        help="HO3D layout of the temporary set (images are the same; v3 adds the contact fields to the meta files)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 192], metavar=("H", "W"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        write_synthetic(root, version=args.version, sequences=2, frames=args.frames, seed=0)
        cfg = ExperimentConfig.model_validate({"data": {"root": str(root), "version": args.version,
                                                          "image_size": list(args.image_size)}})
        dataset = build_dataset(cfg, "train")
        n = len(dataset)
        raw_decode(dataset.records)  # warm the page cache and the J0 cache alike
        pipeline(dataset)
        loader_rates, raw_rates = [], []
        for _ in range(args.rounds):  # interleaved, so that changing load on the machine hits both
            loader_rates.append(best_rate(pipeline, dataset, n, 1))
            raw_rates.append(best_rate(raw_decode, dataset.records, n, 1))
    loader, raw = max(loader_rates), max(raw_rates)
    print(json.dumps({"loader_samples_per_s": round(loader, 1), "raw_decode_samples_per_s": round(raw, 1),
                      "ratio": round(loader / raw, 3), "samples": n, "version": args.version, "image_size": args.image_size,
                      "augment": True}))


if __name__ == "__main__":
    main()
