"""Named models: ``capcli models add/list/remove``, ``--model NAME``, ``CAPCLI_MODEL=NAME``, the store's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import capcli
from capcli import store
from capcli.bundle import ENV_VAR, default_bundle_path, resolve_bundle_path
from capcli.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $CAPCLI_HOME, and no $CAPCLI_MODEL."""
    folder = tmp_path / "home"
    monkeypatch.setenv(store.HOME_VAR, str(folder))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return folder


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def hidden_leftovers(home: Path) -> list[str]:
    return [p.name for p in (home / "models").iterdir() if p.name.startswith(".")]


def test_add_list_caption_by_name_and_by_env_then_remove(home: Path, tiny_bundle: Path, photos: Path) -> None:
    added = cli("models", "add", "tiny", str(tiny_bundle))
    assert added.exit_code == 0, added.output
    installed = home / "models" / "tiny"
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
    assert hidden_leftovers(home) == []

    for listing in (cli("models"), cli("models", "list")):
        assert listing.exit_code == 0
        rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
        assert "none (random weights, test fixture)" in rows["tiny"] and str(installed) in rows["tiny"]
        assert " MB " in rows["tiny"]
        assert ("default" in rows) == (default_bundle_path() is not None)

    photo = str(sorted(photos.iterdir())[0])
    by_path = cli("caption", photo, "--model", str(tiny_bundle), "--device", "cpu")
    by_name = cli("caption", photo, "--model", "tiny", "--device", "cpu")
    by_env = cli("caption", photo, "--device", "cpu", env={ENV_VAR: "tiny"})
    assert by_path.exit_code == by_name.exit_code == by_env.exit_code == 0, by_name.output + by_env.output
    assert json.loads(by_name.stdout)["caption"] == json.loads(by_path.stdout)["caption"]
    assert by_env.stdout == by_name.stdout
    assert capcli.load("tiny", device="cpu").caption_one(photo)["caption"] == json.loads(by_path.stdout)["caption"]
    info = json.loads(cli("info", "--model", "tiny", "--device", "cpu", "--json").stdout)
    assert info["model"] == str(installed) and info["model_from"] == "--model 'tiny'"

    removed = cli("models", "remove", "tiny")
    assert removed.exit_code == 0 and not installed.exists() and hidden_leftovers(home) == []
    gone = cli("caption", photo, "--model", "tiny")
    assert gone.exit_code == 2
    assert "'tiny' is neither a directory nor a model name" in gone.stderr and "the names are:" in gone.stderr


def test_an_installed_model_is_replaced_only_with_force(home: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    assert cli("models", "add", "tiny", str(tiny_bundle)).exit_code == 0
    other = Path(shutil.copytree(tiny_bundle, tmp_path / "other"))
    meta = json.loads((other / "model.json").read_text())
    meta["provenance"]["dev_metrics"] = {"dev_BLEU-4": 0.25, "dev_CIDEr": 0.5}
    (other / "model.json").write_text(json.dumps(meta))

    refused = cli("models", "add", "tiny", str(other))
    assert refused.exit_code == 1 and "already installed" in refused.stderr and "--force" in refused.stderr
    assert "dev_metrics" not in (home / "models" / "tiny" / "model.json").read_text()

    assert cli("models", "add", "tiny", str(other), "--force").exit_code == 0
    assert "BLEU-4 0.250, CIDEr 0.500" in cli("models").stdout
    assert hidden_leftovers(home) == []


def test_the_listing_prefers_the_recorded_full_protocol_figures(home: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """A grounded bundle names its data sets by its mix; figures from benchmarks/record_metrics.py win over the
    training loop's quick ones."""
    grounded = Path(shutil.copytree(tiny_bundle, tmp_path / "grounded"))
    meta = json.loads((grounded / "model.json").read_text())
    meta["provenance"] = {
        "data": {"flickr8k": 30000, "everyday": 766, "text": 49140},
        "dev_metrics": {"flickr8k_CIDEr": 0.6, "everyday_CIDEr": 0.61},
        "metrics": {
            "flickr8k": {"dev_beam3": {"BLEU-4": 0.254, "CIDEr": 0.624}, "protocol": {"beam": 3}},
            "coco-everyday": {"dev_beam3": {"BLEU-4": 0.216, "CIDEr": 0.64}, "protocol": {"beam": 3}},
        },
    }
    (grounded / "model.json").write_text(json.dumps(meta))
    assert cli("models", "add", "grounded", str(grounded)).exit_code == 0
    row = next(line for line in cli("models").stdout.splitlines() if line.startswith("grounded"))
    assert "flickr8k+everyday+text" in row
    assert "flickr8k beam3 BLEU-4 0.254, CIDEr 0.624; coco-everyday beam3 BLEU-4 0.216, CIDEr 0.640" in row
    assert "everyday_CIDEr" not in row


def test_a_broken_bundle_is_not_installed(home: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_bundle, tmp_path / "broken"))
    (broken / "decoder.onnx").write_bytes(b"not the checked bytes")
    result = cli("models", "add", "tiny", str(broken))
    assert result.exit_code == 1 and "sha256 mismatch" in result.stderr
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []


@pytest.mark.parametrize("name", ["default", "Tiny", "-tiny", "tiny-", ".tiny", "a/b", "a b", "con", "nul.x", "x" * 65])
def test_bad_names_are_usage_errors(home: Path, tiny_bundle: Path, name: str) -> None:
    result = cli("models", "add", "--", name, str(tiny_bundle))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and not (home / "models").exists()


@pytest.mark.parametrize("command", [["caption", "x.jpg"], ["url-list", "urls.txt"], ["info"], ["bench"]])
def test_an_unknown_name_exits_2_listing_the_names(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    for how in (["--model", "nothing"], []):
        result = cli(*command, *how, env={} if how else {ENV_VAR: "nothing"})
        assert result.exit_code == 2, result.output
        assert "'nothing' is neither a directory nor a model name; the names are:" in result.stderr


def test_removing_the_packaged_or_an_unknown_model_is_a_usage_error(home: Path) -> None:
    for name in ("default", "nothing"):
        result = cli("models", "remove", name)
        assert result.exit_code == 2 and name in result.stderr


def test_an_existing_path_wins_over_a_name(
    home: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("models", "add", "tiny", str(tiny_bundle)).exit_code == 0
    monkeypatch.chdir(tmp_path)
    assert resolve_bundle_path("tiny") == (home / "models" / "tiny", "--model 'tiny'")
    (tmp_path / "tiny").mkdir()
    assert resolve_bundle_path("tiny") == (Path("tiny"), "--model")
    # a value with a separator is always a path: a missing one is "does not exist", not an unknown name
    assert resolve_bundle_path("./elsewhere") == (Path("./elsewhere"), "--model")


def test_the_store_lives_in_the_platforms_user_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("LOCALAPPDATA", raising=False)
    assert store.user_data_dir("linux") == tmp_path / ".local" / "share"
    assert store.user_data_dir("darwin") == tmp_path / "Library" / "Application Support"
    assert store.user_data_dir("win32") == tmp_path / "AppData" / "Local"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert store.user_data_dir("linux") == tmp_path / ".local" / "share"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert store.user_data_dir("linux") == store.user_data_dir("freebsd14") == tmp_path / "xdg"
    assert store.user_data_dir("win32") == tmp_path / "local"
    assert store.user_data_dir("darwin") == tmp_path / "Library" / "Application Support"

    monkeypatch.delenv(store.HOME_VAR, raising=False)
    assert store.models_dir() == store.user_data_dir(store.sys.platform) / "capcli" / "models"
    monkeypatch.setenv(store.HOME_VAR, str(tmp_path / "elsewhere"))
    assert store.models_dir() == tmp_path / "elsewhere" / "models"


def test_export_install_adds_the_exported_bundle(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="export needs the train extra")
    from tiny_bundle import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "best.pt", provenance={"dataset": "flickr8k"})
    out = tmp_path / "bundle"
    bad = cli("export", str(ckpt), "-o", str(out), "--install", "Bad Name")
    assert bad.exit_code == 2 and not out.exists()  # refused before exporting

    result = cli("export", str(ckpt), "-o", str(out), "--install", "fresh")
    assert result.exit_code == 0, result.output
    installed = home / "models" / "fresh"
    assert "installed as 'fresh'" in result.stderr
    assert (installed / "model.json").read_bytes() == (out / "model.json").read_bytes()
    assert resolve_bundle_path("fresh")[0] == installed

    again = cli("export", str(ckpt), "-o", str(tmp_path / "second"), "--install", "fresh")
    assert again.exit_code == 1 and "already installed" in again.stderr and not (tmp_path / "second").exists()
