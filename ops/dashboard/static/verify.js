// Checks of the ledger's proofs, in the browser, mirroring the server's own code:
// C2SP signed notes (ledger/note.py), tlog checkpoints (ledger/checkpoint.py) and
// RFC 9162 (= RFC 6962) Merkle inclusion proofs (ledger/merkle.py). Each failure is a
// VerifyError whose `reason` says why, in the server's words where it has them.
import { b64decode, concat, equalBytes, requireSubtle, sha256, utf8 } from "./bytes.js";

export class VerifyError extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

const SIG_PREFIX = "\u2014 "; // em dash, space
const ALG_ED25519 = 0x01;

function validKeyName(name) {
  return name.length > 0 && !name.includes("+") && !/[\s\x00-\x1f]/u.test(name);
}

// C2SP key id: SHA-256(name || "\n" || 0x01 || public key)[:4], big-endian.
export async function keyId(name, publicKey) {
  const digest = await sha256(concat(utf8.encode(name + "\n"), Uint8Array.of(ALG_ED25519), publicKey));
  return ((digest[0] << 24) | (digest[1] << 16) | (digest[2] << 8) | digest[3]) >>> 0;
}

// "<name>+<8 hex id>+<base64(0x01 || 32-byte key)>", the id checked against the key.
export async function parseVerifierKey(text) {
  const first = text.indexOf("+");
  const second = text.indexOf("+", first + 1);
  if (first < 0 || second < 0) throw new VerifyError("key_invalid", "a verifier key is <name>+<id>+<key>");
  const name = text.slice(0, first);
  const hexId = text.slice(first + 1, second);
  if (!validKeyName(name)) throw new VerifyError("key_invalid", `invalid key name ${JSON.stringify(name)}`);
  if (!/^[0-9a-fA-F]{8}$/.test(hexId)) throw new VerifyError("key_invalid", "a key id is 8 hex digits");
  let raw;
  try {
    raw = b64decode(text.slice(second + 1));
  } catch (err) {
    throw new VerifyError("key_invalid", `verifier key: ${err.message}`);
  }
  if (raw.length !== 33 || raw[0] !== ALG_ED25519) throw new VerifyError("key_invalid", "not an Ed25519 verifier key");
  const publicKey = raw.slice(1);
  const id = parseInt(hexId, 16);
  if ((await keyId(name, publicKey)) !== id) {
    throw new VerifyError("key_invalid", "the key id does not match the key's name and bytes");
  }
  return { name, id, publicKey, text };
}

// Split a signed note into its text and (unverified) signature lines.
export function parseNote(note) {
  if (/[\x00-\x09\x0b-\x1f]/.test(note)) throw new VerifyError("note_malformed", "control character in note");
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new VerifyError("note_malformed", "the note has no signature block");
  const text = note.slice(0, split + 1);
  const block = note.slice(split + 2);
  if (!block.endsWith("\n")) throw new VerifyError("note_malformed", "the note does not end in a newline");
  const signatures = block.slice(0, -1).split("\n").map((line) => {
    if (!line.startsWith(SIG_PREFIX)) throw new VerifyError("note_malformed", "a signature line starts with an em dash");
    const rest = line.slice(SIG_PREFIX.length);
    const space = rest.indexOf(" ");
    const name = rest.slice(0, space);
    if (space < 0 || !validKeyName(name)) throw new VerifyError("note_malformed", "bad key name in a signature line");
    let raw;
    try {
      raw = b64decode(rest.slice(space + 1));
    } catch (err) {
      throw new VerifyError("note_malformed", `signature line: ${err.message}`);
    }
    if (raw.length !== 68) throw new VerifyError("note_malformed", "an Ed25519 signature line has 4 + 64 bytes");
    const id = ((raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]) >>> 0;
    return { name, id, signature: raw.slice(4) };
  });
  return { text, signatures };
}

// The note's text if `key` signed it; a signature by the key that does not verify is a
// forgery (note_signature_invalid), no signature by it at all: note_unverified.
export async function openNote(note, key) {
  const { text, signatures } = parseNote(note);
  const mine = signatures.filter((s) => s.name === key.name && s.id === key.id);
  if (!mine.length) throw new VerifyError("note_unverified", `no signature by ${key.name}+${key.id.toString(16).padStart(8, "0")}`);
  const subtle = requireSubtle();
  const publicKey = await subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, ["verify"]);
  for (const s of mine) {
    if (!(await subtle.verify({ name: "Ed25519" }, publicKey, s.signature, utf8.encode(text)))) {
      throw new VerifyError("note_signature_invalid", "the checkpoint's signature does not verify: altered or forged");
    }
  }
  return text;
}

const DECIMAL = /^(0|[1-9][0-9]{0,19})$/;

// A checkpoint's text: origin, tree size, root hash, then the optional "time <ms>" line.
export function parseCheckpoint(text) {
  if (!text.endsWith("\n")) throw new VerifyError("checkpoint_malformed", "the text must end with a newline");
  const [origin, sizeText, rootText, ...ext] = text.slice(0, -1).split("\n");
  if (!origin || rootText === undefined) throw new VerifyError("checkpoint_malformed", "origin, size and root lines are needed");
  if (!DECIMAL.test(sizeText)) throw new VerifyError("checkpoint_malformed", "the tree size is not a canonical decimal");
  let root;
  try {
    root = b64decode(rootText);
  } catch (err) {
    throw new VerifyError("checkpoint_malformed", `root hash: ${err.message}`);
  }
  if (root.length !== 32) throw new VerifyError("checkpoint_malformed", "the root hash must be 32 bytes");
  let time = null;
  if (ext[0]?.startsWith("time ")) {
    if (!DECIMAL.test(ext[0].slice(5))) throw new VerifyError("checkpoint_malformed", "the time is not a canonical decimal");
    time = BigInt(ext[0].slice(5));
  }
  return { origin, size: BigInt(sizeText), root, timeMs: time };
}

export async function leafHash(data) {
  return sha256(concat(Uint8Array.of(0), data));
}

async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

// RFC 9162 section 2.1.3.2, literally as ledger.merkle.verify_inclusion (BigInt indices).
export async function verifyInclusion(leaf, index, size, proof, root) {
  if (index < 0n || index >= size) throw new VerifyError("index_out_of_range", `leaf index ${index} >= tree size ${size}`);
  if (leaf.length !== 32) throw new VerifyError("bad_hash_size", "the leaf hash is not 32 bytes");
  if (proof.some((p) => p.length !== 32)) throw new VerifyError("bad_hash_size", "a proof hash is not 32 bytes");
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new VerifyError("wrong_length", "the inclusion proof is too long");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while (fn !== 0n && (fn & 1n) === 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new VerifyError("wrong_length", "the inclusion proof is too short");
  if (!equalBytes(r, root)) throw new VerifyError("root_mismatch", "the inclusion proof does not lead to the checkpoint's root");
}
