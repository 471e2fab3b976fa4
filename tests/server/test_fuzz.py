"""Property-based fuzzing of every endpoint from the OpenAPI schema (schemathesis, real server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import live_server

pytestmark = pytest.mark.integration
# A few hundred cases in CI; `make fuzz` sets LCS_FUZZ_EXAMPLES higher.
EXAMPLES = os.environ.get("LCS_FUZZ_EXAMPLES", "25")


def test_no_5xx_and_responses_match_the_schema():
    st = Path(sys.executable).parent / "schemathesis"
    with live_server({"LCS_CONTROLLER_ENABLED": "0", "LCS_LOG_LEVEL": "warning"}) as srv:
        r = subprocess.run(
            [
                str(st),
                "run",
                srv.url + "/openapi.json",
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance",
                "--max-examples",
                EXAMPLES,
                "--generation-deterministic",
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        alive = srv.proc.poll() is None
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary
    generated = [line for line in summary.splitlines() if "generated" in line]
    assert generated and "passed" in generated[-1], summary
    assert int(generated[-1].split()[0]) >= 300  # a few hundred cases at least
    assert alive
