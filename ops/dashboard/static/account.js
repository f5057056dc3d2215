// The account page: sign in with the account's Ed25519 key (imported non-extractable into
// WebCrypto; it is never sent anywhere), then open orders with cancel, fills (live over
// the private orders channel), balances, escrow and entitlements, deliveries.
import { ApiError, getJson, importPrivateKey, serverClockOffsetMs, Session } from "./api.js";
import { clear, h, table } from "./dom.js";
import { formatAsset, formatInteger, formatMoney, formatTime } from "./format.js";
import { marketHref } from "./market.js";
import { Stream } from "./stream.js";

const REFRESH_DELAY_MS = 400; // one refresh (5 signed GETs) per burst of events: well inside 50/s
const FILLS_SHOWN = 100;

// The signed-in session, in this page's memory only (gone on reload or sign-out).
let current = null;

export async function renderAccount(main) {
  if (current) main.append(...(await renderSignedInNodes(current)));
  else renderSignIn(main);
  return () => current?.stream?.close(); // the session stays; its live channel closes
}

function renderSignIn(main) {
  const error = h("p", { class: "error", id: "sign-in-error" });
  const keyId = h("input", { id: "key-id", name: "key-id", placeholder: "key_0123456789abcdef", size: 24, autocomplete: "off" });
  const secret = h("textarea", { id: "private-key", rows: 5, cols: 66, spellcheck: "false", placeholder: "-----BEGIN PRIVATE KEY----- … (or base64 of the 32-byte seed)" });
  const file = h("input", { type: "file", id: "key-file", accept: ".pem,.key,.txt" });
  file.addEventListener("change", async () => {
    if (file.files?.length) secret.value = await file.files[0].text(); // read here, not uploaded
  });
  const form = h(
    "form",
    { id: "sign-in", class: "panel" },
    h("label", {}, "Key id ", keyId),
    h("label", {}, "Private key (the PKCS#8 PEM file that tokex accounts create wrote) ", secret),
    h("label", {}, "or a key file ", file),
    h("button", { type: "submit", id: "sign-in-button" }, "Sign in"),
    error,
    h(
      "p",
      { class: "muted" },
      "The key stays in this browser: it is imported into WebCrypto as a non-extractable key " +
        "and signs each request here. It is kept in this page's memory only.",
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const key = await importPrivateKey(secret.value);
      secret.value = "";
      file.value = "";
      const session = new Session(keyId.value.trim(), key, await serverClockOffsetMs());
      session.account = await session.get("/v1/accounts/me");
      current = session;
      clear(main);
      main.append(...(await renderSignedInNodes(session)));
    } catch (err) {
      error.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : err.message;
    }
  });
  main.append(h("h2", {}, "Account"), form);
}

async function renderSignedInNodes(session) {
  const account = session.account;
  const status = h("span", { id: "orders-status", class: "status" }, "connecting");
  const sections = {
    orders: h("div", { class: "panel", id: "open-orders" }),
    fills: h("div", { class: "panel", id: "fills" }),
    balances: h("div", { class: "panel", id: "balances" }),
    entitlements: h("div", { class: "panel", id: "entitlements" }),
    deliveries: h("div", { class: "panel", id: "deliveries" }),
  };
  const signOut = h("button", { id: "sign-out", type: "button" }, "Sign out");
  signOut.addEventListener("click", () => {
    session.stream?.close();
    current = null;
    window.dispatchEvent(new HashChangeEvent("hashchange")); // the router draws the form
  });
  const view = new AccountView(session, sections);
  session.stream?.close();
  let connections = 0;
  session.stream = new Stream((state) => {
    status.textContent = state;
    if (state === "connected" && ++connections > 1) view.scheduleRefresh(); // missed meanwhile
  });
  session.stream.subscribe("orders", null, (msg) => view.onMessage(msg, status), () => session.ordersSubscription());
  await view.refresh();
  return [
    h("h2", {}, "Account ", h("span", { id: "account-id" }, account.account_id), " ", status),
    h("p", { class: "muted" }, `${account.role} · ${account.name} · key ${session.keyId} `, signOut),
    h("h3", {}, "Open orders"), sections.orders,
    h("h3", {}, "Fills"), sections.fills,
    h("h3", {}, "Balances"), sections.balances,
    h("h3", {}, "Escrow and entitlements"), sections.entitlements,
    h("h3", {}, "Deliveries"), sections.deliveries,
  ];
}

function failure(err) {
  const text = err instanceof ApiError ? `${err.code}: ${err.message}` : err.message;
  return h("p", { class: "error" }, text);
}

class AccountView {
  constructor(session, sections) {
    this.session = session;
    this.sections = sections;
    this.currencies = new Map(); // instrument -> currency
    this.liveFills = new Map(); // fills seen on the stream, until the API lists them
    this.timer = null;
  }

  onMessage(msg, status) {
    if (msg.type === "subscribed") status.textContent = "live";
    if (msg.type === "fill") {
      this.liveFills.set(fillKey(msg), { ...msg, role: msg.liquidity, fee: null });
      this.drawFills(this.fills ?? []);
    }
    if (msg.type === "fill" || msg.type === "order") this.scheduleRefresh();
  }

  scheduleRefresh() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), REFRESH_DELAY_MS);
  }

  currency(instrument) {
    return this.currencies.get(instrument) ?? "USD";
  }

  async load(name, path, draw) {
    try {
      draw(await this.session.get(path));
    } catch (err) {
      clear(this.sections[name]).append(failure(err));
    }
  }

  async refresh() {
    try {
      for (const i of await getJson("/v1/instruments")) this.currencies.set(i.symbol, i.currency);
    } catch {
      // amounts then fall back to USD
    }
    await Promise.all([
      // list routes answer a page {items, next_cursor, prev_cursor}: the newest page here
      this.load("orders", "/v1/orders?status=open", (page) => this.drawOrders(page.items)),
      this.load("fills", "/v1/fills", (page) => this.drawFills(page.items)),
      this.load("balances", "/v1/balances", (rows) => this.drawBalances(rows)),
      this.load("entitlements", "/v1/entitlements", (rows) => this.drawEntitlements(rows)),
      this.load("deliveries", "/v1/deliveries", (page) => this.drawDeliveries(page.items)),
    ]);
  }

  drawOrders(orders) {
    const rows = orders.map((o) => {
      const cancel = h("button", { class: "cancel", type: "button", "data-order-id": String(o.order_id) }, "Cancel");
      cancel.addEventListener("click", () => this.cancel(o.order_id, cancel));
      const cur = this.currency(o.instrument);
      return h(
        "tr",
        { "data-order-id": String(o.order_id), class: o.side === "buy" ? "bid" : "ask" },
        h("td", { class: "num" }, String(o.order_id)),
        h("td", {}, h("a", { href: marketHref(o.instrument) }, o.instrument)),
        h("td", {}, o.side),
        h("td", { class: "num" }, o.price === null ? "market" : formatMoney(o.price, cur)),
        h("td", { class: "num" }, formatInteger(o.quantity)),
        h("td", { class: "num" }, formatInteger(o.open_quantity)),
        h("td", { class: "num" }, formatInteger(o.filled_quantity)),
        h("td", {}, o.client_order_id),
        h("td", {}, cancel),
      );
    });
    clear(this.sections.orders).append(
      orders.length
        ? table(["id", "instrument", "side", "price / lot", "tokens", "open", "filled", "client id", ""], rows)
        : h("p", { class: "muted" }, "No open orders."),
    );
  }

  async cancel(orderId, button) {
    button.disabled = true;
    try {
      await this.session.request("DELETE", `/v1/orders/${orderId}`);
    } catch (err) {
      button.after(failure(err));
    }
    await this.refresh();
  }

  drawFills(fills) {
    this.fills = fills;
    const listed = new Set(fills.map(fillKey));
    for (const key of listed) this.liveFills.delete(key);
    const all = [...this.liveFills.values(), ...fills]
      .sort((a, b) => Number(b.time_ms) - Number(a.time_ms) || Number(b.seq) - Number(a.seq))
      .slice(0, FILLS_SHOWN);
    const rows = all.map((f) => {
      const cur = this.currency(f.instrument);
      return h(
        "tr",
        { "data-order-id": String(f.order_id), "data-seq": String(f.seq), class: f.side === "buy" ? "bid" : "ask" },
        h("td", {}, formatTime(f.time_ms)),
        h("td", {}, f.instrument),
        h("td", { class: "num" }, String(f.order_id)),
        h("td", {}, f.side),
        h("td", {}, f.role),
        h("td", { class: "num" }, formatMoney(f.price, cur)),
        h("td", { class: "num" }, formatInteger(f.quantity)),
        h("td", { class: "num" }, f.fee === null ? "…" : formatMoney(f.fee, cur)),
      );
    });
    clear(this.sections.fills).append(
      all.length
        ? table(["time", "instrument", "order", "side", "role", "price / lot", "tokens", "fee"], rows)
        : h("p", { class: "muted" }, "No fills yet."),
    );
  }

  drawBalances(balances) {
    const rows = balances.map((b) =>
      h(
        "tr",
        { "data-asset": b.asset, "data-kind": b.kind },
        h("td", {}, b.kind),
        h("td", {}, b.asset),
        h("td", {}, b.account),
        h("td", { class: "num" }, formatAsset(b.available, b.asset)),
        h("td", { class: "num" }, formatAsset(b.held, b.asset)),
        h("td", { class: "num" }, formatAsset(b.total, b.asset)),
      ),
    );
    clear(this.sections.balances).append(
      balances.length
        ? table(["kind", "asset", "account", "available", "held", "total"], rows)
        : h("p", { class: "muted" }, "No balances yet."),
    );
  }

  drawEntitlements(items) {
    const rows = items.map((e) => {
      const cur = this.currency(e.instrument);
      return h(
        "tr",
        { "data-instrument": e.instrument },
        h("td", {}, e.instrument),
        h("td", {}, e.buyer),
        h("td", {}, e.provider),
        h("td", { class: "num" }, formatInteger(e.entitlement)),
        h("td", { class: "num" }, formatMoney(e.escrow, cur)),
        h("td", { class: "num" }, formatInteger(e.delivered)),
        h("td", { class: "num" }, formatMoney(e.released, cur)),
      );
    });
    clear(this.sections.entitlements).append(
      items.length
        ? table(["instrument", "buyer", "provider", "tokens owed", "escrow", "delivered", "released"], rows)
        : h("p", { class: "muted" }, "No escrow or entitlements."),
    );
  }

  drawDeliveries(items) {
    const rows = items.map((d) => {
      const cur = this.currency(d.instrument);
      return h(
        "tr",
        { "data-report-id": d.report_id },
        h("td", {}, formatTime(d.time_ms)),
        h("td", {}, d.instrument),
        h("td", {}, d.buyer),
        h("td", {}, d.provider),
        h("td", { class: "num" }, formatInteger(d.tokens)),
        h("td", { class: "num" }, formatMoney(d.released, cur)),
        h("td", { class: "num" }, formatMoney(d.fee, cur)),
        h("td", { class: "num" }, formatMoney(d.paid, cur)),
      );
    });
    clear(this.sections.deliveries).append(
      items.length
        ? table(["time", "instrument", "buyer", "provider", "tokens", "released", "fee", "paid"], rows)
        : h("p", { class: "muted" }, "No deliveries."),
    );
  }
}

function fillKey(f) {
  return `${f.instrument} ${f.seq} ${f.order_id}`;
}
