"""Malformed instances against `segnode serve`: tried / refused / stored, time and memory.

Every variant of tests/fixtures/malformed.py (issue 10's list, built byte by byte
from REAL scanner files, plus real controls that must be stored) goes to a node
started with the DEFAULT configuration (data dir and port set; jobs off so only
the listener works), each as its own C-STORE with its own command UIDs on its own
presentation context, ``--rounds`` times (fresh SOP UIDs are not needed: a
re-sent refused variant is refused again; a re-sent control is an identical
duplicate). Printed: per-status counts, variants stored that should have been
refused, the node's VmRSS before and after, and the time per C-STORE.

Run:  .venv/bin/python bench/malformed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.hostile import vm_rss_mib  # noqa: E402
from tests.fixtures.malformed import send_over_the_wire, variants  # noqa: E402
from tests.helpers import free_port, wait_for_port  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cases = variants(REPO.parent / "shared" / "data")
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "node.toml"
        config.write_text("[jobs]\nenabled = false\n[storage]\nmin_free_disk_mb = 1\n")
        port = free_port()
        log = (Path(folder) / "node.log").open("wb")
        node = subprocess.Popen(
            [sys.executable, "-m", "segnode.node.cli", "serve", "--config", str(config),
             "--data-dir", str(Path(folder) / "data"), "--port", str(port)],
            cwd=REPO, stdout=log, stderr=log,
        )
        try:
            wait_for_port(port, timeout_s=60)
            rss_start = vm_rss_mib(node.pid)
            statuses: collections.Counter[str] = collections.Counter()
            wrongly_stored: set[str] = set()
            not_sent: set[str] = set()
            started = time.perf_counter()
            for _ in range(args.rounds):
                for name, status in send_over_the_wire(port, cases).items():
                    case = next(case for case in cases if case.name == name)
                    if status is None:
                        not_sent.add(name)
                        continue
                    statuses[f"0x{status:04X}"] += 1
                    if case.refused_with and status == 0:
                        wrongly_stored.add(name)
            elapsed = time.perf_counter() - started
            rss_end = vm_rss_mib(node.pid)
            alive = node.poll() is None
        finally:
            node.terminate()
            node.wait(timeout=30)
    refused_kinds = sum(1 for case in cases if case.refused_with)
    sent = sum(statuses.values())
    print(f"variants: {len(cases)} ({refused_kinds} must be refused, "
          f"{len(cases) - refused_kinds} real controls must be stored); rounds: {args.rounds}")
    print(f"C-STOREs sent: {sent}; not expressible over the wire: {sorted(not_sent) or 'none'}")
    print("statuses: " + ", ".join(f"{code} x{count}" for code, count in sorted(statuses.items())))
    print(f"malformed variants stored with Success: {sorted(wrongly_stored) or 'none'}")
    print(f"listener alive afterwards: {alive}")
    print(f"time: {elapsed:.1f} s, {1000 * elapsed / max(sent, 1):.1f} ms per C-STORE (incl. "
          "one association per round)")
    print(f"node VmRSS: start {rss_start:.1f} MiB, end {rss_end:.1f} MiB")


if __name__ == "__main__":
    main()
