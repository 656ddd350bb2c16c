"""Writing files so that a failure never leaves a half-written one, and hashing them.

Checkpoints (:mod:`metalib.checkpoints`), downloads and the Omniglot cache
(:mod:`metalib.data`) all write to a temporary name in the target's folder and rename
only when the content is complete, so a crash or a full disk leaves any previous file as
it was.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_temporary(target: Path, chunks: bytes | Iterable[bytes]) -> Path:
    """Write ``chunks`` beside ``target`` under a temporary name and return that name.

    The caller renames it (``os.replace``) once it is satisfied with the content, or
    deletes it. If writing fails, the temporary file is removed and the error re-raised.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
        with os.fdopen(fd, "wb") as handle:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(target: Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` all at once or not at all; return ``target``."""
    os.replace(write_temporary(target, data), target)
    return target


def digest(path: Path, algorithm: str = "md5") -> str:
    """The hex digest of a file, read in 1 MiB blocks."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()
