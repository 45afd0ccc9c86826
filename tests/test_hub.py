"""Publishing to and pulling from the Hub leaderboard, against a local in-memory Hub (``tests/hub_server.py``).

Nothing is mocked on the client side: ``leaderboard.hub`` drives the real ``huggingface_hub`` client, which
talks HTTP to the test server through ``endpoint=``. The server enforces ``parentCommit`` like the Hub (412
when the branch moved), so the concurrency tests exercise the real retry path.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_server import FakeHub, running_hub
from test_leaderboard import make_hub_record as make_record

from leaderboard import hub as hubmod
from leaderboard.hub import (
    MAX_ATTEMPTS,
    AlreadyPublishedError,
    HubConfig,
    HubError,
    PublishError,
    PullError,
    publish,
    pull,
    record_path,
    require_config,
)
from leaderboard.record import Record
from leaderboard.store import LocalStore

REPO = "transferbench/leaderboard"
TOKEN = "hf_test_write_token"


@pytest.fixture(autouse=True)
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, a throw-away HF_HOME, a known token, no Hub settings or proxies from the environment."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN", "TRANSFERBENCH_HUB_REPO", "TRANSFERBENCH_HUB_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hubmod, "_BACKOFF_S", 0.01)  # keep the retry pauses short


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with running_hub() as h:
        yield h
        assert not h.unknown_routes, f"the client called routes the test Hub does not know: {h.unknown_routes}"


@pytest.fixture
def cfg(hub: FakeHub) -> HubConfig:
    return HubConfig(REPO, endpoint=hub.endpoint)


def _bytes(record: Record) -> bytes:
    return record.dumps().encode()


def _store_files(store: LocalStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []


# --- configuration -------------------------------------------------------------------------------------------------


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert HubConfig.from_env() is None  # no Hub configured: the local store is the leaderboard
    with pytest.raises(HubError, match="TRANSFERBENCH_HUB_REPO"):
        require_config(None)
    monkeypatch.setenv("TRANSFERBENCH_HUB_REPO", " org/board ")
    assert HubConfig.from_env() == HubConfig("org/board")
    assert HubConfig.from_env().endpoint is None  # type: ignore[union-attr]  # huggingface_hub's default
    monkeypatch.setenv("TRANSFERBENCH_HUB_ENDPOINT", "http://mirror.local:8080/")
    cfg = HubConfig.from_env()
    assert cfg is not None and cfg.endpoint == "http://mirror.local:8080" and cfg.token is None
    assert require_config(None) == cfg
    monkeypatch.setenv("TRANSFERBENCH_HUB_REPO", "no-namespace")
    with pytest.raises(HubError, match=r"'no-namespace'.*owner/name"):
        HubConfig.from_env()
    with pytest.raises(HubError, match="TRANSFERBENCH_HUB_ENDPOINT"):
        HubConfig("org/board", endpoint="mirror.local")
    assert "hf_secret" not in repr(HubConfig("org/board", token="hf_secret"))


def test_record_path_is_the_local_store_layout(tmp_path: Path) -> None:
    rec = make_record("sur-a")
    store = LocalStore(tmp_path)
    assert record_path(rec) == "records/" + store.path_for(rec).relative_to(tmp_path).as_posix()
    modified = make_record("sur-a", protocol_sha256="ab" * 32)  # a modified protocol gets its own folder
    assert record_path(modified).startswith("records/smoke-digits-v2-abababab/")


# --- publish -------------------------------------------------------------------------------------------------------


def test_publish_then_pull_round_trips_byte_for_byte(hub: FakeHub, cfg: HubConfig, tmp_path: Path) -> None:
    rec = make_record("sur-a")
    parent = hub.head(REPO)
    sha = publish(rec, cfg)
    assert sha == hub.head(REPO) != parent
    head = hub.history(REPO)[0]
    assert head.parent == parent and head.message == f"Add {rec.submission_id} (smoke-digits-v2)"
    assert hub.files(REPO)[record_path(rec)] == _bytes(rec)
    assert f"Bearer {TOKEN}" in hub.authorizations  # the token from HF_TOKEN reached the Hub

    store = LocalStore(tmp_path / "board")
    report = pull(cfg, store)
    assert report.ok and report.commit == sha
    assert report.new == [store.path_for(rec)] and not report.updated and not report.unchanged
    assert store.path_for(rec).read_bytes() == _bytes(rec)
    assert [r.to_json() for r in store.records()] == [rec.to_json()]

    again = pull(cfg, store)  # identical files are left alone
    assert again.unchanged == [store.path_for(rec)] and not again.new and not again.updated
    assert "1 unchanged, 0 rejected" in again.summary()


def test_publish_duplicate_refused_overwrite_replaces(hub: FakeHub, cfg: HubConfig, tmp_path: Path) -> None:
    rec = make_record("sur-a", score=0.5)
    publish(rec, cfg)
    n_commits = len(hub.history(REPO))

    with pytest.raises(AlreadyPublishedError, match="already published"):
        publish(rec, cfg)
    with pytest.raises(AlreadyPublishedError, match="already published"):  # identical bytes: nothing to overwrite
        publish(rec, cfg, overwrite=True)
    rerun = make_record("sur-a", score=0.6)  # same surrogate, same protocol, different result = same path
    assert record_path(rerun) == record_path(rec)
    with pytest.raises(PublishError, match=r"already holds .*--overwrite") as err:
        publish(rerun, cfg)
    assert not isinstance(err.value, AlreadyPublishedError)
    assert len(hub.history(REPO)) == n_commits and hub.count("POST", "/commit/") == 1  # no new commit
    assert hub.files(REPO)[record_path(rec)] == _bytes(rec)

    store = LocalStore(tmp_path / "board")
    pull(cfg, store)
    sha = publish(rerun, cfg, overwrite=True)
    assert sha == hub.head(REPO) and len(hub.history(REPO)) == n_commits + 1
    assert hub.history(REPO)[0].message.startswith(f"Update {rec.submission_id}")
    assert hub.files(REPO)[record_path(rec)] == _bytes(rerun)
    report = pull(cfg, store)  # the local copy follows the Hub
    assert report.updated == [store.path_for(rec)] and store.path_for(rec).read_bytes() == _bytes(rerun)


def test_a_record_made_by_code_that_computes_differently_is_not_published(
    hub: FakeHub, cfg: HubConfig, caplog: pytest.LogCaptureFixture
) -> None:
    from bench.numerics import numerics_digest
    from bench.protocol import get_protocol

    current = numerics_digest(get_protocol("smoke-digits"))
    other = make_record("sur-a")
    other.provenance["numerics"] = "f" * 64
    with pytest.raises(PublishError, match=r"computes smoke-digits-v2 differently .*ffffffffffff vs .*Re-evaluate"):
        publish(other, cfg)
    assert hub.count("POST", "/commit/") == 0
    moved = make_record("sur-d")
    moved.provenance.update(numerics=None, numerics_check="3 values moved")
    with pytest.raises(PublishError, match=r"did not reproduce the reference numerics .*3 values moved.*selfcheck"):
        publish(moved, cfg)
    older = make_record("sur-b")  # no digest: made before records carried one
    publish(older, cfg)
    assert "carries no reference-numerics digest" in caplog.text
    same = make_record("sur-c")
    same.provenance["numerics"] = current
    publish(same, cfg)
    assert hub.count("POST", "/commit/") == 2


def test_invalid_record_is_not_published(hub: FakeHub, cfg: HubConfig) -> None:
    empty_runs = make_record("sur-a")
    empty_runs.runs = []
    with pytest.raises(PublishError, match="runs must be a non-empty list"):
        publish(empty_runs, cfg)
    nan = make_record("sur-b")
    nan.score["mean"] = float("nan")
    with pytest.raises(PublishError, match="strict JSON"):
        publish(nan, cfg)
    assert hub.requests == []  # refused before any request


# --- concurrency ---------------------------------------------------------------------------------------------------


def test_head_moves_between_read_and_commit_then_retry_lands_both(hub: FakeHub, cfg: HubConfig) -> None:
    ours, theirs = make_record("sur-a"), make_record("sur-b")
    # Another publisher commits its record right after we read the head and before our commit arrives.
    hub.commit_before_next_request(REPO, {record_path(theirs): _bytes(theirs)}, "Add sur-b (foreign)")
    sha = publish(ours, cfg)

    files = hub.files(REPO)
    assert files[record_path(ours)] == _bytes(ours) and files[record_path(theirs)] == _bytes(theirs)
    mine, foreign, _initial = hub.history(REPO)
    assert mine.sha == sha and mine.parent == foreign.sha and foreign.message == "Add sur-b (foreign)"
    assert [s for m, p, s in hub.requests if m == "POST" and "/commit/" in p] == [412, 200]  # rejected, then retried
    assert hub.count("GET", r"/revision/main") == 2  # the head was read again before the retry


def test_retry_rechecks_duplicates_and_overwrites_nothing(hub: FakeHub, cfg: HubConfig) -> None:
    ours = make_record("sur-a", score=0.5)
    theirs = make_record("sur-a", score=0.9)  # the same surrogate, published by someone else meanwhile
    hub.commit_before_next_request(REPO, {record_path(theirs): _bytes(theirs)}, "Add sur-a (foreign)")
    with pytest.raises(PublishError, match="already holds"):
        publish(ours, cfg)
    assert hub.files(REPO)[record_path(ours)] == _bytes(theirs)  # their file survives
    assert hub.history(REPO)[0].message == "Add sur-a (foreign)"


def test_two_concurrent_publishers_both_land(hub: FakeHub, cfg: HubConfig) -> None:
    records = [make_record("sur-a"), make_record("sur-b")]
    hub.hold_commits(2)  # both commit requests carry the same parent: exactly one must be refused with 412
    results: dict[str, str | BaseException] = {}

    def run(rec: Record) -> None:
        try:
            results[rec.submission_id] = publish(rec, cfg)
        except BaseException as e:  # reported below
            results[rec.submission_id] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(v, str) for v in results.values()), results
    files = hub.files(REPO)
    for rec in records:
        assert files[record_path(rec)] == _bytes(rec)
    assert len(hub.history(REPO)) == 3  # initial + one commit each
    assert sorted(s for m, p, s in hub.requests if m == "POST" and "/commit/" in p) == [200, 200, 412]


def test_gives_up_after_max_attempts_when_the_branch_keeps_moving(hub: FakeHub, cfg: HubConfig) -> None:
    ours = make_record("sur-a")
    for i in range(MAX_ATTEMPTS):
        hub.commit_before_next_request(REPO, {f"notes/{i}.txt": b"busy\n"}, f"foreign {i}")
    with pytest.raises(PublishError, match=f"changed under each of {MAX_ATTEMPTS} attempts"):
        publish(ours, cfg)
    assert record_path(ours) not in hub.files(REPO)
    assert hub.count("POST", "/commit/") == MAX_ATTEMPTS


# --- pull verification ---------------------------------------------------------------------------------------------


def test_pull_rejects_bad_files_and_never_writes_them(hub: FakeHub, cfg: HubConfig, tmp_path: Path) -> None:
    good, victim, impostor, bare = (make_record(n) for n in ("good", "victim", "impostor", "bare"))
    publish(good, cfg)
    tampered = json.loads(victim.dumps())
    tampered["score"]["mean"] = 0.99  # edited after the integrity hash was computed
    no_integrity = json.loads(bare.dumps())
    del no_integrity["integrity"]
    key = "records/smoke-digits-v2"
    bad = {
        record_path(victim): json.dumps(tampered, indent=1).encode(),
        f"{key}/victim2-000000000000.json": _bytes(impostor),  # a valid record filed under another name
        "records/other-v1/" + record_path(good).rsplit("/", 1)[1]: _bytes(good),  # right name, wrong protocol folder
        f"{key}/junk.json": b"<html>not json</html>",
        "records/" + record_path(good).rsplit("/", 1)[1]: _bytes(good),  # outside any protocol folder
        f"{key}/latin1.json": "caf\xe9".encode("latin-1"),
        record_path(bare): json.dumps(no_integrity, indent=1).encode(),
    }
    hub.commit(REPO, dict(bad), "vandalism")

    store = LocalStore(tmp_path / "board")
    report = pull(cfg, store)
    assert report.new == [store.path_for(good)] and not report.ok
    reasons = {r.path: r.reason for r in report.rejected}
    assert set(reasons) == set(bad)
    assert "integrity check failed" in reasons[record_path(victim)]
    assert "must sit at its own path" in reasons[f"{key}/victim2-000000000000.json"]
    assert record_path(impostor) in reasons[f"{key}/victim2-000000000000.json"]
    assert "must sit at its own path" in reasons["records/other-v1/" + record_path(good).rsplit("/", 1)[1]]
    assert "not a JSON record" in reasons[f"{key}/junk.json"] and "not a JSON record" in reasons[f"{key}/latin1.json"]
    assert "integrity.sha256 is missing" in reasons[record_path(bare)]
    assert _store_files(store) == [store.path_for(good)]  # nothing rejected was written
    assert "must sit at its own path" in reasons["records/" + record_path(good).rsplit("/", 1)[1]]
    assert "7 rejected" in report.summary() and "junk.json" in report.summary()


def _resealed(rec: Record, edit: Any) -> bytes:
    """``rec``'s file after ``edit(doc)``, with the integrity hash recomputed (anyone can: it is a checksum)."""
    from leaderboard.record import canonical_sha256

    doc = json.loads(rec.dumps())
    doc.pop("integrity")
    edit(doc)
    doc["integrity"] = {"sha256": canonical_sha256(doc)}  # as Record computes it, without validating the edit
    return json.dumps(doc, indent=1).encode()


def test_pull_refuses_resealed_forgeries_and_malformed_files_one_by_one(
    hub: FakeHub, cfg: HubConfig, tmp_path: Path
) -> None:
    good = make_record("good")
    publish(good, cfg)
    key, ranking = "records/smoke-digits-v2", good.protocol["ranking_cell"]
    forged, relabelled, moved = make_record("forged"), make_record("relabelled"), make_record("moved")
    nan_text = good.dumps().replace('"wall_time_s": 1.5', '"wall_time_s": NaN').replace("good-", "nan-")
    partial = make_record("partial", partial=True)  # publish refuses --limit runs; neither may pull take one
    huge = make_record("huge")
    bad = {
        record_path(forged): _resealed(forged, lambda d: d["score"].update(mean=0.99)),
        record_path(relabelled): _resealed(relabelled, lambda d: d["protocol"].update(kind="benchmark")),
        record_path(moved): _resealed(moved, lambda d: d["protocol"].update(ranking_cell="dim/linf-16/targeted")),
        f"{key}/nan-{good.submission['sha256'][:12]}.json": nan_text.encode(),
        f"{key}/deep.json": ("[" * 100_000 + "]" * 100_000).encode(),
        record_path(huge): _resealed(huge, lambda d: d["score"].update(std=10**400)),  # too large for a float
        record_path(partial): _bytes(partial),
    }
    hub.commit(REPO, dict(bad), "forgeries")
    store = LocalStore(tmp_path / "board")
    report = pull(cfg, store)  # every bad file is refused on its own; the good one still lands
    assert report.new == [store.path_for(good)] and _store_files(store) == [store.path_for(good)]
    reasons = {r.path: r.reason for r in report.rejected}
    assert set(reasons) == set(bad)
    assert "score.mean is 0.99, its outcome bits give" in reasons[record_path(forged)]
    assert "protocol.kind is 'benchmark', but smoke-digits-v2 says 'smoke'" in reasons[record_path(relabelled)]
    assert (
        f"protocol.ranking_cell is 'dim/linf-16/targeted', but smoke-digits-v2 says {ranking!r}"
        in (reasons[record_path(moved)])
    )
    assert "NaN is not a JSON number" in reasons[f"{key}/nan-{good.submission['sha256'][:12]}.json"]
    assert "not a JSON record" in reasons[f"{key}/deep.json"]
    assert "score.std must be a number" in reasons[record_path(huge)]
    assert "--limit run" in reasons[record_path(partial)] and "whole protocol" in reasons[record_path(partial)]


def test_a_forged_record_is_not_published(hub: FakeHub, cfg: HubConfig) -> None:
    forged = make_record("forged")
    forged.score["mean"] = 0.99
    with pytest.raises(PublishError, match=r"score\.mean is 0\.99, its outcome bits give"):
        publish(forged, cfg)
    assert hub.requests == []


def test_pull_replaces_a_stale_local_copy(hub: FakeHub, cfg: HubConfig, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "board")
    store.add(make_record("sur-a", score=0.1))
    published = make_record("sur-a", score=0.5)
    publish(published, cfg)
    report = pull(cfg, store)
    assert report.updated == [store.path_for(published)]
    assert store.path_for(published).read_bytes() == _bytes(published)


def test_pull_of_an_empty_leaderboard(hub: FakeHub, cfg: HubConfig, tmp_path: Path) -> None:
    report = pull(cfg, LocalStore(tmp_path / "board"))
    assert report.ok and report.commit == hub.head(REPO) and not (report.new or report.updated or report.unchanged)


# --- clear errors --------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_names_it(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    cfg = HubConfig(REPO, endpoint=endpoint)
    with pytest.raises(PublishError, match="unreachable") as err:
        publish(make_record("sur-a"), cfg)
    assert endpoint in str(err.value) and "TRANSFERBENCH_HUB_ENDPOINT" in str(err.value)
    with pytest.raises(PullError, match="unreachable") as err2:
        pull(cfg, LocalStore(tmp_path / "board"))
    assert endpoint in str(err2.value)
    assert not (tmp_path / "board").exists()


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFERBENCH_OFFLINE"])
def test_offline_mode_refuses(
    var: str, hub: FakeHub, cfg: HubConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(var, "1")
    with pytest.raises(PublishError, match=f"{var} is set"):
        publish(make_record("sur-a"), cfg)
    with pytest.raises(PullError, match=f"{var} is set"):
        pull(cfg, LocalStore(tmp_path / "board"))
    assert hub.requests == []


def test_missing_repo_and_branch(hub: FakeHub, tmp_path: Path) -> None:
    missing = HubConfig("transferbench/nope", endpoint=hub.endpoint)
    with pytest.raises(PublishError, match=r"transferbench/nope was not found at http://127\.0\.0\.1"):
        publish(make_record("sur-a"), missing)
    with pytest.raises(PullError, match="was not found"):
        pull(missing, LocalStore(tmp_path / "board"))
    branch = HubConfig(REPO, revision="release", endpoint=hub.endpoint)
    with pytest.raises(PublishError, match="branch 'release' does not exist"):
        publish(make_record("sur-a"), branch)


def test_auth_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with running_hub(tokens={"hf_writer": "write", "hf_reader": "read"}) as hub:
        cfg = HubConfig(REPO, endpoint=hub.endpoint)
        rec = make_record("sur-a")
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        with pytest.raises(PublishError, match=r"rejected the token \(401.*HF_TOKEN"):
            publish(rec, cfg)
        monkeypatch.setenv("HF_TOKEN", "hf_reader")
        with pytest.raises(PublishError, match=r"403 Forbidden.*write access"):
            publish(rec, cfg)
        assert record_path(rec) not in hub.files(REPO)
        assert publish(rec, HubConfig(REPO, endpoint=hub.endpoint, token="hf_writer")) == hub.head(REPO)
        report = pull(cfg, LocalStore(tmp_path / "board"))  # a read token is enough to pull
        assert report.ok and len(report.new) == 1
        assert not hub.unknown_routes


def test_pulled_record_equals_published_content(hub: FakeHub, cfg: HubConfig, tmp_path: Path) -> None:
    """A record with ``extra`` fields and several runs survives the trip unchanged (content and bytes)."""
    rec = make_record("seeds", n_runs=3)
    rec.extra = {"note": "ünïcode ✓", "nested": {"a": [1, 2.5, None]}}
    publish(copy.deepcopy(rec), cfg)
    store = LocalStore(tmp_path / "board")
    pull(cfg, store)
    assert store.path_for(rec).read_bytes() == _bytes(rec)
    assert LocalStore.read(store.path_for(rec)).to_json() == rec.to_json()
