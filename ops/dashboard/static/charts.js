// SVG charts: the book's cumulative depth and the price of fills over time. Positions
// are floats (pixels); the amounts they are drawn from, and every label, stay exact
// integers (BigInt): a price or quantity past 2^53 is placed roughly but read exactly.
import { svg } from "./dom.js";
import { formatInteger } from "./format.js";

const W = 560;
const H = 220;
const LEFT = 70; // room for price labels
const RIGHT = 20;
const TOP = 20;
const BOTTOM = 30;

// A linear map of [lo, hi] onto [outLo, outHi]; a single value goes to the middle.
function scale(lo, hi, outLo, outHi) {
  if (hi === lo) return () => (outLo + outHi) / 2;
  return (v) => outLo + ((v - lo) / (hi - lo)) * (outHi - outLo);
}

function label(x, y, text, anchor = "start") {
  const t = svg("text", { x, y, "text-anchor": anchor, class: "axis" });
  t.textContent = text;
  return t;
}

function frame(id) {
  return svg(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, class: "chart", id },
    svg("line", { x1: LEFT, y1: H - BOTTOM, x2: W - RIGHT, y2: H - BOTTOM, class: "axis-line" }),
    svg("line", { x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM, class: "axis-line" }),
  );
}

// The least and greatest of some BigInts.
function extremes(values) {
  let lo = values[0];
  let hi = values[0];
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

// Per level: [price, tokens at it or better] as floats to place, and the exact total.
function cumulative(levels) {
  let total = 0n;
  return levels.map(([price, qty]) => {
    total += BigInt(qty);
    return [Number(price), Number(total), BigInt(price), total];
  });
}

// One side's stepped area: from its best price outwards to the chart's `edge` price; at
// each price the height is everything at that price or better.
function depthPath(points, edge, x, y, cls) {
  if (!points.length) return null;
  let d = `M${x(points[0][0])},${y(0)}`;
  let prev = 0;
  for (const [price, qty] of points) {
    d += ` L${x(price)},${y(prev)} L${x(price)},${y(qty)}`;
    prev = qty;
  }
  d += ` L${x(edge)},${y(prev)} L${x(edge)},${y(0)} Z`;
  return svg("path", { d, class: cls });
}

// Cumulative depth: bids to the left of the spread, asks to the right.
export function depthChart({ bids, asks }, formatPrice) {
  const root = frame("depth-chart");
  if (!bids.length && !asks.length) {
    root.append(label(W / 2, H / 2, "empty book", "middle"));
    return root;
  }
  const b = cumulative(bids);
  const a = cumulative(asks);
  const all = [...b, ...a];
  const [loPrice, hiPrice] = extremes(all.map((p) => p[2]));
  const [, maxTotal] = extremes(all.map((p) => p[3]));
  const lo = Number(loPrice);
  const hi = Number(hiPrice);
  const pad = (hi - lo) * 0.08 || Math.max(1, lo * 0.02);
  const x = scale(lo - pad, hi + pad, LEFT, W - RIGHT);
  const maxQty = Number(maxTotal);
  const y = scale(0, maxQty, H - BOTTOM, TOP);
  root.append(
    ...[depthPath(b, lo - pad, x, y, "depth-bids"), depthPath(a, hi + pad, x, y, "depth-asks")].filter(Boolean),
    label(x(lo), H - BOTTOM + 16, formatPrice(loPrice), "middle"),
    label(x(hi), H - BOTTOM + 16, formatPrice(hiPrice), "middle"),
    label(LEFT - 6, y(maxQty) + 4, formatInteger(maxTotal), "end"),
    label(LEFT - 6, y(0) + 4, "0", "end"),
    label(LEFT + 6, TOP - 6, "tokens at this price or better"),
  );
  return root;
}

// The price of each fill over time (oldest left).
export function priceChart(trades, formatPrice, formatTime) {
  const root = frame("price-chart");
  if (!trades.length) {
    root.append(label(W / 2, H / 2, "no fills yet", "middle"));
    return root;
  }
  const pts = trades
    .map((t) => [Number(t.time_ms), Number(t.price), BigInt(t.price)])
    .sort((p, q) => p[0] - q[0]);
  const [loPrice, hiPrice] = extremes(pts.map((p) => p[2]));
  const lo = Number(loPrice);
  const hi = Number(hiPrice);
  const x = scale(pts[0][0], pts.at(-1)[0], LEFT + 10, W - RIGHT - 10);
  const y = scale(lo, hi, H - BOTTOM - 10, TOP + 10);
  const parts = [
    svg("polyline", { points: pts.map(([t, p]) => `${x(t)},${y(p)}`).join(" "), class: "price-line" }),
    ...pts.map(([t, p]) => svg("circle", { cx: x(t), cy: y(p), r: 3, class: "price-dot" })),
    label(LEFT - 6, y(hi) + 4, formatPrice(hiPrice), "end"),
    loPrice === hiPrice ? null : label(LEFT - 6, y(lo) + 4, formatPrice(loPrice), "end"),
    label(LEFT, H - BOTTOM + 16, formatTime(pts[0][0])),
    pts.length > 1 ? label(W - RIGHT, H - BOTTOM + 16, formatTime(pts.at(-1)[0]), "end") : null,
  ];
  root.append(...parts.filter(Boolean));
  return root;
}
