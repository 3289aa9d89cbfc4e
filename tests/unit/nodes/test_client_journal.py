"""A workload client that is stopped or killed loses no measurement.

Found as a user (issue 17): the runner killed the client at the end of a run and
`chain_latency.csv` came out empty. Now a SIGTERM ends the run and writes the CSV, and
after a SIGKILL the journal, written as things happen, rebuilds it.
"""

from __future__ import annotations

import asyncio
import csv
import signal
import sys
from pathlib import Path

import pytest

from nodes.client import ClientResult
from tests.unit.nodes.cluster import Cluster, make_genesis

ROOT = Path(__file__).resolve().parents[3]


async def _client_then(folder: Path, sig: int, out: Path) -> int:
    """Run the client CLI against the cluster (genesis addresses), signal it mid-run."""
    argv = [sys.executable, "-m", "nodes", "client", "--genesis", str(folder / "genesis.yaml"),
            "--key", str(folder / "keys" / "client0.key"), "--tps", "100",
            "--duration", "60", "--out", str(out)]
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    journal = Path(f"{out}.journal")
    for _ in range(400):  # until some transactions were committed
        await asyncio.sleep(0.05)
        if journal.exists() and journal.read_text().count("\nc,") >= 20:
            break
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    assert b"Traceback" not in err, err.decode()
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopped_or_killed_client_keeps_every_transaction(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "client_tx.csv"

    async def body() -> int:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4, "pbft"))
        try:
            await cluster.start()
            return await _client_then(tmp_path, sig, out)
        finally:
            await cluster.stop()

    code = asyncio.run(asyncio.wait_for(body(), 60))
    journal = ClientResult.from_journal(Path(f"{out}.journal"))
    assert len(journal.committed) >= 20
    assert set(journal.committed) <= set(journal.submitted)
    if sig == signal.SIGTERM:
        assert code == 0
        rows = list(csv.DictReader(open(out)))
        # Every submission is a row; the committed ones carry their commit time.
        assert {r["tx_id"] for r in rows} == set(journal.submitted)
        assert {r["tx_id"] for r in rows if r["commit_time"]} >= set(journal.committed)
    else:
        assert not out.exists()
        journal.write_csv(out)
        rows = list(csv.DictReader(open(out)))
        assert len(rows) == len(journal.submitted)
        assert sum(1 for r in rows if r["commit_time"]) == len(journal.committed)
