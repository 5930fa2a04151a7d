"""faiss indexes of a cache's vectors: which kind, built once per (cache, key, head), stored beside the cache.

Exact inner-product search (`Flat`) up to FLAT_MAX_ROWS vectors, or always
with `exact`; above it an approximate index chosen from the size, as autofaiss
chooses: HNSW (graph, no training, fast and accurate) when its memory fits the
budget, else IVF with product quantisation (trained on a sample; a fraction of
the memory). Vectors are unit length, so inner products are cosines.

An index lives in `CACHE.h5.faiss/KEY[@HEAD].SPEC.index` with a JSON of its
provenance; it is rebuilt when the cache's features (their fingerprint), the
head or the index kind differ from what that JSON records. The JSON records
the sha256 of the index file and of its own fields: a damaged or unreadable
index (or JSON) is rebuilt too, saying so in one line, so damage never gives
a wrong hit. Files are written under a temporary name and renamed
(cache.atomic), so an interrupted build leaves no index behind. GPU search is
used only where faiss sees a GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from expclip.base.version import __version__
from expclip.cache import format as fmt
from expclip.cache.atomic import write_atomically
from expclip.cache.reader import CacheReader
from expclip.stages.shared.digests import file_sha256, seal, sealed, stream_sha256
from expclip.stages.shared.heads import Head
from expclip.stages.shared.progress import stderr
from expclip.stages.shared.vectors import Rows, all_vectors

FLAT_MAX_ROWS = 200_000  # exact search below this many vectors, where brute force stays interactive on a CPU
HNSW_LINKS = 32  # HNSW's M: links per vector
TRAIN_ROWS = 100_000  # IVF-PQ trains on a sample of this many vectors (more when it has many lists)
INDEX_SHA256 = "index_sha256"  # the provenance JSON's record of the index file's bytes
META_SHA256 = "meta_sha256"  # and of its own other fields


def head_identity(head: Head | None) -> str | None:
    """First 12 hex digits of the sha256 of the head's weights (None: plain CLIP space)."""
    if head is None:
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(head.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def spec_for(rows: int, dim: int, *, exact: bool, budget: int) -> str:
    """faiss index_factory string for `rows` vectors of `dim` floats."""
    if exact or rows <= FLAT_MAX_ROWS:
        return "Flat"
    if rows * (dim * 4 + HNSW_LINKS * 2 * 4) <= budget:
        return f"HNSW{HNSW_LINKS},Flat"
    lists = 1 << max(4, round(math.log2(4 * math.sqrt(rows))))
    sub = next(m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if (dim % m == 0 and m <= dim // 2) or m == 1)
    return f"IVF{lists},PQ{sub}"


def build(vectors: np.ndarray, spec: str) -> faiss.Index:
    """An inner-product index of `vectors` (float32, unit rows)."""
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    wanted = TRAIN_ROWS
    if spec.startswith("IVF"):  # polysemous codes (index_factory's default) serve Hamming pre-filtering, unused
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.do_polysemous_training = False  # here, and their training is a fixed cost whatever the size
        wanted = max(TRAIN_ROWS, 40 * ivf.nlist)  # k-means wants >= 39 points a list
    if not index.is_trained:
        index.train(vectors[np.random.default_rng(0).permutation(len(vectors))[:wanted]])
    index.add(vectors)
    if spec.startswith("IVF"):
        faiss.extract_index_ivf(index).nprobe = 16
    return index


@dataclass
class Indexed:
    """An index with the rows its vectors stand for and the provenance it was built from."""

    index: faiss.Index
    rows: Rows
    meta: dict
    built: bool  # False when read from beside the cache


def index_files(cache: Path, key: str, head_id: str | None, spec: str) -> tuple[Path, Path]:
    """`CACHE.h5.faiss/KEY[@HEAD].SPEC.index` and its `.json`: one file per kind, so exact and approximate
    searches of one cache do not rebuild each other's index."""
    folder = fmt.beside(Path(cache), ".faiss")
    stem = fmt.sanitize(key) + (f"@{head_id}" if head_id else "") + "." + fmt.sanitize(spec)
    return folder / f"{stem}.index", folder / f"{stem}.json"


def cached_index(cache: Path, key: str, head: Head | None, *, exact: bool, budget: int) -> Indexed:
    """The item index of `cache` under `key` (and `head`): read from beside the cache when it is current and
    intact, else built from the cache and stored there."""
    head_id = head_identity(head)
    with CacheReader(cache) as reader:
        fingerprint = reader.fingerprint([fmt.image_path(key)])
        shape, _ = reader.group_shape(fmt.image_path(key))
        usable = int(reader.items().ok.sum())
        dim = head.dt if head is not None else shape[-1]
        spec = spec_for(usable, dim, exact=exact, budget=budget)
        index_path, meta_path = index_files(cache, key, head_id, spec)
        wanted = {"fingerprint": fingerprint, "key": key, "head": head_id, "spec": spec}
        stored = _stored(index_path, meta_path, wanted)
        if stored is not None:
            return Indexed(stored[0], _item_rows(reader), stored[1], built=False)
        rows, vectors = all_vectors(reader, key, head, per_frame=False)
    index = build(vectors, spec)
    meta = {**wanted, "cache": str(cache), "rows": len(rows), "dim": int(vectors.shape[1]),
            "expclip_version": __version__, "faiss_version": faiss.__version__}
    index_path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        faiss.write_index(index, str(tmp))
        meta[INDEX_SHA256] = file_sha256(tmp)  # of the bytes written, read back

    write_atomically(index_path, write)
    meta = seal(meta, META_SHA256)
    text = json.dumps(meta, indent=2, allow_nan=False)
    write_atomically(meta_path, lambda tmp: tmp.write_text(text, "utf-8"))
    return Indexed(index, rows, meta, built=True)


def _item_rows(reader: CacheReader) -> Rows:
    """The rows of an item index: the usable items in order (what `all_vectors` indexed)."""
    return Rows(np.flatnonzero(reader.items().ok).astype(np.int64))


def _stored(index_path: Path, meta_path: Path, wanted: dict) -> tuple[faiss.Index, dict] | None:
    """(index, provenance) kept beside the cache when it is the one `wanted` and both files are intact; None
    to build it: silently when there is none or the cache changed, with one line on stderr when damaged."""
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        intact = isinstance(meta, dict) and sealed(meta, META_SHA256)
    except (OSError, UnicodeDecodeError, ValueError):  # ValueError: not JSON
        intact = False
    if not intact:
        return _rebuilding(meta_path, f"unreadable, damaged or without its {META_SHA256}")
    if {k: meta.get(k) for k in wanted} != wanted:
        return None  # another cache, head or kind of index: stale, not damaged
    try:
        with open(index_path, "rb") as f:  # one descriptor: the bytes checked are the bytes read
            if stream_sha256(f) != meta.get(INDEX_SHA256):
                return _rebuilding(index_path,
                                   f"its bytes do not match the {INDEX_SHA256} that {meta_path.name} records")
            f.seek(0)
            return faiss.read_index(faiss.PyCallbackIOReader(f.read)), meta
    except OSError as e:
        return _rebuilding(index_path, f"cannot be read ({e.strerror or e})")
    except RuntimeError as e:  # intact, but this faiss cannot read it
        return _rebuilding(index_path, f"faiss cannot read it ({' '.join(str(e).split())[:200]})")


def _rebuilding(path: Path, reason: str) -> None:
    """Say in one line why a stored index is not used (it is built again: never a wrong hit)."""
    stderr.print(f"{path}: {reason}; building the index again", markup=False, highlight=False, soft_wrap=True)


def on_gpus(index: faiss.Index) -> faiss.Index:
    """The index copied to every GPU faiss sees (a faiss-gpu install); the index itself where it sees none
    (faiss-cpu, or no GPU: copying would give an empty index whose search fails)."""
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index
    return faiss.index_cpu_to_all_gpus(index)
