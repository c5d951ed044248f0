"""Which spool belongs to which worker, and which spools are orphans that need a deliver-only worker."""

from __future__ import annotations

from pathlib import Path

from smtp_relay.admin.fleet import needs_supervisor, orphan_spools, read_port, worker_spool


def _with_mail(spool: Path) -> Path:
    (spool / "queue").mkdir(parents=True)
    (spool / "queue" / "seg-000001.dat").write_bytes(b"x")
    return spool


def test_a_lone_worker_uses_the_spool_itself_several_use_subfolders(tmp_path: Path) -> None:
    assert worker_spool(tmp_path, 0, 1) == tmp_path
    assert [worker_spool(tmp_path, i, 3) for i in range(3)] == [tmp_path / f"worker-{i}" for i in range(3)]


def test_spools_with_mail_that_no_worker_owns_are_orphans(tmp_path: Path) -> None:
    _with_mail(tmp_path)
    for i in range(3):
        _with_mail(tmp_path / f"worker-{i}")
    (tmp_path / "worker-5" / "queue").mkdir(parents=True)  # no segment: nothing to deliver
    (tmp_path / "capture").mkdir()  # not a worker's spool
    assert orphan_spools(tmp_path, 2) == [tmp_path, tmp_path / "worker-2"]
    assert orphan_spools(tmp_path, 1) == [tmp_path / f"worker-{i}" for i in range(3)]
    assert orphan_spools(tmp_path / "missing", 2) == []


def test_one_worker_needs_a_supervisor_only_while_orphans_hold_mail(tmp_path: Path) -> None:
    assert needs_supervisor(tmp_path, 2)
    assert not needs_supervisor(tmp_path, 1)
    _with_mail(tmp_path)
    assert not needs_supervisor(tmp_path, 1), "SPOOL itself is the lone worker's"
    _with_mail(tmp_path / "worker-1")
    assert needs_supervisor(tmp_path, 1)


def test_the_port_is_unknown_until_the_worker_wrote_it(tmp_path: Path) -> None:
    port_file = tmp_path / "http-port"
    assert read_port(port_file) is None
    port_file.write_text("")
    assert read_port(port_file) is None
    port_file.write_text("40123\n")
    assert read_port(port_file) == 40123
