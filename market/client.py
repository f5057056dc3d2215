"""`TokexClient`: the async Python client of the tokex API; it signs every request.

    async with TokexClient.from_key_file("http://127.0.0.1:8000", key_id, "root.pem") as tx:
        me = await tx.me()
        buyer = await tx.create_account(Role.BUYER, "acme")     # key pair made here
        async with tx.as_account(buyer) as acme:
            ...

`request()` encodes the body with msgspec JSON, signs exactly the bytes it sends and the
path with query it sends (taken from the built request, so percent-encoding and parameter
order are what the server sees), and decodes the JSON answer; a non-2xx answer raises
`TokexApiError(status, code, message, retry_after)`. Without a key it sends unsigned
requests (public routes only).

Adding a route: one method per route, in the section of its area, calling `self.request`
and converting the answer to its schema with `msgspec.convert` (see `create_account`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, CheckpointOriginMismatch
from ledger.merkle import verify_inclusion
from ledger.note import Verifier, open_note
from ledger.receipts import verify_receipt_proof
from market.keys import load_private_key, private_key_pem, public_key_b64
from market.pages import Page
from market.signing import now_ms, sign_request, sign_subscribe
from market.vouchers import sign_voucher
from schemas.accounts import AccountCreated, AccountView, AddKey, CreateAccount, KeyView, Role
from schemas.disputes import (
    DisputeRequest,
    DisputeView,
    SignedVoucher,
    Voucher,
    VoucherView,
)
from schemas.gateway import ReceiptProof, ReceiptView
from schemas.ledger_proofs import InclusionProof
from schemas.trading import (
    AmendOrder,
    BalanceView,
    BookView,
    CancelAfter,
    CancelAfterView,
    CancelAll,
    CancelledOrders,
    CloseInstrument,
    CreateInstrument,
    CurrencyView,
    DeliveryReport,
    DeliveryView,
    Deposit,
    EntitlementView,
    FillView,
    InstrumentView,
    LedgerReceipt,
    Listing,
    OrderResult,
    OrderView,
    PlaceOrder,
    PlaceOrders,
    ServerTime,
    SettlementView,
    TradeView,
    WithdrawalRequest,
    WithdrawalView,
)

__all__ = ["TokexApiError", "TokexClient"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


def _segment(value: str) -> str:
    """`value` as one path segment: percent-encoded, and "." or ".." with their dots
    encoded too, or httpx would resolve them as relative segments before signing."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in {".", ".."} else quoted


class TokexApiError(Exception):
    """A non-2xx answer: the HTTP status and the server's `{"code", "message"}`."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds to wait, from `Retry-After` (429, 503), else None.
        self.retry_after = retry_after


class TokexClient:
    """An async client for one account (or none: public routes only)."""

    def __init__(
        self,
        base_url: str,
        key_id: str | None = None,
        private_key: Ed25519PrivateKey | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if (key_id is None) != (private_key is None):
            raise ValueError("give both key_id and private_key, or neither")
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self.private_key = private_key
        self._owns_http = http is None
        self._last_timestamp = 0
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    @classmethod
    def from_key_file(
        cls, base_url: str, key_id: str, path: str | Path, **options: Any
    ) -> TokexClient:
        """A client signing with the key in `path` (PKCS#8 PEM, as `tokex accounts create`
        writes it, or base64 of the raw 32-byte seed)."""
        return cls(base_url, key_id, load_private_key(Path(path).read_bytes()), **options)

    def as_account(self, created: AccountCreated) -> TokexClient:
        """A client for an account whose private key is in `created` (from `create_account`
        without a public key). It shares this client's connection pool: close this one last."""
        if created.private_key is None:
            raise ValueError("this AccountCreated carries no private key")
        return TokexClient(
            self.base_url, created.key_id, load_private_key(created.private_key), http=self._http
        )

    def with_key(self, key_id: str, private_key: Ed25519PrivateKey) -> TokexClient:
        """A client for another key, sharing this client's connection pool."""
        return TokexClient(self.base_url, key_id, private_key, http=self._http)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> TokexClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ transport

    def build_request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> httpx.Request:
        """The signed request `request()` would send (tests use it to tamper with one)."""
        body = b"" if json is None else msgspec.json.encode(json)
        headers = {"content-type": "application/json"} if body else {}
        request = self._http.build_request(
            method.upper(), path, params=params, content=body, headers=headers
        )
        if self.private_key is not None and self.key_id is not None:
            target = request.url.raw_path.decode("ascii")  # path and query, as sent
            request.headers.update(
                sign_request(
                    self.private_key,
                    self.key_id,
                    request.method,
                    target,
                    body,
                    self._next_timestamp() if timestamp_ms is None else timestamp_ms,
                )
            )
        return request

    def _next_timestamp(self) -> int:
        """Now, but strictly after the last request's: two identical requests in the
        same millisecond would otherwise carry the same signature and the second be
        refused as a replay."""
        self._last_timestamp = max(now_ms(), self._last_timestamp + 1)
        return self._last_timestamp

    async def send(self, request: httpx.Request) -> Any:
        """Send a built request; decode its JSON answer or raise `TokexApiError`."""
        response = await self._http.send(request)
        return _decode(response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """Sign and send one request; the decoded JSON answer (None if empty)."""
        return await self.send(self.build_request(method, path, json=json, params=params))

    # ------------------------------------------------------------------ ops

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/health")
        return result

    async def currencies(self) -> list[CurrencyView]:
        """`GET /v1/currencies`: the exchange's currency and its scale (for showing amounts)."""
        answer = await self.request("GET", "/v1/currencies")
        return msgspec.convert(answer, list[CurrencyView])

    # ------------------------------------------------------------------ accounts

    async def create_account(
        self, role: Role | str, name: str, public_key: str | None = None
    ) -> AccountCreated:
        """`POST /v1/accounts` (operator). Without `public_key` (base64 raw 32 bytes), a key
        pair is generated here; the answer then carries its private key (PEM), see
        `as_account`. The private key never leaves this process."""
        private_key: Ed25519PrivateKey | None = None
        if public_key is None:
            private_key = Ed25519PrivateKey.generate()
            public_key = public_key_b64(private_key)
        body = CreateAccount(role=Role(role), name=name, public_key=public_key)
        created = msgspec.convert(
            await self.request("POST", "/v1/accounts", json=body), AccountCreated
        )
        if private_key is not None:
            created = msgspec.structs.replace(created, private_key=private_key_pem(private_key))
        return created

    async def me(self) -> AccountView:
        """`GET /v1/accounts/me`."""
        return msgspec.convert(await self.request("GET", "/v1/accounts/me"), AccountView)

    async def accounts(self, role: Role | str | None = None) -> list[AccountView]:
        """`GET /v1/accounts` (operator, auditor): every account, newest first (walks
        the pages; `accounts_page` gets one)."""
        found: list[AccountView] = []
        cursor: str | None = None
        while True:
            page = await self.accounts_page(role, limit=1000, cursor=cursor)
            found.extend(page.items)
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    async def accounts_page(
        self, role: Role | str | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> Page[AccountView]:
        """One page of `GET /v1/accounts`, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if role is not None:
            params["role"] = Role(role).value
        if cursor is not None:
            params["cursor"] = cursor
        answer = await self.request("GET", "/v1/accounts", params=params)
        return msgspec.convert(answer, Page[AccountView])

    async def get_account(self, account_id: str) -> AccountView:
        """`GET /v1/accounts/{account_id}` (operator, auditor)."""
        answer = await self.request("GET", f"/v1/accounts/{account_id}")
        return msgspec.convert(answer, AccountView)

    async def add_key(self, public_key: str | Ed25519PrivateKey) -> KeyView:
        """`POST /v1/accounts/me/keys`: another signing key for this account (base64 of the
        raw public key, or a private key whose public half is sent). Then sign with it:
        `with_key(view.key_id, private_key)`."""
        if isinstance(public_key, Ed25519PrivateKey):
            public_key = public_key_b64(public_key)
        answer = await self.request(
            "POST", "/v1/accounts/me/keys", json=AddKey(public_key=public_key)
        )
        return msgspec.convert(answer, KeyView)

    async def revoke_key(self, key_id: str, account_id: str | None = None) -> KeyView:
        """Revoke a signing key: one of this account's (`DELETE /v1/accounts/me/keys/{key_id}`;
        not its last active one), or, with `account_id`, any account's (operator)."""
        owner = "me" if account_id is None else _segment(account_id)
        path = f"/v1/accounts/{owner}/keys/{_segment(key_id)}"
        return msgspec.convert(await self.request("DELETE", path), KeyView)

    # ------------------------------------------------------------------ trading

    async def create_instrument(self, request: CreateInstrument) -> InstrumentView:
        """`POST /v1/instruments` (operator)."""
        return msgspec.convert(
            await self.request("POST", "/v1/instruments", json=request), InstrumentView
        )

    async def instruments(self) -> list[InstrumentView]:
        return msgspec.convert(await self.request("GET", "/v1/instruments"), list[InstrumentView])

    async def deposit(self, deposit_id: str, account_id: str, amount: int) -> LedgerReceipt:
        """`POST /v1/deposits` (operator): credit cash; idempotent per `deposit_id`."""
        body = Deposit(deposit_id=deposit_id, account_id=account_id, amount=amount)
        return msgspec.convert(await self.request("POST", "/v1/deposits", json=body), LedgerReceipt)

    async def list_capacity(self, listing_id: str, instrument: str, quantity: int) -> LedgerReceipt:
        """`POST /v1/listings` (provider): list token capacity; idempotent per `listing_id`."""
        body = Listing(listing_id=listing_id, instrument=instrument, quantity=quantity)
        return msgspec.convert(await self.request("POST", "/v1/listings", json=body), LedgerReceipt)

    async def place_order(self, order: PlaceOrder) -> OrderView:
        """`POST /v1/orders`; a refused order raises `TokexApiError` with the reason as code."""
        return msgspec.convert(await self.request("POST", "/v1/orders", json=order), OrderView)

    async def place_orders(self, orders: list[PlaceOrder]) -> list[OrderResult]:
        """`POST /v1/orders/batch` (up to 50): one result per order, in order."""
        answer = await self.request("POST", "/v1/orders/batch", json=PlaceOrders(orders=orders))
        return msgspec.convert(answer, list[OrderResult])

    async def cancel_order(self, order_id: int) -> OrderView:
        return msgspec.convert(await self.request("DELETE", f"/v1/orders/{order_id}"), OrderView)

    async def amend_order(
        self, order_id: int, *, price: int | None = None, quantity: int | None = None
    ) -> OrderView:
        body = AmendOrder(price=price, quantity=quantity)
        answer = await self.request("PATCH", f"/v1/orders/{order_id}", json=body)
        return msgspec.convert(answer, OrderView)

    async def cancel_after(self, timeout_ms: int) -> CancelAfterView:
        """The dead-man switch: cancel every open order unless called again within
        `timeout_ms`; 0 disarms it."""
        answer = await self.request(
            "POST", "/v1/orders/cancel-after", json=CancelAfter(timeout_ms=timeout_ms)
        )
        return msgspec.convert(answer, CancelAfterView)

    async def cancel_all(self, instrument: str | None = None) -> CancelledOrders:
        answer = await self.request(
            "POST", "/v1/orders/cancel-all", json=CancelAll(instrument=instrument)
        )
        return msgspec.convert(answer, CancelledOrders)

    async def order(self, order_id: int) -> OrderView:
        return msgspec.convert(await self.request("GET", f"/v1/orders/{order_id}"), OrderView)

    async def order_by_client_id(self, client_order_id: str) -> OrderView:
        path = f"/v1/orders/by-client-id/{_segment(client_order_id)}"
        return msgspec.convert(await self.request("GET", path), OrderView)

    async def cancel_by_client_id(self, client_order_id: str) -> OrderView:
        path = f"/v1/orders/by-client-id/{_segment(client_order_id)}"
        return msgspec.convert(await self.request("DELETE", path), OrderView)

    async def server_time_ms(self) -> int:
        """The server's clock (Unix ms), which signed requests must be within 30 s of."""
        answer = await self.request("GET", "/v1/time")
        return msgspec.convert(answer, ServerTime).server_time_ms

    # ------------------------------------------------------------------ websocket

    def orders_subscribe(
        self, *, cancel_on_disconnect: bool = False, instrument: str | None = None
    ) -> dict[str, Any]:
        """The signed subscribe to the private `orders` channel of `/v1/stream`, to send
        as a JSON text frame (a fresh one each time: its timestamp must be recent and its
        signature is taken once): of every instrument, or of `instrument` only. The
        signature covers `cancel_on_disconnect` and `instrument`, so no one who sees this
        message can send it with other values."""
        if self.private_key is None or self.key_id is None:
            raise ValueError("the orders channel needs a signing key")
        return sign_subscribe(
            self.private_key, self.key_id, self._next_timestamp(),
            cancel_on_disconnect=cancel_on_disconnect, instrument=instrument,
        )  # fmt: skip

    # ------------------------------------------------------------------ lists (paginated)

    async def page(
        self, path: str, item: type[T], params: dict[str, Any] | None = None, *,
        cursor: str | None = None, limit: int | None = None,
    ) -> Page[T]:  # fmt: skip
        """One page of a list route: `cursor` from a page's `next_cursor` or `prev_cursor`."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if cursor is not None:
            query["cursor"] = cursor
        if limit is not None:
            query["limit"] = limit
        return msgspec.convert(await self.request("GET", path, params=query), Page[item])  # type: ignore[valid-type]  # a runtime type

    async def iterate(
        self, path: str, item: type[T], params: dict[str, Any] | None = None, *,
        limit: int = 200, newer: bool = False, cursor: str | None = None,
    ) -> AsyncIterator[T]:  # fmt: skip
        """Every record of a list route, page by page: older ones from the newest (or
        from `cursor`), or with `newer`, newer ones from `cursor` up to the newest."""
        while True:
            page = await self.page(path, item, params, cursor=cursor, limit=limit)
            for record in page.items:
                yield record
            cursor = page.prev_cursor if newer else page.next_cursor
            if cursor is None or not page.items:
                return

    def iter_orders(
        self, status: str = "open", instrument: str | None = None, **kw: Any
    ) -> AsyncIterator[OrderView]:
        params = {"status": status, "instrument": instrument}
        return self.iterate("/v1/orders", OrderView, params, **kw)

    def iter_fills(self, instrument: str | None = None, **kw: Any) -> AsyncIterator[FillView]:
        return self.iterate("/v1/fills", FillView, {"instrument": instrument}, **kw)

    async def orders(self, status: str = "open", instrument: str | None = None) -> list[OrderView]:
        """Every order of the caller with this status (`all`: any), newest first."""
        return [o async for o in self.iter_orders(status, instrument)]

    async def fills(self, instrument: str | None = None) -> list[FillView]:
        """Every fill of the caller, newest first."""
        return [f async for f in self.iter_fills(instrument)]

    async def balances(self) -> list[BalanceView]:
        return msgspec.convert(await self.request("GET", "/v1/balances"), list[BalanceView])

    async def book(self, instrument: str, levels: int = 50) -> BookView:
        answer = await self.request(
            "GET", "/v1/book", params={"instrument": instrument, "levels": levels}
        )
        return msgspec.convert(answer, BookView)

    async def trades(self, instrument: str, limit: int = 100) -> list[TradeView]:
        """The newest `limit` trades of an instrument (`page` / `iterate` for more)."""
        page = await self.page("/v1/trades", TradeView, {"instrument": instrument}, limit=limit)
        return page.items

    # ------------------------------------------------------------------ delivery and settlement

    async def report_delivery(
        self, report_id: str, instrument: str, buyer: str, tokens: int
    ) -> DeliveryView:
        """`POST /v1/deliveries` (provider): tokens served to `buyer`; idempotent per id."""
        body = DeliveryReport(
            report_id=report_id, instrument=instrument, buyer=buyer, tokens=tokens
        )
        return msgspec.convert(
            await self.request("POST", "/v1/deliveries", json=body), DeliveryView
        )

    async def deliveries(self, instrument: str | None = None) -> list[DeliveryView]:
        """Every delivery the caller made or received, newest first."""
        params = {"instrument": instrument}
        return [d async for d in self.iterate("/v1/deliveries", DeliveryView, params)]

    async def entitlements(self) -> list[EntitlementView]:
        """`GET /v1/entitlements`: tokens owed, escrow and delivered, per counterparty."""
        answer = await self.request("GET", "/v1/entitlements")
        return msgspec.convert(answer, list[EntitlementView])

    async def close_instrument(self, instrument: str) -> SettlementView:
        """`POST /v1/settlements` (operator): close the window now and settle; idempotent."""
        body = CloseInstrument(instrument=instrument)
        answer = await self.request("POST", "/v1/settlements", json=body)
        return msgspec.convert(answer, SettlementView)

    async def settlements(self) -> list[SettlementView]:
        answer = await self.request("GET", "/v1/settlements")
        return msgspec.convert(answer, list[SettlementView])

    # ------------------------------------------------------------------ audit

    async def audit_export(
        self, out: BinaryIO, from_index: int = 0, to_index: int | None = None
    ) -> int:
        """`GET /v1/audit/export` (operator, auditor): write the audit file of the range
        to `out`, as `tokex audit export` writes it from the database; the bytes written."""
        params: dict[str, Any] = {"from_index": from_index}
        if to_index is not None:
            params["to_index"] = to_index
        request = self.build_request("GET", "/v1/audit/export", params=params)
        response = await self._http.send(request, stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                _decode(response)  # raises TokexApiError with the server's code
            written = 0
            async for chunk in response.aiter_bytes():
                out.write(chunk)
                written += len(chunk)
            return written
        finally:
            await response.aclose()

    # ------------------------------------------------------------------ receipts

    async def receipts(self, limit: int = 100, cursor: str | None = None) -> Page[ReceiptView]:
        """`GET /v1/receipts`: a page of your receipts (as buyer or provider), newest first."""
        return await self.page("/v1/receipts", ReceiptView, cursor=cursor, limit=limit)

    def all_receipts(self, page_size: int = 1000) -> AsyncIterator[ReceiptView]:
        """Every receipt of yours, newest first, page by page (`next_cursor`)."""
        return self.iterate("/v1/receipts", ReceiptView, limit=page_size)

    async def receipt(self, receipt_id: str) -> ReceiptView:
        answer = await self.request("GET", f"/v1/receipts/{_segment(receipt_id)}")
        return msgspec.convert(answer, ReceiptView)

    async def receipt_proof(self, receipt_id: str) -> ReceiptProof:
        """`GET /v1/receipts/{id}/proof`, checked here before it is returned
        (`ledger.receipts.verify_receipt_proof`: raises `ReceiptMismatch` or
        `InvalidProof` if the exchange's answer does not prove the receipt)."""
        answer = await self.request("GET", f"/v1/receipts/{_segment(receipt_id)}/proof")
        proof = msgspec.convert(answer, ReceiptProof)
        verify_receipt_proof(proof)
        return proof

    async def prove_receipt(
        self, receipt_id: str, exchange_key: Verifier, origin: str | None = None
    ) -> Checkpoint:
        """The whole chain: the receipt is in its delivery (`receipt_proof`), and the
        delivery's entry is in the ledger's log under the latest checkpoint, signed by
        `exchange_key` (and of `origin`, if given). Returns that checkpoint; raises the
        proof's, the note's or the checkpoint's error if any link does not hold."""
        proof = await self.receipt_proof(receipt_id)
        response = await self._http.send(self.build_request("GET", "/v1/ledger/checkpoint"))
        if not response.is_success:
            _decode(response)  # raises TokexApiError
        text, _ = open_note(response.text, [exchange_key])
        cp = Checkpoint.parse(text)
        if origin is not None and cp.origin != origin:
            raise CheckpointOriginMismatch(f"checkpoint of {cp.origin!r}, not {origin!r}")
        index = proof.delivery.index
        answer = await self.request(
            "GET", "/v1/ledger/proof/inclusion", params={"index": index, "size": cp.size}
        )
        path = msgspec.convert(answer, InclusionProof)
        verify_inclusion(proof.delivery.leaf_hash, index, cp.size, path.hashes, cp.root_hash)
        return cp

    # ------------------------------------------------------------------ withdrawals

    async def withdraw(self, withdrawal_id: str, amount: int) -> WithdrawalView:
        """`POST /v1/withdrawals`: hold available cash for a payout; idempotent per id."""
        body = WithdrawalRequest(withdrawal_id=withdrawal_id, amount=amount)
        answer = await self.request("POST", "/v1/withdrawals", json=body)
        return msgspec.convert(answer, WithdrawalView)

    async def withdrawals(self, status: str | None = None) -> list[WithdrawalView]:
        """The caller's withdrawals (the operator: everyone's)."""
        params = {"status": status}
        return [w async for w in self.iterate("/v1/withdrawals", WithdrawalView, params)]

    async def mark_withdrawal(
        self, account_id: str, withdrawal_id: str, paid: bool
    ) -> WithdrawalView:
        """`POST /v1/withdrawals/{account}/{id}/paid|failed` (operator); idempotent. The id
        is percent-encoded whole (a withdrawal id may hold `/`, `?` or `%`)."""
        outcome = "paid" if paid else "failed"
        path = f"/v1/withdrawals/{_segment(account_id)}/{_segment(withdrawal_id)}"
        answer = await self.request("POST", f"{path}/{outcome}")
        return msgspec.convert(answer, WithdrawalView)

    # ------------------------------------------------------------------ vouchers and disputes

    def sign_voucher(
        self, buyer: str, provider: str, instrument: str, tokens: int, version: int
    ) -> SignedVoucher:
        """A voucher signed with this client's key (the buyer's own account key): `buyer`
        acknowledges `tokens` in all delivered by `provider` on `instrument`. Made here,
        offline; the buyer hands it to the provider, who submits it (`submit_voucher`)."""
        if self.private_key is None or self.key_id is None:
            raise ValueError("signing a voucher needs the buyer's key")
        voucher = Voucher(
            buyer=buyer, provider=provider, instrument=instrument, tokens=tokens,
            version=version, key_id=self.key_id,
        )  # fmt: skip
        return sign_voucher(self.private_key, voucher)

    async def submit_voucher(self, voucher: SignedVoucher) -> VoucherView:
        """`POST /v1/vouchers` (provider): escrow released at once up to the voucher."""
        answer = await self.request("POST", "/v1/vouchers", json=voucher)
        return msgspec.convert(answer, VoucherView)

    async def vouchers(self) -> list[VoucherView]:
        """Vouchers the caller signed (buyer) or submitted (provider), newest first."""
        return [v async for v in self.iterate("/v1/vouchers", VoucherView)]

    async def delivery_reports(self, status: str = "pending") -> list[DeliveryView]:
        """`GET /v1/delivery-reports`: providers' own reports the caller made or received, in a
        state (`pending`, `disputed`, ..., or `all`)."""
        params = {"status": status}
        return [d async for d in self.iterate("/v1/delivery-reports", DeliveryView, params)]

    async def dispute(self, provider: str, report_id: str, reason: str) -> DisputeView:
        """`POST /v1/disputes` (buyer): dispute a pending report; its escrow stays held."""
        body = DisputeRequest(provider=provider, report_id=report_id, reason=reason)
        return msgspec.convert(await self.request("POST", "/v1/disputes", json=body), DisputeView)

    async def disputes(self) -> list[DisputeView]:
        """The caller's disputes (the operator: everyone's), newest first."""
        return [d async for d in self.iterate("/v1/disputes", DisputeView)]

    async def resolve_dispute(self, dispute_id: str, outcome: str) -> DisputeView:
        """`POST /v1/disputes/{id}/resolve` (operator): `pay` or `refund`; idempotent."""
        body = {"outcome": outcome}  # any string: the server checks it (400 otherwise)
        path = f"/v1/disputes/{_segment(dispute_id)}/resolve"
        return msgspec.convert(await self.request("POST", path, json=body), DisputeView)


def _decode(response: httpx.Response) -> Any:
    content = response.content
    if response.is_success:
        return msgspec.json.decode(content) if content else None
    code, message = f"http_{response.status_code}", response.reason_phrase
    try:
        error = msgspec.json.decode(content)
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
    except msgspec.DecodeError:
        message = content.decode("utf-8", "replace")[:500] or message
    retry_after: float | None = None
    if (header := response.headers.get("retry-after")) is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    raise TokexApiError(response.status_code, code, message, retry_after)
