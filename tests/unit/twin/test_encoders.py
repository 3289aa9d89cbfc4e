"""State encoders by name and bucket size; protocols as registered names."""

import pytest

from twin.encoders import ENCODERS, EncoderSettings, make_encoder, register
from twin.env import EnvSettings
from twin.model import TwinObservation


def _obs(up: tuple[bool, ...], mbps: tuple[float, ...]) -> TwinObservation:
    return TwinObservation(now=0.0, up=up, link_mbps=mbps, latency_ms=(10.0,) * len(up),
                           tps=100.0, tx_size=500.0, protocol="pbft", pending_txs=0, height=0)


def test_paper_encoder_buckets_speeds() -> None:
    obs = _obs((True, False, True), (3.4, 7.6, 12.2))
    assert make_encoder().key(obs) == (1, 3, 12)
    assert make_encoder(EncoderSettings(mbps_bucket=5)).key(obs) == (1, 1, 2)
    top = make_encoder(EncoderSettings(mbps_bucket=5, max_mbps=10)).key(obs)
    assert top == (1, 1, 2)
    assert make_encoder(EncoderSettings(mbps_bucket=5, max_mbps=5)).key(obs) == (1, 1, 1)


def test_failed_slowest_encoder_counts_failures() -> None:
    enc = make_encoder(EncoderSettings(name="failed_slowest", mbps_bucket=2))
    assert enc.key(_obs((False, False, True), (3.0, 9.0, 5.0))) == (2, 2)
    assert enc.space.contains(enc.encode(_obs((True,) * 3, (3.0, 9.0, 5.0))))


def test_unknown_encoder_and_duplicate_registration_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown state encoder 'nope'.*paper"):
        make_encoder(EncoderSettings(name="nope"))
    with pytest.raises(ValueError, match="already registered"):
        register("paper", ENCODERS["paper"])


def test_protocols_must_be_registered_and_distinct() -> None:
    assert EnvSettings().protocols == ("pbft", "bigfoot")
    with pytest.raises(ValueError, match="unknown protocol 'raft'"):
        EnvSettings(protocols=("pbft", "raft"))
    with pytest.raises(ValueError, match="distinct"):
        EnvSettings(protocols=("pbft", "pbft"))
