"""The dashboard in a real browser: headless Chromium (Debian's) driven by selenium.

Starts a node, runs work, logs in, checks that nodes, actors, tasks, objects
and logs appear, that a new actor appears without a page reload, and that
nothing shows without the token. Screenshots of every page go to
``tests/artifacts/`` (git-ignored).
"""

import os
import shutil
import tempfile
import urllib.error
import urllib.request

import pytest

from actorcore.testing import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")

selenium = pytest.importorskip("selenium", reason="pip install -e '.[test]'")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"):
    pytest.skip("apt-get install chromium chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="actorcore-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(driver, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    driver.save_screenshot(os.path.join(ARTIFACTS, f"dashboard-{name}.png"))


def _text(driver):
    return driver.find_element(By.ID, "main").text if driver.find_elements(By.ID, "main") else ""


def _page_has(driver, *needles, timeout=20.0):
    def ok():
        html = driver.page_source
        return all(n in html for n in needles)

    wait_for(ok, timeout, interval=0.1, what=f"page shows {needles}")


@pytest.mark.timeout(180)
def test_dashboard_in_headless_chromium(fresh_runtime, browser):
    info = fresh_runtime()
    import numpy as np

    import actorcore as ac

    @ac.remote
    class Account:
        def __init__(self, owner):
            self.owner = owner

        def deposit(self, n):
            print(f"deposit {n} for {self.owner}")
            return n

    @ac.remote
    def crunch(i):
        return i * i

    @ac.remote
    def broken():
        raise RuntimeError("this task fails on purpose")

    first = Account.options(name="alice").remote("alice")
    assert ac.get([first.deposit.remote(i) for i in range(3)]) == [0, 1, 2]
    assert ac.get([crunch.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    with pytest.raises(RuntimeError):
        ac.get(broken.remote())
    big = ac.put(np.zeros(300_000))  # in the store: shows on the objects page

    base = info.dashboard_url
    # no token: refused, and no data
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/api/actors", timeout=10)
    assert e.value.code == 401
    browser.get(base + "/")
    _page_has(browser, "Dashboard token")
    assert first.id.hex() not in browser.page_source
    _shot(browser, "login")

    # log in through the form
    browser.find_element(By.ID, "token").send_keys(info.dashboard_token)
    browser.find_element(By.ID, "submit").click()
    _page_has(browser, info.node_id, "object store")
    _shot(browser, "overview")

    browser.get(base + "/#/actors")
    _page_has(browser, first.id.hex()[-6:], "Account", "alice", "ALIVE")
    browser.execute_script("window.__notReloaded = 42;")
    second = Account.options(name="bob").remote("bob")
    ac.get(second.deposit.remote(7))
    _page_has(browser, second.id.hex()[-6:], "bob")
    assert browser.execute_script("return window.__notReloaded;") == 42  # pushed, not reloaded
    _shot(browser, "actors")

    browser.get(base + f"/#/actor/{first.id.hex()}")
    _page_has(browser, "Recent calls", "Account.deposit", "deposit 2 for alice")
    _shot(browser, "actor")

    browser.get(base + "/#/tasks")
    _page_has(browser, "crunch", "FINISHED", "FAILED", "this task fails on purpose", "Traceback")
    _shot(browser, "tasks")

    browser.get(base + "/#/objects")
    _page_has(browser, big.id.hex()[-6:], "2.3 MiB")
    _shot(browser, "objects")

    browser.get(base + "/#/logs")
    _page_has(browser, "deposit 7 for bob")
    _shot(browser, "logs")

    # logged out: the page and the API refuse again
    browser.delete_all_cookies()
    browser.get(base + "/#/actors")
    browser.refresh()  # a new hash alone does not load the page again
    _page_has(browser, "Dashboard token")
    assert second.id.hex() not in browser.page_source


@pytest.mark.etcd
@pytest.mark.timeout(240)
def test_cluster_dashboard_in_headless_chromium(browser):
    """A 2-node cluster: one node serves the dashboard for both; an actor
    created on the other node appears without a reload, with its output."""
    import actorcore as ac
    from actorcore.testing import Cluster

    with Cluster(num_nodes=0, ttl_s=3.0) as c:
        c.add_node(num_cpus=1)
        c.add_node(num_cpus=1, resources={"onb": 2})
        a, b = c.nodes[0].node_id, c.nodes[1].node_id
        info = ac.init(address=c.address, attach_node=b)  # the driver is on B: URL from etcd
        try:
            from actorcore.util import state

            serving = [n["dashboard_url"] for n in state.list_nodes() if n.get("dashboard_url")]
            assert serving == [info.dashboard_url]  # one node serves the cluster's
            base = info.dashboard_url

            @ac.remote(resources={"onb": 1})
            class Remote:
                def hi(self, who):
                    print(f"remote hello to {who}")
                    return who

            @ac.remote(num_cpus=1, resources={"onb": 1})
            def on_b(i):
                return i

            first = Remote.options(name="first-on-b").remote()
            assert ac.get(first.hi.remote("ann")) == "ann"
            ac.get([on_b.remote(i) for i in range(3)])

            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + "/api/nodes", timeout=10)
            assert e.value.code == 401
            browser.get(base + "/")
            _page_has(browser, "Dashboard token")
            assert b not in browser.page_source
            browser.find_element(By.ID, "token").send_keys(info.dashboard_token)
            browser.find_element(By.ID, "submit").click()
            _page_has(browser, a, b, "ALIVE", "object store")
            _shot(browser, "cluster-overview")

            browser.get(base + "/#/actors")
            _page_has(browser, first.id.hex()[-6:], "first-on-b")
            browser.execute_script("window.__notReloaded = 7;")
            second = Remote.options(name="second-on-b").remote()
            ac.get(second.hi.remote("bo"))
            _page_has(browser, second.id.hex()[-6:], "second-on-b", b)
            assert a not in browser.page_source  # (every actor lives on B)
            assert browser.execute_script("return window.__notReloaded;") == 7
            _shot(browser, "cluster-actors")

            browser.get(base + f"/#/actor/{second.id.hex()}")
            _page_has(browser, "Recent calls", "Remote.hi", "remote hello to bo")
            _shot(browser, "cluster-actor")

            browser.get(base + "/#/tasks")
            _page_has(browser, "on_b", "FINISHED")
            _shot(browser, "cluster-tasks")

            browser.get(base + "/#/logs")
            _page_has(browser, "remote hello to ann", "remote hello to bo")
            _shot(browser, "cluster-logs")
        finally:
            ac.shutdown()
