"""`GET /v1/currencies` (public): the exchange's currency and its scale.

Amounts on the wire are integers of minor units; this says how many digits of them
make a unit, so that any client can show `$21,098.75` for 2109875. The scale is set when
the exchange is set up (`tokex serve --currency-scale N`, env `TOKEX_CURRENCY_SCALE`;
default: the currency's usual one, USD 2); it changes how amounts are shown, never an
amount.
"""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State

from market.auth import PUBLIC
from ops.config import Settings
from schemas.trading import CurrencyView


@get("/v1/currencies", opt=PUBLIC, tags=["market"], summary="The exchange's currency and scale")
async def currencies(state: State) -> list[CurrencyView]:
    settings: Settings = state.settings
    money = settings.money
    return [CurrencyView(code=money.code, scale=money.scale, symbol=money.symbol)]
