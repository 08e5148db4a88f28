"""`streamdit-live download NAME [--to DIR]`: fetch a public model the app can run.

Files come from the Hugging Face Hub through `huggingface_hub` (installed with transformers,
the `[wan]` extra), which shows progress and resumes an interrupted download where it
stopped. Only the files the app reads are fetched (`allow_patterns`): a `-Diffusers` repo's
transformer, umT5 text encoder and tokenizer, not its VAE (TAEHV decodes instead).

Without `--to`, a model goes to `<user data dir>/streamdit-live/models/NAME`, where presets
and `--weights` look for it (`target_dir`, `downloaded`). Offline (HF_HUB_OFFLINE set, or no
connection) it stops with one sentence that says where to put the files by hand.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "streamdit-live"
HUB = "https://huggingface.co"
_DIFFUSERS_PARTS = ("model_index.json", "transformer/*", "text_encoder/*", "tokenizer/*")


class DownloadError(RuntimeError):
    """A download that could not run here (no internet, refused by the hub); one sentence."""


@dataclass(frozen=True)
class Downloadable:
    name: str
    repo_id: str
    patterns: tuple[str, ...]  # what to fetch, as huggingface_hub allow_patterns
    size: str  # about how much it is, for --help
    what: str
    family: str = ""  # the model family (wan_weights.WanParts.family); "" for a codec

    @property
    def url(self) -> str:
        return f"{HUB}/{self.repo_id}"


CATALOG: dict[str, Downloadable] = {
    d.name: d
    for d in (
        Downloadable(
            "wan2.1-t2v-1.3b",
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            _DIFFUSERS_PARTS,
            "about 17 GB",
            "Wan2.1 text-to-video 1.3B (Apache-2.0): transformer, umT5 text encoder, tokenizer",
            "wan2.1",
        ),
        Downloadable(
            "skyreels-v2-df-1.3b",
            "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
            _DIFFUSERS_PARTS,
            "about 17 GB",
            "SkyReels-V2 diffusion forcing 1.3B, 540p (a noise level per frame, like our "
            "buffer): transformer, umT5 text encoder, tokenizer",
            "skyreels-v2",
        ),
        Downloadable(
            "taew2_1",
            "Kijai/WanVideo_comfy",  # hosts taew2_1.safetensors (madebyollin/taehv on GitHub)
            ("taew2_1.safetensors",),
            "under 50 MB",
            "TAEHV for Wan2.1 latents (MIT): the small decoder the Wan models run with",
        ),
    )
}
TAEHV_NAME = "taew2_1"


def describe_catalog() -> str:
    """The names with their sizes, one a line (for --help)."""
    width = max(map(len, CATALOG))
    return "\n".join(f"  {d.name:<{width}}  {d.size:<12} {d.what}" for d in CATALOG.values())


def lookup(name: str) -> Downloadable:
    item = CATALOG.get(name.strip().lower())
    if item is None:
        raise ValueError(f"unknown model {name!r}; the names are {', '.join(CATALOG)}.")
    return item


def name_for_family(family: str) -> str | None:
    """The download name of a model family ("wan2.1" -> "wan2.1-t2v-1.3b"), or None."""
    return next((d.name for d in CATALOG.values() if d.family and d.family == family), None)


def models_dir() -> Path:
    """Where downloads go without --to: <user data dir>/streamdit-live/models."""
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME)) / "models"


def target_dir(name: str, to: str | Path | None = None) -> Path:
    """The folder the files of `name` go to: `to` itself when given, else models_dir()/name."""
    return Path(to).expanduser() if to is not None else models_dir() / name


def downloaded(name: str) -> Path | None:
    """The default folder of `name` when its download is there (its first file), else None;
    a TAEHV download returns its file."""
    item = lookup(name)
    folder = target_dir(name)
    first = folder / item.patterns[0]
    if not first.is_file():
        return None
    return first if name == TAEHV_NAME else folder


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _by_hand(item: Downloadable, target: Path) -> str:
    files = " ".join(p.rstrip("*") for p in item.patterns)
    return f"put {files} from {item.url} into {target} by hand"


Fetch = Callable[..., object]


def _hub_fetch(**kwargs: object) -> object:
    from huggingface_hub import snapshot_download

    return snapshot_download(**kwargs)  # type: ignore[arg-type]


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the hub cannot be reached."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    for module in ("httpx", "httpx2"):  # the HTTP client huggingface_hub uses
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(__import__(module).TransportError)
    return tuple(errors)


def download(name: str, to: str | Path | None = None, fetch: Fetch | None = None) -> Path:
    """Fetch `name` into `target_dir(name, to)` and return that folder. `fetch` stands for
    `huggingface_hub.snapshot_download` (tests pass their own)."""
    item = lookup(name)
    target = target_dir(item.name, to)
    if offline():
        raise DownloadError(
            f"downloading {item.name} needs internet but HF_HUB_OFFLINE is set; unset it "
            f"where you have a connection, or {_by_hand(item, target)}."
        )
    if fetch is None:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            raise DownloadError(
                'downloading needs the package huggingface_hub; run `pip install -e ".[wan]"`.'
            ) from None
        fetch = _hub_fetch
    from huggingface_hub.errors import HfHubHTTPError

    target.mkdir(parents=True, exist_ok=True)
    try:
        fetch(repo_id=item.repo_id, local_dir=target, allow_patterns=list(item.patterns))
    except HfHubHTTPError as e:  # reached the hub, which refused (missing, gated, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(
            f"{HUB} refused {item.repo_id} ({first.rstrip('.')}); check the name on {item.url}, "
            f"or {_by_hand(item, target)}."
        ) from None
    except _network_errors() as e:
        raise DownloadError(
            f"downloading {item.name} needs internet and {HUB} could not be reached "
            f"({type(e).__name__}); connect and run it again (it resumes), or "
            f"{_by_hand(item, target)}."
        ) from None
    except OSError as e:  # the disk: full, or a folder that cannot be written
        raise DownloadError(
            f"could not write {item.name} into {target} ({e.strerror or e}); free space there "
            "or give another folder with --to."
        ) from None
    return target


def run(name: str, to: Path | None, prog: str) -> int:
    """`streamdit-live download NAME [--to DIR]`: fetch, then say where and what next."""
    item = lookup(name)  # an unknown name: one sentence before anything else
    print(f"{prog}: fetching {item.name} ({item.size}) from {item.url}", file=sys.stderr)
    target = download(item.name, to)
    if item.name != TAEHV_NAME:
        after = f"run it with `{prog} run --weights {target}` (with {TAEHV_NAME}) or its preset"
    elif to is None or (target / "transformer").is_dir():
        after = "a model folder given to --weights finds it there"
    else:
        after = f"give it beside the model folder: `--weights MODEL_FOLDER --weights {target}`"
    print(f"{prog}: {item.name} is in {target}; {after}.")
    return 0
