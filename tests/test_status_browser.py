"""The status page in a real browser: Debian's chromium, headless, driven through chromium-driver (WebDriver) by
selenium, against the whole gateway running in-process with a simulated PLC and mosquitto.

It waits on the page itself: a MutationObserver in the page resolves when the awaited text appears, so nothing
here sleeps or polls. The phone-sized screenshot of the final page is kept in tests/artefacts/ (ignored by git).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.tables import Table
from simulators.modbus import ModbusSimulator
from tests.brokers import WAIT, Broker, free_port
from tests.e2e import running
from tests.status_helpers import serving, status_site

ARTEFACTS = Path(__file__).parent / "artefacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), shutil.which("chromedriver") or "/usr/bin/chromedriver"
PRESSURE = 'tr[data-key="water-supply/ps01/ps01-station|outlet-pressure"] td.value'
PHONE = {"width": 390, "height": 844, "pixelRatio": 2}
ALARM = '#alarms li[data-alarm="low-outlet-pressure"]'

# Resolves once `selector` matches an element whose text contains `text`: checked now and on every change of the page.
_APPEARS = """
const [selector, text, done] = arguments;
const found = () => [...document.querySelectorAll(selector)].some((e) => e.textContent.includes(text));
if (found()) { done(true); return; }
const watcher = new MutationObserver(() => { if (found()) { watcher.disconnect(); done(true); } });
watcher.observe(document.documentElement, {subtree: true, childList: true, characterData: true});
"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists(),
                                reason="Debian's chromium and chromium-driver are not installed")


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # nothing but this machine
        options.add_argument(argument)
    # A phone's screen (headless chromium's windows are never narrower than 500 px; emulation is).
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": PHONE})
    # Both paths given: selenium looks for nothing and downloads nothing.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


async def appears(browser: Any, selector: str, text: str = "") -> None:
    await asyncio.to_thread(browser.execute_async_script, _APPEARS, selector, text)


async def test_the_page_shows_a_live_value_change_and_the_alarm_it_raises(
        tmp_path: Path, broker: Broker, plc: ModbusSimulator, browser: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    async with running(status_site(tmp_path, broker.port, plc.port, port)) as gateway:
        await serving(gateway)
        await asyncio.to_thread(browser.get, base)
        await appears(browser, "#live", "live")
        await appears(browser, PRESSURE, "412")
        await appears(browser, "#no-alarms")
        assert browser.find_element("css selector", "#no-alarms").is_displayed()

        plc.set_registers(1, Table.HOLDING_REGISTER, 0, [250])  # below the 300 kPa limit
        await appears(browser, PRESSURE, "250")
        await appears(browser, ALARM, "low-outlet-pressure")
        alarm = browser.find_element("css selector", ALARM).text
        assert "major" in alarm and "250 kPa" in alarm and "limit 300" in alarm
        assert not browser.find_element("css selector", "#no-alarms").is_displayed()
        assert "plc-1" in browser.find_element("css selector", 'tr[data-device="plc-1"]').text

        # Everything the page loaded came from the gateway itself: no CDN, no font service.
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert loaded and all(url.startswith(base) for url in loaded), loaded
        # A phone's width: nothing wider than the screen.
        assert browser.execute_script("return window.innerWidth") == PHONE["width"]
        wider = browser.execute_script("""return [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth).map((e) => e.outerHTML.slice(0, 80))""")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE["width"], wider

        ARTEFACTS.mkdir(exist_ok=True)
        shot = ARTEFACTS / "status-page-phone.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        browser.execute_script("document.getElementById('values-section').scrollIntoView()")
        assert browser.save_screenshot(str(ARTEFACTS / "status-page-phone-values.png"))
