"""Battery item 13: a writer killed with SIGKILL mid-transaction leaves whole changes only
(R-SAFE-3)."""

import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import time

from models import AuditEvent, UserMou, database
from tests.conftest import make_user

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROUNDS = 20


def _run_and_kill(url, user_id, seconds):
    proc = subprocess.Popen([sys.executable, "-m", "tests.security.crash_writer", url, str(user_id)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()  # the writer is up and committing (start-up can be slow)
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return [int(line) for line in (first + out).split() if line.strip().isdigit()]


def test_r_safe_3_sigkill_mid_transaction_leaves_no_half_change(app):
    """R-SAFE-3: after 20 SIGKILLs every acknowledged change is present with its audit row,
    no change exists without its audit row, and SQLite's integrity check passes."""
    user = make_user()
    before = {row.id for row in UserMou.select(UserMou.id)}
    url = app.config["DATABASE_URL"]
    database.close()
    acknowledged = []
    rng = random.Random(7)
    for _ in range(ROUNDS):
        acknowledged += _run_and_kill(url, user.id, 0.05 + rng.random() * 0.4)
    database.connect(reuse_if_open=True)
    assert acknowledged, "the writer never got going"
    mou_ids = {row.id for row in UserMou.select(UserMou.id).where(UserMou.user == user.id)} - before
    audited = {int(row.object_id) for row in AuditEvent.select(AuditEvent.object_id)
               .where(AuditEvent.action == "sign_user_mou")}
    assert set(acknowledged) <= mou_ids
    assert mou_ids == audited
    if url.startswith("sqlite:///"):
        check = sqlite3.connect(url[len("sqlite:///"):])
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        check.close()
