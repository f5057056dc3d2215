// Byte helpers: base64 (strict, canonical), hex, UTF-8, concatenation, SHA-256.

export const utf8 = new TextEncoder();

export function b64encode(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

// Standard padded base64; anything but the canonical encoding is refused (as the server's
// ledger.note.b64decode_strict does), so one text has one meaning.
export function b64decode(text) {
  let raw;
  try {
    raw = atob(text);
  } catch {
    throw new Error("invalid base64");
  }
  const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
  if (b64encode(bytes) !== text) throw new Error("non-canonical base64");
  return bytes;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// WebCrypto exists only in a secure context: https, or http on localhost / 127.0.0.1.
export function requireSubtle() {
  if (!globalThis.crypto?.subtle) {
    throw new Error(
      "this page is not a secure context, so the browser offers no WebCrypto: open the " +
        "dashboard over https, or at http://127.0.0.1 / http://localhost (e.g. an SSH tunnel)",
    );
  }
  return crypto.subtle;
}

export async function sha256(bytes) {
  return new Uint8Array(await requireSubtle().digest("SHA-256", bytes));
}
