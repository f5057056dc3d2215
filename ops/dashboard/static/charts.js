// SVG charts: the book's cumulative depth and the price of fills over time. Positions
// are floats (pixels); the amounts they are drawn from stay integers everywhere else.
import { svg } from "./dom.js";

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

function cumulative(levels) {
  let total = 0;
  return levels.map(([price, qty]) => [Number(price), (total += Number(qty))]);
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
  const prices = [...b, ...a].map((p) => p[0]);
  const lo = Math.min(...prices);
  const hi = Math.max(...prices);
  const pad = (hi - lo) * 0.08 || Math.max(1, lo * 0.02);
  const x = scale(lo - pad, hi + pad, LEFT, W - RIGHT);
  const maxQty = Math.max(...[...b, ...a].map((p) => p[1]));
  const y = scale(0, maxQty, H - BOTTOM, TOP);
  root.append(
    ...[depthPath(b, lo - pad, x, y, "depth-bids"), depthPath(a, hi + pad, x, y, "depth-asks")].filter(Boolean),
    label(x(lo), H - BOTTOM + 16, formatPrice(lo), "middle"),
    label(x(hi), H - BOTTOM + 16, formatPrice(hi), "middle"),
    label(LEFT - 6, y(maxQty) + 4, maxQty.toLocaleString("en-US"), "end"),
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
  const pts = trades.map((t) => [Number(t.time_ms), Number(t.price)]).sort((p, q) => p[0] - q[0]);
  const prices = pts.map((p) => p[1]);
  const lo = Math.min(...prices);
  const hi = Math.max(...prices);
  const x = scale(pts[0][0], pts.at(-1)[0], LEFT + 10, W - RIGHT - 10);
  const y = scale(lo, hi, H - BOTTOM - 10, TOP + 10);
  const parts = [
    svg("polyline", { points: pts.map(([t, p]) => `${x(t)},${y(p)}`).join(" "), class: "price-line" }),
    ...pts.map(([t, p]) => svg("circle", { cx: x(t), cy: y(p), r: 3, class: "price-dot" })),
    label(LEFT - 6, y(hi) + 4, formatPrice(hi), "end"),
    lo === hi ? null : label(LEFT - 6, y(lo) + 4, formatPrice(lo), "end"),
    label(LEFT, H - BOTTOM + 16, formatTime(pts[0][0])),
    pts.length > 1 ? label(W - RIGHT, H - BOTTOM + 16, formatTime(pts.at(-1)[0]), "end") : null,
  ];
  root.append(...parts.filter(Boolean));
  return root;
}
