"""The soak bench: its trend verdict tells growth from noise, and a tiny run samples."""

from __future__ import annotations

from pathlib import Path

from ops.bench.soak import Sample, run, verdict


def _samples(rss: list[float], p99: list[float]) -> list[Sample]:
    return [
        Sample(i + 1.0, 100, 10.0, 5.0, p, 0, 0, r)
        for i, (r, p) in enumerate(zip(rss, p99, strict=True))
    ]


def test_the_verdict_flags_growth_and_passes_noise() -> None:
    flat, _ = verdict(
        _samples([80, 81, 79, 80, 82, 80, 81, 80, 79, 81], [20, 25, 19, 22, 30, 21, 20, 24, 22, 21])
    )
    assert flat
    leaking, text = verdict(_samples([80 + 8 * i for i in range(10)], [20] * 10))
    assert not leaking and "RSS GROWING" in text
    slowing, text = verdict(_samples([80] * 10, [20 + 6 * i for i in range(10)]))
    assert not slowing and "p99 GROWING" in text


async def test_a_tiny_soak_samples_memory_and_latency(pg_data_dir: Path) -> None:
    max_rate, rate, samples = await run(
        pg_data_dir, minutes=0.1, traders=4, calibrate_s=2.0, sample_s=2.0
    )
    assert max_rate > 0 and rate == max(1.0, max_rate / 2)
    assert len(samples) == 3
    assert all(s.commands > 0 and s.rss_mb > 20 and s.errors == 0 for s in samples)
