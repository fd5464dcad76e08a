"""``from_parts`` takes the vision tower out of every checkpoint layout it may come in.

Tiny random checkpoints are saved with transformers (and re-keyed into the layouts hub
checkpoints use): a vision model, a dual encoder, PaliGemma, LLaVA, LLaVA-OneVision and
LLaVA-NeXT-Video. Every tower tensor of the built STORM must equal the checkpoint's, every LLM
tensor the LLM's; a missing or mis-shaped tensor is an error naming it, never a random weight.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionModel,
    GemmaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PreTrainedModel,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionModel,
)

from storm_vlm import StormForConditionalGeneration
from storm_vlm.modeling.parts import PartsError, tower_prefix
from storm_vlm.presets import (
    build_from_parts,
    tiny_image_processor,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_config,
)

from .conftest import tiny_clip_vision_config

Rename = Callable[[str], str | None]


def tiny_gemma_config() -> GemmaConfig:
    return GemmaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )


def _siglip_dual() -> SiglipModel:
    text = SiglipTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = tiny_vision_config().to_dict() | {"vision_use_head": True}  # as hub SigLIPs: the head is dropped
    return SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision))


def _clip_dual() -> CLIPModel:
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=tiny_clip_vision_config().to_dict(), projection_dim=16))


def _vlm_tokens() -> dict:
    return dict(image_token_index=100)


BUILDERS: dict[str, Callable[[], PreTrainedModel]] = {
    "siglip-vision": lambda: SiglipVisionModel(tiny_vision_config()),
    "siglip-dual": _siglip_dual,
    "clip-vision": lambda: CLIPVisionModel(tiny_clip_vision_config()),
    "clip-dual": _clip_dual,
    "paligemma": lambda: PaliGemmaForConditionalGeneration(
        PaliGemmaConfig(
            vision_config=tiny_vision_config().to_dict() | {"projection_dim": 32},
            text_config=tiny_gemma_config().to_dict(),
            **_vlm_tokens(),
        )
    ),
    "llava-clip": lambda: LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=tiny_clip_vision_config().to_dict(),
            text_config=tiny_text_config(128).to_dict(),
            **_vlm_tokens(),
        )
    ),
    "llava-onevision": lambda: LlavaOnevisionForConditionalGeneration(
        LlavaOnevisionConfig(
            vision_config=tiny_vision_config().to_dict(),
            text_config=tiny_text_config(128).to_dict(),
            video_token_index=101,
            **_vlm_tokens(),
        )
    ),
    "llava-next-video": lambda: LlavaNextVideoForConditionalGeneration(
        LlavaNextVideoConfig(
            vision_config=tiny_vision_config().to_dict(),
            text_config=tiny_text_config(128).to_dict(),
            video_token_index=101,
            **_vlm_tokens(),
        )
    ),
}


def tower_of(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The tower's tensors as transformers holds them in memory (SigLIP's pooling head left out)."""
    tower = getattr(model, "vision_model", None) or getattr(getattr(model, "model", None), "vision_tower", model)
    return {k: v.clone() for k, v in tower.state_dict().items() if not k.startswith("head.")}


# How checkpoints name the tower. transformers 5 saves a VLM as ``vision_tower.*``; hub
# checkpoints (and transformers 4 before 4.52) as ``vision_tower.vision_model.*``; transformers
# 4.52+ as ``model.vision_tower.vision_model.*``; a vision model on the hub as ``vision_model.*``.
def _hub_vlm(name: str) -> str:
    tower = name.startswith("vision_tower.")
    return "vision_tower.vision_model." + name.removeprefix("vision_tower.") if tower else name


def _v452_vlm(name: str) -> str:
    for old, new in (
        ("vision_tower.", "model.vision_tower.vision_model."),
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("image_newline", "model.image_newline"),
    ):
        if name.startswith(old):
            return new + name.removeprefix(old)
    return name


def _in_memory_vlm(name: str) -> str:
    return "model." + name if name.startswith("vision_tower.") else name


def _hub_vision(name: str) -> str:
    return "vision_model." + name


LAYOUTS: dict[str, Rename | None] = {
    "saved": None,
    "hub": _hub_vlm,
    "v4.52": _v452_vlm,
    "in-memory": _in_memory_vlm,
    "hub-vision": _hub_vision,
}


def rewrite(directory: Path, change: Callable[[str, torch.Tensor], tuple[str, torch.Tensor] | None]) -> None:
    """Re-key (or drop, or replace) tensors in every safetensors file of ``directory``, index included."""
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
    weight_map = {}
    for file in files or ["model.safetensors"]:
        tensors = {}
        for name, tensor in load_file(directory / file).items():
            changed = change(name, tensor)
            if changed is not None:
                tensors[changed[0]] = changed[1]
                weight_map[changed[0]] = file
        save_file(tensors, directory / file, metadata={"format": "pt"})
    if files is not None:
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def rename_all(directory: Path, rename: Rename) -> None:
    rewrite(directory, lambda name, tensor: (rename(name), tensor))


def save_part(kind: str, directory: Path, layout: str = "saved", shard: bool = False) -> dict[str, torch.Tensor]:
    """Save a tiny random ``kind`` checkpoint re-keyed to ``layout``; return its tower's tensors."""
    torch.manual_seed(3)
    model = BUILDERS[kind]()
    model.save_pretrained(directory, **({"max_shard_size": "40KB"} if shard else {}))
    tiny_image_processor().save_pretrained(directory)
    rename = LAYOUTS[layout]
    if rename is not None:
        rename_all(directory, rename)
    return tower_of(model)


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny 'pretrained' Qwen2 with its tokenizer (no spare rows: the placeholders force a resize)."""
    torch.manual_seed(4)
    directory = tmp_path_factory.mktemp("qwen2")
    tokenizer = tiny_tokenizer(placeholders=False)
    model = Qwen2ForCausalLM(tiny_text_config(len(tokenizer)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, {k: v.clone() for k, v in model.state_dict().items()}


def assert_llm_kept(storm: StormForConditionalGeneration, llm_state: dict[str, torch.Tensor]) -> None:
    # the LLM's body is model.language_model and its head lm_head: together, the causal LM's weights
    state = {f"model.{k}": v for k, v in storm.language_model.state_dict().items()}
    state |= {f"lm_head.{k}": v for k, v in storm.lm_head.state_dict().items()}
    assert set(state) == set(llm_state)
    for name, value in llm_state.items():
        got = state[name][: value.shape[0]] if name in ("model.embed_tokens.weight", "lm_head.weight") else state[name]
        assert torch.equal(got, value), name


CASES = [
    ("siglip-vision", "saved", False),
    ("siglip-vision", "hub-vision", False),
    ("siglip-dual", "saved", False),
    ("clip-vision", "saved", False),
    ("clip-vision", "hub-vision", False),
    ("clip-dual", "saved", False),
    ("paligemma", "saved", False),
    ("paligemma", "hub", True),
    ("paligemma", "v4.52", False),
    ("paligemma", "in-memory", False),
    ("llava-clip", "saved", False),
    ("llava-clip", "hub", True),
    ("llava-clip", "v4.52", False),
    ("llava-onevision", "hub", False),
    ("llava-next-video", "v4.52", False),
]


@pytest.mark.parametrize(("kind", "layout", "shard"), CASES, ids=[f"{k}-{lay}{'-sharded' * s}" for k, lay, s in CASES])
def test_tower_and_llm_weights_are_the_checkpoints(kind, layout, shard, llm, tmp_path):
    tower_state = save_part(kind, tmp_path, layout, shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file()
    llm_dir, llm_state = llm
    storm = StormForConditionalGeneration.from_parts(tmp_path, llm_dir, temporal_layers=1)
    state = storm.vision_tower.state_dict()
    assert set(state) == set(tower_state)
    for name, value in tower_state.items():
        assert torch.equal(state[name], value), name
    assert type(storm.vision_tower).__name__ == ("CLIPVisionModel" if "clip" in kind else "SiglipVisionModel")
    assert_llm_kept(storm, llm_state)


def test_generation_stops_at_the_end_of_turn_without_being_told(llm, tmp_path):
    """from_parts puts the stop and pad ids in the generation config: no generate() call repeats them."""
    from transformers import AutoTokenizer

    from storm_vlm.tokens import add_placeholder_tokens, stop_token_ids

    save_part("siglip-vision", tmp_path, "saved")
    storm = StormForConditionalGeneration.from_parts(tmp_path, llm[0], temporal_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(llm[0])
    add_placeholder_tokens(tokenizer)
    assert storm.generation_config.eos_token_id == stop_token_ids(tokenizer)
    assert storm.generation_config.pad_token_id == tokenizer.pad_token_id is not None


def test_dtype_is_applied_to_the_loaded_tower(llm, tmp_path):
    tower_state = save_part("paligemma", tmp_path, "hub")
    storm = StormForConditionalGeneration.from_parts(tmp_path, llm[0], dtype=torch.bfloat16, temporal_layers=1)
    for name, value in tower_state.items():
        assert torch.equal(storm.vision_tower.state_dict()[name], value.to(torch.bfloat16)), name


@pytest.mark.parametrize(
    ("kind", "layout", "victim"),
    [
        ("paligemma", "hub", "vision_tower.vision_model.encoder.layers.1.mlp.fc2.bias"),
        ("paligemma", "v4.52", "model.vision_tower.vision_model.post_layernorm.weight"),
        ("llava-clip", "saved", "vision_tower.embeddings.class_embedding"),
        ("siglip-dual", "saved", "vision_model.embeddings.patch_embedding.weight"),
        ("siglip-vision", "saved", "encoder.layers.0.self_attn.q_proj.weight"),
    ],
)
def test_a_missing_tower_tensor_is_an_error_naming_it(kind, layout, victim, llm, tmp_path):
    save_part(kind, tmp_path, layout)
    rewrite(tmp_path, lambda name, tensor: None if name == victim else (name, tensor))
    with pytest.raises(PartsError, match="no weight for") as err:
        StormForConditionalGeneration.from_parts(tmp_path, llm[0])
    assert victim in str(err.value) and str(tmp_path) in str(err.value)


def test_a_mis_shaped_tower_tensor_is_an_error_naming_it(llm, tmp_path):
    save_part("paligemma", tmp_path, "hub")
    victim = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    rewrite(tmp_path, lambda name, tensor: (name, tensor[:-1] if name == victim else tensor))
    with pytest.raises(PartsError, match=r"fc1\.weight has shape \[63, 32\] but the vision config needs \[64, 32\]"):
        StormForConditionalGeneration.from_parts(tmp_path, llm[0])


def test_a_missing_llm_tensor_is_an_error_naming_it(tmp_path):
    vision_dir, llm_dir = tmp_path / "vision", tmp_path / "llm"
    save_part("siglip-vision", vision_dir)
    tokenizer = tiny_tokenizer(placeholders=False)
    Qwen2ForCausalLM(tiny_text_config(len(tokenizer))).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    victim = "model.layers.1.mlp.up_proj.weight"
    rewrite(llm_dir, lambda name, tensor: None if name == victim else (name, tensor))
    with pytest.raises(PartsError, match="LLM: no weights for") as err:
        StormForConditionalGeneration.from_parts(vision_dir, llm_dir)
    assert victim in str(err.value) and str(llm_dir) in str(err.value)


def test_an_llm_directory_is_no_vision_tower(llm):
    with pytest.raises(PartsError, match="has no vision tower"):
        StormForConditionalGeneration.from_parts(llm[0], llm[0])


def test_tower_prefix_takes_the_prefix_holding_the_tower():
    tower = ["embeddings.patch_embedding.weight", "encoder.layers.0.mlp.fc1.weight", "post_layernorm.weight"]
    names = ["vision_tower.vision_model." + k for k in tower]
    # a text tower shares layer names but not the whole tower; an LLM's layers match nothing
    names += ["text_model.encoder.layers.0.mlp.fc1.weight", "language_model.model.layers.0.mlp.up_proj.weight"]
    assert tower_prefix(names, tower, "d") == "vision_tower.vision_model."
    assert tower_prefix(tower, tower, "d") == ""
    with pytest.raises(PartsError, match="ambiguous"):  # two whole towers (e.g. Video-LLaVA): no guess
        tower_prefix(["image_tower." + k for k in tower] + ["video_tower." + k for k in tower], tower, "d")
    with pytest.raises(PartsError, match="no vision tower tensors"):
        tower_prefix(["language_model.lm_head.weight"], tower, "d")


@pytest.mark.parametrize(
    ("kind", "image_processor", "kept"),
    [
        ("paligemma", tiny_image_processor(), True),  # SigLIP's: one 32x32 image per frame
        # LLaVA-OneVision's any-res tiles a frame into several crops; CLIP's crops to a square
        ("llava-onevision", LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}), False),
        ("clip-vision", CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), False),
    ],
)
def test_the_frame_processor_makes_one_tower_sized_image_per_frame(kind, image_processor, kept, llm, tmp_path):
    save_part(kind, tmp_path)
    image_processor.save_pretrained(tmp_path)
    _, processor = build_from_parts(tmp_path, llm[0], temporal_layers=1)
    ip = processor.image_processor
    assert (type(ip).__name__ == type(image_processor).__name__) is kept
    assert list(ip.image_mean) == pytest.approx(list(image_processor.image_mean))
    frames = torch.randint(0, 256, (2, 24, 40, 3), dtype=torch.uint8).numpy()
    assert processor.preprocess_frames(frames).shape == (2, 3, 32, 32)
    assert processor.preprocess_frames_torch(frames).shape == (2, 3, 32, 32)  # reads size["height"/"width"]


def test_cli_init_names_the_missing_tower_tensor_in_one_line(llm, tmp_path, capsys):
    from storm_vlm.cli import main

    vision_dir, out = tmp_path / "paligemma", tmp_path / "out"
    save_part("paligemma", vision_dir, "hub")
    victim = "vision_tower.vision_model.embeddings.position_embedding.weight"
    rewrite(vision_dir, lambda name, tensor: None if name == victim else (name, tensor))
    capsys.readouterr()  # the setup's progress bars
    with pytest.raises(SystemExit) as exit_:
        main(["init", "--vision", str(vision_dir), "--llm", str(llm[0]), "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert victim in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
