"""Files that readers must never see half-written: certificates for the web application,
published CRLs, the client's outputs."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

# O_EXCL fails on any existing name, a symlink too (dangling or not); O_NOFOLLOW says so
# again for the last component. Together: the temporary file is always a new file of ours.
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_ATTEMPTS = 8


def write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file, fsync it, rename it over `path`, fsync the folder: a reader
    sees the old file or the new one, and after a power loss the rename is not lost while a
    database row already names the file.

    The temporary file has a random name in the target's folder and is created with
    O_EXCL|O_NOFOLLOW, so a symlink planted there (another local user guessing the name)
    is never written through. A symlink at `path` itself is replaced by the file, never
    followed: rename(2) acts on the name, not on what it points to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, handle = _new_temporary(path)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _new_temporary(path: Path) -> tuple[Path, int]:
    for _ in range(_NAME_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            # 0o666 less the umask: the mode a plain open() gave these files before.
            return tmp, os.open(tmp, _NEW_FILE_FLAGS, 0o666)
        except FileExistsError:
            continue  # 64 random bits taken: someone is planting names; draw again
    raise FileExistsError(f"no free temporary name next to {path} after {_NAME_ATTEMPTS} tries")
