// The market data websocket /v1/stream (protocol: schemas/stream.py), shared by the pages.
// Subscriptions are kept and sent again after a reconnect; each subscription's handler
// gets that channel's frames. A book handler resubscribes itself when it sees a gap.
import { parseJson } from "./api.js";

const RETRY_MAX_MS = 5000;

export class Stream {
  constructor(onStatus = () => {}) {
    this.subs = new Map(); // key -> {message: () => Promise<object>, handler}
    this.onStatus = onStatus;
    this.retryMs = 250;
    this.closed = false;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.ws = new WebSocket(`${scheme}//${location.host}/v1/stream`);
    this.ws.addEventListener("open", () => {
      this.retryMs = 250;
      this.onStatus("connected"); // "live" once a subscription is acknowledged
      for (const key of this.subs.keys()) this.send(key);
    });
    this.ws.addEventListener("message", (event) => this.dispatch(parseJson(event.data)));
    this.ws.addEventListener("close", () => {
      if (this.closed) return;
      this.onStatus("reconnecting");
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    });
  }

  static key(channel, instrument) {
    return instrument ? `${channel} ${instrument}` : channel;
  }

  dispatch(msg) {
    if (msg.type === "error") {
      this.onStatus(`error: ${msg.code}: ${msg.message}`);
      return;
    }
    const instrument = msg.channel === "orders" ? null : msg.instrument;
    const sub = this.subs.get(Stream.key(msg.channel, instrument));
    if (sub) sub.handler(msg);
  }

  async send(key) {
    const sub = this.subs.get(key);
    if (!sub || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(JSON.stringify(await sub.message()));
  }

  // `message`: the subscribe message, or an async function making it (a signed one is
  // made afresh for every (re)subscribe: its timestamp must be recent).
  subscribe(channel, instrument, handler, message = null) {
    const key = Stream.key(channel, instrument);
    const make = message ?? (async () => ({ op: "subscribe", channel, instrument }));
    this.subs.set(key, { message: make, handler });
    this.send(key);
    return () => this.resubscribe(key);
  }

  resubscribe(key) {
    this.send(key);
  }

  close() {
    this.closed = true;
    this.ws.close();
  }
}

// A book kept from a snapshot and deltas. `onChange(book)` after each; on a gap
// (prev_seq is not the seq held) it asks for a fresh snapshot.
export class LiveBook {
  constructor(stream, instrument, onChange) {
    this.seq = null;
    this.bids = new Map(); // String(price) -> [price, quantity, orders] as sent
    this.asks = new Map();
    this.onChange = onChange;
    this.resync = stream.subscribe("book", instrument, (msg) => this.apply(msg));
  }

  apply(msg) {
    if (msg.type === "snapshot") {
      this.bids = new Map(msg.bids.map((lv) => [String(lv[0]), lv]));
      this.asks = new Map(msg.asks.map((lv) => [String(lv[0]), lv]));
    } else if (msg.type === "delta") {
      if (msg.prev_seq !== this.seq) {
        this.seq = null;
        this.resync();
        return;
      }
      for (const [side, levels] of [[this.bids, msg.bids], [this.asks, msg.asks]]) {
        for (const lv of levels) {
          if (BigInt(lv[1]) === 0n) side.delete(String(lv[0]));
          else side.set(String(lv[0]), lv);
        }
      }
    } else {
      return; // subscribed
    }
    this.seq = msg.seq;
    this.onChange(this);
  }

  // Levels best first, as GET /v1/book lists them.
  levels() {
    const bids = [...this.bids.values()].sort((a, b) => compare(b[0], a[0]));
    const asks = [...this.asks.values()].sort((a, b) => compare(a[0], b[0]));
    return { bids, asks };
  }
}

function compare(a, b) {
  const x = BigInt(a);
  const y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
