"""A real Prometheus server on loopback scrapes a real daemon; lcs_gamma comes back via its API."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.helpers import free_port, live_server

pytestmark = pytest.mark.integration


def query(url: str, expr: str) -> list[dict]:
    try:
        r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.HTTPError:  # not listening yet
        return []
    return r.json()["data"]["result"] if r.status_code == 200 else []


def test_prometheus_scrapes_lcs_gamma(tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus missing: run `make system-deps`"
    with live_server({"LCS_CONTROLLER_ENABLED": "0"}) as srv:
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: lcs\n    static_configs: [{{targets: ['{srv.url[7:]}']}}]\n"
        )
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            assert httpx.put(srv.url + "/level", json={"mode": "fixed", "gamma": 0.5}).is_success
            deadline, seen = time.monotonic() + 40, []
            while time.monotonic() < deadline and not seen:
                seen = [float(r["value"][1]) for r in query(url, 'lcs_gamma{job="lcs"}')]
                seen = [v for v in seen if v == 0.5]
                time.sleep(0.5)
            assert seen == [0.5]
            up = query(url, 'up{job="lcs"}')
            assert up and up[0]["value"][1] == "1"
        finally:
            proc.terminate()
            proc.wait(20)
