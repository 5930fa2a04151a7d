"""fp8's effect downstream: heads trained on fp8 and on bf16 features of the same faces, compared.

Issue 20 asks what float8 features do to what users get, not only to the features: train one head on a
training cache extracted with `--precision fp8` and one on the same faces extracted in bf16 (same
settings and seed), then report the cosine of the two heads (row by row: each of W's output rows, and W as
one vector) and, on a held-out cache, how often the two heads give the same zero-shot class, beside each
head's UAR and WAR there. Extract the same faces twice on a GPU that has fp8 (`--precision fp8`, then
`--precision bf16`); any two training caches of the same faces compare the same way (fp32 and bf16 on a CPU).
Run: python benchmarks/fp8_effect.py --fp8 A.h5 --bf16 B.h5 --eval HELD_OUT.h5 [--prompt-set S] [--epochs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import describe  # noqa: E402  benchmarks/, beside this script
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from expclip.cache.reader import CacheReader  # noqa: E402
from expclip.stages.evaluate import evaluate  # noqa: E402
from expclip.stages.fit_head import FitConfig, fit_head  # noqa: E402
from expclip.stages.shared.heads import Head, load_head  # noqa: E402
from expclip.stages.shared.scoring import blocks, class_targets, head_space  # noqa: E402


def head_cosines(a: Head, b: Head) -> tuple[float, float, float]:
    """(least, mean) cosine of W's output rows, and the cosine of W as one vector."""
    wa, wb = (h.module.weight.detach().double().reshape(h.module.weight.shape[0], -1) for h in (a, b))
    rows = torch.nn.functional.cosine_similarity(wa, wb, dim=1)
    whole = torch.nn.functional.cosine_similarity(wa.reshape(1, -1), wb.reshape(1, -1)).item()
    return rows.min().item(), rows.mean().item(), whole


def zero_shot_classes(head: Head, cache: Path, prompt_set: str) -> np.ndarray:
    """The class index each decodable item of `cache` gets from `head` (the paper's logits ensemble)."""
    space = head_space(head, torch.device("cpu"))
    with CacheReader(cache) as reader:
        key = head.meta["clip_key"]
        text = reader.text(key, prompt_set)
        classes, cls = np.unique(text.class_index, return_inverse=True)
        targets = class_targets(space, text.features.astype(np.float64), cls, len(classes), "logits")
        found = [(space.images(torch.from_numpy(rows)) @ targets.T).argmax(1).numpy()
                 for _, rows in blocks(reader, key, reader.items().ok)]
    return np.concatenate(found)


def compare(fp8: Path, bf16: Path, held_out: Path, prompt_set: str, config: FitConfig, work: Path) -> dict:
    """Both heads trained with `config`, their cosines, agreement and each one's UAR/WAR on `held_out`."""
    heads = {}
    for name, cache in (("fp8", fp8), ("bf16", bf16)):
        fit_head([cache], work / name, config)
        heads[name] = load_head(work / name)
    least, mean, whole = head_cosines(heads["fp8"], heads["bf16"])
    a, b = (zero_shot_classes(heads[n], held_out, prompt_set) for n in ("fp8", "bf16"))
    scores = {n: evaluate(heads[n], [held_out], prompt_sets=[prompt_set], device="cpu")[0] for n in heads}
    return {"row_cos_min": least, "row_cos_mean": mean, "cos": whole, "agreement": float(np.mean(a == b)),
            "items": len(a), **{f"{n}_{m}": scores[n][m] for n in scores for m in ("uar", "war")}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp8", type=Path, required=True, help="training cache extracted with --precision fp8")
    parser.add_argument("--bf16", type=Path, required=True, help="the same faces extracted in bf16")
    parser.add_argument("--eval", type=Path, required=True, help="held-out cache with text features")
    parser.add_argument("--prompt-set", default="a_photo_of_a_face")
    parser.add_argument("--epochs", type=int, default=FitConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=FitConfig.batch_size)
    args = parser.parse_args(argv)
    config = dataclasses.replace(FitConfig(), epochs=args.epochs, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        found = compare(args.fp8, args.bf16, args.eval, args.prompt_set, config, Path(tmp))
    console = Console(width=160)
    console.print(describe())
    table = Table(title=f"heads on fp8 vs bf16 features ({args.prompt_set}, {found['items']:,} held-out items)")
    for column in ("W row cos min", "W row cos mean", "W cos", "same class", "UAR fp8 / bf16", "WAR fp8 / bf16"):
        table.add_column(column, justify="right")
    table.add_row(f"{found['row_cos_min']:.4f}", f"{found['row_cos_mean']:.4f}", f"{found['cos']:.4f}",
                  f"{100 * found['agreement']:.2f} %", f"{found['fp8_uar']:.2f} / {found['bf16_uar']:.2f}",
                  f"{found['fp8_war']:.2f} / {found['bf16_war']:.2f}")
    console.print(table)
    return found


if __name__ == "__main__":
    main()
