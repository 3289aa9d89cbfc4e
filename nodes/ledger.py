"""Durable ledger: committed blocks in SQLite (WAL).

A block is appended in one transaction, and its WAL is fsync'd (`flush`) before the node
announces it, so neither a kill -9 nor an OS crash loses anything that was announced.
The append itself does not wait for the disk (synchronous=NORMAL, which in WAL mode
syncs only at checkpoints): `flush` is the fsync, which a validator runs off its event
loop, because one fsync here takes 0.2-0.65 s now and then, and a blocked loop holds
every vote and timer of the validator. `append(..., sync=True)` does both at once.
Rows are only ever inserted: a block at an existing height, or one that does not extend
the tip, is refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodes.block import Block
from nodes.consensus.messages import Certificate
from nodes.wire import cert_from_wire, cert_to_wire


def encode_block(block: Block) -> str:
    return json.dumps(block.to_wire(), separators=(",", ":"))


class LedgerError(RuntimeError):
    """The ledger refused an append or belongs to another chain."""


class Ledger:
    def __init__(self, path: Path, genesis_hash: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(genesis_hash)
        except sqlite3.DatabaseError as exc:  # a damaged file: say which, not a traceback
            raise LedgerError(f"{self.path}: not a readable ledger ({exc}); restore it "
                              "from a peer's copy or start on a fresh data_dir") from exc

    def _open(self, genesis_hash: str) -> None:
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, hash TEXT NOT NULL"
            " UNIQUE, block TEXT NOT NULL, cert TEXT NOT NULL, record TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS votes (height INTEGER, round INTEGER, phase TEXT,"
            " hash TEXT, sig TEXT, block TEXT, PRIMARY KEY (height, round, phase))"
        )
        # Votes go through their own connection without fsync: WAL content survives a
        # killed process (only an OS crash could lose it), and a vote per phase per block
        # must not cost an fsync each.
        self._vdb = sqlite3.connect(str(self.path), isolation_level=None)
        self._vdb.execute("PRAGMA synchronous=NORMAL")
        row = self._db.execute("SELECT value FROM meta WHERE key='genesis'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis_hash,))
        elif row[0] != genesis_hash:
            raise LedgerError(
                f"{self.path} belongs to genesis {row[0][:12]}, not {genesis_hash[:12]}; "
                "use a fresh data_dir"
            )
        self.genesis_hash = genesis_hash
        last = self._db.execute(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        self.height: int = last[0] if last else 0
        self.tip_hash: str = last[1] if last else genesis_hash
        self.flush()  # what an earlier process wrote and did not flush is durable now
        self.durable_height: int = self.height
        """The highest block known to be on disk (`height` may be ahead until `flush`)."""
        self.lost: tuple[int, int] | None = None
        """Blocks (first, last) an earlier run made durable that this file no longer has:
        a cut or damaged write-ahead log (issue 18: it rolled back 1-7 blocks silently)."""
        claimed = self._read_mark()
        if claimed > self.height:
            self.lost = (self.height + 1, claimed)
        else:
            self._write_mark(self.height)

    @property
    def _mark(self) -> Path:
        return self.path.with_name(self.path.name + ".durable")

    def _read_mark(self) -> int:
        try:
            return int(self._mark.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_mark(self, height: int) -> None:
        """Written after the WAL's fsync: it may lag the file after an OS crash, never
        lead it, so a mark above the ledger's height means blocks were lost."""
        tmp = self._mark.with_suffix(".tmp")
        tmp.write_text(str(height))
        os.replace(tmp, self._mark)

    def mark_durable(self, height: int) -> None:
        """`flush` returned for everything up to `height`."""
        self.durable_height = height
        self._write_mark(height)

    def flush(self) -> None:
        """fsync the WAL: every block appended so far survives an OS crash. Touches only
        the file, not the SQLite connection, so it may run in another thread."""
        wal = f"{self.path}-wal"
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing appended since the last checkpoint of a closed ledger
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._vdb.close()
        self._db.close()

    def save_vote(
        self, height: int, round_: int, phase: str, digest: str, sig: str, block: str | None
    ) -> None:
        """Remember a vote before it is sent, so a restarted node never votes twice."""
        self._vdb.execute(
            "INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?, ?, ?)",
            (height, round_, phase, digest, sig, block),
        )

    def load_votes(self, height: int) -> list[tuple[int, str, str, str, str | None]]:
        """(round, phase, hash, sig, block JSON) of this node's votes at a height."""
        return self._vdb.execute(
            "SELECT round, phase, hash, sig, block FROM votes WHERE height=?", (height,)
        ).fetchall()

    def append(
        self,
        block: Block,
        cert: Certificate,
        record: dict[str, Any] | None,
        encoded: str | None = None,
        sync: bool = True,
    ) -> int:
        """Insert (and fsync, unless `sync` is False: then `flush` before announcing the
        block and set `durable_height`); returns the block's encoded size in bytes."""
        if block.height != self.height + 1:
            raise LedgerError(f"append height {block.height}, expected {self.height + 1}")
        if block.prev_hash != self.tip_hash:
            raise LedgerError(f"block {block.height} does not extend tip {self.tip_hash[:12]}")
        if cert.digest != block.hash or cert.height != block.height:
            raise LedgerError(f"certificate does not match block {block.height}")
        if encoded is None:
            encoded = encode_block(block)
        self._db.execute(
            "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
            (
                block.height,
                block.hash,
                encoded,
                json.dumps(cert_to_wire(cert), separators=(",", ":")),
                json.dumps(record) if record is not None else None,
            ),
        )
        self.height = block.height
        self.tip_hash = block.hash
        if block.height % 100 == 0:
            self._vdb.execute("DELETE FROM votes WHERE height < ?", (block.height,))
        if sync:
            self.flush()
            self.mark_durable(block.height)
        return len(encoded)

    def set_record(self, height: int, record: dict[str, Any]) -> None:
        self._db.execute("UPDATE blocks SET record=? WHERE height=?", (json.dumps(record), height))

    def tip_extras(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The newest block's certificate and sensor record (for the next block's header)."""
        row = self._db.execute(
            "SELECT cert, record FROM blocks WHERE height=?", (self.height,)
        ).fetchone()
        if row is None:
            return None, None
        return json.loads(row[0]), (json.loads(row[1]) if row[1] else None)

    def get(self, height: int) -> tuple[Block, Certificate] | None:
        row = self._db.execute(
            "SELECT block, cert FROM blocks WHERE height=?", (height,)
        ).fetchone()
        if row is None:
            return None
        return Block.from_wire(json.loads(row[0])), cert_from_wire(json.loads(row[1]))

    def get_raw(self, start: int, limit: int,
                max_bytes: int = 1 << 62) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Wire dicts for state transfer, durable blocks only (what we hand out we must
        still have after a crash): at most `limit` blocks, stopping before the one that
        would pass `max_bytes` of stored JSON (the first always comes)."""
        out: list[tuple[dict[str, Any], dict[str, Any]]] = []
        size = 0
        for b, c in self._db.execute(
            "SELECT block, cert FROM blocks WHERE height>=? AND height<=? ORDER BY height"
            " LIMIT ?", (start, self.durable_height, limit)
        ):
            size += len(b) + len(c)
            if out and size > max_bytes:
                break
            out.append((json.loads(b), json.loads(c)))
        return out

    def hashes(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT hash FROM blocks ORDER BY height")]

    def iter_certified(self) -> Iterator[tuple[Block, Certificate]]:
        for raw, cert in self._db.execute("SELECT block, cert FROM blocks ORDER BY height"):
            yield Block.from_wire(json.loads(raw)), cert_from_wire(json.loads(cert))

    def iter_blocks(self) -> Iterator[Block]:
        for (raw,) in self._db.execute("SELECT block FROM blocks ORDER BY height"):
            yield Block.from_wire(json.loads(raw))
