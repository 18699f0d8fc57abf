"""Official checkpoints: where each one is published, and ``longvos download``: fetch, verify, convert, cache.

:data:`OFFICIAL_CHECKPOINTS` records, for each model with official weights, the authors' page and the published
link of the file. The authors publish them all on Google Drive, which gives no direct download URL for files this
large (it answers with a confirmation page; the authors' own scripts use ``gdown``). So no entry carries a ``url``:
the user downloads the file from the published link and hands it over with ``--url`` (``file://``, a local path,
or any ``http(s)://`` mirror). Where an entry learns a direct URL or a checksum, it is filled in here.

:func:`download_checkpoint` streams the file to a temporary file in the cache folder (size-bounded, with progress),
checks its SHA-256 when one is known or given, converts it with the strict key report of :mod:`longvos.checkpoints`
(every missing, unexpected or mis-shaped key refused), loads the result into the model once, and only then moves
it into place atomically: ``$LONGVOS_HOME/checkpoints/<name>.pt`` (default ``~/.cache/longvos``). ``load_segmenter``
looks there when no checkpoint is given, so that ``--model mavos-r50`` then works without ``--checkpoint``.
A download holds a lock on its temporary files while it runs; one killed outright (which can clean nothing up) leaves
them behind (and, killed while converting, the converted checkpoint's own temporary file), and the next download of
the same checkpoint removes those that no running download holds.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from longvos.io.errors import InputError, one_line
from longvos.io.locks import FileHeld, lock_file, remove_quietly, try_lock
from longvos.io.writer import partial_path

#: The largest file ``download`` accepts by default (the official Swin-B checkpoints are a few hundred MB).
DEFAULT_MAX_BYTES = 2 * 1024**3
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
#: A temporary file of a download is removed by the next download of the same checkpoint once it is this old and no
#: running download holds its lock (the delay covers the moment between its creation and its locking). Where files
#: cannot be locked, a running download cannot be told from a killed one: only files older than a day are removed.
STALE_SECONDS = 60
STALE_SECONDS_WITHOUT_LOCKS = 24 * 3600
#: How long a download waits for the lock of a temporary file it has just made, which another download's cleanup may
#: hold for a moment while it looks at the file.
LOCK_WAIT_SECONDS = 5.0
#: The endings of a download's two temporary files (``.<name>.<random><ending>`` in the cache folder): the file as
#: fetched, and the converted checkpoint before it is renamed into place.
TEMPORARY_SUFFIXES = (".download", ".pt.part")
#: A download slower than this on average after its first RATE_GRACE_SECONDS is given up (a server that sends a
#: byte a minute would otherwise hold it for days: each read only has TIMEOUT_SECONDS).
MIN_RATE_BYTES = 8 << 10
RATE_GRACE_SECONDS = 60


class DownloadError(InputError):
    """A download that cannot be used: no URL, unreachable, too large, truncated, wrong checksum, wrong keys, or a
    cache that cannot be written. Every failure of :func:`download_checkpoint` is one of these, naming the file."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    """Where the official weights of a registered model are published."""

    model: str  # registry name
    weights: str  # which published checkpoint this is, in the authors' words
    page: str  # the page that lists it (the authors' model zoo)
    link: str  # the published link to the file
    file_name: str | None = None  # the file name the authors' own scripts give it, where they give one
    url: str | None = None  # a direct download URL; None: published behind a page that needs a browser or gdown
    sha256: str | None = None  # None: the authors publish no checksum
    family: str | None = None  # converter family (default: the model's)


_MAVOS_ZOO = "https://github.com/Amshaker/MAVOS/blob/main/MODEL_ZOO.md"
_AOT_ZOO = "https://github.com/yoxu515/aot-benchmark/blob/main/MODEL_ZOO.md"
_LIVOS = "https://github.com/uncbiag/LiVOS (README 'Weights', download.py)"


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"


#: The checkpoints the official repositories publish, one per registered model (MAVOS: the PRE_YTB_DAV weights its
#: authors evaluate on LVOS, the long-video benchmark; the LTV and DAVIS variants on the same page convert alike).
OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {entry.model: entry for entry in (
    OfficialCheckpoint("mavos-mnv2", "MAVOS, PRE_YTB_DAV (LVOS eval checkpoint)", _MAVOS_ZOO,
                       _drive("1KhD6e-590vlAUitIXWFuhOv1typfTB-N")),
    OfficialCheckpoint("mavos-r50", "R50-MAVOS, PRE_YTB_DAV (LVOS eval checkpoint)", _MAVOS_ZOO,
                       _drive("1Hp-j0hNWesSBle6HQxm6ghJE9b1THn1I")),
    OfficialCheckpoint("mavos-swinb", "SwinB-MAVOS, PRE_YTB_DAV (LVOS eval checkpoint)", _MAVOS_ZOO,
                       _drive("1HbRHeChnQWK73OYaYov-bchfwbm4lRyf")),
    OfficialCheckpoint("deaot-mnv2", "DeAOTL, PRE_YTB_DAV", _AOT_ZOO, _drive("18elNz_wi9JyVBcIUYKhRdL08MA-FqHD5")),
    OfficialCheckpoint("deaot-r50", "R50-DeAOTL, PRE_YTB_DAV", _AOT_ZOO, _drive("1QoChMkTVxdYZ_eBlZhK2acq9KMQZccPJ")),
    OfficialCheckpoint("deaot-swinb", "SwinB-DeAOTL, PRE_YTB_DAV", _AOT_ZOO,
                       _drive("1g4E-F0RPOx9Nd6J7tU9AE1TjsouL4oZq")),
    OfficialCheckpoint("livos-r50", "livos-nomose-480p (trained on DAVIS 2017 + YouTube-VOS 2019)", _LIVOS,
                       "https://drive.google.com/uc?export=download&id=1ZjhVMUppZ5OZipCALU9ZYwiVF5DEPBxX",
                       file_name="livos-nomose-480p.pth"),
)}


# --------------------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$LONGVOS_HOME/checkpoints``, else ``$XDG_CACHE_HOME/longvos/checkpoints``,
    else ``~/.cache/longvos/checkpoints``."""
    home = os.environ.get("LONGVOS_HOME")
    if home:
        return Path(home).expanduser() / "checkpoints"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "longvos" / "checkpoints"


def cached_checkpoint_path(name: str) -> Path:
    return cache_dir() / f"{name}.pt"


def cached_checkpoint(name: str) -> Path | None:
    """The checkpoint ``longvos download <name>`` stored, if there is one."""
    path = cached_checkpoint_path(name)
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------------------ download
@dataclass
class DownloadResult:
    path: Path  # the cached longvos checkpoint
    sha256: str  # of the downloaded file
    size: int  # bytes downloaded
    report: str  # the converter's key report
    verified: bool  # whether the SHA-256 was checked against a known or given value


def official_checkpoint(name: str) -> OfficialCheckpoint:
    """The registry entry of ``name``, or a :class:`DownloadError` that says what can be downloaded."""
    if name in OFFICIAL_CHECKPOINTS:
        return OFFICIAL_CHECKPOINTS[name]
    from longvos.models.registry import list_models

    known = ", ".join(OFFICIAL_CHECKPOINTS)
    if name in list_models():
        raise DownloadError(f"{name} has no official checkpoint to download (models that have one: {known})")
    raise DownloadError(f"unknown model {name!r} (models with official checkpoints: {known})")


def source_url(url: str) -> str:
    """``--url``: an ``http(s)://`` or ``file://`` URL, or a local file path (made a ``file://`` URL)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https", "file"):
        return url
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter: a path
        path = Path(url).expanduser()
        if not path.is_file():
            raise DownloadError(f"{url}: no such file")
        return path.resolve().as_uri()
    raise DownloadError(f"{url}: only http://, https://, file:// URLs or a local path can be downloaded")


def parse_sha256(text: str | None) -> str | None:
    if text is None:
        return None
    digest = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise DownloadError(f"--sha256 {text!r} is not a SHA-256 (64 hexadecimal digits)")
    return digest


def _no_url_message(entry: OfficialCheckpoint) -> str:
    name = entry.file_name or f"{entry.model}.pth"
    return (f"{entry.model}: the official checkpoint ({entry.weights}) is published at {entry.link} (listed on "
            f"{entry.page}), which has no direct download URL: save the file in a browser, then run "
            f"`longvos download {entry.model} --url PATH/{name}`")


def fetch(url: str, destination: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = True,
          label: str = "download") -> tuple[str, int]:
    """Stream ``url`` into ``destination``: returns (SHA-256 hex, bytes). Refuses a web page, a file larger than
    ``max_bytes`` and a body shorter than the ``Content-Length`` the server announced."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "longvos-download"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:  # e.g. a bad status line
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot download ({reason})") from None
    digest, received = hashlib.sha256(), 0
    with response:
        content_type = (response.headers.get("Content-Type") or "").lower()
        if content_type.startswith("text/html"):
            raise DownloadError(f"{url} answered with a web page, not a checkpoint (Google Drive does for large "
                                f"files): save the file in a browser and pass its path with --url")
        length_text = response.headers.get("Content-Length")
        expected = int(length_text) if length_text and length_text.strip().isdigit() else None
        if expected is not None and expected > max_bytes:
            raise DownloadError(f"{url}: {expected} bytes, more than the limit of {max_bytes} (see --max-mb)")
        try:
            file = open(destination, "wb")
        except OSError as err:
            raise DownloadError(f"cannot write the download to {destination}: {err.strerror or err}") from None
        with file, tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                        disable=not progress, leave=False) as bar:
            started = time.monotonic()
            while True:
                # A server may trickle: each read has its timeout, the whole transfer its minimum rate after a grace
                # period (read1 returns what has arrived, so the check runs however slowly bytes come).
                elapsed = time.monotonic() - started
                if elapsed > RATE_GRACE_SECONDS and received < MIN_RATE_BYTES * elapsed:
                    raise DownloadError(f"{url}: too slow, {received} bytes in {elapsed:.0f} s (under "
                                        f"{MIN_RATE_BYTES // 1024} KiB/s after the first {RATE_GRACE_SECONDS} s); "
                                        f"nothing stored")
                try:
                    chunk = response.read1(CHUNK_BYTES)
                except (OSError, ValueError, http.client.HTTPException) as err:  # resets, timeouts, and a body
                    # cut short (http.client.IncompleteRead: a chunked body that stops mid-chunk, for one)
                    raise DownloadError(f"{url}: truncated download, broke off after {received} bytes "
                                        f"({one_line(err, 200)})") from None
                if not chunk:
                    break
                if received == 0 and chunk.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                    raise DownloadError(f"{url} answered with a web page, not a checkpoint: save the file in a "
                                        f"browser and pass its path with --url")
                received += len(chunk)
                if received > max_bytes:
                    raise DownloadError(f"{url}: more than the limit of {max_bytes} bytes (see --max-mb)")
                digest.update(chunk)
                try:
                    file.write(chunk)
                except OSError as err:  # a full disk, a quota
                    raise DownloadError(f"cannot write the download to {destination} after {received - len(chunk)} "
                                        f"bytes: {err.strerror or err}; nothing stored") from None
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise DownloadError(f"{url}: truncated download, {received} of {expected} bytes")
    return digest.hexdigest(), received


def download_checkpoint(name: str, url: str | None = None, sha256: str | None = None, *,
                        max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = True) -> DownloadResult:
    """Fetch the official checkpoint of ``name`` (from ``url``, else the registry's URL), verify it, convert it to
    a longvos checkpoint and store it at :func:`cached_checkpoint_path`. Nothing is stored unless every check
    passes; raises :class:`DownloadError` (one line, or the converter's key report) otherwise."""
    entry = official_checkpoint(name)
    url = url or entry.url
    if url is None:
        raise DownloadError(_no_url_message(entry))
    url = source_url(url)
    wanted = parse_sha256(sha256) or parse_sha256(entry.sha256)
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the checkpoint cache {folder}: {err.strerror or err}") from None
    # One download of a checkpoint at a time: two would both convert, and the last to finish (perhaps the one
    # without --sha256) would replace the other's verified file.
    lock_path = folder / f".{name}.lock"
    try:
        held_lock = lock_file(lock_path)
    except FileHeld:
        raise DownloadError(f"{name}: another longvos download of it is running (it holds {lock_path}); wait for "
                            f"it to finish") from None
    try:
        return _download_held(name, entry, url, wanted, folder, max_bytes, progress)
    finally:
        if held_lock is not None:
            remove_quietly(lock_path)  # removed while still held (see io/locks.py), then let go
            os.close(held_lock[0])


def _download_held(name: str, entry: OfficialCheckpoint, url: str, wanted: str | None, folder: Path,
                   max_bytes: int, progress: bool) -> DownloadResult:
    """:func:`download_checkpoint` once it holds the lock of ``name``'s download."""
    _remove_stale_temporaries(folder, name)
    # Both temporary files live in the cache folder, so the final rename is atomic and a failure leaves nothing. Each
    # stays open and locked until the end, so that another download tells them from a killed download's leftovers.
    temporary: list[Path] = []
    held: list[int] = []
    try:
        for suffix in TEMPORARY_SUFFIXES:
            fd, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
            temporary.append(Path(temp_name))
            try:
                locked = _lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if locked:
                held.append(fd)
            else:
                os.close(fd)
    except OSError as err:  # a cache folder that exists but cannot be written
        _release(held)
        for leftover in temporary:
            leftover.unlink(missing_ok=True)
        if isinstance(err, BlockingIOError):  # from _lock: held by another process for longer than a cleanup takes
            raise DownloadError(f"cannot lock the temporary file {temporary[-1]}: another process holds it; try "
                                f"again") from None
        raise DownloadError(f"cannot write to the checkpoint cache {folder}: {err.strerror or err}") from None
    part, converted = temporary
    target = cached_checkpoint_path(name)
    try:
        digest, size = fetch(url, part, max_bytes=max_bytes, progress=progress, label=name)
        if wanted is not None and digest != wanted:
            raise DownloadError(f"{url}: SHA-256 mismatch, expected {wanted}, got {digest} (corrupted or another "
                                f"file); nothing stored")
        report = _convert(part, converted, name, entry.family)
        try:
            os.replace(converted, target)
        except OSError as err:  # e.g. a folder in the way
            raise DownloadError(f"cannot store the checkpoint as {target}: {err.strerror or err}; nothing "
                                f"stored") from None
    finally:
        for leftover in (part, converted):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        _release(held)
    return DownloadResult(target, digest, size, report, wanted is not None)


def _lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` (held until it is closed, or its process ends however it
    ends); False where files cannot be locked. Windows keeps an open file from being renamed: no lock there.

    A file just made may be locked for a moment by another download's cleanup (which locks each temporary file it
    looks at, to tell a running download's from a killed one's): that is waited out (up to
    :data:`LOCK_WAIT_SECONDS`, then :class:`BlockingIOError` is raised), never taken for a file system without
    locks, which would leave this download's files unlocked for a cleanup to delete."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while (taken := try_lock(fd)) is False:  # held by another process
        if time.monotonic() >= deadline:
            # The same error flock raises; download_checkpoint tells it by its type and words its own message.
            raise BlockingIOError(errno.EWOULDBLOCK, os.strerror(errno.EWOULDBLOCK))
        time.sleep(0.01)
    return bool(taken)  # None: no locks here (no fcntl, or a file system without them)


def _release(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _leftover_patterns(name: str) -> list[tuple[re.Pattern[str], str | None]]:
    """How the temporary files of a download of ``name`` are named, as ``(pattern, owner)`` pairs: the download's
    own two files (``.<name>.<random>.download`` / ``.pt.part``, ``owner`` None) and the temporary file
    :func:`~longvos.io.writer.atomic_write` writes the converted checkpoint under (its
    :func:`~longvos.io.writer.partial_path`, ``owner`` the ending of the download's file it belongs to). Each pattern's
    one group is the random part of the name."""
    patterns: list[tuple[re.Pattern[str], str | None]] = []
    for suffix in TEMPORARY_SUFFIXES:
        own = f".{name}.\0{suffix}"  # NUL stands for the random part: no file name holds it
        for template, owner in ((own, None), (partial_path(own).name, suffix)):
            before, after = template.split("\0")
            patterns.append((re.compile(f"{re.escape(before)}([A-Za-z0-9_]+){re.escape(after)}"), owner))
    return patterns


def _remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Delete the temporary files of earlier downloads of ``name`` in ``folder`` that no running download holds:
    those of a download killed outright (a checkpoint's worth of bytes each). Only files named as
    :func:`download_checkpoint` names its own (:func:`_leftover_patterns`) are looked at, and one that cannot be
    examined is left alone; a converted checkpoint's temporary file goes with the download file it belongs to (left
    alone while a running download holds that). Returns what was deleted."""
    candidates, patterns = [], _leftover_patterns(name)
    try:
        for entry in folder.iterdir():
            for pattern, owner in patterns:
                match = pattern.fullmatch(entry.name)
                if match:
                    candidates.append((entry, None if owner is None else folder / f".{name}.{match[1]}{owner}"))
                    break
    except OSError:
        return []
    removed = []
    now = time.time()
    for path, owner in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone meanwhile, a link, not readable
            continue
        is_open = True
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                continue
            limit = STALE_SECONDS_WITHOUT_LOCKS  # where files cannot be locked (None), their age alone decides
            taken = try_lock(fd)
            if taken is False:
                continue  # a running download holds it (or another download's cleanup looks at it)
            if taken:  # no running download holds the file
                if owner is not None and _held_elsewhere(owner):
                    continue  # the converted checkpoint of a running download
                limit = STALE_SECONDS
            if now - info.st_mtime < limit:
                continue
            if limit == STALE_SECONDS_WITHOUT_LOCKS:  # no lock to keep: close first (Windows deletes no open file)
                is_open = False
                os.close(fd)
            path.unlink()  # with a lock, deleted while holding it, so that no download takes the file meanwhile
            removed.append(path)
        except OSError:
            continue
        finally:
            if is_open:
                os.close(fd)
    return removed


def _held_elsewhere(path: Path) -> bool:
    """Whether another process holds the lock of ``path`` (a running download's file), or it cannot be told (then
    the file is taken as held); False where it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        return try_lock(fd) is not True  # held (False), or it cannot be told (None)
    finally:
        os.close(fd)


def _convert(source: Path, destination: Path, name: str, family: str | None) -> str:
    """Official or longvos checkpoint -> a longvos checkpoint of model ``name`` at ``destination``, loaded once."""
    from longvos.checkpoints import (FORMAT_MARKER, FORMAT_VERSION, CheckpointError, convert_checkpoint,
                                     is_longvos_checkpoint, load_checkpoint, read_checkpoint, save_model)
    from longvos.models.registry import create_model

    try:
        checkpoint = read_checkpoint(source)
    except CheckpointError as err:  # a truncated or damaged file that passed no checksum
        raise DownloadError(f"the download is not a readable checkpoint ({one_line(err, 500).split(': ', 1)[-1]}); "
                            f"nothing stored") from None
    try:
        if is_longvos_checkpoint(checkpoint):
            if checkpoint.get("model") != name:
                raise DownloadError(f"the download is a longvos checkpoint of {checkpoint.get('model')!r}, not "
                                    f"{name}; nothing stored")
            state = checkpoint
        else:
            state_dict, report = convert_checkpoint(checkpoint, name, family=family)  # strict: raises on any key
            state = {FORMAT_MARKER: FORMAT_VERSION, "model": name, "state_dict": state_dict}
        model = create_model(name)
        report = load_checkpoint(model, state)  # the same strict check again, and whatever load checks add
        save_model(model, destination)
    except DownloadError:
        raise
    except CheckpointError as err:  # the key report: one line per problem key, kept whole
        raise DownloadError(f"the download does not fit {name}; nothing stored: {err}") from None
    except OSError as err:  # writing the converted checkpoint into the cache
        raise DownloadError(f"cannot write the converted checkpoint {destination}: {err.strerror or err}; "
                            f"nothing stored") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as err:  # a malformed checkpoint the converter trips on
        raise DownloadError(f"the download does not fit {name} ({type(err).__name__}: {one_line(err, 500)}); "
                            f"nothing stored") from None
    return str(report)
