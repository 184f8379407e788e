"""The console in a real browser (headless Chromium, JavaScript off) against the live gateway:
sign in with each kind of key, see real traffic, create and revoke a key, search memory, open a
request and the memory it was given, delete a thread; and the security rules, over HTTP:
another workspace's ids are 404s, CSRF-less or cross-origin posts are refused, the headers hold,
sign-in attempts are bounded."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx2 as httpx
import pytest
from redis import Redis
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from gateway.services import workspaces
from tests.conftest import MASTER_KEY, Gateway, Services, Tenant, make_tenant, run_db, usage_rows
from tests.gateway.console.conftest import shot
from tests.memory.test_chat_memory import wait_embedded

pytestmark = pytest.mark.usefixtures("worker")


def _traffic(gateway: Gateway, http: httpx.Client, tenant: Tenant) -> dict[str, str]:
    """A remembered fact, then a question in another thread that recalls it: its request id."""
    marker = uuid.uuid4().hex[:8]
    thread = f"console-{marker}"
    with gateway.client(tenant.key) as client:
        client.chat.completions.create(
            model="mock/gpt", extra_headers={"X-Thread-Id": thread},
            messages=[{"role": "user", "content": f"My lighthouse is called Pharos-{marker}."}],
        )  # fmt: skip
        wait_embedded(http, tenant.key, thread, 2)
        raw = client.chat.completions.with_raw_response.create(
            model="mock/gpt", extra_headers={"X-Thread-Id": f"ask-{marker}"},
            messages=[{"role": "user", "content": "What is my lighthouse called?"}],
        )  # fmt: skip
    request_id = raw.headers["x-request-id"]
    assert int(raw.headers["x-memory-items"]) >= 1
    usage_rows(http, tenant, 1, group_by=None, timeout=15)
    return {"marker": marker, "thread": thread, "request_id": request_id}


def _sign_in(chrome: webdriver.Chrome, gateway: Gateway, key: str) -> None:
    chrome.delete_all_cookies()
    chrome.get(f"{gateway.url}/ui/login")
    chrome.find_element(By.ID, "key").send_keys(key)
    _go(chrome, chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]"))


def _go(chrome: webdriver.Chrome, element: WebElement) -> None:
    """Click, and wait for the page it leads to (a click returns before the navigation)."""
    old = chrome.find_element(By.TAG_NAME, "html")
    element.click()

    def gone(_: object) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale, or "does not belong to the document"
            return True
        return False

    WebDriverWait(chrome, 15).until(gone)


def _text(chrome: webdriver.Chrome) -> str:
    mains = chrome.find_elements(By.TAG_NAME, "main")
    assert mains, chrome.page_source[:2000]
    return str(mains[0].text)


def test_a_workspace_session_end_to_end(
    browser: webdriver.Chrome, gateway: Gateway, http: httpx.Client, tenant: Tenant
) -> None:
    seen = _traffic(gateway, http, tenant)
    _sign_in(browser, gateway, tenant.key)
    assert browser.current_url.endswith("/ui")
    assert int(browser.find_element(By.ID, "requests").text) >= 2
    assert f"Workspace {tenant.name}" in browser.find_element(By.TAG_NAME, "header").text
    assert "mock/gpt" in _text(browser)
    # requests, tokens, cost and error rate per day, cost per model
    assert len(browser.find_elements(By.TAG_NAME, "svg")) == 5
    shot(browser, "overview")

    # the request inspector, from the recent requests list: the memory it was given
    _go(browser, browser.find_element(By.LINK_TEXT, seen["request_id"]))
    page = _text(browser)
    assert f"Pharos-{seen['marker']}" in page and "mock/gpt" in page and "Provider" in page
    shot(browser, "request")
    _go(browser, browser.find_element(By.CSS_SELECTOR, "ol.injected a"))  # to the item's thread
    assert seen["thread"] in _text(browser)

    # search playground: hits with each signal the ranker saw
    browser.get(f"{gateway.url}/ui/search?q=lighthouse+name")
    assert f"Pharos-{seen['marker']}" in _text(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "table.explain")
    shot(browser, "search")

    # keys: create one (its secret shown once, and it works), then revoke it (and it stops)
    browser.get(f"{gateway.url}/ui/keys")
    browser.find_element(By.ID, "name").send_keys("from-console")
    browser.find_element(By.ID, "rpm_limit").send_keys("60")
    _go(browser, browser.find_element(By.XPATH, "//button[text()='Create key']"))
    secret = browser.find_element(By.ID, "secret").get_attribute("value") or ""
    assert secret.startswith("cmg_")
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    _go(browser, browser.find_element(By.CSS_SELECTOR, "button[aria-label='Revoke from-console']"))
    assert "revoked" in _text(browser)
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401

    # memory: the thread is listed; deleting it needs the confirmation box
    browser.get(f"{gateway.url}/ui/memory")
    _go(browser, browser.find_element(By.LINK_TEXT, seen["thread"]))
    assert f"Pharos-{seen['marker']}" in _text(browser)
    browser.find_element(By.ID, "confirm").click()
    _go(browser, browser.find_element(By.XPATH, "//button[text()='Delete thread']"))
    assert seen["thread"] not in _text(browser)
    gone = http.get(f"/v1/memory/threads/{seen['thread']}",
                    headers={"Authorization": f"Bearer {tenant.key}"})  # fmt: skip
    assert gone.status_code == 404

    browser.set_window_size(390, 844)  # a phone: nothing wider than the screen
    for path in ("/ui", "/ui/keys", "/ui/memory", f"/ui/request?id={seen['request_id']}"):
        browser.get(f"{gateway.url}{path}")
        viewport = browser.find_element(By.TAG_NAME, "html").rect["width"]
        # the page's blocks (a table scrolls inside its own box, so its cells may be wider)
        for where in (
            "//header",
            "//main",
            "//main/form",
            "//main//table",
            "//*[local-name()='svg']",
            "//input",
        ):
            for element in browser.find_elements(By.XPATH, where):
                if where == "//input" and element.find_elements(By.XPATH, "ancestor::table"):
                    continue
                assert element.rect["x"] + element.rect["width"] <= viewport + 1, (path, where)
    browser.get(f"{gateway.url}/ui")
    shot(browser, "phone")
    browser.set_window_size(1280, 1000)
    _go(browser, browser.find_element(By.XPATH, "//button[text()='Sign out']"))
    assert browser.current_url.endswith("/ui/login")
    browser.get(f"{gateway.url}/ui/keys")
    assert browser.current_url.endswith("/ui/login")  # the session is gone server-side


def test_a_master_session_picks_a_workspace_and_says_so(
    browser: webdriver.Chrome, gateway: Gateway, tenant: Tenant
) -> None:
    _sign_in(browser, gateway, MASTER_KEY)
    _go(browser, browser.find_element(By.LINK_TEXT, tenant.name))
    header = browser.find_element(By.TAG_NAME, "header").text
    assert "Master session" in header and tenant.name in header
    _go(browser, browser.find_element(By.LINK_TEXT, "Keys"))
    assert f"workspace={tenant.name}" in browser.current_url and "active" in _text(browser)


def _session(gateway: Gateway, key: str, workspace: str = "") -> tuple[httpx.Client, str]:
    """A signed-in HTTP client (cookies kept) and its CSRF token."""
    client = httpx.Client(base_url=gateway.url, timeout=30)
    reply = client.post("/ui/login", data={"key": key})
    assert reply.status_code == 303 and reply.headers["location"] == "/ui"
    keys = client.get("/ui/keys", params={"workspace": workspace} if workspace else None)
    token = re.search(r'name="csrf" value="([^"]+)"', keys.text)
    assert token is not None
    return client, token.group(1)


def test_another_workspaces_ids_are_not_found_and_posts_need_csrf(
    gateway: Gateway, http: httpx.Client, tenant: Tenant, services: Services
) -> None:
    seen = _traffic(gateway, http, tenant)
    other = make_tenant(services)
    theirs, their_csrf = _session(gateway, other.key)
    mine, my_csrf = _session(gateway, tenant.key)
    try:
        for path in (f"/ui/thread?id={seen['thread']}", f"/ui/request?id={seen['request_id']}",
                     f"/ui/thread?id={seen['thread']}&workspace={tenant.name}"):  # fmt: skip
            assert theirs.get(path).status_code == 404, path
            assert mine.get(path.split("&")[0]).status_code == 200, path
        revoke = theirs.post("/ui/keys/revoke", data={"csrf": their_csrf, "key_id": tenant.key_id})
        assert revoke.status_code == 404
        form = {"csrf": their_csrf, "id": seen["thread"], "confirm": "yes"}
        delete = theirs.post("/ui/thread/delete", data=form)
        assert delete.status_code == 404
        # no token, a wrong one, another origin: refused, nothing done
        assert mine.post("/ui/keys", data={"name": "x"}).status_code == 403
        assert mine.post("/ui/keys", data={"name": "x", "csrf": their_csrf}).status_code == 403
        cross = mine.post("/ui/keys", data={"name": "x", "csrf": my_csrf},
                          headers={"Origin": "https://evil.example"})  # fmt: skip
        assert cross.status_code == 403
        assert "from-console" not in mine.get("/ui/keys").text
        assert mine.get(f"/ui/thread?id={seen['thread']}").status_code == 200  # still there
    finally:
        theirs.close()
        mine.close()


def test_headers_cookie_and_signed_out_pages(gateway: Gateway, tenant: Tenant) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        login = client.get("/ui/login")
        csp = login.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script at all
        assert login.headers["cache-control"] == "no-store"
        for path in ("/ui", "/ui/keys", "/ui/memory", "/ui/search?q=x", "/ui/request?id=x"):
            reply = client.get(path)
            assert reply.status_code == 303 and reply.headers["location"] == "/ui/login", path
        signed = client.post("/ui/login", data={"key": tenant.key})
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert tenant.key not in signed.headers["set-cookie"]
        assert client.post("/ui/login", data={"key": "cmg_not_a_key"}).status_code == 401


def test_failed_sign_ins_are_bounded(gateway: Gateway, services: Services, tenant: Tenant) -> None:
    redis = Redis.from_url(services.redis_url)
    for key in redis.scan_iter("cmg:console:signin:*"):  # earlier tests' failures
        redis.delete(key)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            codes = [client.post("/ui/login", data={"key": f"cmg_guess{n}"}).status_code
                     for n in range(12)]  # fmt: skip
            # blocked even with the right key, until the minute is over
            right = client.post("/ui/login", data={"key": tenant.key}).status_code
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429] and right == 429
    finally:
        for key in redis.scan_iter("cmg:console:signin:*"):
            redis.delete(key)
        redis.close()


def _limited_key(
    services: Services, tenant: Tenant, name: str, rpm: int
) -> tuple[str, workspaces.KeyInfo]:
    async def create(session: Any) -> tuple[str, workspaces.KeyInfo]:
        return await workspaces.create_key(session, tenant.name, name=name, rpm_limit=rpm)

    result: tuple[str, workspaces.KeyInfo] = run_db(services, create)
    return result


def test_a_limited_key_mints_no_looser_key_and_its_revocation_ends_the_session(
    gateway: Gateway, services: Services, tenant: Tenant
) -> None:
    secret, info = _limited_key(services, tenant, "limited", 5)
    client, csrf = _session(gateway, secret)
    try:
        for asked, name in (("", "same"), ("100", "looser"), ("2", "tighter")):
            made = client.post("/ui/keys", data={"csrf": csrf, "name": name, "rpm_limit": asked})
            assert made.status_code == 200 and "cmg_" in made.text
        keys = {k.name: k for k in run_db(services, lambda s: workspaces.list_keys(s, tenant.name))}
        assert (keys["same"].rpm_limit, keys["looser"].rpm_limit, keys["tighter"].rpm_limit) == (
            5, 5, 2)  # fmt: skip
        wider = {"csrf": csrf, "key_id": keys["same"].id, "rpm_limit": "500"}
        loosen = client.post("/ui/keys/limits", data=wider)
        assert loosen.status_code == 303
        after = {
            k.name: k for k in run_db(services, lambda s: workspaces.list_keys(s, tenant.name))
        }
        assert after["same"].rpm_limit == 5  # capped again
        with httpx.Client(base_url=gateway.url, timeout=30) as admin:
            revoked = admin.post(f"/admin/keys/{info.id}/revoke",
                                 headers={"Authorization": f"Bearer {MASTER_KEY}"})  # fmt: skip
            assert revoked.status_code == 200
        ended = client.get("/ui/keys")
        assert ended.status_code == 303 and ended.headers["location"] == "/ui/login"
    finally:
        client.close()


def test_settings_are_changed_by_a_master_session_only(
    gateway: Gateway, services: Services, tenant: Tenant
) -> None:
    master, master_csrf = _session(gateway, MASTER_KEY, workspace=tenant.name)
    mine, my_csrf = _session(gateway, tenant.key)
    try:
        form = {"csrf": master_csrf, "workspace": tenant.name, "memory": "read",
                "monthly_budget_usd": "12.5", "redact_pii": "true",
                "retention_days": ""}  # fmt: skip
        saved = master.post("/ui/settings", data=form)
        assert saved.status_code == 303 and "saved=1" in saved.headers["location"]
        ws = run_db(services, lambda s: workspaces.get_workspace(s, tenant.name))
        assert ws.settings["memory"] == "read" and ws.settings["monthly_budget_usd"] == 12.5
        assert ws.settings["redact_pii"] is True and ws.settings["retention_days"] is None
        bad = master.post("/ui/settings", data={**form, "memory": "sometimes"})
        assert bad.status_code == 400 and "memory mode" in bad.text  # the API's own rule
        refused = mine.post("/ui/settings", data={"csrf": my_csrf, "memory": "off"})
        assert refused.status_code == 403
        page = mine.get("/ui/settings").text
        assert 'id="value-memory">read<' in page and "Read-only" in page
    finally:
        master.close()
        mine.close()


def test_forgetting_an_end_user_needs_confirmation_and_stays_in_the_workspace(
    gateway: Gateway, http: httpx.Client, services: Services, tenant: Tenant
) -> None:
    user = f"enduser-{uuid.uuid4().hex[:8]}"
    note = {"content": f"{user} collects tin robots", "user": user, "role": "user"}
    added = http.post("/v1/memory/items", json={"items": [note, {**note, "content": "and kites"}]},
                      headers={"Authorization": f"Bearer {tenant.key}"})  # fmt: skip
    assert added.status_code == 201
    other = make_tenant(services)
    theirs, their_csrf = _session(gateway, other.key)
    mine, my_csrf = _session(gateway, tenant.key)
    try:
        form = {"csrf": their_csrf, "user": user, "confirm": "yes"}
        assert (
            'id="forgotten">0 memory items' in theirs.post("/ui/memory/forget-user", data=form).text
        )
        unconfirmed = mine.post("/ui/memory/forget-user", data={"csrf": my_csrf, "user": user})
        assert unconfirmed.status_code == 400
        done = mine.post("/ui/memory/forget-user", data={"csrf": my_csrf, "user": user,
                                                           "confirm": "yes"})  # fmt: skip
        assert done.status_code == 200 and 'id="forgotten">2 memory items' in done.text
        left = http.get("/v1/memory/search", params={"q": "tin robots kites", "user": user},
                        headers={"Authorization": f"Bearer {tenant.key}"})  # fmt: skip
        assert left.json()["data"] == []
    finally:
        theirs.close()
        mine.close()


def test_the_overview_counts_refused_requests(
    gateway: Gateway, services: Services, tenant: Tenant
) -> None:
    secret, _ = _limited_key(services, tenant, "rpm2", 2)
    body = {"model": "mock/gpt", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, timeout=30) as api:
        codes = [api.post("/v1/chat/completions", json=body, headers={
            "Authorization": f"Bearer {secret}", "X-Memory": "off"}).status_code
            for _ in range(4)]  # fmt: skip
    assert codes == [200, 200, 429, 429]
    client, _ = _session(gateway, tenant.key)
    try:
        deadline = time.monotonic() + 15  # refusals are flushed with usage, in batches
        while 'id="refused">2 / 0<' not in (page := client.get("/ui").text):
            assert time.monotonic() < deadline, re.findall(r'id="refused">[^<]*', page)
            time.sleep(0.3)
    finally:
        client.close()
