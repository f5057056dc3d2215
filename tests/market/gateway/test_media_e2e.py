"""A chat call with an image, through the gateway and the stand-in upstream (which meters
an image at `Upstream.image_tokens`): the reservation holds the image's allowance
(`metering.IMAGE_PART_TOKENS`), so the provider is paid the metered usage; `max_tokens`
is lowered when the entitlement cannot cover the allowance and the asked cap; 402 when
it cannot cover the allowance; an image metered beyond the allowance is paid up to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from market.clearing.rules import delivery_split
from market.gateway import metering
from tests.market.gateway.gateway_support import FEE_BPS, MODEL, Market, open_market
from tests.support.upstream import Upstream

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
CHAT: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "one two three"}, IMAGE]}]
TOKENS = 4_000


@pytest.fixture
async def market(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, tokens=TOKENS):
        yield m


async def _paid(m: Market, client: openai.AsyncOpenAI, max_tokens: int) -> tuple[int, int]:
    """One image call: (tokens charged to the buyer, cash paid to the provider)."""
    before, cash, so_far = await m.entitlement(), await m.provider_cash(), await m.delivered()
    await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=max_tokens)
    await m.settled()
    charged = before.entitlement - (await m.entitlement()).entitlement
    split = delivery_split(charged, before.entitlement, before.escrow, FEE_BPS, so_far)
    assert await m.provider_cash() - cash == split.paid
    return charged, split.paid


async def test_an_image_call_reserves_its_allowance_and_pays_the_metered_usage(
    market: Market,
) -> None:
    m, up = market, market.upstream
    client = openai.AsyncOpenAI(base_url=m.openai_url, api_key=await m.key(), max_retries=0)
    estimate = metering.prompt_estimate({"messages": CHAT})
    assert estimate >= metering.IMAGE_PART_TOKENS > up.image_tokens

    # fits: the provider is paid exactly the upstream's usage (3 words + the image + 64)
    charged, _ = await _paid(m, client, max_tokens=1_000)
    assert up.requests[-1].body["max_tokens"] == 1_000
    assert charged == 3 + up.image_tokens + up.max_completion
    left = TOKENS - charged

    # the entitlement cannot cover the allowance and 2,000: max_tokens lowered to the rest
    charged, _ = await _paid(m, client, max_tokens=2_000)
    assert up.requests[-1].body["max_tokens"] == left - estimate < 2_000
    assert charged == 3 + up.image_tokens + up.max_completion
    left -= charged

    # an image metered beyond the allowance is paid as far as the reservation goes
    up.image_tokens = 2 * metering.IMAGE_PART_TOKENS
    charged, _ = await _paid(m, client, max_tokens=5)
    assert charged == estimate + 5 < 3 + up.image_tokens + 5
    left -= charged
    assert (await m.entitlement()).entitlement == left < estimate + 1

    # less left than the allowance: 402 and nothing charged, nothing sent upstream
    sent = len(up.requests)
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1)
    assert (refused.value.status_code, refused.value.code) == (402, "insufficient_entitlement")
    assert len(up.requests) == sent and (await m.entitlement()).entitlement == left
