"""Verifier fuzzing: 1,000 seeded mutations of a real export, verified with the pinned key:
none accepted unless its content is the original's, none answered by anything but the
verifier's own AuditFailure; and the fuzzer's judge counts what it must."""

from __future__ import annotations

import random

import pytest

from ledger.note import Signer
from ops.bench import fuzz_verify
from ops.bench.fuzz_verify import (
    MUTATIONS,
    ORIGIN,
    Base,
    Tally,
    decoded,
    fuzz,
    judge,
    load_base,
    real_export,
    violations,
)


@pytest.fixture
async def base(db_url: str) -> Base:
    data, pinned = await real_export(db_url)
    return load_base(data, pinned, Signer.generate(ORIGIN))


def test_a_thousand_mutations_of_a_real_export_none_accepted_none_crashing(base: Base) -> None:
    tallies = fuzz(base, 1000, seed=12)
    bad = {name: t.examples[:2] for name, t in tallies.items() if t.forgeries or t.crashes}
    assert violations(tallies) == 0, bad
    for name, t in tallies.items():
        assert t.cases >= 1000 // len(MUTATIONS) and t.refused > 0, name
    assert sum(t.refused for t in tallies.values()) >= 900


def test_the_judge_counts_an_accepted_change_and_a_crash(
    base: Base, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = decoded(base.data)
    assert original is not None
    mutant = MUTATIONS["rebalance_closing"](base, random.Random(1))
    monkeypatch.setattr(fuzz_verify, "verify_file", lambda f, key: None)  # accepts anything
    tally = Tally()
    judge(base, original, mutant, tally, "forged")
    judge(base, original, base.data, tally, "the original")
    assert (tally.forgeries, tally.unchanged) == (1, 1)

    def crash(f: object, key: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(fuzz_verify, "verify_file", crash)
    judge(base, original, mutant, tally, "crash")
    assert tally.crashes == 1


def test_a_file_less_an_intermediate_checkpoint_is_told_apart_from_a_forgery(base: Base) -> None:
    original = decoded(base.data)
    assert original is not None
    cps = base.indices("checkpoint")
    thin = fuzz_verify.seal([p for i, p in enumerate(base.payloads) if i != cps[0]])
    tally = Tally()
    judge(base, original, thin, tally, "thinned")
    assert (tally.thinned, tally.forgeries) == (1, 0)
    no_last = fuzz_verify.seal([p for i, p in enumerate(base.payloads) if i != cps[-1]])
    judge(base, original, no_last, tally, "last checkpoint dropped")
    assert tally.refused == 1  # its entries would be unsigned
