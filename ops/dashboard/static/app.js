// The dashboard's router: #/ (instruments), #/market/<symbol>, #/account, #/ledger.
import { ApiError, getJson } from "./api.js";
import { renderAccount } from "./account.js";
import { clear, h } from "./dom.js";
import { loadCurrencies } from "./format.js";
import { renderLedger } from "./ledger.js";
import { renderInstruments, renderMarket } from "./market.js";

const main = document.getElementById("app");
let cleanup = () => {};
let generation = 0;

// A link's percent-encoded part, or null when it is not valid percent-encoding.
function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  if (hash.startsWith("/market/")) {
    const symbol = decoded(hash.slice("/market/".length));
    if (symbol === null) {
      return ["market", () => Promise.reject(new Error("this link names no instrument"))];
    }
    return ["market", (el) => renderMarket(el, symbol)];
  }
  if (hash === "/account") return ["account", renderAccount];
  if (hash === "/ledger") return ["ledger", renderLedger];
  return ["market", renderInstruments];
}

async function show() {
  cleanup();
  cleanup = () => {};
  const mine = ++generation;
  const [section, render] = route();
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.section === section);
  }
  clear(main);
  try {
    const done = await render(main);
    if (mine === generation) cleanup = done;
    else done();
  } catch (err) {
    const text = err instanceof ApiError ? `${err.code}: ${err.message}` : err.message;
    main.append(h("p", { class: "error", id: "page-error" }, text));
  }
}

window.addEventListener("hashchange", show);
loadCurrencies(getJson).then(show);
