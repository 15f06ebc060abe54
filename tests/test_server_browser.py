"""The web page at `/` in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium).

The page asks for the API key, refuses to generate without it, then generates and shows the image in its
gallery. The screenshot goes to pytest's tmp dir, and to `$SD_KERAS_ARTIFACTS` when that is set.
"""

import base64
import io
import os
import shutil

import pytest
from PIL import Image

from sd_keras import env, metadata
from sd_keras.server.process import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEY = "browser-test-key-42"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_page_generates_an_image_into_the_gallery(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def set_value(element_id, value):
        field = browser.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(str(value))

    environment = {**os.environ, "SD_KERAS_COMPILATION_CACHE": "0"}  # a program cached earlier would load at once
    with ServerProcess("-m", "tiny", "--api-key", KEY, env=environment) as server:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 600)
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: "API key" in status.text)
        key_field = browser.find_element(By.ID, "api-key")
        assert key_field.is_displayed()  # the server needs a key, so the page asks for it

        set_value("prompt", "a red circle")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: status.text.startswith("401"))
        assert browser.find_elements(By.CSS_SELECTOR, "#gallery img") == []

        key_field.send_keys(KEY, Keys.TAB)  # "change" stores the key and loads the samplers and model size
        wait.until(lambda d: "model: tiny" in d.find_element(By.ID, "model-name").text)
        sampler_names = [o.text for o in Select(browser.find_element(By.ID, "sampler")).options]
        assert {"Euler a", "DPM++ 2M", "DDIM"} <= set(sampler_names)
        assert browser.find_element(By.ID, "width").get_attribute("value") == "64"  # the model's native size
        set_value("steps", 2)
        set_value("seed", 77)
        set_value("negative-prompt", "blurry")
        Select(browser.find_element(By.ID, "sampler")).select_by_visible_text("Euler a")
        # every status text the page shows while it works (the first run of a size compiles its program)
        browser.execute_script("window.statusTexts = []; new MutationObserver(() => window.statusTexts.push("
                               "document.getElementById('status').textContent)).observe("
                               "document.getElementById('status'), {childList: true, characterData: true, "
                               "subtree: true});")
        browser.find_element(By.ID, "generate").click()

        image = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery figure img"))[0]
        texts = browser.execute_script("return window.statusTexts")
        assert any("compiling (first run of this shape)" in text for text in texts), texts
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                      image) == [64, 64]
        caption = browser.find_element(By.CSS_SELECTOR, "#gallery figcaption").text
        assert "seed 77" in caption and "64x64" in caption and "Euler a" in caption
        assert status.text.startswith("Done in") and "seed 77" in status.text
        source = image.get_attribute("src")
        assert source.startswith("data:image/png;base64,")
        png = base64.b64decode(source.split(",", 1)[1])
        parameters = metadata.parse_parameters(metadata.read_parameters(io.BytesIO(png)))
        assert parameters["prompt"] == "a red circle" and parameters["negative_prompt"] == "blurry"
        assert parameters["Seed"] == "77" and parameters["Steps"] == "2" and parameters["Sampler"] == "Euler a"

        screenshot = tmp_path / "sd_keras_page.png"
        browser.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] > 0
        artifacts = env.path("SD_KERAS_ARTIFACTS")
        if artifacts:
            os.makedirs(artifacts, exist_ok=True)
            shutil.copy(screenshot, artifacts)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
                  and "401" not in entry["message"]]  # the refused request above is logged by Chromium
        assert errors == []
        assert KEY not in server.log()


pytestmark = pytest.mark.once  # backend-independent (see conftest.py)
