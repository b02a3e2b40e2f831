"""The Dagster web UI in a real browser (headless Chromium through Playwright) against `dagster dev`.

One walk through what a user does first: open the global asset lineage, expand every group and see every
asset with its lineage edges; see the recipe partitions; launch materializations of `tokenizer` and then
`pretrain_mixture` for partition tiny from the UI (Materialize..., pick the partition, launch); wait on the
run page for success; read the asset page's metadata (version, cached, and for the mixture the realised
ratios). Screenshots of every step land in `test-artifacts/web-ui/` (gitignored).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest
from dagster_dev import ARTIFACTS_DIR, DagsterDev, code_location_assets, start_dagster_dev
from helpers import planned_version, tiny_raw

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the test extra)")
PlaywrightTimeoutError = sync_api.TimeoutError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PARTITIONS = ["tiny", "20M", "60M", "160M", "320M"]
SHOTS = ARTIFACTS_DIR / "web-ui"
EXPECTED_ASSETS = {
    "tokenizer",
    *(f"{stage}_mixture" for stage in ("pretrain", "sft", "dpo", "distill", "grpo")),
    "doge_base",
    "doge_instruct_sft",
    "doge_instruct",
    "doge_reason_distill",
    "doge_reason",
}
UI_TIMEOUT_MS = 90_000  # a loaded 2-core machine renders slowly
RUN_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"),
]

# Asset nodes and edges as the lineage graph draws them: node boxes are <foreignObject>s holding the asset
# name, edges are <path>s stroked with the lineage-edge color from the right side of one node to the left
# side of another (Dagster 1.13's AssetGraphExplorer).
GRAPH_JS = """
() => {
  const nodes = [];
  for (const fo of document.querySelectorAll('svg foreignObject')) {
    if (fo.classList.contains('group')) continue;
    const text = fo.textContent || '';
    nodes.push({text, x: +fo.getAttribute('x'), y: +fo.getAttribute('y'), w: +fo.getAttribute('width'), h: +fo.getAttribute('height')});
  }
  const edges = [];
  for (const path of document.querySelectorAll('svg path')) {
    if ((path.getAttribute('stroke') || '').includes('lineage-edge')) edges.push(path.getAttribute('d'));
  }
  return {nodes, edges};
}
"""


def shot(page, name: str, full_page: bool = False) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def graph_nodes_and_edges(page, names: set[str]) -> tuple[dict[str, dict], set[tuple[str, str]]]:
    """Asset name -> node box, and the (upstream, downstream) pairs the drawn edges connect."""
    drawn = page.evaluate(GRAPH_JS)
    nodes = {}
    for node in drawn["nodes"]:
        # The node's text starts with the asset name; the longest match wins (doge_instruct vs doge_instruct_sft).
        matches = [name for name in names if node["text"].startswith(name)]
        if matches:
            nodes[max(matches, key=len)] = node
    edges = set()
    for d in drawn["edges"]:
        numbers = [float(value) for value in re.findall(r"-?\d+(?:\.\d+)?", d)]
        (x0, y0), (x1, y1) = numbers[:2], numbers[-2:]
        source = [
            name for name, n in nodes.items() if abs(n["x"] + n["w"] - x0) < 12 and n["y"] <= y0 <= n["y"] + n["h"]
        ]
        target = [name for name, n in nodes.items() if abs(n["x"] - x1) < 12 and n["y"] <= y1 <= n["y"] + n["h"]]
        edges.add((source[0] if len(source) == 1 else f"?{x0},{y0}", target[0] if len(target) == 1 else f"?{x1},{y1}"))
    return nodes, edges


def choose_graph_setting(page, item: re.Pattern, attempts: int = 3) -> None:
    """Open the lineage graph's settings menu and pick `item`. Retried: the community dialog of a fresh
    instance can pop up meanwhile, and dismissing it (the locator handler) also closes the menu."""
    for _ in range(attempts):
        page.get_by_role("button", name="settings", exact=True).click()
        try:
            page.get_by_role("menuitem", name=item).click(timeout=15_000)
            return
        except PlaywrightTimeoutError:
            page.keyboard.press("Escape")
    raise AssertionError(f"the graph settings menu never offered {item.pattern!r} in {attempts} attempts")


def launch_materialization(page, server: DagsterDev, asset: str, partition: str) -> str:
    """From the asset page: Materialize..., pick `partition`, launch one run; returns the run id from the toast."""
    page.goto(f"{server.base_url}/assets/{asset}", wait_until="domcontentloaded")
    page.get_by_role("button", name="Materialize…").click(timeout=UI_TIMEOUT_MS)
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Launch runs to materialize {asset}").wait_for(timeout=UI_TIMEOUT_MS)
    dialog.get_by_text("Select a partition or create one").click()
    options = page.get_by_role("menuitem")
    options.filter(has_text=partition).first.wait_for(timeout=UI_TIMEOUT_MS)
    offered = [text.split("\n")[0].strip() for text in options.all_inner_texts()]
    assert offered == ["Select all (5)", *PARTITIONS], f"the partition picker offers {offered}"
    options.nth(offered.index(partition)).click()
    page.keyboard.press("Escape")  # close the picker, keep the dialog
    launch = dialog.get_by_role("button", name="Launch 1 run")
    launch.wait_for(timeout=UI_TIMEOUT_MS)
    assert dialog.get_by_text("1 partition", exact=True).is_visible()
    shot(page, f"{asset}-1-launch-dialog-{partition}")
    launch.click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    toast.wait_for(timeout=UI_TIMEOUT_MS)
    shot(page, f"{asset}-2-launched")
    href = page.locator("a[href^='/runs/']").filter(has_text="View").first.get_attribute("href")
    run_id = href.rsplit("/", 1)[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", run_id), href
    return run_id


def wait_for_run_success_in_ui(page, server: DagsterDev, run_id: str, name: str) -> None:
    """Open the run page and wait for its status to read Success (the page updates itself)."""
    page.goto(f"{server.base_url}/runs/{run_id}", wait_until="domcontentloaded")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = server.client().get_run_status(run_id).value
        if status in ("FAILURE", "CANCELED"):
            shot(page, f"{name}-3-run-{status.lower()}")
            raise AssertionError(f"run {run_id} ended {status}:\n{server.run_failure_text(run_id)}")
        if status == "SUCCESS":
            break
        time.sleep(3)
    else:
        raise AssertionError(f"run {run_id} not finished after {RUN_TIMEOUT_S}s\n{server.log_tail()}")
    page.get_by_text("Success", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)  # the UI says so too
    page.get_by_text(re.compile(r"Succeeded \(1\)")).wait_for(timeout=UI_TIMEOUT_MS)
    shot(page, f"{name}-3-run-success")


METADATA_JS = """
() => {
  const out = {};
  for (const tr of document.querySelectorAll('tr')) {
    const cells = tr.querySelectorAll(':scope > td');
    if (cells.length >= 2) out[cells[0].innerText.trim()] = cells[cells.length - 1].innerText.trim();
  }
  return out;
}
"""


def asset_metadata(page, server: DagsterDev, asset: str, keys: tuple[str, ...]) -> dict[str, str]:
    """Open the asset's Overview and read its metadata table (Key / Timestamp / Value) once `keys` are shown."""
    page.goto(f"{server.base_url}/assets/{asset}", wait_until="domcontentloaded")
    page.get_by_text("Latest materialization").first.wait_for(timeout=UI_TIMEOUT_MS)
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    table = {}
    while time.monotonic() < deadline:
        table = page.evaluate(METADATA_JS)
        if all(key in table for key in keys):
            with contextlib.suppress(PlaywrightTimeoutError):  # let the status panel finish loading for the screenshot
                page.get_by_text(re.compile(r"\b(seconds?|minutes?) ago")).first.wait_for(timeout=10_000)
            return table
        time.sleep(1)
    raise AssertionError(
        f"{asset}'s page shows no metadata {[key for key in keys if key not in table]}; it shows {sorted(table)}"
    )


def test_lineage_partitions_and_materializing_from_the_ui(tmp_path):
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    location = code_location_assets()
    names = set(location["all"])
    assert EXPECTED_ASSETS | {"source_fineweb_edu", "source_smoltalk"} <= names
    dependencies = {(parent, child) for child, parents in location["parents"].items() for parent in parents}

    with start_dagster_dev(tmp_path / "web-ui") as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # A tall viewport: the whole graph fits at a zoom that draws full asset nodes with their names.
            context = browser.new_context(viewport={"width": 3600, "height": 3600})
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            # A fresh instance greets with "Join the Dagster community": dismiss it whenever it shows up.
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
            )

            # 1. The global asset lineage, every group expanded.
            page.goto(f"{server.base_url}/asset-groups", wait_until="domcontentloaded")
            page.locator("svg foreignObject.group").first.wait_for()
            shot(page, "01-lineage-groups")
            choose_graph_setting(page, re.compile("Expand all groups"))
            page.keyboard.press("Escape")
            deadline = time.monotonic() + 60
            nodes, edges = graph_nodes_and_edges(page, names)
            while (set(nodes) != names or edges != dependencies) and time.monotonic() < deadline:
                time.sleep(1)
                nodes, edges = graph_nodes_and_edges(page, names)
            shot(page, "02-lineage-expanded")
            assert set(nodes) == names, f"missing from the graph: {sorted(names - set(nodes))}"
            assert edges == dependencies, (
                f"edges not drawn: {sorted(dependencies - edges)}; unexpected: {sorted(edges - dependencies)}"
            )

            page.set_viewport_size({"width": 1600, "height": 1100})

            # 2. The recipe partitions.
            page.goto(f"{server.base_url}/assets/tokenizer?view=partitions", wait_until="domcontentloaded")
            page.get_by_text(re.compile(r"Missing \(5\)")).wait_for()
            for partition in PARTITIONS:
                assert page.get_by_text(partition, exact=True).first.is_visible(), partition
            shot(page, "03-tokenizer-partitions")

            # 3. Materialize the tokenizer for tiny from the UI, wait, read its metadata.
            run_id = launch_materialization(page, server, "tokenizer", "tiny")
            wait_for_run_success_in_ui(page, server, run_id, "tokenizer")
            table = asset_metadata(page, server, "tokenizer", ("version", "cached", "vocab_size"))
            assert table["version"] == planned_version("tokenizer")
            assert table["cached"] == "false"
            assert int(table["vocab_size"]) > 100
            shot(page, "tokenizer-4-asset-metadata", full_page=True)

            # 4. The pretraining mixture: its page shows the realised ratios.
            run_id = launch_materialization(page, server, "pretrain_mixture", "tiny")
            wait_for_run_success_in_ui(page, server, run_id, "pretrain_mixture")
            table = asset_metadata(page, server, "pretrain_mixture", ("version", "realised_ratios"))
            assert table["version"] == planned_version("pretrain_mixture")
            realised = json.loads(table["realised_ratios"])
            requested = {source["dataset"]: source["ratio"] for source in tiny_raw()["mixtures"]["pretrain"]["sources"]}
            assert set(realised) == set(requested), realised
            for dataset, ratio in requested.items():
                assert abs(realised[dataset] - ratio) < 0.02, (dataset, realised[dataset], ratio)
                assert abs(float(table[f"ratio/{dataset}"]) - realised[dataset]) < 1e-6
            page.get_by_text("realised_ratios", exact=True).first.scroll_into_view_if_needed()
            shot(page, "pretrain_mixture-4-asset-metadata", full_page=True)

            page.goto(f"{server.base_url}/assets/pretrain_mixture?view=partitions", wait_until="domcontentloaded")
            page.get_by_text(re.compile(r"Materialized \(1\)")).wait_for()
            page.get_by_text(re.compile(r"Missing \(4\)")).wait_for()
            page.get_by_text("tiny", exact=True).first.click()  # the partition's own materialization
            page.get_by_text("ratio/fineweb-edu", exact=True).first.wait_for()
            shot(page, "pretrain_mixture-5-partition-tiny")
        finally:
            browser.close()
