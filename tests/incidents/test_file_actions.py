"""files.cleanup, logs.archive, logs.rotate: real files, confined to the allowed roots."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.backup.storage import LocalStore
from workers.errors import PathNotAllowed, StorageUnavailable
from workers.incidents.actions.base import ActionContext, ParamValue
from workers.incidents.actions.files import cleanup_files
from workers.incidents.actions.logs import archive_logs, rotate_log
from workers.incidents.archive import StoreArchive
from workers.settings import Settings

DAY_S = 86400


def _old(path: Path, content: str = "x", age_s: float = 3 * DAY_S) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    return allowed, outside


def _context(settings: Settings, archive: StoreArchive, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(settings, dry_run, 30.0, {}, archive)


def _cleanup(path: str, **overrides: ParamValue) -> dict[str, ParamValue]:
    return {
        "path": path,
        "pattern": "*",
        "older_than": DAY_S,
        "recursive": True,
        "max_files": 100,
        **overrides,
    }


def test_cleanup_deletes_old_files_and_nothing_outside_the_roots(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, outside = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    old = _old(allowed / "tmp" / "old.bin")
    fresh = _old(allowed / "tmp" / "fresh.bin", age_s=60)
    victim = _old(outside / "precious.txt")
    victim_dir = _old(outside / "dir" / "precious.txt")
    (allowed / "tmp" / "link-to-file").symlink_to(victim)
    (allowed / "tmp" / "link-to-dir").symlink_to(outside / "dir")

    result = cleanup_files(_cleanup(str(allowed / "tmp")), _context(settings, StoreArchive(LocalStore(tmp_path / "a"))))

    assert result.ok and result.detail["deleted"] == [str(old)]
    assert not old.exists() and fresh.exists()
    assert victim.exists() and victim_dir.exists()
    assert (allowed / "tmp" / "link-to-file").is_symlink()


@pytest.mark.parametrize(
    "escape",
    ["{allowed}/../outside", "{allowed}/link-out", "relative/path", "/", "{allowed}/tmp/../../outside/dir"],
)
def test_cleanup_refuses_paths_that_leave_the_roots(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path, escape: str
) -> None:
    allowed, outside = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    (allowed / "link-out").symlink_to(outside)
    victim = _old(outside / "dir" / "precious.txt")

    with pytest.raises(PathNotAllowed):
        cleanup_files(
            _cleanup(escape.format(allowed=allowed)), _context(settings, StoreArchive(LocalStore(tmp_path / "a")))
        )
    assert victim.exists()


def test_archive_stores_each_log_before_deleting_it(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, _ = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    archive = StoreArchive(LocalStore(tmp_path / "store"))
    logs = [_old(allowed / "logs" / f"api.log.{i}", f"line {i}\n" * 100) for i in range(3)]
    current = _old(allowed / "logs" / "api.log", "now\n", age_s=10)
    params: dict[str, ParamValue] = {"path": str(allowed / "logs"), "pattern": "*.log.*", "older_than": DAY_S,
                                     "recursive": True, "max_files": 100}  # fmt: skip

    result = archive_logs(params, _context(settings, archive))

    assert result.ok and len(result.detail["files"]) == 3  # type: ignore[arg-type]
    for entry, original in zip(result.detail["files"], logs, strict=True):  # type: ignore[call-overload]
        stored = tmp_path / "store" / entry["key"]  # LocalStore keeps keys as paths under its root
        assert gzip.decompress(stored.read_bytes()).decode().startswith(f"line {original.name[-1]}")
        assert not original.exists()
    assert current.exists()


def test_archive_keeps_originals_when_the_store_refuses(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, _ = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store directory should be")
    log = _old(allowed / "logs" / "worker.log.1", "keep me\n")
    params: dict[str, ParamValue] = {"path": str(allowed / "logs"), "pattern": "*.log.*", "older_than": DAY_S,
                                     "recursive": True, "max_files": 100}  # fmt: skip

    with pytest.raises(StorageUnavailable):
        archive_logs(params, _context(settings, StoreArchive(LocalStore(blocked))))
    assert log.read_text() == "keep me\n"


def test_rotate_copytruncate_without_pidfile(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, _ = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    log = _old(allowed / "app.log", "before\n", age_s=0)

    result = rotate_log(
        {"path": str(log), "pidfile": "", "signal": "HUP"}, _context(settings, StoreArchive(LocalStore(tmp_path)))
    )

    rotated = Path(str(result.detail["rotated_to"]))
    assert rotated.read_text() == "before\n" and log.read_text() == ""


def test_rotate_signals_the_writer_named_by_the_pidfile(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, _ = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    log = _old(allowed / "app.log", "before\n", age_s=0)
    marker = allowed / "reopened"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, pathlib\n"
         f"mark = lambda *a: (pathlib.Path({str(marker)!r}).write_text('hup'), sys.exit(0))\n"
         "signal.signal(signal.SIGHUP, mark)\n"
         "print('ready', flush=True)\n"
         "signal.pause()\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    pidfile = allowed / "app.pid"
    pidfile.write_text(f"{writer.pid}\n")

    result = rotate_log(
        {"path": str(log), "pidfile": str(pidfile), "signal": "HUP"},
        _context(settings, StoreArchive(LocalStore(tmp_path))),
    )

    assert writer.wait(timeout=10) == 0
    writer.stdout.close()
    assert marker.read_text() == "hup"
    assert not log.exists() and Path(str(result.detail["rotated_to"])).read_text() == "before\n"
    assert result.detail["pid"] == writer.pid


def test_rotate_refuses_a_pidfile_outside_the_roots(
    ops_env: Callable[..., Settings], roots: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, outside = roots
    settings = ops_env(OPS_REMEDIATION_ALLOWED_ROOTS=str(allowed))
    log = _old(allowed / "app.log", "before\n", age_s=0)
    pidfile = outside / "init.pid"
    pidfile.write_text("1\n")

    with pytest.raises(PathNotAllowed):
        rotate_log({"path": str(log), "pidfile": str(pidfile), "signal": "HUP"},
                   _context(settings, StoreArchive(LocalStore(tmp_path))))  # fmt: skip
    assert log.read_text() == "before\n"
