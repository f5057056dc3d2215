// Amounts and quantities as people read them. Integers only: BigInt arithmetic, never a
// float (the API's numbers are integers; big ones arrive as BigInt, see api.js).

// Minor units per unit, as a power of ten, per currency, and its symbol: what the
// exchange serves at GET /v1/currencies (`loadCurrencies`, once at start); USD with
// cents until then.
const SCALES = new Map([["USD", 2]]);
const SYMBOLS = new Map([["USD", "$"]]);

export async function loadCurrencies(getJson) {
  try {
    for (const c of await getJson("/v1/currencies")) {
      SCALES.set(c.code, Number(c.scale));
      if (c.symbol) SYMBOLS.set(c.code, c.symbol);
    }
  } catch {
    // keep the defaults: amounts still show, in cents for USD
  }
}

export function currencyScale(currency) {
  return SCALES.get(currency) ?? 0;
}

function groupDigits(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// An integer of minor units of `currency` as "$21,098.75" (or "1,234.5 XYZ").
export function formatMoney(minor, currency) {
  const scale = currencyScale(currency);
  let n = BigInt(minor);
  const sign = n < 0n ? "-" : "";
  if (n < 0n) n = -n;
  const unit = 10n ** BigInt(scale);
  const whole = groupDigits((n / unit).toString());
  const frac = scale > 0 ? "." + (n % unit).toString().padStart(scale, "0") : "";
  const symbol = SYMBOLS.get(currency);
  return symbol ? `${sign}${symbol}${whole}${frac}` : `${sign}${whole}${frac} ${currency}`;
}

// A whole number with thousands separators ("30,000").
export function formatInteger(value) {
  let n = BigInt(value);
  const sign = n < 0n ? "-" : "";
  if (n < 0n) n = -n;
  return sign + groupDigits(n.toString());
}

export function formatTime(ms) {
  const d = new Date(Number(ms));
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// Whether an asset name is a currency (cash, escrow, fees) rather than a token asset.
export function isCurrency(asset) {
  return SCALES.has(asset) || /^[A-Z]{3}$/.test(asset);
}

// A balance amount of `asset`: money in its units, tokens as a plain count.
export function formatAsset(amount, asset) {
  return isCurrency(asset) ? formatMoney(amount, asset) : `${formatInteger(amount)} tokens`;
}
