"""Progress bars (tqdm on stderr), off when not wanted, when stderr is not a terminal (logs get no carriage-return
noise) or when LLMREC_NO_PROGRESS=1."""
from __future__ import annotations

import os
import sys


def progress_bar(iterable, desc: str = "", enabled: bool = True, total: int | None = None, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    disable = os.environ.get("LLMREC_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, **kw)
