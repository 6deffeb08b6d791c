"""The server's model thread under batch work (issue 20, points 3, 11 and 12), through uvicorn on
loopback: a Grad-CAM, a unit search and a fresh health report go before a running fill's next
step; every queue is bounded (503, one line, Retry-After); a request whose client went away
before its job started is not computed; queued fills say their place; a unit that is not a whole
number is 400. The fill pauses with the model as it was given, and its pictures are the same."""
from __future__ import annotations

import logging
import shutil
import socket
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from convscope.web import create_app  # noqa: E402
from convscope.web.health_pages import HealthPages  # noqa: E402

from tests.served import serving  # noqa: E402
from tests.test_fill import FV, built, relu6_model  # noqa: E402,F401  (built: the module's atlases)
from tests.test_web_search import search_library  # noqa: E402

#: A fill whose feature visualization runs long enough (several seconds) to be met running.
LONG_FV = {"steps": 2000, "size": 32}


@pytest.fixture
def one_thread():
    """torch on one thread meanwhile: on a loaded machine two threads per step took 15x longer."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def atlas_dir(built, tmp_path):  # noqa: F811
    out = tmp_path / "atlas"
    shutil.copytree(built / "partial", out)
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return search_library(tmp_path_factory)


def serve(atlas_dir, library, fill):
    app = create_app(atlas_dir, model=relu6_model(), index=library / "index", fill=fill,
                     pages=[lambda site: HealthPages(site, atlas_dir)])
    return app, serving(app)


def post(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(url, headers={"Origin": str(client.base_url).rstrip("/")})


def wait_for(client, url, statuses, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(url).json()
        if data["status"] in statuses:
            return data
        time.sleep(0.02)
    pytest.fail(f"{url} never reached {statuses}: {data}")


def fill_group(app):
    return next(g for g in app.state.groups if hasattr(g, "runs"))


def gate_fills(app) -> threading.Event:
    """Fills wait for the returned event before they start: the model thread is held, without
    pausing, as a long step of batch work would hold it."""
    group, gate = fill_group(app), threading.Event()
    gate.entered = threading.Event()  # set once a fill holds the model thread
    real = group._fill

    def held(layer, unit):
        gate.entered.set()
        return gate.wait(60) and real(layer, unit)

    group._fill = held
    return gate


def explain_url(client, row=0, cls=0):
    return f"/explain/{row}.jpg?class={cls}"


def test_interactive_work_goes_before_a_running_fill(atlas_dir, library, one_thread):
    """Before: the hover, the unit search and /health each waited for the whole fill."""
    app, served = serve(atlas_dir, library, LONG_FV)
    fill = "/api/layers/features/units/2/fill"
    with served as base, httpx.Client(base_url=base, timeout=120) as c:
        c.get(explain_url(c, 1, 1))  # the index's model loaded once, before the clock starts
        assert post(c, fill).status_code == 202
        wait_for(c, fill, ("running",))
        waits = {}
        for name, url in (("hover", explain_url(c, 0, 3)), ("unit search", "/api/search?unit=layer1:5"),
                          ("health", "/health")):
            started = time.monotonic()
            r = c.get(url)
            waits[name] = time.monotonic() - started
            assert r.status_code == 200, (name, r.text[:200])
        assert c.get(fill).json()["status"] == "running", waits  # all three went before the fill's end
        assert max(waits.values()) < 20, waits
        done = wait_for(c, fill, ("done", "error"))
        assert done["status"] == "done", done


def test_a_paused_fill_draws_what_an_unpaused_one_draws(built, atlas_dir):  # noqa: F811
    from convscope import featvis
    from convscope.atlas import Atlas
    from convscope.atlas.fill import Filler
    from tests.test_fill import assert_like_full, pixels

    class Always:
        calls = 0

        def wanted(self):
            return True

        def __call__(self):
            self.calls += 1

    model, pause = relu6_model(), Always()
    with Atlas.open(atlas_dir) as atlas:
        Filler(atlas, model, featvis=FV).fill("features", 2, pause=pause)
        # two photos read, one projection batch, and 3 of the 4 featvis steps
        assert pause.calls >= 2 + 1 + 3
        expected = featvis.render(model, "features", [2], progress=False, **FV).image(0)
        np.testing.assert_array_equal(pixels(atlas, atlas.featvis("features", 2)), np.asarray(expected.convert("RGB")))
    assert_like_full(atlas_dir, built / "full", "features", 2)


def test_a_pause_lets_the_model_go_as_it_was_given():
    """featvis.render(pause=...): at each pause the model has no hooks, its lock is free for
    another thread, its settings are the caller's; the images equal an unpaused render's."""
    from convscope import featvis
    from convscope.hooks import model_lock

    model = relu6_model()
    module = model.module
    module.train()  # a caller's setting, restored at every pause

    def lock_free_elsewhere() -> bool:
        got = []

        def take():
            lock = model_lock(module)
            got.append(lock.acquire(timeout=5))
            if got[0]:
                lock.release()

        t = threading.Thread(target=take)
        t.start()
        t.join()
        return got == [True]

    class EveryFifthStep:
        def __init__(self):
            self.asked, self.seen = 0, []

        def wanted(self):
            self.asked += 1
            return self.asked % 5 == 0

        def __call__(self):
            hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
            self.seen.append((hooks, lock_free_elsewhere(), module.training,
                              all(p.requires_grad for p in module.parameters())))

    pause = EveryFifthStep()
    paused = featvis.render(model, "features", [1, 4], steps=20, size=32, batch=1, progress=False, pause=pause)
    plain = featvis.render(model, "features", [1, 4], steps=20, size=32, batch=1, progress=False)
    # per unit, after steps 5, 10 and 15 (not after its last)
    assert pause.seen == [(0, True, True, True)] * 6
    np.testing.assert_array_equal(paused.images, plain.images)
    np.testing.assert_array_equal(paused.history, plain.history)
    assert module.training and all(p.requires_grad for p in module.parameters())


def test_queued_fills_say_their_place_and_one_runs(atlas_dir, library):
    """Before: every queued fill said "running"."""
    app, served = serve(atlas_dir, library, {"featvis": False})
    gate = gate_fills(app)
    urls = [f"/api/layers/features/units/{u}/fill" for u in (0, 1, 2)]
    with served as base, httpx.Client(base_url=base, timeout=60) as c:
        first = post(c, urls[0]).json()
        assert (first["status"], first["place"]) == ("queued", 1)
        wait_for(c, urls[0], ("running",))
        answers = [post(c, u).json() for u in urls[1:]]
        assert [(a["status"], a.get("place")) for a in answers] == [("queued", 1), ("queued", 2)]
        now = [c.get(u).json() for u in urls]
        assert [(a["status"], a.get("place"), a["queue"]) for a in now] == [
            ("running", None, 3), ("queued", 1, 3), ("queued", 2, 3)]
        gate.set()
        assert [wait_for(c, u, ("done", "error"))["status"] for u in urls] == ["done"] * 3


def test_a_request_abandoned_before_its_job_started_is_not_computed(atlas_dir, library, caplog):
    """Before: the picture was computed for no one (and cached)."""
    caplog.set_level(logging.INFO, logger="convscope.web")
    app, served = serve(atlas_dir, library, {"featvis": False})
    gate = gate_fills(app)
    finder = next(g for g in app.state.groups if hasattr(g, "finder")).finder
    with served as base, httpx.Client(base_url=base, timeout=60) as c:
        c.get(explain_url(c, 1, 1))  # the index's model loaded
        assert post(c, "/api/layers/features/units/0/fill").status_code == 202
        assert gate.entered.wait(60)  # the fill holds the model thread: the hover must wait
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:  # a hover, then the pointer leaves the page
            s.sendall(f"GET {explain_url(c, 2, 7)} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            deadline = time.monotonic() + 10
            while not app.state.site.workers.pause.wanted():
                assert time.monotonic() < deadline, "the hover never waited for the model"
                time.sleep(0.02)  # it waits for the model
        deadline = time.monotonic() + 10
        while not any("dropped before it started" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the server did not notice the client went away"
            time.sleep(0.02)
        assert not app.state.site.workers.pause.wanted()  # its place in the queue is free again
        gate.set()
        assert wait_for(c, "/api/layers/features/units/0/fill", ("done", "error"))["status"] == "done"
        assert (2, 7, None) not in finder._pictures  # never computed
        assert c.get(explain_url(c, 2, 7)).status_code == 200  # asked again, it is
        assert (2, 7, None) in finder._pictures


def test_full_queues_answer_503_with_retry_after(atlas_dir, library):
    """Before: the model's queue had no bound; the fill queue's 503 had no Retry-After."""
    app, served = serve(atlas_dir, library, {"featvis": False})
    app.state.site.workers.max_waiting = 2
    gate = gate_fills(app)
    group = fill_group(app)
    group.max_queue = 1
    with served as base, httpx.Client(base_url=base, timeout=60) as c:
        c.get(explain_url(c, 1, 1))  # the index's model loaded
        assert post(c, "/api/layers/features/units/0/fill").status_code == 202
        full = post(c, "/api/layers/features/units/1/fill")
        assert full.status_code == 503 and full.headers["retry-after"] == "60" and "at most 1" in full.json()["error"]
        assert gate.entered.wait(60)  # the fill holds the model thread: the hovers wait
        results = {}

        def hover(cls):
            with httpx.Client(base_url=base, timeout=60) as own:
                results[cls] = own.get(explain_url(c, 0, cls)).status_code

        threads = [threading.Thread(target=hover, args=(k,)) for k in (11, 12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(app.state.site.workers._lane.waiting["interactive"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for url in (explain_url(c, 0, 13), "/api/search?unit=layer1:5"):
            busy = c.get(url)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "2", busy.text[:200]
            assert "at most 2" in busy.text and "try again" in busy.text
        page = c.get("/search?unit=layer1:5")  # the page says it, with the same header
        assert page.status_code == 503 and page.headers["retry-after"] == "2" and "try again" in page.text
        gate.set()
        for t in threads:
            t.join(60)
        assert results == {11: 200, 12: 200}
        assert c.get(explain_url(c, 0, 13)).status_code == 200  # room again


def test_a_fill_unit_that_is_not_a_whole_number_is_400(atlas_dir, library):
    """Before: 404, though docs/api.md says 400."""
    app, served = serve(atlas_dir, library, {"featvis": False})
    with served as base, httpx.Client(base_url=base, timeout=60) as c:
        for unit in ("abc", "-1", "1.5", "%C2%B2"):  # the last: a superscript two, a digit to str.isdigit
            for r in (c.get(f"/api/layers/features/units/{unit}/fill"), post(c, f"/api/layers/features/units/{unit}/fill")):
                assert r.status_code == 400, (unit, r.text)
                assert "unit must be a whole number from 0" in r.json()["error"]
        r = c.get("/api/layers/features/units/99/fill")
        assert r.status_code == 404 and "units 0 to 5" in r.json()["error"]
