"""The run browser in real headless Chromium (Debian's chromium and chromium-driver, which .ci/run installs).

Each test looks at a page the way a person does and leaves a screenshot in tests/artifacts/web/.
"""

import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from factory import index
from webkit import browser, live_server, screenshot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from make_runs import make_runs  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    make_runs(root / "runs", 50, seed=21)
    index.refresh(root / "runs")
    with live_server(root) as url, browser(root) as driver:
        yield root, url, driver


def follow(driver, element):
    """Click something that loads a page, and wait until the new page has replaced the old one."""
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 20).until(staleness_of(old))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def texts(driver, css):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_runs_table_lists_every_run_and_opens_one(site):
    root, url, d = site
    every = sorted(r[0] for r in index.query(root / "runs", "SELECT run_id FROM runs")[1])
    d.get(url + "/")
    rows = d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    assert sorted(r.get_attribute("data-run") for r in rows) == every
    assert d.find_element(By.ID, "total").text == str(len(every))
    screenshot(d, "runs")
    follow(d, d.find_element(By.LINK_TEXT, every[0]))
    assert d.find_element(By.TAG_NAME, "h1").text == every[0]
    decision = index.query(root / "runs", "SELECT decision FROM runs WHERE run_id = ?", [every[0]])[1][0][0]
    assert d.find_element(By.CSS_SELECTOR, "#decision .decision").text == decision
    assert d.find_elements(By.CSS_SELECTOR, "svg.chart polyline"), "the training curve is drawn"
    screenshot(d, "run")


def test_ticking_two_runs_compares_them(site):
    root, url, d = site
    a, b = (r[0] for r in index.query(root / "runs", "SELECT run_id FROM runs WHERE recipe = 'sql-writer' "
                                                     "ORDER BY run_id LIMIT 2")[1])
    d.get(url + "/?recipe=sql-writer")
    for r in (a, b):
        d.find_element(By.CSS_SELECTOR, f'input[name="run"][value="{r}"]').click()
    follow(d, d.find_element(By.CSS_SELECTOR, "#compare-form button"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Compare 2 runs"
    assert sorted(t.split(" ")[0] for t in texts(d, "#compared tbody tr td:first-child")) == sorted([a, b])
    assert d.find_elements(By.CSS_SELECTOR, "#flips tr.flip"), "two runs of a hard recipe disagree somewhere"
    screenshot(d, "compare")


def test_samples_page_finds_failures_by_suite(site):
    root, url, d = site
    d.get(url + "/samples")
    d.find_element(By.NAME, "q").send_keys("breadth")
    d.find_element(By.CSS_SELECTOR, 'select[name="verdict"] option[value="wrong"]').click()
    follow(d, d.find_element(By.CSS_SELECTOR, ".filters button"))
    cells = texts(d, "#samples tbody tr td:last-child")
    assert cells and set(cells) == {"✗"}
    screenshot(d, "samples")


def test_sql_page_runs_a_cookbook_question(site):
    root, url, d = site
    d.get(url + "/sql")
    follow(d, d.find_element(By.PARTIAL_LINK_TEXT, "Which learning rates shipped"))
    assert "GROUP BY" in d.find_element(By.ID, "query").get_attribute("value")
    headers = texts(d, "#result thead th")
    assert headers[:3] == ["method", "lr", "runs"]
    n = index.query(root / "runs", "SELECT count(DISTINCT (method, lr)) FROM runs")[1][0][0]
    assert len(d.find_elements(By.CSS_SELECTOR, "#result tbody tr")) == n
    assert d.find_element(By.ID, "csv").get_attribute("href").startswith(url + "/sql.csv?q=")
    screenshot(d, "sql")
    box = d.find_element(By.ID, "query")
    box.clear()
    box.send_keys("DELETE FROM runs")
    follow(d, d.find_element(By.ID, "run-query"))
    assert "refused" in d.find_element(By.ID, "sql-error").text


@pytest.mark.slow
def test_compare_of_the_flagship_and_the_quick_recipe_shows_the_breadth_drop_and_a_flipped_sample(built_project):
    root = built_project
    runs = dict(index.query(root / "runs", "SELECT recipe, run_id FROM runs")[1])
    flagship, quick = runs["pace-planner"], runs["pace-planner-quick"]
    drop = index.query(root / "runs", "SELECT delta FROM criteria WHERE run_id = ? AND name LIKE 'breadth_drop%'",
                       [quick])[1][0][0]
    with live_server(root) as url, browser(root) as d:
        d.get(f"{url}/compare?run={flagship}&run={quick}")
        breadth = [e.text for e in d.find_elements(By.CSS_SELECTOR, '#criteria .delta[data-metric="breadth.exact_match"]')]
        assert len(breadth) == 2 and f"{drop * 100:+.1f} pp" in breadth[1], breadth
        assert drop < 0
        flips = d.find_elements(By.CSS_SELECTOR, "#flips tr.flip")
        assert flips, "the quick recipe gets some sample wrong that the flagship gets right"
        screenshot(d, "compare-flagship-quick")
