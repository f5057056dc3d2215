"""The gateway tests' stand-in upstream (tests/support/upstream.py: an
OpenAI-compatible server in place of a provider's vLLM/llama.cpp/Ollama), serving
`MODEL`; a test module that needs another one defines its own `upstream`. And a receipt
journal on the test database's pool, its connections given back after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from market.gateway.journal import ReceiptJournal
from tests.market.gateway.gateway_support import MODEL
from tests.support.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream(models=[MODEL]) as up:
        yield up


@pytest.fixture
async def journal(db_pool: asyncpg.Pool) -> AsyncIterator[ReceiptJournal]:
    j = ReceiptJournal(db_pool, 2)  # the test pool has 5 connections
    try:
        yield j
    finally:
        await j.close()
