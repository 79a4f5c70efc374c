"""Writing files so that nothing is lost: atomic writes and output folders that a refused
command removes again.  No torch here: the command line's light paths use it too."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["atomic_write", "output_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    The file gets the permissions an ordinary ``open()`` would give it (0666 less
    the umask): ``mkstemp`` makes private 0600 files, which a colleague sharing the
    run directory could not read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Create the folder ``path`` for a command's output; if the block fails and the
    folder it created is still empty, remove it again, so a refused run leaves nothing."""
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {path}: {exc.strerror or exc}") from exc
    try:
        yield path
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise
