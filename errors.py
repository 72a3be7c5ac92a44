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
    """Run `main()`, turning UserError into one line on stderr and exit code 2.

    A process of a torchrun run (RANK set) ends with os._exit, skipping the interpreter's shutdown:
    DistributedDataParallel leaves references to its gloo process group that destroy_process_group cannot drop, so
    the group's worker threads live on into that shutdown, and one that takes the GIL there to free a tensor aborts
    the process ("terminate called without an active exception", SIGABRT) after a run that saved everything (seen
    once in CI; the mechanism pytorch/pytorch#179291 describes). Nothing is lost: checkpoints and logs are closed
    files by then, stdout and stderr are flushed here, and the exit status is the one sys.exit would give."""
    distributed = "RANK" in os.environ  # the condition training.setup_distributed starts a process group on
    try:
        main()
        code = 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except SystemExit as e:  # argparse's usage errors, a stop signal's save-and-exit
        if not distributed:
            raise
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)
