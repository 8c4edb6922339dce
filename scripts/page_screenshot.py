"""The README's picture of the play page: `sgpt serve` of the shipped model, a scene continued with
heat on and one character's alternatives shown, in the distribution's headless Chromium.

    python scripts/page_screenshot.py [--out docs/page.png] [--width 1000] [--height 760] [--seed 4]

Needs the test extra's Selenium and Debian's `chromium` and `chromium-driver` (apt-get install
chromium chromium-driver). What it does not do: download anything, or touch any file but --out
(written through sgpt's atomic_path).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run")
SCENE = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"


def chromium(width: int, height: int, profile: str):
    """The distribution's headless Chromium under Selenium, a fresh profile, every wait bounded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def serve(model: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`sgpt serve` on a free 127.0.0.1 port: (the process, its base URL)."""
    flags = ["--model", str(model)] if model else []
    proc = subprocess.Popen([sys.executable, "-m", "sgpt_cli", "serve", "--port", "0", "--device", "cpu", *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    found = re.search(r"(http://\S+)/v1 ", proc.stdout.readline())
    if not found:
        proc.kill()
        raise SystemExit(f"sgpt serve did not start: {proc.stderr.read()[:500]}")
    return proc, found.group(1)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(15)


@contextlib.contextmanager
def page_session(model: Path | None, width: int, height: int):
    """(a browser, the URL of a fresh `sgpt serve`); both gone afterwards, whatever happened."""
    proc, url = serve(model)
    profile = tempfile.mkdtemp(prefix="sgpt-chromium-")
    try:
        driver = chromium(width, height, profile)
        try:
            yield driver, url
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        stop(proc)


def until(driver, what, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: what(d))


def ready(driver, url: str, scene: str = "", **settings) -> None:
    """The page fresh (nothing kept from an earlier visit), `scene` written, `settings` set."""
    driver.get(url + "/")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get(url + "/")
    until(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for name, value in settings.items():
        driver.execute_script(
            "const el = document.getElementById('set-' + arguments[0]);"
            "if (el.type === 'checkbox') el.checked = arguments[1]; else el.value = arguments[1];"
            "el.dispatchEvent(new Event('change'));", name, value)
    driver.execute_script("const s = document.getElementById('scene'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", scene)


def run(driver) -> str:
    """Click Generate and wait for the run's speed line."""
    driver.execute_script("document.getElementById('speed').textContent = ''")  # a run's line is written at its end
    driver.find_element("id", "generate").click()
    until(driver, lambda d: d.find_element("id", "speed").text and d.find_element("id", "stop").get_attribute("disabled"),
          300)
    return driver.find_element("id", "speed").text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "page.png")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=760)
    ap.add_argument("--seed", type=int, default=4)
    args = ap.parse_args(argv)
    from sgpt_cli.files import atomic_path

    with page_session(None, args.width, args.height) as (driver, url):
        ready(driver, url, SCENE, seed=str(args.seed), max_tokens="300")
        driver.find_element("id", "heat").click()
        print(run(driver))
        spans = driver.find_elements("css selector", "#view .c")
        pick = next((s for s in spans[len(spans) // 3:] if float(s.get_attribute("data-p")) < 0.6),
                    spans[len(spans) // 2])  # a doubtful character, past the speaker's name
        driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", pick)
        until(driver, lambda d: d.find_element("id", "tip").is_displayed())
        png = driver.get_screenshot_as_png()
        with atomic_path(args.out) as tmp:
            Path(tmp).write_bytes(png)
        print(f"wrote {args.out} ({len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
