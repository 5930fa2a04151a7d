"""Shared fixtures: tiny checkpoints saved like real ones, built once per test session."""

import gc
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any transformers/open_clip import: never touch the network

import forked
import pytest

# Under pytest-xdist each worker, and every process its tests start, computes with its share of the cores:
# torch's default (all of them) in every worker would make the workers fight over them. The children get the
# same count as their worker because float32 sums depend on it, and tests compare their caches byte for byte.
# Only the workers import torch: the controlling process, which runs no test, starts them without that wait.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    import faiss
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    faiss.omp_set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# pytest-xdist hands out whole files in collection order (addopts: --no-loadscope-reorder, not by test count):
# the files that take longest go first, so that the two workers finish together instead of one waiting on a
# long file handed out last.
LONGEST_FIRST = ("test_parallel.py", "test_demo.py", "test_stopping.py", "test_benchmarks.py", "test_extract.py",
                 "test_run.py", "test_streaming.py", "test_predict.py", "test_integrity.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_collection_finish(session) -> None:
    """What the test modules imported (torch, transformers, open_clip) lives as long as the worker: out of the
    garbage collector's way, each full collection, and pytest's five at the end, skips it instead of walking it
    all again."""
    gc.freeze()


KEY = "ViT-T@test"  # the CLIP image key of the caches that tests write by hand (fmt.image_path(KEY))

# Expected values written out, not read back from expclip.stages.shared.protocol (test_protocol and
# test_reference check that module against the paper): the paper's class order, the first 7 the basic ones,
SEVEN = ["Happiness", "Sadness", "Neutral", "Anger", "Surprise", "Disgust", "Fear"]
ELEVEN = [*SEVEN, "Contempt", "Anxiety", "Helplessness", "Disappointment"]
# the 16 frames of a 40-frame clip (the middle of each 2.5-frame segment, int(1.25 + 2.5 i)),
FRAMES_OF_40 = [1, 3, 6, 8, 11, 13, 16, 18, 21, 23, 26, 28, 31, 33, 36, 38]
# the names of the prompt sets the package ships, and the paper's teacher and its instruction.
PROMPT_SETS = ["class_name", "an_expression_of", "a_photo_of_a_face", "ensemble_five", "ensemble_ten"]
PAPER_TEACHER = "Salesforce/blip2-flan-t5-xxl"
PAPER_INSTRUCTION = ("Please play the role of a facial action describer. "
                     "Objectively describe the detailed facial actions of the person in the image.")


def clip_attrs(**changes) -> dict:
    """Attributes of a hand-written cache's CLIP image group (what extract records), with `changes`."""
    return {"model": "ViT-T", "pretrained": "test", "pretrained_sha256": "", "transform": "model",
            "logit_scale": 20.0, **changes}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """`local-dir:` name of a tiny random open_clip ViT (32x32 images, logit_scale 50)."""
    from expclip.demo.checkpoints import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory):
    """Folder of a tiny random BLIP-2 Flan-T5-style checkpoint with its processor (32x32 images)."""
    from expclip.demo.checkpoints import save_tiny_blip2

    return save_tiny_blip2(tmp_path_factory.mktemp("tiny-blip2"))


@pytest.fixture(autouse=True)
def _no_child_left():
    """A test that fails while its forked children run leaves none behind for the next one."""
    yield
    forked.reap()
