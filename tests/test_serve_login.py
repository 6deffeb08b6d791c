"""The login of a gallery served beyond loopback, through the real server: uvicorn on 127.0.0.1
told it is bound beyond (``create_app(secret=...)``), and ``convscope serve --host 0.0.0.0``
in its own process, reached on 127.0.0.1. No secret, a wrong one, the right one, a cookie sent
from another origin; and a gallery on loopback, which asks for nothing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from convscope.web import create_app, server_config  # noqa: E402
from convscope.web.security import Login, Secret  # noqa: E402

from .served import free_port, serving  # noqa: E402
from .test_hardening import photo, png_bytes  # noqa: E402
from .test_web import tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def gallery(web_atlas_dir):
    """The tiny atlas on 127.0.0.1, asking for :data:`SECRET` as it does bound beyond loopback."""
    with serving(create_app(web_atlas_dir, model=tiny_model(), fill=False, secret=SECRET)) as base:
        yield base


def sign_in(base: str, secret: str, next_url: str = "/", **headers) -> httpx.Response:
    return httpx.post(base + "/login", data={"secret": secret, "next": next_url}, timeout=30,
                      headers={"Origin": base, **headers})


def cookie_of(response: httpx.Response) -> tuple[str, str]:
    """(name, value) of the session cookie a response sets, and checks its attributes."""
    header = response.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in header.lower(), header
    name, _, value = header.split(";")[0].partition("=")
    return name, value


def wait_out(response: httpx.Response) -> None:
    time.sleep(float(response.headers.get("retry-after", 0)) + 0.1)


def test_without_the_secret_nothing_is_served(gallery):
    r = httpx.get(gallery + "/api/atlas", timeout=10)
    assert r.status_code == 401 and "asks for its secret: sign in at /login" in r.json()["error"]
    for page in ("/", "/layers/features.1?x=1", "/atlas/layers/features.1/unit_0000/top_00_patch.png"):
        r = httpx.get(gallery + page, timeout=10)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), page
    assert httpx.get(gallery + "/", timeout=10).headers["location"] == "/login?next=%2F"
    r = httpx.post(gallery + "/api/image", content=png_bytes(photo((80, 60))), timeout=30, headers={"Origin": gallery})
    assert r.status_code == 401
    login = httpx.get(gallery + "/login?next=/layers/features.1", timeout=10)
    assert login.status_code == 200 and 'name="secret"' in login.text and 'value="/layers/features.1"' in login.text
    assert httpx.get(gallery + "/static/style.css", timeout=10).status_code == 200  # the form's own style
    forged = httpx.get(gallery + "/api/atlas", timeout=10, cookies={cookie_of(sign_in(gallery, SECRET))[0]: "guess"})
    assert forged.status_code == 401


def test_a_wrong_secret_is_refused_and_slows_the_next_try(gallery):
    r = sign_in(gallery, "not the secret")
    assert r.status_code == 401 and "not this gallery&#39;s secret" in r.text and "set-cookie" not in r.headers
    again = sign_in(gallery, SECRET)  # even the right one waits its turn
    assert again.status_code == 429 and again.headers["retry-after"] == "1" and "try again in 1 s" in again.text
    wait_out(again)
    r = sign_in(gallery, "still not it")
    assert r.status_code == 401
    assert sign_in(gallery, SECRET).headers["retry-after"] == "2"  # doubled
    r = httpx.get(gallery + "/api/atlas?token=guess", timeout=10)  # the token in a URL counts alike
    assert r.status_code == 429
    time.sleep(2.1)
    r = httpx.get(gallery + "/api/atlas?token=guess", timeout=10)
    assert r.status_code == 401 and "not this gallery" in r.text
    time.sleep(4.1)
    ok = sign_in(gallery, SECRET)
    assert ok.status_code == 303  # the right one resets the count
    assert sign_in(gallery, "wrong again").status_code == 401 and sign_in(gallery, SECRET).headers["retry-after"] == "1"
    time.sleep(1.1)


def test_failed_clients_are_remembered_in_bounded_memory():
    login = Login(Secret(SECRET), clients=3)
    for n in range(100):
        assert not login.attempt(f"10.0.0.{n}", "wrong")
    assert len(login._failures) == 3 and login.wait("10.0.0.99") > 0 and login.wait("10.0.0.0") == 0


def test_the_right_secret_gives_a_cookie_that_opens_every_page(gallery):
    r = sign_in(gallery, SECRET, "/layers/features.1")
    assert r.status_code == 303 and r.headers["location"] == "/layers/features.1"
    name, value = cookie_of(r)
    assert SECRET not in r.headers["set-cookie"] and name == f"convscope-{gallery.rsplit(':', 1)[1]}"
    with httpx.Client(base_url=gallery, cookies={name: value}, timeout=30) as c:
        assert c.get("/api/atlas").status_code == 200
        assert c.get("/layers/features.1").status_code == 200
        up = c.post("/api/image", content=png_bytes(photo((80, 60))), headers={"Origin": gallery})
        assert up.status_code == 200 and len(up.json()["predictions"]) == 5
        assert c.get("/login?next=/api/atlas").headers["location"] == "/api/atlas"  # signed in already
    # the token in a URL: the cookie, and the same URL without it
    r = httpx.get(gallery + f"/layers/features.1?a=1&token={SECRET}", timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/layers/features.1?a=1" and cookie_of(r)[1] == value
    # a login never sends anyone to another site
    assert sign_in(gallery, SECRET, "//evil.example.com/x").headers["location"] == "/"


def test_a_stolen_cookie_does_not_work_from_another_origin(gallery):
    name, value = cookie_of(sign_in(gallery, SECRET))
    cookies = {name: value}
    for headers in ({"Origin": "http://evil.example.com"}, {"Sec-Fetch-Site": "cross-site"}):
        r = httpx.get(gallery + "/api/atlas", cookies=cookies, headers=headers, timeout=10)
        assert r.status_code == 401, headers
    r = httpx.post(gallery + "/api/image", content=png_bytes(photo((80, 60))), cookies=cookies, timeout=30,
                   headers={"Origin": "http://evil.example.com"})
    assert r.status_code == 403 and "cross-site request refused" in r.json()["error"]
    # a login form posted from another site is refused too (no login CSRF)
    r = sign_in(gallery, SECRET, Origin="http://evil.example.com")
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_on_loopback_nothing_is_asked(web_atlas_dir):
    with serving(create_app(web_atlas_dir, model=tiny_model(), fill=False)) as base:
        assert httpx.get(base + "/api/atlas", timeout=10).status_code == 200
        assert httpx.get(base + "/", timeout=10).status_code == 200


def test_serving_beyond_loopback_without_a_secret_is_refused(web_atlas_dir):
    from convscope.errors import ArgumentError

    app = create_app(web_atlas_dir, fill=False)
    with pytest.raises(ArgumentError, match=r"beyond loopback \(`host` '0.0.0.0'\) asks for a secret"):
        server_config(app, host="0.0.0.0", port=free_port())
    server_config(app, host="0.0.0.0", port=free_port(), secret=Secret.generate())
    assert app.state.login.required


# --------------------------------------------------------------------------- the CLI


def start(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """``convscope serve ARGS`` in its own process; (process, what it printed once it answers)."""
    port = int(args[args.index("--port") + 1])
    proc = subprocess.Popen([sys.executable, "-m", "convscope", "serve", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"), env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/style.css", timeout=2)
            return proc, log.read_text()
        except httpx.HTTPError:
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_serve_beyond_loopback_prints_a_token_and_asks_for_it(web_atlas_dir, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, printed = start([str(web_atlas_dir), "--host", "0.0.0.0", "--port", str(port), "--no-fill"],
                          tmp_path / "serve.log")
    try:
        token = re.search(rf"sign in once by opening http://0\.0\.0\.0:{port}/\?token=([\w-]+)", printed).group(1)
        assert len(token) >= 32 and "it asks for a secret" in printed
        # a reverse proxy on this machine connects from loopback: still asked
        assert httpx.get(base + "/api/atlas", timeout=10).status_code == 401
        assert httpx.get(base + "/api/atlas?token=" + token[::-1], timeout=10).status_code == 401
        time.sleep(1.1)
        r = httpx.get(base + "/?token=" + token, timeout=10)
        assert r.status_code == 303 and r.headers["location"] == "/"
        name, value = cookie_of(r)
        assert httpx.get(base + "/api/atlas", cookies={name: value}, timeout=10).status_code == 200
    finally:
        stop(proc)


def test_serve_with_a_password_file(web_atlas_dir, tmp_path):
    password = tmp_path / "password"
    password.write_text(SECRET + "\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, printed = start([str(web_atlas_dir), "--port", str(port), "--no-fill", "--password-file", str(password)],
                          tmp_path / "serve.log")
    try:
        assert f"sign in at http://127.0.0.1:{port}/login with the password in {password}" in printed
        assert SECRET not in printed
        assert httpx.get(base + "/api/atlas", timeout=10).status_code == 401
        name, value = cookie_of(sign_in(base, SECRET))
        assert httpx.get(base + "/api/atlas", cookies={name: value}, timeout=10).status_code == 200
    finally:
        stop(proc)


def test_a_password_file_too_short_is_one_line(web_atlas_dir, tmp_path):
    short = tmp_path / "short"
    short.write_text("1234\n")
    for path, words in ((short, "must hold a password of at least 8 characters"),
                        (tmp_path / "missing", "cannot read the --password-file")):
        r = subprocess.run([sys.executable, "-m", "convscope", "serve", str(web_atlas_dir), "--host", "0.0.0.0",
                            "--password-file", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and words in r.stderr and "--password-file" in r.stderr


def test_serve_on_loopback_asks_for_nothing(web_atlas_dir, tmp_path):
    port = free_port()
    proc, printed = start([str(web_atlas_dir), "--port", str(port), "--no-fill"], tmp_path / "serve.log")
    try:
        assert "token" not in printed and "secret" not in printed
        assert httpx.get(f"http://127.0.0.1:{port}/api/atlas", timeout=10).status_code == 200
    finally:
        stop(proc)


# --------------------------------------------------------------------------- in Chromium


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="no Chromium at /usr/bin/chromium")
def test_in_a_browser_the_secret_signs_in_with_a_cookie_scripts_cannot_read(web_atlas_dir):
    pytest.importorskip("playwright.sync_api")
    from .served import chromium

    token = Secret.generate()
    with serving(create_app(web_atlas_dir, model=tiny_model(), fill=False, secret=token)) as base, \
            chromium() as browser:
        page = browser.new_page()
        page.goto(base + "/layers/features.1")
        assert page.url.startswith(base + "/login?next=") and page.locator("input[name=secret]").count() == 1
        page.fill("input[name=secret]", token.token)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/layers/features.1")
        assert "features.1" in page.locator("h1").inner_text()
        cookie = next(c for c in page.context.cookies() if c["name"].startswith("convscope-"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"  # not sent from another site
        assert page.evaluate("document.cookie") == ""  # scripts cannot read it
        assert page.evaluate("fetch('/api/atlas').then(r => r.status)") == 200  # the gallery's own scripts can
        page.goto(base + "/?token=" + token.token)  # and a visit with the token in its URL drops it
        assert page.url == base + "/"
