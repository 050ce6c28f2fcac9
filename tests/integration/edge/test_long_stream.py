"""A stream longer than every inactivity timeout of the edge and the load balancer arrives
whole through both (``benchmarks/long_stream.py``, the 10-minute run, in short): no
deadline on the exchange's age cuts it while events flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.long_stream import run


@pytest.mark.slow
async def test_an_sse_stream_longer_than_every_timeout_arrives_whole(tmp_path: Path) -> None:
    # 200 events 0.1 s apart (20 s); stream idle, first byte and keep-alive idle are 3 s
    result = await run(seconds=20, interval=0.1, idle=3.0, workdir=tmp_path)
    assert result.error is None, result.line()
    assert result.received == list(range(200)), result.line()
    assert result.complete, result.line()
    assert result.seconds >= 19.5  # it really lasted longer than the timeouts
    assert result.max_gap < 3.0
