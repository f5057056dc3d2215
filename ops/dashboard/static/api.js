// The exchange's HTTP API from the browser: JSON with integers kept exact, errors as
// {code, message}, and requests signed exactly as market/signing.py defines:
//   "{timestamp}\n{METHOD}\n{path with query}\n{hex SHA-256 of the body}"
// with the key imported non-extractable (it never leaves the browser, not even to this
// page's own scripts).
import { b64decode, b64encode, concat, hex, requireSubtle, sha256, utf8 } from "./bytes.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

// JSON.parse, but an integer beyond 2**53 becomes a BigInt instead of a rounded float.
export function parseJson(text) {
  return JSON.parse(text, (_key, value, context) => {
    if (typeof value === "number" && !Number.isSafeInteger(value) && context?.source) {
      if (/^-?\d+$/.test(context.source)) return BigInt(context.source);
    }
    return value;
  });
}

async function decode(response) {
  const text = await response.text();
  if (response.ok) return text ? parseJson(text) : null;
  let code = `http_${response.status}`;
  let message = response.statusText;
  try {
    const body = parseJson(text);
    code = body.code ?? code;
    message = body.message ?? message;
  } catch {
    message = text.slice(0, 300) || message;
  }
  throw new ApiError(response.status, code, message);
}

export async function getJson(path) {
  return decode(await fetch(path, { headers: { accept: "application/json" } }));
}

export async function getText(path) {
  const response = await fetch(path);
  if (!response.ok) return decode(response);
  return response.text();
}

// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): what `tokex accounts create` writes
// as PEM is exactly this prefix and the 32 bytes.
const PKCS8_ED25519_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

// A PKCS#8 PEM private key, or base64 of the raw 32-byte seed (market/keys.py's formats),
// as a non-extractable WebCrypto signing key.
export async function importPrivateKey(text) {
  const trimmed = text.trim();
  let der;
  if (trimmed.startsWith("-----BEGIN")) {
    const match = trimmed.match(/^-----BEGIN PRIVATE KEY-----([A-Za-z0-9+/=\s]+)-----END PRIVATE KEY-----$/);
    if (!match) throw new Error("not an unencrypted PKCS#8 PEM private key (BEGIN PRIVATE KEY)");
    der = b64decode(match[1].replace(/\s+/g, ""));
  } else {
    const seed = b64decode(trimmed);
    if (seed.length !== 32) throw new Error(`an Ed25519 private key has 32 bytes, not ${seed.length}`);
    der = concat(PKCS8_ED25519_PREFIX, seed);
  }
  try {
    return await requireSubtle().importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
  } catch (err) {
    throw new Error(`not an Ed25519 private key (${err.message})`);
  }
}

export function requestMessage(timestampMs, method, pathWithQuery, bodyDigestHex) {
  return `${timestampMs}\n${method.toUpperCase()}\n${pathWithQuery}\n${bodyDigestHex}`;
}

// The body a signed subscribe signs (market/signing.py subscribe_body): its parameters as
// compact JSON with sorted keys, every one present.
export function subscribeBody({ channel, instrument = null, cancel_on_disconnect = false }) {
  const params = { cancel_on_disconnect: Boolean(cancel_on_disconnect), channel, instrument, op: "subscribe" };
  return utf8.encode(JSON.stringify(params));
}

// One account's signed session: a key id and its (non-extractable) private key.
export class Session {
  constructor(keyId, privateKey, clockOffsetMs = 0) {
    this.keyId = keyId;
    this.privateKey = privateKey;
    this.clockOffsetMs = clockOffsetMs;
    this.lastTimestamp = 0;
  }

  // Strictly after the last one: two identical requests in one millisecond would carry
  // the same signature, and the second would be refused as a replay.
  nextTimestamp() {
    this.lastTimestamp = Math.max(Date.now() + this.clockOffsetMs, this.lastTimestamp + 1);
    return this.lastTimestamp;
  }

  async sign(method, pathWithQuery, body) {
    const timestamp = this.nextTimestamp();
    const digest = hex(await sha256(body));
    const message = utf8.encode(requestMessage(timestamp, method, pathWithQuery, digest));
    const raw = await requireSubtle().sign({ name: "Ed25519" }, this.privateKey, message);
    return { timestamp, signature: b64encode(new Uint8Array(raw)) };
  }

  async request(method, path, json) {
    const body = json === undefined ? new Uint8Array() : utf8.encode(JSON.stringify(json));
    // The target exactly as the browser will send it (its URL parser's percent-encoding).
    const url = new URL(path, location.origin);
    const target = url.pathname + url.search;
    const { timestamp, signature } = await this.sign(method, target, body);
    const headers = {
      accept: "application/json",
      "X-Tokex-Key": this.keyId,
      "X-Tokex-Timestamp": String(timestamp),
      "X-Tokex-Signature": signature,
    };
    if (body.length) headers["content-type"] = "application/json";
    return decode(await fetch(target, { method, headers, body: body.length ? body : undefined }));
  }

  get(path) {
    return this.request("GET", path);
  }

  // The signed subscribe of the private orders channel: signed like GET /v1/stream whose
  // body is the subscribe's parameters (subscribeBody), so none can be changed after.
  async ordersSubscription(cancelOnDisconnect = false) {
    const params = { channel: "orders", instrument: null, cancel_on_disconnect: cancelOnDisconnect };
    const { timestamp, signature } = await this.sign("GET", "/v1/stream", subscribeBody(params));
    return { op: "subscribe", ...params, key_id: this.keyId, timestamp_ms: timestamp, signature };
  }
}

// The server's clock minus ours (ms), from a response's Date header, if more than 10 s
// apart (signatures are refused beyond 30 s); else 0.
export async function serverClockOffsetMs() {
  const before = Date.now();
  const response = await fetch("/health", { method: "GET" });
  const date = Date.parse(response.headers.get("date") ?? "");
  if (Number.isNaN(date)) return 0;
  const offset = date + 500 - (before + Date.now()) / 2;
  return Math.abs(offset) > 10_000 ? Math.round(offset) : 0;
}
