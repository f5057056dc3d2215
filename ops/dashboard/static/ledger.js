// The ledger page: the latest signed checkpoint (its signature checked here), and an
// inclusion proof of any entry fetched and verified in the browser against it.
import { ApiError, getJson, getText } from "./api.js";
import { b64decode, b64encode } from "./bytes.js";
import { clear, h, table } from "./dom.js";
import { formatAsset, formatInteger, formatTime } from "./format.js";
import { leafHash, openNote, parseCheckpoint, parseVerifierKey, VerifyError, verifyInclusion } from "./verify.js";

const PIN_STORAGE_KEY = "tokex.ledger.verifierKey";

// The key that signs checkpoints of `size`: the last one valid from at most that size.
function keyFor(keys, size) {
  const valid = keys.filter((k) => BigInt(k.valid_from_size) <= size);
  return valid.length ? valid.at(-1).key : keys.at(-1)?.key;
}

// The latest checkpoint, opened with the verifier key (`keyText`): throws VerifyError.
async function verifiedCheckpoint(keyText) {
  const key = await parseVerifierKey(keyText);
  const note = await getText("/v1/ledger/checkpoint");
  const checkpoint = parseCheckpoint(await openNote(note, key));
  return { ...checkpoint, key, note };
}

async function verifyEntry(index, keyText) {
  const checkpoint = await verifiedCheckpoint(keyText);
  if (index >= checkpoint.size) {
    throw new VerifyError("index_out_of_range", `entry ${index} is not in the checkpoint's tree of ${checkpoint.size}`);
  }
  const entry = await getJson(`/v1/ledger/entries/${index}`);
  const leaf = await leafHash(b64decode(entry.canonical)); // hashed here, not taken from the answer
  const proof = await getJson(`/v1/ledger/proof/inclusion?index=${index}&size=${checkpoint.size}`);
  if (BigInt(proof.tree_size) !== checkpoint.size || BigInt(proof.leaf_index) !== index) {
    throw new VerifyError("proof_mismatch", "the proof is for another entry or tree size than asked");
  }
  let hashes;
  try {
    hashes = proof.hashes.map(b64decode);
  } catch (err) {
    throw new VerifyError("bad_hash_size", `a proof hash is not base64: ${err.message}`);
  }
  await verifyInclusion(leaf, index, checkpoint.size, hashes, checkpoint.root);
  return { checkpoint, entry, leaf, hashes };
}

function describe(err) {
  if (err instanceof VerifyError) return `${err.reason}: ${err.message}`;
  if (err instanceof ApiError) return `${err.code}: ${err.message}`;
  return err.message;
}

function checkpointPanel(cp) {
  return h(
    "dl",
    { id: "checkpoint", class: "panel" },
    h("dt", {}, "origin"), h("dd", {}, cp.origin),
    h("dt", {}, "tree size"), h("dd", { id: "tree-size", "data-size": String(cp.size) }, formatInteger(cp.size)),
    h("dt", {}, "root hash"), h("dd", { id: "root-hash", class: "mono" }, b64encode(cp.root)),
    h("dt", {}, "signed at"), h("dd", {}, cp.timeMs === null ? "—" : formatTime(cp.timeMs)),
    h("dt", {}, "signed by"), h("dd", { class: "mono" }, `${cp.key.name}+${cp.key.id.toString(16).padStart(8, "0")}`),
  );
}

function entryPanel({ entry, hashes }) {
  const tx = entry.transaction;
  const rows = tx.entries.map((e) =>
    h(
      "tr",
      {},
      h("td", {}, e.account.owner),
      h("td", {}, e.account.asset),
      h("td", {}, e.account.kind),
      h("td", {}, e.bucket),
      h("td", { class: "num" }, formatAsset(e.amount, e.account.asset)),
    ),
  );
  return h(
    "div",
    { class: "panel" },
    h("p", {}, `entry ${tx.index} · ${tx.code} · ${tx.id} · ${formatTime(tx.time_ms)} · proof of ${hashes.length} hashes`),
    table(["owner", "asset", "kind", "bucket", "amount"], rows),
  );
}

export async function renderLedger(main) {
  const status = h("p", { id: "checkpoint-status", class: "status" }, "checking the checkpoint…");
  const panel = h("div");
  const keyInput = h("input", { id: "verifier-key", size: 80, spellcheck: "false", class: "mono" });
  const pin = h("button", { type: "button", id: "pin-key" }, "Pin this key");
  const index = h("input", { id: "entry-index", type: "number", min: 0, step: 1, required: true });
  const result = h("p", { id: "proof-result", class: "status" });
  const details = h("div");
  const form = h(
    "form",
    { id: "proof-form", class: "panel" },
    h("label", {}, "Entry index ", index),
    h("button", { type: "submit", id: "verify-button" }, "Fetch proof and verify"),
    result,
  );
  main.append(
    h("h2", {}, "Ledger"),
    h("h3", {}, "Latest checkpoint"),
    status,
    panel,
    h(
      "p",
      { class: "muted" },
      "Checkpoints are verified with this key. The one prefilled is what this server says it signs " +
        "with; compare it with the key you got by other means and pin yours to use it from now on. ",
      h("label", {}, "Verifier key ", keyInput),
      " ",
      pin,
    ),
    h("h3", {}, "Inclusion proof"),
    form,
    details,
  );
  const keys = (await getJson("/v1/ledger/public-keys")).keys;
  const showCheckpoint = async () => {
    try {
      const cp = await verifiedCheckpoint(keyInput.value.trim());
      status.textContent = "checkpoint signature verified";
      status.dataset.state = "verified";
      clear(panel).append(checkpointPanel(cp));
      if (!index.value) index.value = cp.size > 0n ? String(cp.size - 1n) : "0";
    } catch (err) {
      status.textContent = `checkpoint not verified: ${describe(err)}`;
      status.dataset.state = "failed";
      clear(panel);
    }
  };
  keyInput.value = localStorage.getItem(PIN_STORAGE_KEY) ?? keyFor(keys, 2n ** 64n) ?? "";
  pin.addEventListener("click", () => {
    localStorage.setItem(PIN_STORAGE_KEY, keyInput.value.trim());
    showCheckpoint();
  });
  keyInput.addEventListener("change", showCheckpoint);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.textContent = "verifying…";
    delete result.dataset.state;
    clear(details);
    try {
      const verified = await verifyEntry(BigInt(index.value), keyInput.value.trim());
      result.textContent = `verified: entry ${index.value} is in the signed tree of ${verified.checkpoint.size}`;
      result.dataset.state = "verified";
      details.append(entryPanel(verified));
      clear(panel).append(checkpointPanel(verified.checkpoint));
    } catch (err) {
      result.textContent = `not verified: ${describe(err)}`;
      result.dataset.state = "failed";
    }
  });
  await showCheckpoint();
  return () => {};
}
