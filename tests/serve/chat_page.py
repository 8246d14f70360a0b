#!/usr/bin/env python3
"""The chat page of `dsv3 serve` (GET /) in headless Chromium (Debian's chromium,
chromium-driver and python3-selenium): type a message in #input, click #send, wait for the
streamed reply in #messages and the tokens/s line in #stats, save a screenshot.

    tests/serve/chat_page.py --bin build/release/dsv3 --model DIR [--screenshot OUT.png]

Exits 77 (ctest's SKIP_RETURN_CODE) when Chromium, its driver or selenium is missing.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

SKIP = 77


def skip(why):
    print(f"chat_page.py: SKIP: {why}", file=sys.stderr)
    sys.exit(SKIP)


def start_server(binary, model, timeout_s):
    """dsv3 serve on a free loopback port; returns (process, url) once /health is 200."""
    proc = subprocess.Popen([binary, "serve", "--model", model, "--port", "0",
                             "--served-model-name", "tiny-test-model"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log, found = [], threading.Event()
    url = []

    def read():
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m and not found.is_set():
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout_s) or not url:
        proc.kill()
        sys.exit(f"chat_page.py: dsv3 serve did not start:\n{''.join(log)}")
    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url[0] + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url[0], log
        except Exception:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            sys.exit(f"chat_page.py: /health never answered 200:\n{''.join(log)}")
        time.sleep(0.05)


def stop_server(proc, log, timeout_s):
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit("chat_page.py: dsv3 serve did not exit on SIGTERM")
    if code != 0:
        sys.exit(f"chat_page.py: dsv3 serve exited with {code}:\n{''.join(log)[-3000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("DSV3_BIN", "build/release/dsv3"))
    ap.add_argument("--model", default=os.environ.get("DSV3_SERVE_MODEL"), required=False)
    ap.add_argument("--screenshot", default="chat-page.png")
    ap.add_argument("--message", default="Hello! What is continuous batching?")
    args = ap.parse_args()
    if not args.model:
        sys.exit("chat_page.py: give --model DIR (tests/serve/make_model.sh makes one)")
    slow = float(os.environ.get("DSV3_SERVE_TEST_SLOW", "1"))  # deadlines × this (ASan: 10)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (os.path.exists("/usr/bin/chromedriver") and "/usr/bin/chromedriver")
    if not chromium or not driver:
        skip("chromium / chromium-driver not installed (scripts/deps.sh installs them)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        skip("python3-selenium not installed (scripts/deps.sh installs it)")

    proc, url, log = start_server(args.bin, args.model, 60 * slow)
    browser = None
    try:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--window-size=900,600", "--force-device-scale-factor=1"):
            opts.add_argument(a)
        browser = webdriver.Chrome(service=Service(driver), options=opts)
        browser.set_page_load_timeout(30 * slow)
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30 * slow)
        # The page asked /v1/models for the name.
        wait.until(lambda b: b.find_element(By.ID, "model").text == "tiny-test-model")
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("40")
        browser.find_element(By.ID, "input").send_keys(args.message)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant") and
                   not b.find_elements(By.CSS_SELECTOR, "#messages .msg.streaming"))
        user = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")
        reply = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")
        errors = browser.find_elements(By.CSS_SELECTOR, "#messages .msg.error")
        assert not errors, f"the page shows an error: {errors[0].text}"
        assert len(user) == 1 and user[0].text == args.message, [u.text for u in user]
        assert len(reply) == 1 and reply[0].text.strip(), "no reply text"
        stats = browser.find_element(By.ID, "stats").text
        m = re.search(r"(\d+) tokens, ([\d.]+) tokens/s, first token after ([\d.]+) s", stats)
        assert m, f"#stats: {stats!r}"
        assert 0 < int(m.group(1)) <= 40 and float(m.group(2)) > 0, stats
        assert not browser.find_element(By.ID, "send").get_attribute("disabled")
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        browser.save_screenshot(args.screenshot)
        print(f"chat_page.py: ok: {stats!r}; screenshot {args.screenshot}")
    finally:
        if browser:
            browser.quit()
        if proc.poll() is None:
            stop_server(proc, log, 40 * slow)


if __name__ == "__main__":
    main()
