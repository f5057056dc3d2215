"""The operator's commands over the API (signed like `TokexClient`; see `ops.cli_api`):

    tokex instruments create SYMBOL --lot-size N --tick-size P --price-min P --price-max P
                             [--maker-fee-bps B] [--taker-fee-bps B] [--provider-fee-bps B]
                             [--delivery-grace-seconds S]
    tokex instruments list
    tokex deposits create --account ID --amount MINOR [--id DEPOSIT_ID]
    tokex settle SYMBOL
    tokex withdrawals list [--status pending|paid|failed]
    tokex withdrawals paid|failed ACCOUNT_ID WITHDRAWAL_ID
    tokex orders list [--status open|all] [--instrument SYMBOL]
    tokex orders cancel ORDER_ID

(`tokex accounts list` is with `tokex accounts create`, in `ops.cli_accounts`.) Amounts
and prices are given as the wire has them, integers of minor units (`--amount 2109875`),
and shown in the currency's units (`$21,098.75`, the scale from `GET /v1/currencies`);
`--json` prints the API's answer as it came, integers of minor units.
"""

from __future__ import annotations

import argparse
import secrets
from datetime import UTC, datetime
from typing import Any

from market.client import TokexClient
from market.money import Currency, currency, format_count, format_money
from ops.cli_api import ApiCommandError, add_client_options, emit_json, emit_table, run
from schemas.trading import CreateInstrument, InstrumentView, OrderView, WithdrawalView


async def exchange_money(client: TokexClient) -> Currency:
    """The exchange's currency, as `GET /v1/currencies` says."""
    views = await client.currencies()
    if not views:
        raise ApiCommandError(
            "the exchange names no currency (GET /v1/currencies)", code="bad_answer"
        )
    first = views[0]
    money = currency(first.code, first.scale)
    return Currency(money.code, money.scale, first.symbol)


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --------------------------------------------------------------------------- instruments


def _instrument_rows(money: Currency, views: list[InstrumentView]) -> list[list[object]]:
    return [
        [
            v.symbol, v.state, format_count(v.lot_size), format_money(v.tick_size, money),
            format_money(v.price_min, money), format_money(v.price_max, money),
            f"{v.maker_fee_bps}/{v.taker_fee_bps}/{v.provider_fee_bps}",
        ]
        for v in views
    ]  # fmt: skip


_INSTRUMENT_HEADERS = (
    "SYMBOL", "STATE", "LOT", "TICK", "PRICE MIN", "PRICE MAX", "FEES BPS M/T/P",
)  # fmt: skip


def _instruments(args: argparse.Namespace) -> int:
    async def call(client: TokexClient) -> tuple[Currency | None, list[InstrumentView]]:
        if args.instruments_command == "create":
            request = CreateInstrument(
                symbol=args.symbol, lot_size=args.lot_size, tick_size=args.tick_size,
                price_min=args.price_min, price_max=args.price_max,
                maker_fee_bps=args.maker_fee_bps, taker_fee_bps=args.taker_fee_bps,
                provider_fee_bps=args.provider_fee_bps, delivery_grace_s=args.delivery_grace_s,
                dispute_period_s=args.dispute_period_s, completion_weight=args.completion_weight,
                allow_started=args.allow_started,
            )  # fmt: skip
            views = [await client.create_instrument(request)]
        else:
            views = await client.instruments()
        return (None if args.json else await exchange_money(client)), views

    money, views = run(args, call)
    if money is None:
        emit_json(views[0] if args.instruments_command == "create" else views)
    else:
        emit_table(_INSTRUMENT_HEADERS, _instrument_rows(money, views))
    return 0


# --------------------------------------------------------------------------- deposits


def _deposit(args: argparse.Namespace) -> int:
    deposit_id = args.id or "dep_" + secrets.token_hex(8)

    async def call(client: TokexClient) -> tuple[Currency | None, Any]:
        receipt = await client.deposit(deposit_id, args.account, args.amount)
        return (None if args.json else await exchange_money(client)), receipt

    money, receipt = run(args, call)
    if money is None:
        emit_json({"deposit_id": deposit_id, "account_id": args.account, "amount": args.amount,
                   "transaction_id": receipt.transaction_id,
                   "ledger_index": receipt.ledger_index})  # fmt: skip
    else:
        print(
            f"deposit {deposit_id}: {format_money(args.amount, money)} to {args.account} "
            f"(ledger entry {receipt.ledger_index}, transaction {receipt.transaction_id})"
        )
    return 0


# --------------------------------------------------------------------------- settle


def _settle(args: argparse.Namespace) -> int:
    async def call(client: TokexClient) -> tuple[Currency | None, Any]:
        settled = await client.close_instrument(args.symbol)
        return (None if args.json else await exchange_money(client)), settled

    money, s = run(args, call)
    if money is None:
        emit_json(s)
    else:
        print(
            f"{s.instrument} settled ({s.reason}) at {iso_time(s.time_ms)}: "
            f"{format_count(s.entitlement_burned)} undelivered tokens burned, "
            f"{format_money(s.refunded, money)} refunded to buyers, "
            f"{format_count(s.capacity_burned)} unsold tokens of capacity burned"
        )
    return 0


# --------------------------------------------------------------------------- withdrawals


def _withdrawal_rows(money: Currency, views: list[WithdrawalView]) -> list[list[object]]:
    return [
        [v.account_id, v.withdrawal_id, format_money(v.amount, money), v.status,
         iso_time(v.created_at_ms), iso_time(v.updated_at_ms)]
        for v in views
    ]  # fmt: skip


def _withdrawals(args: argparse.Namespace) -> int:
    async def call(client: TokexClient) -> tuple[Currency | None, list[WithdrawalView]]:
        if args.withdrawals_command == "list":
            views = await client.withdrawals(args.status)
        else:
            paid = args.withdrawals_command == "paid"
            views = [await client.mark_withdrawal(args.account_id, args.withdrawal_id, paid)]
        return (None if args.json else await exchange_money(client)), views

    money, views = run(args, call)
    if money is None:
        emit_json(views if args.withdrawals_command == "list" else views[0])
    else:
        headers = ("ACCOUNT", "WITHDRAWAL", "AMOUNT", "STATUS", "CREATED", "UPDATED")
        emit_table(headers, _withdrawal_rows(money, views))
    return 0


# --------------------------------------------------------------------------- orders


def _order_rows(money: Currency, views: list[OrderView]) -> list[list[object]]:
    return [
        [v.order_id, v.client_order_id, v.instrument, v.side.value,
         "market" if v.price is None else format_money(v.price, money),
         format_count(v.quantity), format_count(v.open_quantity),
         format_count(v.filled_quantity), v.status, v.reject_reason or ""]
        for v in views
    ]  # fmt: skip


def _orders(args: argparse.Namespace) -> int:
    async def call(client: TokexClient) -> tuple[Currency | None, list[OrderView]]:
        if args.orders_command == "list":
            views = await client.orders(args.status, args.instrument)
        else:
            views = [await client.cancel_order(args.order_id)]
        return (None if args.json else await exchange_money(client)), views

    money, views = run(args, call)
    if money is None:
        emit_json(views if args.orders_command == "list" else views[0])
    else:
        headers = ("ORDER", "CLIENT ID", "INSTRUMENT", "SIDE", "PRICE/LOT", "QUANTITY",
                   "OPEN", "FILLED", "STATUS", "REASON")  # fmt: skip
        emit_table(headers, _order_rows(money, views))
    return 0


# --------------------------------------------------------------------------- parsers


def _command(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    add_client_options(parser)
    return parser


def _register_instruments(subparsers: Any) -> None:
    group = subparsers.add_parser("instruments", help="instruments (over the API)")
    sub = group.add_subparsers(dest="instruments_command", required=True, metavar="COMMAND")
    create = _command(sub, "create", "list a new instrument (operator)")
    create.add_argument("symbol", metavar="SYMBOL", help="<model>/<window start>/<duration>")
    create.add_argument("--lot-size", type=int, required=True, help="tokens per lot")
    for name, what in (("tick-size", "price step"), ("price-min", "lowest price"),
                       ("price-max", "highest price")):  # fmt: skip
        create.add_argument(
            f"--{name}", type=int, required=True, help=f"{what}, minor units per lot"
        )
    for fee in ("maker", "taker", "provider"):
        create.add_argument(f"--{fee}-fee-bps", type=int, default=0, help="(default 0)")
    create.add_argument(
        "--delivery-grace-s", "--delivery-grace-seconds", dest="delivery_grace_s", type=int,
        default=0, help="seconds after the window for deliveries (default 0)",
    )  # fmt: skip
    create.add_argument(
        "--dispute-period-s", type=int, default=None,
        help="how long a provider's report can be disputed (default: the delivery grace)",
    )  # fmt: skip
    create.add_argument(
        "--completion-weight", type=int, default=1,
        help="tokens a completion token counts for at the gateway (default 1)",
    )  # fmt: skip
    create.add_argument(
        "--allow-started", action="store_true",
        help="list it although its window has begun (an operator's catch-up listing)",
    )  # fmt: skip
    create.set_defaults(handler=_instruments)
    listing = _command(sub, "list", "every instrument (public: no key needed)")
    listing.set_defaults(handler=_instruments, public=True)


def _register_money(subparsers: Any) -> None:
    group = subparsers.add_parser("deposits", help="deposits of cash (over the API)")
    sub = group.add_subparsers(dest="deposits_command", required=True, metavar="COMMAND")
    create = _command(sub, "create", "credit cash to an account (operator); idempotent per id")
    create.add_argument("--account", required=True, help="the account credited")
    create.add_argument("--amount", type=int, required=True, help="minor units (USD: cents)")
    create.add_argument("--id", help="the deposit's id (default: a new one, printed)")
    create.set_defaults(handler=_deposit)

    settle = _command(subparsers, "settle", "close an instrument's window now and settle it "
                      "(operator); a repeat returns the settlement")  # fmt: skip
    settle.add_argument("symbol", metavar="SYMBOL")
    settle.set_defaults(handler=_settle)

    group = subparsers.add_parser("withdrawals", help="withdrawals (over the API)")
    sub = group.add_subparsers(dest="withdrawals_command", required=True, metavar="COMMAND")
    listing = _command(sub, "list", "withdrawals, newest first (the operator: everyone's)")
    listing.add_argument("--status", choices=("pending", "paid", "failed"))
    listing.set_defaults(handler=_withdrawals)
    for outcome, what in (("paid", "paid out by the bank"), ("failed", "failed: cash back")):
        mark = _command(sub, outcome, f"mark a withdrawal {what} (operator)")
        mark.add_argument("account_id", metavar="ACCOUNT_ID")
        mark.add_argument("withdrawal_id", metavar="WITHDRAWAL_ID")
        mark.set_defaults(handler=_withdrawals)


def _register_orders(subparsers: Any) -> None:
    group = subparsers.add_parser("orders", help="the signing account's orders (over the API)")
    sub = group.add_subparsers(dest="orders_command", required=True, metavar="COMMAND")
    listing = _command(sub, "list", "the signing account's orders, newest first")
    listing.add_argument("--status", choices=("open", "all"), default="open")
    listing.add_argument("--instrument", metavar="SYMBOL")
    listing.set_defaults(handler=_orders)
    cancel = _command(sub, "cancel", "cancel one of the signing account's open orders")
    cancel.add_argument("order_id", type=int, metavar="ORDER_ID")
    cancel.set_defaults(handler=_orders)


def register(subparsers: Any) -> None:
    _register_instruments(subparsers)
    _register_money(subparsers)
    _register_orders(subparsers)
