"""The play page (GET /) in a real browser: the distribution's headless Chromium (Debian's
`chromium` and `chromium-driver`, never one a tool downloads), driven by Selenium, against a real
`sgpt serve` of the tiny model on 127.0.0.1. One browser for the module; every wait is bounded;
screenshots at 360 and 1,280 px go to a temporary folder ($SGPT_TEST_ARTIFACTS when it names one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from conftest import REPO, SGPT, run_env  # noqa: E402
from test_serve import start  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 60  # the bound of every wait, not the expectation (a busy 2-core machine)
KEY = "sesame"


# --- without a browser ---------------------------------------------------------------------------------

def test_the_page_is_small_and_loads_nothing_from_elsewhere():
    static = REPO / "sgpt_cli" / "web" / "static"
    files = {p.name: p.read_text(encoding="utf-8") for p in static.iterdir()}
    assert set(files) == {"index.html", "app.js", "style.css"}
    assert sum(len(t.encode()) for t in files.values()) < 200_000
    for text in files.values():  # every reference is the server's own
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text) and "http://" not in text.replace(
            "http://www.w3.org", "")


def test_the_props_are_the_declared_settings(tiny_onnx):
    from sgpt_cli.settings import CHAT_SETTINGS, by_name
    from sgpt_cli.settings import HEAT

    s = start(tiny_onnx, "--api-key", KEY, "--max-tokens-limit", "777")
    try:
        page = httpx.get(s.url + "/", timeout=30)  # the page itself needs no key: it asks for it
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(s.url + "/page/app.js", timeout=30).status_code == 200
        assert httpx.get(s.url + "/page/nothing.js", timeout=30).status_code == 404
        assert httpx.get(s.url + "/v1/sgpt/props", timeout=30).status_code == 401
        props = httpx.get(s.url + "/v1/sgpt/props", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    finally:
        s.stop()
    chat = by_name(CHAT_SETTINGS)
    for got in props["settings"]:
        declared = chat[got["name"]]
        assert (got["default"], got["help"], got["low"]) == (
            list(declared.default) if declared.repeat else declared.default, declared.help, declared.low)
    assert {g["name"]: g["high"] for g in props["settings"]}["max_tokens"] == 777
    assert [(b["low"], b["colour"], b["words"]) for b in props["heat"]] == list(HEAT)
    assert props["model"]["id"] == tiny_onnx.stem and props["model"]["bytes"] == tiny_onnx.stat().st_size


# --- in the browser ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("needs the distribution's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sgpt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    downloads = Path(tempfile.mkdtemp(prefix="sgpt-downloads-"))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
    shutil.rmtree(downloads, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tiny_onnx):
    s = start(tiny_onnx, "--rows", "4")
    yield s
    code, err = s.stop()
    assert "Traceback" not in err, err


def wait(driver, what, seconds=WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: what(d))


def by_id(driver, name):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def open_page(driver, url, scene="", **settings):
    """A fresh page: nothing kept from an earlier test, `scene` written, `settings` set."""
    driver.get(url + "/")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get(url + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    for name, value in settings.items():
        set_field(driver, name, value)
    driver.execute_script("const s = document.getElementById('scene'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", scene)


def set_field(driver, name, value):
    driver.execute_script(
        "const el = document.getElementById('set-' + arguments[0]);"
        "if (el.type === 'checkbox') el.checked = arguments[1]; else el.value = arguments[1];"
        "el.dispatchEvent(new Event('change'));", name, value)


def text(driver) -> str:
    return driver.execute_script("return document.getElementById('scene').value")


def cleared(driver) -> None:
    """No speed line: a run writes its own when it ends."""
    driver.execute_script("document.getElementById('speed').textContent = ''")


def run_done(driver):
    """Wait for the speed line of the run started since `cleared`."""
    wait(driver, lambda d: by_id(d, "speed").text and by_id(d, "stop").get_attribute("disabled"))
    return by_id(driver, "speed").text


def generate(driver):
    cleared(driver)
    by_id(driver, "generate").click()
    return run_done(driver)


def sgpt_complete(model, prompt, *flags) -> str:
    proc = subprocess.run([*SGPT, "complete", "--model", str(model), *flags, prompt], capture_output=True,
                          text=True, env=run_env(), stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_generate_with_a_seed_gives_the_text_of_sgpt_complete(browser, server, tiny_onnx):
    open_page(browser, server.url, "ROMEO:\n", seed="7", max_tokens="80", temperature="0.9")
    line = generate(browser)
    assert "seed 7" in line and "chars/s" in line and "first char" in line
    expected = sgpt_complete(tiny_onnx, "ROMEO:\n", "--seed", "7", "-n", "80", "-t", "0.9", "--stop", "\\n\\n")
    got = text(browser)
    assert got in ("ROMEO:\n" + expected, "ROMEO:\n" + expected + "\n\n")  # a speech's end is given back
    assert (got.endswith("\n\n")) == ("end of speech" in line)
    assert by_id(browser, "error").get_attribute("hidden")


def test_from_the_cursor_drops_the_text_after_it_and_continues(browser, server, tiny_onnx):
    from selenium.webdriver.common.keys import Keys

    head = "ROMEO:\nBut soft\n"
    open_page(browser, server.url, head + "JULIET:\nAy me!\n", seed="9", max_tokens="30")
    browser.execute_script("const s = document.getElementById('scene'); s.focus();"
                           "s.setSelectionRange(arguments[0], arguments[0]);", len(head))
    cleared(browser)
    by_id(browser, "scene").send_keys(Keys.CONTROL, Keys.SHIFT, Keys.ENTER)  # Ctrl-Shift-Enter
    run_done(browser)
    expected = sgpt_complete(tiny_onnx, head, "--seed", "9", "-n", "30", "--stop", "\\n\\n")
    assert text(browser) in (head + expected, head + expected + "\n\n")


def test_stop_ends_the_stream_keeps_the_text_and_frees_the_row(browser, server):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server.url, "JULIET:\n", one_speech=False, max_tokens="4000", seed="3")
    cleared(browser)
    by_id(browser, "scene").send_keys(Keys.CONTROL, Keys.ENTER)  # keyboard only: Ctrl-Enter, then Esc
    wait(browser, lambda d: len(d.execute_script("return document.getElementById('view').textContent")) > 40)
    by_id(browser, "view").send_keys(Keys.ESCAPE)
    line = run_done(browser)
    assert "stopped" in line
    kept = text(browser)
    assert len(kept) > 40 and kept.startswith("JULIET:\n")
    n = int(line.split(" chars")[0])
    assert len(kept) == len("JULIET:\n") + n and n < 4000

    def in_flight():
        metrics = httpx.get(server.url + "/metrics", timeout=30).text
        return int(re.search(r"^sgpt_requests_in_flight (\d+)$", metrics, re.M).group(1))

    wait(browser, lambda d: in_flight() == 0, 30)
    time.sleep(0.2)
    assert text(browser) == kept  # nothing arrives after Stop


def heat_on(driver):
    """Heat on, whatever it was (it is kept in localStorage; open_page clears that)."""
    if not by_id(driver, "heat").is_selected():
        by_id(driver, "heat").click()


def heat_spans(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('#view .c')].map(e => [Number(e.dataset.i), e.textContent,"
        " Number(e.dataset.p), e.className, getComputedStyle(e).color])")


def test_heat_shows_one_coloured_span_per_character_with_its_probability(browser, server):
    open_page(browser, server.url, "ROMEO:\n", seed="5", max_tokens="60")
    heat_on(browser)
    generate(browser)
    got = text(browser)
    spans = heat_spans(browser)
    generated = got[len("ROMEO:\n"):].rstrip("\n") if got.endswith("\n\n") else got[len("ROMEO:\n"):]
    assert [s[1] for s in spans] == list(generated)
    assert [s[0] for s in spans] == list(range(len("ROMEO:\n"), len("ROMEO:\n") + len(generated)))
    props = browser.execute_script("return fetch('/v1/sgpt/props').then(r => r.json())")
    for _, _, p, cls, colour in spans:
        assert 0 < p <= 1
        bin_ = next((b["colour"] for b in props["heat"] if p >= b["low"]), props["heat"][-1]["colour"])
        assert f"h-{bin_}" in cls.split()
    assert len({s[4] for s in spans}) >= 2  # coloured, not one colour
    assert by_id(browser, "legend").is_displayed() and "90% or more" in by_id(browser, "legend").text


def branch_by_keyboard(driver, steps: int, pick: int) -> str:
    """Arrow to the steps-th generated character, take its alternative `pick` (1-based), wait."""
    from selenium.webdriver.common.keys import Keys

    view = by_id(driver, "view")
    for _ in range(steps):
        view.send_keys(Keys.ARROW_RIGHT)
    wait(driver, lambda d: by_id(d, "tip").is_displayed())
    chars = driver.execute_script("return [...document.querySelectorAll('#tip .alt-char')].map(b => b.dataset.char)")
    cleared(driver)
    view.send_keys(str(pick))
    run_done(driver)
    return chars[pick - 1]


def test_clicking_an_alternative_continues_with_it_deterministically(browser, server):
    outcomes = []
    for _ in range(2):
        open_page(browser, server.url, "ROMEO:\n", seed="11", max_tokens="40")
        heat_on(browser)
        generate(browser)
        spans = heat_spans(browser)
        where = spans[3][0]
        alt = branch_by_keyboard(browser, 4, 2)  # the 4th character's second likeliest
        got = text(browser)
        assert got[where] == alt and got[:where] == "ROMEO:\n" + "".join(s[1] for s in spans[:3])
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]
    # and with the mouse: a click on an alternative does the same
    open_page(browser, server.url, "ROMEO:\n", seed="11", max_tokens="40")
    heat_on(browser)
    generate(browser)
    span = browser.find_elements("css selector", "#view .c")[3]
    span.click()
    wait(browser, lambda d: by_id(d, "tip").is_displayed())
    cleared(browser)
    browser.find_elements("css selector", "#tip .alt-char")[1].click()
    run_done(browser)
    assert text(browser) == outcomes[0]


HOLD_EXPLAIN = """
// /v1/explain answers only when the test lets it: the attention panel is still loading
const real = window.fetch;
let release;
const gate = new Promise((r) => { release = r; });
window.releaseExplain = release;
window.explainAnswered = 0;
window.fetch = (url, options) => String(url).includes("/v1/explain")
  ? gate.then(() => real(url, options)).then((r) => { window.explainAnswered++; return r; })
  : real(url, options);
"""


def tip_chars(driver):
    return driver.execute_script("return [...document.querySelectorAll('#tip .alt-char')].map(b => b.dataset.char)")


@pytest.mark.parametrize("panel", ["loading", "shown"])
def test_a_branch_beside_the_attention_panel_gives_the_keyboard_text(browser, server, panel):
    """A clicked character's alternatives stay its own while its attention is asked for and drawn
    (the page grows, the pointer passes over other characters): the alternative clicked then gives
    the text the keyboard gives."""
    open_page(browser, server.url, "ROMEO:\n", seed="11", max_tokens="40")
    heat_on(browser)
    generate(browser)
    alt = branch_by_keyboard(browser, 4, 2)
    keyboard = text(browser)

    from selenium.webdriver.common.action_chains import ActionChains

    open_page(browser, server.url, "ROMEO:\n", seed="11", max_tokens="40")
    heat_on(browser)
    assert browser.execute_script("return state.props.explain") is True  # this server explains
    generate(browser)
    if panel == "loading":
        browser.execute_script(HOLD_EXPLAIN)
    spans = browser.find_elements("css selector", "#view .c")
    where = int(spans[3].get_attribute("data-i"))
    spans[3].click()
    wait(browser, lambda d: by_id(d, "tip").is_displayed())
    chars = tip_chars(browser)
    if panel == "shown":
        wait(browser, lambda d: by_id(d, "explain").is_displayed())
    ActionChains(browser).move_to_element(spans[4]).move_to_element(spans[2]).perform()  # on its way
    assert browser.execute_script("return state.sel") == where and tip_chars(browser) == chars
    assert chars[1] == alt
    cleared(browser)
    browser.find_elements("css selector", "#tip .alt-char")[1].click()
    run_done(browser)
    if panel == "loading":  # the answer comes after the branch: it changes nothing
        browser.execute_script("window.releaseExplain()")
        wait(browser, lambda d: d.execute_script("return window.explainAnswered") == 1)
    assert text(browser) == keyboard


def test_three_more_then_keep_one(browser, server):
    open_page(browser, server.url, "ROMEO:\n", seed="20", max_tokens="50")
    generate(browser)
    cleared(browser)
    by_id(browser, "more").click()
    line = run_done(browser)
    assert "seed 21–23" in line
    alts = browser.execute_script("return [...document.querySelectorAll('#alts .alt')].map(a =>"
                                  " [a.querySelector('.dim').textContent, a.querySelector('pre').textContent])")
    assert [a[0] for a in alts] == ["seed 21", "seed 22", "seed 23"]
    by_id(browser, "keep-2").click()
    wait(browser, lambda d: not by_id(d, "alts").is_displayed())
    got = text(browser)
    kept = browser.execute_script("return state.alts[1].text")
    assert got == "ROMEO:\n" + kept and kept.startswith(alts[1][1])
    # each choice is the run its seed gives alone
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "ROMEO:\n", "seed": 22, "max_tokens": 50,
                                                          "stop": ["\n\n"]}, timeout=60)
    assert kept.rstrip("\n") == r.json()["choices"][0]["text"]


def test_the_attention_panel_shows_every_head_where_the_server_explains(browser, server):
    """With POST /v1/explain (the props say so), clicking a character shows what each layer and head
    of the model attended to before choosing it; a server without it is never asked (no 404)."""
    open_page(browser, server.url, "ROMEO:\n", seed="5", max_tokens="30")
    heat_on(browser)
    generate(browser)
    browser.find_elements("css selector", "#view .c")[4].click()
    wait(browser, lambda d: by_id(d, "tip").is_displayed())
    props = browser.execute_script("return state.props")
    if props["explain"]:
        wait(browser, lambda d: by_id(d, "explain").is_displayed())
        rows = browser.find_elements("css selector", "#explain .attn")
        assert len(rows) == props["model"]["n_layer"] * props["model"]["n_head"]
    else:
        time.sleep(0.3)
        assert not by_id(browser, "explain").is_displayed()


def test_save_then_load_gives_the_same_text(browser, server):
    scene = "A room in the castle.\n\nROMEO:\nBut soft, what light?\n\nJULIET:\nAy me!\n"
    open_page(browser, server.url, scene)
    for old in browser.downloads.iterdir():
        old.unlink()
    by_id(browser, "save").click()
    saved = browser.downloads / "scene.txt"
    wait(browser, lambda d: saved.exists() and saved.read_text(encoding="utf-8") == scene, 30)
    by_id(browser, "clear").click()
    assert text(browser) == ""
    by_id(browser, "load").send_keys(str(saved))
    wait(browser, lambda d: text(d) == scene, 30)
    browser.get(server.url + "/")  # and the scene survives a reload
    wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert text(browser) == scene


def test_screenshots_at_360_and_1280_px(browser, server, tmp_path_factory):
    folder = Path(os.environ.get("SGPT_TEST_ARTIFACTS") or tmp_path_factory.mktemp("page-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    open_page(browser, server.url, "ROMEO:\n", seed="5", max_tokens="120")
    heat_on(browser)
    generate(browser)
    for width in (360, 1280):
        browser.set_window_size(width, 900)
        wait(browser, lambda d: d.execute_script("return window.innerWidth") <= width)
        # nothing wider than the window: no sideways scrolling at either width
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        path = folder / f"page-{width}.png"
        assert browser.save_screenshot(str(path)) and path.stat().st_size > 1000
    light = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme",
                                                                          "value": "dark"}]})
    try:
        dark = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert dark != light  # prefers-color-scheme: dark is drawn dark
        assert browser.save_screenshot(str(folder / "page-1280-dark.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.set_window_size(1280, 900)
    print(f"screenshots: {folder}")


def test_no_console_errors(browser, server):
    """Everything above, and the page's own load, logged nothing at the error level."""
    open_page(browser, server.url, "ROMEO:\n", seed="1", max_tokens="20")
    generate(browser)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_server_errors_and_a_wrong_key_are_one_line_on_the_page(browser, server, tiny_onnx):
    open_page(browser, server.url, "ROMEO:\n", temperature="-1")
    by_id(browser, "generate").click()
    wait(browser, lambda d: by_id(d, "error").is_displayed())
    assert "temperature must be" in by_id(browser, "error").text
    s = start(tiny_onnx, "--api-key", KEY)
    try:
        browser.get(s.url + "/")
        browser.execute_script("localStorage.clear(); sessionStorage.clear();")
        browser.get(s.url + "/")
        wait(browser, lambda d: by_id(d, "key-form").is_displayed() and by_id(d, "error").is_displayed())
        assert "no API key was given" in by_id(browser, "error").text
        by_id(browser, "key").send_keys("wrong\n")
        wait(browser, lambda d: "not this server's" in by_id(d, "error").text)
        assert by_id(browser, "key-form").is_displayed()
        by_id(browser, "key").send_keys(KEY + "\n")
        wait(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        assert not by_id(browser, "error").is_displayed() and not by_id(browser, "key-form").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('sgpt.key')") == KEY
        set_field(browser, "max_tokens", "10")
        assert "chars/s" in generate(browser)  # the key goes with every request
    finally:
        s.stop()
    browser.get_log("browser")  # the 401s were meant
