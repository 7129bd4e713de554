"""learn2learn, imported once and quietly.

learn2learn imports gym, whose `gym_notices` prints a three-line deprecation notice to
stderr on import; that would break the CLI's promise of one-line errors.
"""
import contextlib
import io

with contextlib.redirect_stderr(io.StringIO()):
    import learn2learn as l2l  # noqa: E402

__all__ = ["l2l"]
