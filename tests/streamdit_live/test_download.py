"""`streamdit-live download`: up to the network boundary. The hub call is replaced; what it
is asked for (repo, files, folder) and every way it can fail are checked offline."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub", reason="downloads need huggingface_hub (the [wan] extra)")

from streamdit_live import download as dl  # noqa: E402
from streamdit_live.cli import main  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """The user data dir in tmp, and online unless a test says otherwise."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


class FakeHub:
    """Stands for snapshot_download: records the call and writes the files it names."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls: list[dict] = []
        self.error = error

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        target = Path(kwargs["local_dir"])
        for pattern in kwargs["allow_patterns"]:
            path = target / pattern.replace("*", "part.safetensors")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        return str(target)


@pytest.mark.parametrize(
    ("name", "repo", "patterns"),
    [
        (
            "wan2.1-t2v-1.3b",
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            ["model_index.json", "transformer/*", "text_encoder/*", "tokenizer/*"],
        ),
        (
            "skyreels-v2-df-1.3b",
            "Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers",
            ["model_index.json", "transformer/*", "text_encoder/*", "tokenizer/*"],
        ),
        ("taew2_1", "Kijai/WanVideo_comfy", ["taew2_1.safetensors"]),
    ],
)
def test_each_name_asks_the_hub_for_its_repo_and_only_the_files_the_app_reads(
    tmp_path, name, repo, patterns
):
    hub = FakeHub()
    target = dl.download(name, fetch=hub)
    assert hub.calls == [{"repo_id": repo, "local_dir": target, "allow_patterns": patterns}]
    assert target == tmp_path / "data" / "streamdit-live" / "models" / name
    assert not any("vae" in p for p in patterns)  # TAEHV decodes; the big VAE is not fetched
    found = dl.downloaded(name)
    assert found == (target / "taew2_1.safetensors" if name == "taew2_1" else target)


def test_to_puts_the_files_in_that_folder(tmp_path):
    hub = FakeHub()
    folder = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    assert dl.download("taew2_1", folder, fetch=hub) == folder
    assert hub.calls[0]["local_dir"] == folder and (folder / "taew2_1.safetensors").is_file()
    assert dl.downloaded("taew2_1") is None  # not in the default place


def test_offline_is_one_sentence_saying_it_needs_internet_and_where_files_go(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub()
    with pytest.raises(dl.DownloadError) as err:
        dl.download("wan2.1-t2v-1.3b", fetch=hub)
    msg = str(err.value)
    assert hub.calls == []  # never tried
    assert "needs internet" in msg and "HF_HUB_OFFLINE" in msg
    assert "https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg
    assert str(dl.target_dir("wan2.1-t2v-1.3b")) in msg and "by hand" in msg
    assert msg.endswith(".") and msg.count(". ") == 0


@pytest.mark.parametrize(
    "error",
    [
        "local-entry",  # what snapshot_download raises when the hub cannot be reached
        ConnectionError("[Errno -3] Temporary failure in name resolution"),
        TimeoutError("timed out"),
    ],
)
def test_no_network_is_one_sentence(error):
    if error == "local-entry":
        from huggingface_hub.errors import LocalEntryNotFoundError

        error = LocalEntryNotFoundError("An error happened while trying to locate the files")
    with pytest.raises(dl.DownloadError) as err:
        dl.download("taew2_1", fetch=FakeHub(error))
    msg = str(err.value)
    assert "needs internet and https://huggingface.co could not be reached" in msg
    assert (
        "it resumes" in msg
        and "put taew2_1.safetensors from https://huggingface.co/Kijai/WanVideo_comfy" in msg
    )
    assert msg.endswith(".") and "\n" not in msg


def test_a_hub_refusal_is_one_sentence_naming_the_repo():
    from huggingface_hub import errors

    response_cls = getattr(errors, "Response", None)
    if response_cls is None:
        pytest.skip("this huggingface_hub builds its HTTP errors differently")
    request = errors.__dict__.get("Request") or __import__(response_cls.__module__).Request
    response = response_cls(404, request=request("GET", "https://huggingface.co/api/x"))
    refused = errors.RepositoryNotFoundError(
        "404 Client Error: Repository Not Found", response=response
    )
    with pytest.raises(dl.DownloadError) as err:
        dl.download("skyreels-v2-df-1.3b", fetch=FakeHub(refused))
    msg = str(err.value)
    assert msg.startswith(
        "https://huggingface.co refused Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers"
    )
    assert "\n" not in msg


def test_unknown_names_list_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown model 'wan3'; the names are wan2\.1-t2v-1\.3b, "
    ):
        dl.download("wan3", fetch=FakeHub())


def test_cli_download_runs_and_says_where_the_files_are(monkeypatch, tmp_path, capsys):
    hub = FakeHub()
    monkeypatch.setattr(dl, "_hub_fetch", hub)
    assert main(["download", "wan2.1-t2v-1.3b", "--to", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert hub.calls[0]["repo_id"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert f"is in {tmp_path / 'w'}" in out and "--weights" in out


def test_cli_download_errors_exit_in_one_line(monkeypatch, capsys):
    assert main(["download", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "taew2_1"]) == 1
    err = capsys.readouterr().err
    assert "needs internet" in err.splitlines()[-1] and "by hand" in err


def test_help_lists_the_names_with_sizes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["download", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for item in dl.CATALOG.values():
        assert item.name in text and item.size in text
    assert "--to DIR" in text
