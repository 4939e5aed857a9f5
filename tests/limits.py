"""A real write failure for tests: RLIMIT_FSIZE makes writes past a size fail with EFBIG, as a full
disk fails them (Python ignores the SIGXFSZ that comes with them)."""

import contextlib
import resource


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past `nbytes` fail in this process, and in every child started meanwhile for its life."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
