"""The gateway tests' stand-in upstream (tests/support/upstream.py: an
OpenAI-compatible server in place of a provider's vLLM/llama.cpp/Ollama), serving
`MODEL`; a test module that needs another one defines its own `upstream`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.market.gateway.gateway_support import MODEL
from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream(models=[MODEL]) as up:
        yield up
