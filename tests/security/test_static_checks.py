"""Battery item 18: bandit finds no high-severity issue in the application code."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CODE = ["app.py", "models.py", "workflow.py", "messaging.py", "security.py", "cli.py", "pdf.py",
        "admin_views", "forms"]


def test_bandit_no_high_severity():
    """No high-severity bandit finding (or each justified in place with # nosec and a reason)."""
    targets = [str(ROOT / c) for c in CODE if (ROOT / c).exists()]
    targets += [str(p) for p in ROOT.glob("*.py") if p.name not in CODE and p.name != "conftest.py"]
    result = subprocess.run([sys.executable, "-m", "bandit", "-q", "-f", "json", "-r", *targets],
                            capture_output=True, text=True, cwd=ROOT)
    report = json.loads(result.stdout or "{}")
    high = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
            for r in report.get("results", []) if r["issue_severity"] == "HIGH"]
    assert not high, "\n".join(high)
