"""Where patch-ctl may be interrupted. From its first change to a target until that change is complete (or
undone), SIGINT, SIGTERM and SIGHUP are held pending; the apply and revert act on them only at the safe
points they name, where stopping leaves the target as it was. A signal that arrives once the work can no
longer be stopped is reported after it is done."""
from __future__ import annotations

import signal

from patch_build.common.interrupts import HANDLED, Interrupted


class Critical:
    def __init__(self):
        self._old_mask = None
        self.late: int = 0  # a signal that arrived too late to stop the work: the caller reports it

    def __enter__(self) -> Critical:
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        return self

    def _take(self) -> int:
        pending = signal.sigpending() & set(HANDLED)
        if not pending:
            return 0
        info = signal.sigtimedwait(pending, 0)  # consumed: it is acted on here, not again on unblock
        return info.si_signo if info else 0

    def safe_point(self) -> None:
        """Stop here (Interrupted) when a signal is pending: the caller undoes what it did so far."""
        signum = self._take()
        if signum:
            raise Interrupted(signum)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            signum = self._take()
            if signum and exc_type is None:
                self.late = signum
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
