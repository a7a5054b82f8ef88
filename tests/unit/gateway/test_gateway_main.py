"""The entry points refuse bad configs with a message naming the field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kascade.gateway.endpoints import server


def test_main_rejects_an_invalid_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"policies": {"p": {"localPool": "missing"}}}))
    with caplog.at_level(logging.ERROR, logger="kascade.gateway"):
        assert server.main(["--config", str(path), "--port", "0"]) == 2
    assert "policies.p.localPool: unknown pool 'missing'" in caplog.text


def test_main_rejects_a_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kascade.gateway"):
        assert server.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read the gateway config" in caplog.text
