"""Battery item 16: security headers on every page (R-SAFE-6)."""

import pytest

from app import create_app
from tests.conftest import make_user

PUBLIC_PAGES = ["/auth/sign-in", "/auth/forgot-password"]


@pytest.mark.parametrize("path", PUBLIC_PAGES)
def test_r_safe_6_headers_on_public_pages(browser, path):
    """R-SAFE-6: CSP, nosniff, frame-ancestors 'none', Referrer-Policy on every response."""
    response = browser.get(path)
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert "object-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


def test_r_safe_6_no_store_on_signed_in_pages(browser, network):
    """R-SAFE-6: pages that can carry client data are never cached."""
    browser.login(network.gk_a1)
    response = browser.get("/")
    assert response.status_code == 200
    assert "no-store" in response.headers["Cache-Control"]


def test_r_auth_7_cookie_flags_and_hsts_over_https(app, tmp_path, monkeypatch):
    """R-AUTH-7: HttpOnly, SameSite=Lax, and Secure + HSTS when served over https."""
    secure = create_app({"DATABASE_URL": app.config["DATABASE_URL"], "SECRET_KEY": "x",
                         "DATA_DIR": str(tmp_path), "UPLOAD_DIR": str(tmp_path / "u"),
                         "BASE_URL": "https://connect.example.org"})
    assert secure.config["SESSION_COOKIE_SECURE"] is True
    client = secure.test_client()
    response = client.get("/auth/sign-in", base_url="https://connect.example.org")
    assert "max-age=31536000" in response.headers["Strict-Transport-Security"]
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie


def test_debug_off_by_default(app):
    """Battery 16: the application does not run in debug mode unless asked."""
    assert app.debug is False
    user = make_user()
    assert user.id
