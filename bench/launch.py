"""Start one command, wait for it, and write its wall time and peak RSS as JSON.

    python -I -S bench/launch.py RESULT.json CMD [ARG...]

Why a launcher: on Linux, a process's ``ru_maxrss`` starts at the high-water RSS of the process
that spawned it (``exec`` keeps the larger of the old and new address spaces' peaks, and with
``vfork``/``posix_spawn`` the old one is the parent's). Spawned straight from run.py, every case
would report at least run.py's own peak (hundreds of MB after generating a 24 MP frame). This
launcher is a bare interpreter (``-S``: no site-packages, stdlib only) of about 10 MB, so the
numbers it reports are the command's own. Standard output and error are inherited.
"""

import json
import os
import sys
import time


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    result, cmd = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    try:
        pid = os.posix_spawnp(cmd[0], cmd, dict(os.environ))
    except OSError as exc:
        print(f"cannot start {cmd[0]}: {exc}", file=sys.stderr)
        report = {"wall_s": 0.0, "maxrss_kib": 0, "returncode": 127}
    else:
        _, status, usage = os.wait4(pid, 0)
        report = {
            "wall_s": time.perf_counter() - start,
            "maxrss_kib": usage.ru_maxrss,
            "returncode": os.waitstatus_to_exitcode(status),
        }
    with open(result, "w", encoding="utf-8") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
