// The instruments list and the market page of one instrument: order-book ladder, depth
// chart, recent trades and the price of fills, live over /v1/stream.
import { getJson } from "./api.js";
import { depthChart, priceChart } from "./charts.js";
import { clear, h, table } from "./dom.js";
import { formatInteger, formatMoney, formatTime } from "./format.js";
import { LiveBook, Stream } from "./stream.js";

const LADDER_LEVELS = 50; // per side, as GET /v1/book's default
const TRADES_SHOWN = 50;
const TRADES_KEPT = 500;

export function marketHref(symbol) {
  return `#/market/${encodeURIComponent(symbol)}`;
}

export async function renderInstruments(main) {
  const instruments = await getJson("/v1/instruments");
  const rows = instruments.map((i) =>
    h(
      "tr",
      { "data-symbol": i.symbol },
      h("td", {}, h("a", { href: marketHref(i.symbol) }, i.symbol)),
      h("td", {}, i.state),
      h("td", {}, formatTime(BigInt(i.window_start_s) * 1000n)),
      h("td", { class: "num" }, formatInteger(i.lot_size)),
      h("td", { class: "num" }, formatMoney(i.tick_size, i.currency)),
      h("td", {}, i.currency),
    ),
  );
  main.append(
    h("h2", {}, "Instruments"),
    instruments.length
      ? table(["symbol", "state", "window start", "lot (tokens)", "tick", "currency"], rows, {
          id: "instruments",
        })
      : h("p", { class: "muted" }, "No instrument is listed yet."),
  );
  return () => {};
}

function ladderRow(level, side, currency, maxQty) {
  const [price, quantity, orders] = level;
  const width = maxQty > 0 ? Math.max(1, Math.round((Number(quantity) / maxQty) * 100)) : 0;
  return h(
    "tr",
    {
      class: side === "buy" ? "bid" : "ask",
      "data-side": side,
      "data-price": String(price),
      "data-quantity": String(quantity),
      "data-orders": String(orders),
    },
    h("td", { class: "num price" }, formatMoney(price, currency)),
    h("td", { class: "num" }, formatInteger(quantity)),
    h("td", { class: "num" }, formatInteger(orders)),
    h("td", { class: "bar" }, bar(width)),
  );
}

// Set through the CSSOM: the page's CSP refuses style attributes.
function bar(widthPercent) {
  const span = h("span");
  span.style.width = `${widthPercent}%`;
  return span;
}

function renderLadder(el, book, currency) {
  const bids = book.bids.slice(0, LADDER_LEVELS);
  const asks = book.asks.slice(0, LADDER_LEVELS);
  const maxQty = Math.max(0, ...[...bids, ...asks].map((lv) => Number(lv[1])));
  const spread =
    bids.length && asks.length
      ? `spread ${formatMoney(BigInt(asks[0][0]) - BigInt(bids[0][0]), currency)}`
      : "no spread (one side empty)";
  clear(el).append(
    h(
      "table",
      { id: "ladder" },
      h("thead", {}, h("tr", {}, ["price / lot", "tokens", "orders", ""].map((x) => h("th", {}, x)))),
      h(
        "tbody",
        {},
        [...asks].reverse().map((lv) => ladderRow(lv, "sell", currency, maxQty)),
        h("tr", { class: "spread" }, h("td", { colspan: 4 }, spread)),
        bids.map((lv) => ladderRow(lv, "buy", currency, maxQty)),
      ),
    ),
  );
}

function renderTrades(el, trades, currency) {
  const rows = trades.slice(0, TRADES_SHOWN).map((t) =>
    h(
      "tr",
      { "data-seq": String(t.seq), class: t.aggressor_side === "buy" ? "bid" : "ask" },
      h("td", {}, formatTime(t.time_ms)),
      h("td", { class: "num" }, formatMoney(t.price, currency)),
      h("td", { class: "num" }, formatInteger(t.quantity)),
      h("td", {}, t.aggressor_side),
    ),
  );
  clear(el).append(
    trades.length
      ? table(["time", "price / lot", "tokens", "aggressor"], rows, { id: "trades" })
      : h("p", { class: "muted", id: "trades" }, "No trades yet."),
  );
}

function infoLine(i) {
  const fees = `maker ${i.maker_fee_bps} bps, taker ${i.taker_fee_bps} bps, provider ${i.provider_fee_bps} bps`;
  return h(
    "p",
    { class: "muted" },
    `${i.state} · lot ${formatInteger(i.lot_size)} tokens · tick ${formatMoney(i.tick_size, i.currency)}` +
      ` · band ${formatMoney(i.price_min, i.currency)}–${formatMoney(i.price_max, i.currency)} · ${fees}`,
  );
}

export async function renderMarket(main, symbol) {
  const instrument = await getJson(`/v1/instruments/${encodeURIComponent(symbol)}`);
  const currency = instrument.currency;
  const status = h("span", { id: "stream-status", class: "status" }, "connecting");
  const ladder = h("div", { class: "panel" });
  const depth = h("div", { class: "panel" });
  const tradesEl = h("div", { class: "panel" });
  const prices = h("div", { class: "panel" });
  main.append(
    h("h2", {}, symbol, " ", status),
    infoLine(instrument),
    h(
      "div",
      { class: "grid" },
      h("section", {}, h("h3", {}, "Order book"), ladder),
      h("section", {}, h("h3", {}, "Depth"), depth),
      h("section", {}, h("h3", {}, "Recent trades"), tradesEl),
      h("section", {}, h("h3", {}, "Price of fills"), prices),
    ),
  );
  const fmt = (p) => formatMoney(BigInt(p), currency);
  const trades = new Map(); // seq -> trade
  const drawTrades = () => {
    const list = [...trades.values()].sort((a, b) => Number(b.seq) - Number(a.seq));
    for (const t of list.slice(TRADES_KEPT)) trades.delete(t.seq);
    renderTrades(tradesEl, list, currency);
    clear(prices).append(priceChart(list.slice(0, TRADES_KEPT), fmt, formatTime));
  };
  const loadTrades = async () => {
    const path = `/v1/trades?instrument=${encodeURIComponent(symbol)}&limit=${TRADES_SHOWN}`;
    for (const t of (await getJson(path)).items) trades.set(t.seq, t);
    drawTrades();
  };
  let connections = 0;
  const stream = new Stream((state) => {
    status.textContent = state;
    status.dataset.state = state;
    // after a reconnect, the trades made while it was down (the book comes as a snapshot)
    if (state === "connected" && ++connections > 1) loadTrades().catch(() => {});
  });
  new LiveBook(stream, symbol, (book) => {
    const levels = book.levels();
    renderLadder(ladder, levels, currency);
    clear(depth).append(depthChart(levels, fmt));
    status.textContent = `live · seq ${book.seq}`;
    status.dataset.seq = String(book.seq);
  });
  stream.subscribe("trades", symbol, (msg) => {
    if (msg.type !== "trade") return;
    trades.set(msg.seq, msg);
    drawTrades();
  });
  try {
    await loadTrades();
  } catch (err) {
    stream.close();
    throw err;
  }
  return () => stream.close();
}
