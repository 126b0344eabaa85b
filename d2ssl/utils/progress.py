"""One progress line from a run's log, for scripts that send a tool's output to a file (the demo's
lanes): the step running (its ``== name`` line), then the latest of detectron2's ``eta: ... iter: N``
(``CommonMetricPrinter``, every ``train.log_period``) and a tqdm bar's ``n/total [elapsed<left]``.

    python -m d2ssl.utils.progress LOG [LOG ...]     # one line per log: "<log name>: <progress>"
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

_STEP = re.compile(r"^== (.+)$", re.MULTILINE)
_D2_ETA = re.compile(r"eta: (\S+)\s+iter: (\d+)")
# tqdm redraws its bar with carriage returns; "desc:  40%|####  | 4/10 [00:05<00:07, 1.2it/s]".
_TQDM = re.compile(r"([\w .-]+): +\d+%\|[^|]*\| *(\d+)/(\d+) \[[\d:]+<([\d:?]+)")


def describe_progress(text: str) -> str | None:
    """The progress ``text`` (a log) shows last, ``None`` where it shows none: ``"<step>: iter N, eta
    H:MM:SS"`` or ``"<step>: <bar> n/total, eta MM:SS"``; a counter seen before the step began is not
    the step's."""
    steps = list(_STEP.finditer(text))
    step = steps[-1] if steps else None
    start = step.end() if step else 0
    counters = [(m.start(), f"iter {m.group(2)}, eta {m.group(1)}") for m in _D2_ETA.finditer(text, start)]
    counters += [(m.start(), f"{m.group(1).strip()} {m.group(2)}/{m.group(3)}, eta {m.group(4)}")
                 for m in _TQDM.finditer(text, start)]
    latest = max(counters)[1] if counters else None
    name = step.group(1).strip() if step else None
    if name and latest:
        return f"{name}: {latest}"
    return name or latest


def main(argv: Sequence[str] | None = None) -> None:
    for path in (sys.argv[1:] if argv is None else argv):
        try:
            with open(path, errors="replace") as f:
                line = describe_progress(f.read())
        except OSError:  # a lane that has not written its log yet
            continue
        if line:
            print(f"   {os.path.splitext(os.path.basename(path))[0]}: {line}", flush=True)


if __name__ == "__main__":
    main()
