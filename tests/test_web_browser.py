"""The web client in a real browser: Debian's Chromium, headless, driven by Playwright.

Log in, join a room, talk with a user on the TLS port both ways, get a private message,
see markup shown as text, come back after a dropped connection with the resume token, and
fit a phone's screen, all without one console error (a CSP violation is one: the page
must pass its own policy).

Chromium trusts exactly the test server's key (``--ignore-certificate-errors-spki-list``
with its SPKI hash), not every certificate as ``ignore_https_errors`` would: a page served
with any other key still fails, so the test still exercises a real TLS verification step
against a known key. This test is never skipped: without ``/usr/bin/chromium`` it fails
(``make test`` installs it through scripts/ensure-test-deps.sh).

Set ``SEALROOM_WEB_SCREENSHOT=docs/web.png`` to save the picture the README shows.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from helpers import Client, Server, ServerFactory, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000


def spki_hash(cert_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): how Chromium names a key to trust."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def browser(tls_files: dict[str, Path]) -> Iterator[Browser]:
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run scripts/ensure-test-deps.sh as root"
    trusted = f"--ignore-certificate-errors-spki-list={spki_hash(tls_files['cert'])}"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, trusted], timeout=60_000
        )
        yield launched
        launched.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def web(make_server: ServerFactory) -> Server:
    return make_server(web={"listen": "127.0.0.1:0"})


def open_page(browser: Browser, server: Server, **options: Any) -> tuple[Page, Console]:
    context = browser.new_context(**options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = Console(page)
    response = page.goto(f"https://localhost:{server.web_port}/")
    assert response is not None
    assert response.status == 200
    return page, console


def log_in(page: Page, name: str) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("status")).to_have_text(f"Connected as {name}")


def messages(page: Page) -> list[str]:
    return page.get_by_role("log", name="Messages").locator("li").all_inner_texts()


def read_until(client: Client, prefix: str) -> str:
    for _ in range(50):
        line = client.line(timeout=10)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r}")


def test_chat_in_the_browser_with_a_tls_user(browser: Browser, web: Server) -> None:
    web.add_user("alice")
    bob = web.user("bob")
    page, console = open_page(browser, web, viewport={"width": 1100, "height": 700})
    log_in(page, "alice")
    read_until(bob, "JOIN #lobby alice")

    # Join a room; bob joins it too.
    page.get_by_label("Room", exact=True).fill("#dev")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.get_by_role("heading", name="#dev")).to_be_visible()
    assert bob.request("/join #dev").startswith("OK join #dev")
    expect(page.get_by_role("log", name="Messages")).to_contain_text("bob joined")

    # Browser -> TLS.
    field = page.get_by_label("Message", exact=True)
    field.fill("hello from chromium")
    field.press("Enter")
    assert read_until(bob, "MSG ") == "MSG #dev alice hello from chromium"
    expect(page.get_by_role("log", name="Messages")).to_contain_text("alice: hello from chromium")

    # TLS -> browser, markup included: it must arrive as text.
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'
    assert bob.request("hello from the terminal").startswith("OK say #dev")
    assert bob.request(hostile).startswith("OK say #dev")
    log = page.get_by_role("log", name="Messages")
    expect(log).to_contain_text("bob: hello from the terminal")
    expect(log).to_contain_text(f"bob: {hostile}")
    assert page.evaluate("window.pwned") is None
    assert log.locator("script, img, b").count() == 0

    # Who is here.
    who = page.get_by_role("complementary", name="Who is here")
    expect(who).to_contain_text("alice (you)")
    expect(who.get_by_role("button", name="Private message to bob")).to_be_visible()

    # A private message from bob shows up under Private, and opens as a conversation.
    assert bob.request("/msg alice psst, over here").startswith("OK msg alice")
    nav = page.get_by_role("navigation", name="Conversations")
    expect(nav).to_contain_text("bob (1 new)")
    screenshot = os.environ.get("SEALROOM_WEB_SCREENSHOT")
    if screenshot:
        page.screenshot(path=screenshot)
    nav.get_by_role("button", name="bob", exact=True).click()
    expect(page.get_by_role("heading", name="Private: bob")).to_be_visible()
    expect(log).to_contain_text("bob: psst, over here")
    field.fill("and back to you")
    field.press("Enter")
    assert read_until(bob, "DM ") == "DM alice and back to you"

    # A command typed in the field goes as it is, and its reply is shown.
    field.fill("/ping from the field")
    field.press("Enter")
    expect(log).to_contain_text("OK ping from the field")

    assert console.errors == []
    page.context.close()


def test_history_on_entry_and_reconnect_with_resume(browser: Browser, web: Server) -> None:
    web.add_user("alice")
    bob = web.user("bob")
    for n in range(3):
        assert bob.request(f"earlier {n}").startswith("OK say #lobby")
    page, console = open_page(browser, web)
    log_in(page, "alice")
    log = page.get_by_role("log", name="Messages")
    expect(log).to_contain_text("bob: earlier 2")
    assert [line for line in messages(page) if line.startswith("bob: earlier")] == [
        "bob: earlier 0",
        "bob: earlier 1",
        "bob: earlier 2",
    ]
    # The room directory: this server may not have /list yet; the page copes either way.
    expect(page.get_by_role("navigation", name="Conversations")).to_contain_text(
        re.compile(r"join one by name|#lobby")
    )
    page.get_by_label("Room", exact=True).fill("dev")
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.get_by_role("heading", name="#dev")).to_be_visible()
    read_until(bob, "JOIN #lobby alice")
    # The connection drops (not a kick): the page comes back with its resume token and
    # rejoins its rooms.
    web.app.hub.disconnect("alice", "node-unavailable")
    wait_until(lambda: not web.app.hub.is_online("alice"), what="alice dropped")
    expect(page.get_by_role("status")).to_have_text("Connected as alice", timeout=20_000)
    assert bob.request("/join #dev").startswith("OK join #dev")
    wait_until(lambda: web.app.hub.who("#dev") == ["alice", "bob"], what="alice back in #dev")
    assert bob.request("/say #dev after the drop").startswith("OK say #dev")
    expect(log).to_contain_text("bob: after the drop")
    assert console.errors == []
    page.context.close()


def test_a_phone_sized_screen(browser: Browser, web: Server) -> None:
    web.add_user("alice")
    page, console = open_page(
        browser, web, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    log_in(page, "alice")
    field = page.get_by_label("Message", exact=True)
    expect(field).to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    field.fill("from a phone " + "long-word" * 20)
    field.press("Enter")
    expect(page.get_by_role("log", name="Messages")).to_contain_text("alice: from a phone")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert console.errors == []
    page.context.close()


def test_stay_signed_in_on_this_tab(browser: Browser, web: Server) -> None:
    web.add_user("alice")
    page, console = open_page(browser, web)
    log_in(page, "alice")
    # Not ticked: nothing is kept beyond this page's memory.
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.get_by_label("Stay signed in on this tab").check()
    log_in(page, "alice")
    wait_until(lambda: page.evaluate("sessionStorage.length") == 1, what="the token stored")
    stored = page.evaluate("JSON.parse(sessionStorage.getItem('sealroom.resume'))")
    assert set(stored) == {"name", "token"}
    assert stored["name"] == "alice"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", stored["token"])
    page.reload()
    expect(page.get_by_role("status")).to_have_text("Connected as alice")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert console.errors == []
    page.context.close()


def test_wrong_password_is_said_and_nothing_is_stored(browser: Browser, web: Server) -> None:
    web.add_user("alice")
    page, console = open_page(browser, web)
    page.get_by_label("Name", exact=True).fill("alice")
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("auth-failed")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert "password" not in page.url
    assert console.errors == []
    page.context.close()


def test_the_policy_blocks_inline_script_and_the_console_says_so(
    browser: Browser, web: Server
) -> None:
    """What makes "no console errors" mean something: a CSP violation is one."""
    page, console = open_page(browser, web)
    page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.inlineRan = true";
            document.body.append(script);
        }"""
    )
    wait_until(lambda: bool(console.errors), what="a console error")
    assert page.evaluate("window.inlineRan") is None
    assert any("Content Security Policy" in error for error in console.errors), console.errors
    page.context.close()


def test_a_page_from_another_origin_cannot_open_the_websocket(
    browser: Browser, web: Server
) -> None:
    """Cross-site WebSocket hijacking, tried by a real browser: a page that is not the
    server's own (here an opaque origin, which Chromium sends as ``Origin: null``) gets no
    WebSocket, while the server's own page does."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    url = f"wss://localhost:{web.web_port}/ws"
    script = """url => new Promise(resolve => {
        const ws = new WebSocket(url);
        ws.onmessage = event => { resolve("open: " + event.data); ws.close(); };
        ws.onerror = () => resolve("refused");
    })"""
    page.set_content("<p>elsewhere</p>")
    assert page.evaluate(script, url) == "refused"
    assert web.app.snapshot().web_answers.get(403) == 1
    own, _ = open_page(browser, web)
    assert own.evaluate(script, url).startswith("open: HELLO sealroom 1 ")
    own.context.close()
    page.close()
