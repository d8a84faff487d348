"""The web dashboard at GET /, in a real headless Chromium against a real `task-queue serve`.

Chromium and its driver come from Debian's packages (installed when missing,
like redis-server); selenium drives them without reaching the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from task_queue.backends.redis import WALK_BUDGET
from tests.backends.redis_server import RedisServer
from tests.debian import require
from tests.e2e.processes import Launcher, TaskQueueProcess, wait_for

KEY = "dashboard-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Markup in a payload: the page must show it as text, never run it.
MARKUP = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = require("/usr/bin/chromium", "chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=require("/usr/bin/chromedriver", "chromium-driver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(launch: Launcher) -> TaskQueueProcess:
    return launch.start("serve", QUEUE_BACKEND="memory", API_KEYS=KEY, WORKER_COUNT=2)


def submit(server: TaskQueueProcess, type: str, payload: Any, **options: Any) -> dict[str, Any]:
    response = server.http.post(
        "/api/v1/tasks", json={"type": type, "payload": payload, **options}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def status_of(server: TaskQueueProcess, task_id: str) -> str:
    response = server.http.get(f"/api/v1/tasks/{task_id}", headers=AUTH)
    return str(response.json()["status"])


def row(browser: WebDriver, task_id: str) -> WebElement | None:
    found = browser.find_elements(By.CSS_SELECTOR, f'tr.task[data-id="{task_id}"]')
    return found[0] if found else None


def cell_texts(browser: WebDriver, task_id: str) -> list[str] | None:
    """The row's cells as shown; None while the row is absent or being redrawn."""
    try:
        found = row(browser, task_id)
        return [td.text for td in found.find_elements(By.TAG_NAME, "td")] if found else None
    except StaleElementReferenceException:  # the 2 s refresh redrew the table
        return None


def click_in_row(browser: WebDriver, task_id: str, label: str | None = None) -> bool:
    """Click the row's `label` button, or the row itself; False while it is being redrawn."""
    try:
        found = row(browser, task_id)
        if found is None:
            return False
        target = found.find_element(By.XPATH, f".//button[text()='{label}']") if label else found
        target.click()
        return True
    except StaleElementReferenceException:
        return False


def page_errors(browser: WebDriver) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_page_is_open_and_allows_only_its_own_script_and_style(
    server: TaskQueueProcess,
) -> None:
    response = server.http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert server.http.get("/api/v1/stats").status_code == 401  # the data it shows is not open
    policy = response.headers["content-security-policy"]
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy


def test_the_dashboard_shows_tasks_and_workers_and_cancels_retries_and_submits(
    server: TaskQueueProcess, browser: WebDriver
) -> None:
    done = submit(server, "sleep", {"seconds": 0, "note": MARKUP})
    failed = submit(server, "permanent", {})
    later = submit(server, "sleep", {"seconds": 0}, delay_seconds=3600)
    wait_for(lambda: status_of(server, failed["id"]) == "failed", 10, "the failing task")
    wait_for(lambda: status_of(server, done["id"]) == "completed", 10, "the quick task")

    browser.get(server.url + "/")
    # Without the key the API refuses, and the page says so.
    wait_for(lambda: "401" in browser.find_element(By.ID, "notice").text, 10, "the 401 notice")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.find_element(By.TAG_NAME, "h1").click()  # leaving the field fires its change

    cells = wait_for(lambda: cell_texts(browser, later["id"]), 10, "the scheduled task's row")
    assert cells[1:5] == ["sleep", "default", "0", "scheduled"]
    assert wait_for(lambda: cell_texts(browser, failed["id"]), 5, "the failed row")[4] == "failed"
    workers = browser.find_element(By.ID, "workers").text
    assert "idle" in workers or "busy" in workers

    wait_for(lambda: click_in_row(browser, later["id"], "cancel"), 10, "the cancel button")
    wait_for(lambda: status_of(server, later["id"]) == "cancelled", 10, "the cancel to land")
    first_run = server.http.get(f"/api/v1/tasks/{failed['id']}", headers=AUTH).json()
    wait_for(lambda: click_in_row(browser, failed["id"], "retry"), 10, "the retry button")

    def ran_again() -> bool:
        task = server.http.get(f"/api/v1/tasks/{failed['id']}", headers=AUTH).json()
        return bool(task["status"] == "failed" and task["started_at"] != first_run["started_at"])

    wait_for(ran_again, 10, "the retried task to run and fail again")

    # The detail view shows the payload's markup as text: nothing of it ran.
    wait_for(lambda: click_in_row(browser, done["id"]), 10, "the quick task's row")
    detail = wait_for(lambda: browser.find_element(By.ID, "detail").text, 10, "the detail")
    assert json.dumps(MARKUP) in detail  # as JSON.stringify writes it
    assert browser.find_elements(By.CSS_SELECTOR, "img") == []
    assert browser.title == "task-queue"

    form = browser.find_element(By.ID, "submit")
    form.find_element(By.NAME, "type").send_keys("sleep")
    payload = form.find_element(By.NAME, "payload")
    payload.clear()
    payload.send_keys('{"seconds": 0}')
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    notice = wait_for(
        lambda: re.search(r"submitted (\S+)", browser.find_element(By.ID, "notice").text),
        10,
        "the submit's notice",
    )
    submitted = notice.group(1)
    wait_for(lambda: status_of(server, submitted) == "completed", 10, "the submitted task to run")
    # The only console errors are the refused calls made before the key was typed.
    assert [error for error in page_errors(browser) if "401" not in error] == []


def test_a_filter_that_matches_none_of_the_newest_tasks_offers_to_look_further_back(
    launch: Launcher, own_redis: RedisServer, browser: WebDriver
) -> None:
    """On Redis a request walks at most WALK_BUDGET tasks: an empty page with a cursor
    is not "no task matches", and "more" finds the match further back."""
    server = launch.start(
        "api", QUEUE_BACKEND="redis", REDIS_URL=own_redis.url, API_KEYS=KEY, QUEUE_SIZE=50_000
    )
    rare = submit(server, "sleep", {"seconds": 0}, queue="rare")
    batch = {"tasks": [{"type": "sleep", "payload": {"seconds": 0}}] * 1000}
    for _ in range(WALK_BUDGET // 1000):
        response = server.http.post("/api/v1/tasks/batch", json=batch, headers=AUTH)
        assert response.status_code == 201, response.text

    browser.get(server.url + "/")
    browser.find_element(By.ID, "auto").click()  # no refresh between the reads below
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.TAG_NAME, "h1").click()  # leaving the field fires its change
    tasks = browser.find_element(By.ID, "tasks")
    # One refresh at a time: the unfiltered list first, then the filter's.
    wait_for(lambda: tasks.find_elements(By.CSS_SELECTOR, "tr.task"), 20, "the newest tasks")
    browser.find_element(By.ID, "filter-queue").send_keys("rare")
    browser.find_element(By.TAG_NAME, "h1").click()
    wait_for(lambda: "more looks further back" in tasks.text, 20, "the partial page's notice")
    browser.find_element(By.ID, "more").click()
    wait_for(lambda: cell_texts(browser, rare["id"]), 20, "the rare task, further back")
    assert not browser.find_element(By.ID, "more").is_displayed()
