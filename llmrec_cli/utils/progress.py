"""Progress bars (tqdm on stderr), off when not wanted or when stderr is not a terminal and CI is set."""
from __future__ import annotations

import os
import sys


def progress_bar(iterable, desc: str = "", enabled: bool = True, total: int | None = None, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    disable = os.environ.get("LLMREC_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, **kw)
