"""Personalization loaders: Custom Diffusion merge, textual inversion, LoRA beside our processors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.control import ControlSpec, MaskSpec  # noqa: E402
from engine.personalize import PersonalizationError, apply_personalization, load_weights  # noqa: E402
from engine.pipeline import Source, Target, generate, token_indices  # noqa: E402
from engine.tiny import load_tiny_pipeline  # noqa: E402

STEPS = 4
PROMPTS = ["a photo of a dog", "a dog on the beach"]


@pytest.fixture
def noise():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _stock(pipe, noise):
    return pipe(
        prompt=PROMPTS,
        num_inference_steps=STEPS,
        height=64,
        width=64,
        latents=noise.expand(2, -1, -1, -1).clone(),
        output_type="latent",
    ).images


def _ours(pipe, noise, control=None):
    return generate(
        pipe,
        Source(PROMPTS[0]),
        [Target(PROMPTS[1], control)],
        seed=0,
        num_steps=STEPS,
        height=64,
        width=64,
        latents=noise,
        decode=False,
    ).latents


def _custom_diffusion_processors(unet, seed=0):
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

    torch.manual_seed(seed)
    procs = {}
    for name in unet.attn_processors:
        attn = unet.get_submodule(name[: -len(".processor")])
        if name.endswith("attn2.processor"):
            proc = CustomDiffusionAttnProcessor2_0(
                train_kv=True,
                train_q_out=True,
                hidden_size=attn.to_q.out_features,
                cross_attention_dim=attn.to_k.in_features,
                out_bias=True,
            )
        else:
            proc = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False)
        procs[name] = proc
    return procs


def test_custom_diffusion_merged_equals_its_processors(tiny_model_dir, tmp_path, noise):
    reference = load_tiny_pipeline(tiny_model_dir)
    plain = _stock(reference, noise)
    reference.unet.set_attn_processor(_custom_diffusion_processors(reference.unet))
    reference.unet.save_attn_procs(
        tmp_path / "cd",
        weight_name="pytorch_custom_diffusion_weights.bin",
        safe_serialization=False,
    )
    expected = _stock(reference, noise)
    assert not torch.allclose(expected, plain, atol=1e-4)

    merged = load_tiny_pipeline(tiny_model_dir)
    apply_personalization(merged, "custom_diffusion", tmp_path / "cd")
    torch.testing.assert_close(_ours(merged, noise), expected, rtol=1e-5, atol=1e-6)
    # control composes with the merged weights and leaves the source row alone
    controlled = _ours(merged, noise, ControlSpec(start_step=0, layers="all"))
    torch.testing.assert_close(controlled[0], expected[0], rtol=1e-5, atol=1e-6)


def test_custom_diffusion_delta_bin_with_modifier_token(tiny_model_dir, tmp_path):
    pipe = load_tiny_pipeline(tiny_model_dir)
    key = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    vkey = key.replace("to_k", "to_v")
    old_v = pipe.unet.get_parameter(vkey).detach().clone()
    w = torch.randn_like(pipe.unet.get_parameter(key))
    u, v = torch.randn(old_v.shape[0], 2), torch.randn(2, old_v.shape[1])
    emb = torch.randn(32)
    torch.save(
        {"unet": {key: w, vkey: {"u": u, "v": v}}, "modifier_token": {"<new1>": emb}},
        tmp_path / "delta.bin",
    )
    tokens = apply_personalization(pipe, "custom_diffusion", tmp_path)
    assert tokens == ["<new1>"]
    assert torch.equal(pipe.unet.get_parameter(key), w)
    torch.testing.assert_close(pipe.unet.get_parameter(vkey), old_v + u @ v)
    tid = pipe.tokenizer.convert_tokens_to_ids("<new1>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid], emb)


def test_textual_inversion_token_resolves(tiny_model_dir, tmp_path, noise):
    from safetensors.torch import save_file

    pipe = load_tiny_pipeline(tiny_model_dir)
    emb = torch.randn(32, generator=torch.Generator().manual_seed(1))
    save_file({"<ktn>": emb}, str(tmp_path / "learned_embeds.safetensors"))
    assert apply_personalization(pipe, "textual_inversion", tmp_path) == ["<ktn>"]
    ids = pipe.tokenizer("a photo of <ktn> dog").input_ids
    tid = pipe.tokenizer.convert_tokens_to_ids("<ktn>")
    assert tid in ids and ids.index(tid) == 4
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid], emb)
    assert token_indices(pipe.tokenizer, "a photo of <ktn> dog", ["<ktn>"]) == {"<ktn>": [4]}
    spec = ControlSpec(start_step=1, mask=MaskSpec(mode="auto", words=("<ktn>",)))
    res = generate(
        pipe,
        Source("a photo of <ktn> dog"),
        [Target("<ktn> dog on the beach", spec)],
        seed=0,
        num_steps=STEPS,
        height=64,
        width=64,
        latents=noise,
        decode=False,
    )
    assert set(res.maps[0]) == {"<ktn>"}
    # renaming a single embedding with token=
    other = load_tiny_pipeline(tiny_model_dir)
    assert apply_personalization(
        other, "textual_inversion", tmp_path / "learned_embeds.safetensors", token="<sks>"
    ) == ["<sks>"]


def _save_tiny_lora(unet, folder):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(
            r=2,
            lora_alpha=2,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, safe_serialization=True
    )


def test_lora_with_our_processors_equals_lora_alone(tiny_model_dir, tmp_path, noise):
    pytest.importorskip("peft")
    _save_tiny_lora(load_tiny_pipeline(tiny_model_dir).unet, tmp_path / "lora")

    alone = load_tiny_pipeline(tiny_model_dir)
    plain = _stock(alone, noise)
    alone.load_lora_weights(str(tmp_path / "lora"))
    expected = _stock(alone, noise)
    assert not torch.allclose(expected, plain, atol=1e-4)

    ours = load_tiny_pipeline(tiny_model_dir)
    apply_personalization(ours, "lora", tmp_path / "lora")
    assert torch.equal(_ours(ours, noise), expected)


def test_errors_name_the_file(tiny_model_dir, tmp_path):
    pipe = load_tiny_pipeline(tiny_model_dir)
    with pytest.raises(PersonalizationError, match="nowhere.bin"):
        apply_personalization(pipe, "custom_diffusion", tmp_path / "nowhere.bin")
    with pytest.raises(PersonalizationError, match="no LoRA weights in"):
        apply_personalization(pipe, "lora", tmp_path)
    with pytest.raises(PersonalizationError, match="unknown personalization kind"):
        apply_personalization(pipe, "hypernetwork", tmp_path)
    assert (
        apply_personalization(pipe, "none", None) == []
        and apply_personalization(pipe, "full", "x") == []
    )


def test_weights_never_unpickle_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.bin", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(PersonalizationError, match="evil.bin"):
        load_weights(tmp_path / "evil.bin")


# ------------------------------------------------------------------ bad weights files
def _safetensors(path, header, data: bytes = b"", length: int | None = None):
    import json
    import struct

    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


BAD_SAFETENSORS = {
    # a few bytes whose header claims a 4 TiB tensor: refused from the header, nothing allocated
    "huge": (
        {"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4 << 40]}},
        b"\0" * 16,
        None,
        "lies beyond the end of the file",
    ),
    "length": ({"w": {}}, b"", 1 << 40, "its header claims 1.0 TiB and the file has"),
    "garbage": (b"{not json at all", b"", None, "its header is not valid JSON"),
    "shape": (
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 8]}},
        b"\0" * 8,
        None,
        r"tensor 'w' \(F32, shape \[2, 3\]\) needs 24 bytes, but its header gives it 8 bytes",
    ),
    "dtype": (
        {"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 1]}},
        b"\0",
        None,
        "unknown dtype 'Q99'",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_SAFETENSORS))
def test_bad_safetensors_name_the_file_and_what_is_wrong(tmp_path, kind):
    header, data, length, says = BAD_SAFETENSORS[kind]
    path = _safetensors(tmp_path / f"{kind}.safetensors", header, data, length)
    with pytest.raises(PersonalizationError, match=f"{kind}.safetensors: .*{says}"):
        load_weights(path)


def test_empty_safetensors_is_too_short(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(PersonalizationError, match="empty.safetensors: too short"):
        load_weights(tmp_path / "empty.safetensors")


def test_honest_safetensors_larger_than_memory_is_refused_before_loading(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import engine.personalize as personalize

    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(512, 1024)}, str(path))  # 2 MiB
    assert set(load_weights(path)) == {"w"}
    monkeypatch.setattr(personalize, "_memory_bytes", lambda: 1 << 20)
    with pytest.raises(
        PersonalizationError, match="big.safetensors: its tensors take 2.0 MiB, more"
    ):
        load_weights(path)


def test_weights_that_are_no_file_say_what_they_are(tmp_path):
    import os
    from types import SimpleNamespace

    os.mkfifo(tmp_path / "fifo.safetensors")
    (tmp_path / "zero.bin").symlink_to("/dev/zero")
    (tmp_path / "folder.safetensors").mkdir()
    cases = {
        "fifo.safetensors": "is a FIFO",
        "zero.bin": "is a symbolic link to /dev/zero, a character device, not a weights file",
        "folder.safetensors": "is a folder",
    }
    for name, says in cases.items():  # a FIFO is never opened: this would hang
        with pytest.raises(PersonalizationError, match=f"{name}: {says}"):
            load_weights(tmp_path / name)
    with pytest.raises(PersonalizationError, match="zero.bin: is a symbolic link to /dev/zero"):
        apply_personalization(None, "textual_inversion", tmp_path / "zero.bin")
    # A folder of weights whose expected file is a FIFO: named, not "no weights in".
    (tmp_path / "lora").mkdir()
    os.mkfifo(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    pytest.importorskip("peft")
    with pytest.raises(PersonalizationError, match="pytorch_lora_weights.safetensors: is a FIFO"):
        apply_personalization(SimpleNamespace(load_lora_weights=print), "lora", tmp_path / "lora")


def test_engine_names_the_bad_weights_file_not_the_model(tiny_model_dir, tmp_path):
    from engine.backends.base import LoadKey, ModelUnavailable
    from engine.backends.diffusion import PipelineBackend

    header, data, length, _ = BAD_SAFETENSORS["huge"]
    folder = tmp_path / "cd"
    folder.mkdir()
    bad = _safetensors(folder / "pytorch_custom_diffusion_weights.safetensors", header, data)
    key = LoadKey(str(tiny_model_dir), "custom_diffusion", str(folder))
    with pytest.raises(ModelUnavailable) as err:
        PipelineBackend().load(key)
    msg = str(err.value)
    assert str(bad) in msg and "lies beyond the end of the file" in msg, msg
    assert "cannot load model" not in msg
