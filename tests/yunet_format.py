"""An ONNX model in YuNet's output format whose only "face" is a white 32x32 square on a cell of its 32-pixel grid.

No YuNet weights can be fetched here, so `--detector yunet` is tested on this:
OpenCV's FaceDetectorYN runs it like the real model (input named `input`,
twelve outputs `cls|obj|bbox|kps_{8,16,32}`, one row per grid cell) and decodes
a cell's box as centre (col + dx, row + dy) x stride and size exp(dw|dh) x
stride. Here a stride-32 cell's score is its mean brightness / 255 and its box
offsets are (0.5, 0.5, 0, 0): the cell itself. Strides 8 and 16 score 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
CELL = 32


def write_yunet_like(path: Path) -> Path:
    """Save the model to `path` (opset 13, which OpenCV's ONNX importer reads)."""
    constants = {
        "cells": np.array([1, -1, 1], dtype=np.int64),
        "per_255": np.array(1 / 255, dtype=np.float32),
        "zero": np.array(0, dtype=np.float32),
        "centre": np.array([[[0.5, 0.5, 0.0, 0.0]]], dtype=np.float32),
        "no_points": np.zeros((1, 1, 10), dtype=np.float32),
    }
    nodes = [helper.make_node("ReduceMean", ["input"], ["gray"], axes=[1], keepdims=1)]
    outputs = []
    for s in STRIDES:
        nodes += [
            helper.make_node("AveragePool", ["gray"], [f"pool_{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Reshape", [f"pool_{s}", "cells"], [f"flat_{s}"]),
            helper.make_node("Mul", [f"flat_{s}", "per_255" if s == CELL else "zero"], [f"cls_{s}"]),
            helper.make_node("Identity", [f"cls_{s}"], [f"obj_{s}"]),
            helper.make_node("Mul", [f"flat_{s}", "zero"], [f"none_{s}"]),
            helper.make_node("Add", [f"none_{s}", "centre"], [f"bbox_{s}"]),
            helper.make_node("Add", [f"none_{s}", "no_points"], [f"kps_{s}"]),
        ]
        widths = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
        outputs += [
            helper.make_tensor_value_info(f"{k}_{s}", TensorProto.FLOAT, [1, f"cells_{s}", n])
            for k, n in widths.items()
        ]
    graph = helper.make_graph(
        nodes, "yunet_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])], outputs,
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
