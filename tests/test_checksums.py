"""The one sha256 loop (cache.format.digest over cache.checksums' blocks) against hashlib over whole bytes."""

import hashlib

import h5py
import numpy as np

from expclip.cache import checksums
from expclip.stages.shared.digests import file_sha256


def test_files_and_datasets_hash_a_block_at_a_time_as_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "BLOCK_BYTES", 1000)  # several blocks, the last one short
    data = np.random.default_rng(0).integers(0, 256, 4500, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    with open(tmp_path / "blob", "rb") as f:
        assert [len(b) for b in checksums.file_blocks(f)] == [1000] * 4 + [500]
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()

    values = np.random.default_rng(1).standard_normal((500, 6)).astype(np.float16)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = f.create_dataset("x", data=values, chunks=(7, 6))
        assert len(checksums.row_blocks(ds)) > 1
        assert checksums.stored_digest(ds) == hashlib.sha256(values.tobytes()).hexdigest()
        scalar = f.create_dataset("s", data=np.float32(2.5))
        assert checksums.stored_digest(scalar) == hashlib.sha256(np.float32(2.5).tobytes()).hexdigest()
