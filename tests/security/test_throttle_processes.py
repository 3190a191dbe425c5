"""Battery item 3: sign-in throttling holds across two gunicorn worker processes (R-AUTH-5)."""

import os
import pathlib
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import free_port, make_user

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@pytest.fixture
def gunicorn(app, tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=app.config["DATABASE_URL"], SECRET_KEY="throttle-test",
               DATA_DIR=str(tmp_path), UPLOAD_DIR=str(tmp_path / "uploads"))
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "4",
                             "-b", f"127.0.0.1:{port}", "app:create_app()"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(base + "/auth/sign-in", timeout=5)
            break
        except requests.RequestException:
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)


def attempt(base, email, password="Wrong-Password-1!"):
    session = requests.Session()
    token = TOKEN.search(session.get(base + "/auth/sign-in", timeout=10).text).group(1)
    response = session.post(base + "/auth/sign-in", timeout=30, allow_redirects=False,
                            data={"email": email, "password": password, "csrf_token": token})
    return response.status_code, "Too many failed sign-ins" in response.text


def test_r_auth_5_throttled_per_account_across_workers(app, gunicorn):
    """R-AUTH-5: 100 wrong passwords for one account, spread over two worker processes, are
    throttled well before the end; then even the right password is refused for a while."""
    user = make_user()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: attempt(gunicorn, user.email), range(100)))
    throttled = [i for i, (_, t) in enumerate(results) if t]
    assert throttled and throttled[0] < 20
    assert sum(1 for _, t in results if t) >= 75
    status, is_throttled = attempt(gunicorn, user.email, "Correct-Horse-42!")
    assert status == 401 and is_throttled


def test_r_auth_5_throttled_per_address_and_unknown_alike(app, gunicorn):
    """R-AUTH-5: many addresses from one client address are throttled too; an unknown address
    gets exactly the answer a wrong password gets."""
    user = make_user()
    known = attempt(gunicorn, user.email)
    unknown = attempt(gunicorn, "nobody-here@example.org")
    assert known == unknown == (401, False)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: attempt(gunicorn, f"ghost{i}@example.org"), range(40)))
    assert sum(1 for _, t in results if t) >= 15
