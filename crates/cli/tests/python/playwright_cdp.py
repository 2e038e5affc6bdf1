"""Playwright (PyPI `playwright` 1.65) drives a sandbox's browser through
hull's raw CDP endpoint: connect_over_cdp to the daemon's HTTP URL (it asks
json/version/ first, then opens the WebSocket it names) with the bearer
token, then navigate to a page served inside the sandbox and read it.

usage: playwright_cdp.py BASE_URL SANDBOX TOKEN; prints "ok".
"""

import sys

from playwright.sync_api import sync_playwright


def main() -> None:
    base, sandbox, token = sys.argv[1], sys.argv[2], sys.argv[3]
    url = f"{base}/v1/sandboxes/{sandbox}/browser/cdp"
    with sync_playwright() as p:
        browser = p.chromium.connect_over_cdp(
            url, headers={"Authorization": f"Bearer {token}"}, timeout=30000
        )
        context = browser.contexts[0]
        page = context.new_page()
        page.goto("http://127.0.0.1:8765/")
        assert page.title() == "From the sandbox", page.title()
        page.fill("#q", "typed by playwright")
        page.click("#go")
        page.wait_for_selector("#out.done")
        assert page.inner_text("#out") == "typed by playwright", page.inner_text("#out")
        browser.close()
    print("ok")


if __name__ == "__main__":
    main()
