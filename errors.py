"""One-line errors for mistakes a user can make (bad paths, bad files, bad flags).

Scripts raise UserError at the edge; `main_guard` prints it as `error: ...` and exits 2,
so a user never sees a traceback for their own mistake. Internal bugs still raise.
"""

import os
import sys


class UserError(Exception):
    pass


def require_file(path, how=None):
    """Fail with a one-line message when `path` is missing; `how` says what makes it."""
    if not os.path.exists(path):
        hint = f"; {how}" if how else ""
        raise UserError(f"{path} not found{hint}")
    return path


def main_guard(main):
    """Run `main()`, turning UserError into one line on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
