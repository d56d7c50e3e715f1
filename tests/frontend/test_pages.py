"""Pages in a real browser (Debian's Chromium driven by Playwright): log in, browse, install a pack."""

import os
import shutil

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHROMIUM = os.environ.get("MEMHUB_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API keeps an event loop running in this thread; Django's ORM calls from the test
    # thread are still synchronous, so its async-safety guard does not apply.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium package.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server):
    call_command("seed_demo")
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(10_000)
    p = context.new_page()
    yield p
    context.close()


def login(page, username="demo", password="memhub-demo-password"):
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_wrong_password_shows_an_error(page):
    login(page, password="wrong")
    assert page.get_by_role("alert").inner_text() == "Wrong username or password."


def test_demo_user_logs_in_sees_namespaces_and_installs_a_pack(page):
    login(page)
    page.wait_for_selector("text=Welcome, demo")
    assert page.locator("text=user:demo").count() >= 1
    assert page.locator("text=Python Pitfalls").count() >= 1  # installed by the demo data
    page.click("text=Packs")
    assert page.locator("article.pack", has_text="Kitchen Basics").locator("text=Installed").count() == 1


def test_buying_a_paid_pack_on_the_test_ledger_then_installing_it(page):
    """Buy: the catalog sends the buyer to checkout (here the built-in test ledger's page); paying there
    makes the ledger deliver its signed webhook, which grants the licence; then the pack installs."""
    login(page)
    page.wait_for_selector("text=Welcome, demo")
    page.goto("/packs/")
    card = page.locator("article.pack", has_text="EU Travel Facts")
    card.get_by_role("button", name="Buy or install").click()
    page.wait_for_selector("h1:has-text('Checkout')")
    assert "9.00 USD" in page.locator("article").inner_text()
    page.get_by_role("button", name="Pay", exact=True).click()
    assert "licence for EU Travel Facts is active" in page.get_by_role("status").inner_text()
    page.locator("article.pack", has_text="EU Travel Facts").get_by_role(
        "button", name="Buy or install"
    ).click()
    assert "Installed EU Travel Facts 1.0.0" in page.get_by_role("status").inner_text()


def test_cancelling_at_the_ledger_checkout_grants_nothing(page):
    login(page)
    page.wait_for_selector("text=Welcome, demo")
    page.goto("/packs/")
    page.locator("article.pack", has_text="Warehouse Handbook").get_by_role(
        "button", name="Buy or install"
    ).click()
    page.wait_for_selector("h1:has-text('Checkout')")
    page.get_by_role("button", name="Cancel").click()
    assert "did not go through" in page.locator(".flash.error").inner_text()
    assert page.locator("article.pack", has_text="Warehouse Handbook").locator("text=Installed").count() == 0


def test_memories_page_lists_private_memories(page):
    login(page)
    page.goto("/memories/?namespace=user:demo")
    texts = page.locator(".results li p").all_inner_texts()
    assert "I prefer answers with code examples in Python." in texts
