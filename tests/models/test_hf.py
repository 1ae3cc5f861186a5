"""The Hugging Face backend on tiny random Llama and GPT-2 models built here: parity with
transformers' own forward and greedy generation, chat rendering, LoRA training, save/load,
merge, several adapters on one base, and the wrong-base error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from kefu.config import DataSource
from kefu.console import quiet_transformers
from kefu.data.ingest import ingest
from kefu.errors import KefuError
from kefu.eval.lm import perplexity
from kefu.infer.chat import chat_loop
from kefu.infer.generate import SamplingConfig, generate
from kefu.models.checkpoint import load_run, read_run_config
from kefu.models.hf import (
    ADAPTER,
    MODEL,
    HFCausalLM,
    HFChatTokenizer,
    LoRASettings,
    adapter_weights,
    load_base,
    merge_run,
    save_hf_run,
)
from kefu.models.hf_export import CHAT_TEMPLATE
from kefu.text.tokenizer import ChatTokenizer
from kefu.train.recipe import TrainRecipe
from kefu.train.run import run_training
from tests.conftest import kefu
from tests.models.tiny_hf import save_adapter_run, save_gpt2, save_llama

MESSAGES = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "我的银行卡丢了"},
    {"role": "assistant", "content": "Sure, I have frozen your card."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]

PROMPTS = [[5, 9, 40, 41, 42, 7, 60], [11, 12], [70, 71, 72, 73]]  # three lengths
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return save_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    """A data folder of 60 short support conversations."""
    folder = tmp_path_factory.mktemp("chats")
    lines = [
        json.dumps(
            {
                "id": f"c{i}",
                "messages": [
                    {"role": "user", "content": f"Where is my card {i}?"},
                    {"role": "assistant", "content": f"Your card {i} arrives in 5 days."},
                ],
            }
        )
        for i in range(60)
    ]
    (folder / "chats.jsonl").write_text("\n".join(lines), encoding="utf-8")
    ingest(DataSource(format="messages", inputs=[str(folder / "chats.jsonl")]), folder / "data")
    return folder / "data"


def recipe(chats: Path, steps: int = 16, lr: float = 0.02) -> TrainRecipe:
    return TrainRecipe.model_validate(
        {
            "kind": "train",
            "task": "chat",
            "data": str(chats),
            "train": {
                "max_steps": steps,
                "batch_size": 4,
                "warmup_steps": 0,
                "eval_every": steps // 2,
                "eval_batches": 2,
                "lr": lr,
                "device": "cpu",
            },
        }
    )


def with_base(recipe: TrainRecipe, base: Path, lora: LoRASettings | None = None) -> TrainRecipe:
    return recipe.model_copy(update={"base": str(base), "lora": lora})


def logits_of(model: HFCausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[5, 9, 40, 41, 42, 7, 60, 80]]))


# -- the LanguageModel face ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_forward_prefill_and_decode_match_transformers(which, request):
    model, _ = load_base(request.getfixturevalue(which))
    hf = model.model
    for prompt in PROMPTS:
        assert torch.allclose(model(torch.tensor([prompt])), hf(torch.tensor([prompt])).logits)

    # One batch of prompts of three lengths: each row's logits are those of its prompt alone,
    # after the prompt and after every decoded token.
    logits, state = model.prefill(PROMPTS, max_new_tokens=6)
    sequences = [list(p) for p in PROMPTS]
    for _ in range(6):
        for row, sequence in enumerate(sequences):
            alone = hf(torch.tensor([sequence])).logits[0, -1]
            assert torch.allclose(logits[row], alone, atol=TOLERANCE), (which, row)
        tokens = logits.argmax(-1)
        for sequence, token in zip(sequences, tokens.tolist(), strict=True):
            sequence.append(token)
        logits = model.decode(tokens, state)

    # Greedy text equals transformers' own greedy generate, prompt by prompt.
    for prompt, sequence in zip(PROMPTS, sequences, strict=True):
        reference = hf.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None
        )
        assert reference[0].tolist() == sequence


def test_context_length_and_the_room_check(llama, gpt2):
    model, _ = load_base(llama)
    assert model.config.context_length == 128
    assert load_base(gpt2)[0].config.context_length == 128
    with pytest.raises(KefuError, match="exceeds the model's context of 128"):
        model.prefill([[1] * 100], max_new_tokens=40)


# -- the tokenizer ------------------------------------------------------------------------


def test_chat_template_renders_like_kefus_own_tokenizer(llama, tmp_path):
    """kefu's template (with {% generation %}) gives ChatTokenizer's ids and mask; the same
    template without those blocks gives the same mask, found by rendering prefixes."""
    kefu_tokenizer = ChatTokenizer.load(llama / "tokenizer.json")
    expected = kefu_tokenizer.render(MESSAGES)
    prompt = kefu_tokenizer.render(MESSAGES[:2], add_generation_prompt=True)
    plain_template = CHAT_TEMPLATE.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", ""
    )
    for template in (CHAT_TEMPLATE, plain_template):
        folder = save_llama(tmp_path / str(len(template)), template=template)
        tokenizer = HFChatTokenizer.load(folder)
        assert tokenizer.marks_generation == (template == CHAT_TEMPLATE)
        assert tokenizer.render(MESSAGES) == expected
        assert tokenizer.render(MESSAGES[:2], add_generation_prompt=True).ids == prompt.ids
        assert tokenizer.end_of_turn_id == kefu_tokenizer.end_of_turn_id
        assert tokenizer.decode(tokenizer.encode("我的卡 card")) == "我的卡 card"


def test_plain_format_without_a_template_ends_turns_with_eos(gpt2):
    tokenizer = HFChatTokenizer.load(gpt2)
    eos = tokenizer.hf.eos_token_id
    assert tokenizer.end_of_turn_id == tokenizer.end_of_text_id == eos
    rendered = tokenizer.render(MESSAGES)
    assert tokenizer.decode(rendered.ids) == (
        "system: Be kind.<|endoftext|>user: 我的银行卡丢了<|endoftext|>"
        "assistant: Sure, I have frozen your card.<|endoftext|>user: Thanks!<|endoftext|>"
        "assistant: You are welcome.<|endoftext|>"
    )
    learnt = [i for i, m in zip(rendered.ids, rendered.assistant_mask, strict=True) if m]
    assert tokenizer.decode(learnt) == (
        " Sure, I have frozen your card.<|endoftext|> You are welcome.<|endoftext|>"
    )
    prompt = tokenizer.render(MESSAGES[:2], add_generation_prompt=True).ids
    assert tokenizer.decode(prompt).endswith("<|endoftext|>assistant:")
    # A customer typing the eos token does not end the turn.
    assert eos not in tokenizer.encode("hi <|endoftext|>")


def test_the_lora_option_is_checked():
    assert LoRASettings.parse("8,16,q_proj,v_proj") == LoRASettings(
        rank=8, alpha=16, targets=["q_proj", "v_proj"]
    )
    assert LoRASettings.parse("4, 8").targets is None
    for text, problem in [("8", "expected rank,alpha"), ("0,16", "rank: Input should be")]:
        with pytest.raises(KefuError, match=problem):
            LoRASettings.parse(text)


# -- LoRA ---------------------------------------------------------------------------------


LORA_SAVED: list[HFCausalLM] = []  # the models `lora_run` saved, last one last


@pytest.fixture(scope="module")
def lora_run(llama, chats, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora") / "run"
    lora = LoRASettings(rank=2, alpha=8, targets=["q_proj", "v_proj"])

    def save(run_dir: Path, model: HFCausalLM, *args) -> None:
        LORA_SAVED.append(model)
        save_hf_run(run_dir, model, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("kefu.train.run.save_hf_run", save)
        run_training(with_base(recipe(chats), llama, lora), run)
    return run


def test_lora_training_changes_only_the_adapter_and_the_loss_falls(lora_run, llama):
    metrics = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["valid_loss"] < metrics[0]["valid_loss"] - 0.1
    assert not (lora_run / MODEL).exists()
    described = read_run_config(lora_run)
    assert described["arch"] == "hf"
    assert described["model"]["base"] == str(llama.resolve())
    assert described["model"]["lora"]["targets"] == ["q_proj", "v_proj"]

    # The trained model's base tensors are the base's, untouched; its adapter has learnt.
    base = load_file(llama / "model.safetensors")
    trained = LORA_SAVED[-1].base_model.state_dict()
    for name, tensor in base.items():
        twin = name.replace("q_proj.", "q_proj.base_layer.").replace(
            "v_proj.", "v_proj.base_layer."
        )
        assert torch.equal(trained[twin], tensor), name
    # The checkpoint (for --resume) holds the adapter alone: 2 layers x (q, v) x (A, B).
    adapter = load_file(lora_run / "checkpoint" / "model.safetensors")
    assert len(adapter) == 8 and all("lora_" in name for name in adapter)
    assert all(adapter[n].abs().sum() > 0 for n in adapter if "lora_B" in n)

    # The run saves the adapter alone: rank 2 on a 64-wide model is ~1% of the base's bytes.
    adapter = (lora_run / ADAPTER / "adapter_model.safetensors").stat().st_size
    ratio = adapter / (llama / "model.safetensors").stat().st_size
    print(f"adapter {adapter:,} bytes, {ratio:.2%} of the base")
    assert ratio < 0.02


def test_an_interrupted_lora_run_resumes_to_the_same_losses(lora_run, llama, chats, tmp_path):
    run = tmp_path / "run"
    lora = LoRASettings(rank=2, alpha=8, targets=["q_proj", "v_proj"])
    run_training(with_base(recipe(chats), llama, lora), run, stop_at_step=8)
    run_training(recipe(chats), run, resume=True)  # base and LoRA settings from config.yaml

    def losses(folder: Path) -> list[tuple]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["train_loss"], r["valid_loss"]) for r in map(json.loads, lines)]

    assert losses(run) == losses(lora_run)


def test_full_fine_tuning_saves_the_whole_model(gpt2, chats, tmp_path):
    lm = recipe(chats, steps=4).model_copy(update={"task": "lm"})
    run_training(with_base(lm, gpt2), tmp_path / "run")
    assert (tmp_path / "run" / MODEL / "model.safetensors").is_file()
    assert not (tmp_path / "run" / ADAPTER).exists()
    loaded = load_run(tmp_path / "run", arch="hf")
    assert read_run_config(tmp_path / "run")["model"]["lora"] is None
    assert not torch.allclose(logits_of(loaded.model), logits_of(load_base(gpt2)[0]))
    report = perplexity(loaded, chats, "valid", "chat")
    assert 1 < report["perplexity"] < 300 and report["bits_per_byte"] > 0
    said: list[str] = []
    sampling = SamplingConfig(max_new_tokens=4)
    replies = chat_loop(
        loaded.model, loaded.tokenizer, sampling, ["Where is my card?"], said.append
    )
    assert replies == 1 and said[0] == "assistant> " and said[-1] == "\n"


def test_on_a_7b_base_adapters_are_small_and_switch_by_flags():
    """LoRA on a Llama-2-7B-shaped model built on the meta device (shapes only, no memory)."""
    config = LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008)
    every_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with torch.device("meta"):
        model = HFCausalLM(LlamaForCausalLM(config), "llama-2-7b-shaped")
        total = model.num_parameters()
        model.add_lora(LoRASettings(rank=16, alpha=32, targets=every_linear))
        model.model.add_adapter("second", model.model.peft_config["default"])
    share = model.trainable_parameters() / total
    print(f"rank 16 on every linear layer of a 7B Llama: {share:.3%} of the base")
    assert share < 0.02

    layer = model.model.base_model.model.model.layers[0].self_attn.q_proj
    for name in ["default", "second", None]:
        model.use_adapter(name)
        assert layer.disable_adapters == (name is None)
    assert layer.active_adapters == ["second"]  # what switching back on will use


def test_a_saved_lora_run_loads_with_identical_logits(llama, tmp_path):
    model = save_adapter_run(llama, tmp_path / "run", seed=1)
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.model, HFCausalLM)
    assert loaded.model.adapters == ["run"] and loaded.model.active_adapter == "run"
    assert loaded.model.default_adapter == "run"
    assert adapter_weights(tmp_path / "run").is_file()
    assert torch.equal(logits_of(loaded.model), logits_of(model))
    plain = load_run(llama)  # a plain Hugging Face folder loads too
    assert isinstance(plain.model, HFCausalLM) and plain.arch == "hf"
    assert not torch.allclose(logits_of(loaded.model), logits_of(plain.model))


def test_merge_gives_the_same_logits(lora_run, tmp_path):
    merged = merge_run(lora_run, tmp_path / "merged")
    assert (merged / MODEL / "model.safetensors").is_file() and not (merged / ADAPTER).exists()
    described = read_run_config(merged)
    assert described["model"]["lora"] is None
    assert described["model"]["merged_from"] == str(lora_run.resolve())
    before, after = load_run(lora_run).model, load_run(merged).model
    assert not after.has_adapters
    assert torch.allclose(logits_of(after), logits_of(before), atol=TOLERANCE)


def test_two_adapters_on_one_base_switch_per_call(llama, tmp_path):
    one = save_adapter_run(llama, tmp_path / "one", seed=1)
    two = save_adapter_run(llama, tmp_path / "two", seed=2)
    model, _ = load_base(llama)
    plain = logits_of(model)
    model.load_adapter(tmp_path / "one", "one")
    model.load_adapter(tmp_path / "two", "two")
    assert model.adapters == ["one", "two"]
    assert torch.equal(logits_of(model), plain)  # loading does not change what answers
    for name, expected in [("one", one), ("two", two), (None, None), ("one", one)] * 3:
        model.use_adapter(name)
        wanted = plain if expected is None else logits_of(expected)
        assert torch.equal(logits_of(model), wanted), name

    # Generation through kefu's loop answers with the adapter in use.
    tokenizer = HFChatTokenizer.load(llama)
    prompt = tokenizer.render(MESSAGES[:2], add_generation_prompt=True).ids
    sampling = SamplingConfig(max_new_tokens=5)
    replies = {}
    for name in ("one", "two", None):
        model.use_adapter(name)
        replies[name] = generate(model, tokenizer, [prompt], sampling)[0].ids
    assert replies["one"] == generate(one, tokenizer, [prompt], sampling)[0].ids
    assert len(set(map(tuple, replies.values()))) == 3
    with pytest.raises(KefuError, match=r"no adapter named 'three'.*loaded: one, two"):
        model.use_adapter("three")


def test_an_adapter_for_another_base_is_a_clear_error(llama, gpt2, tmp_path):
    save_adapter_run(llama, tmp_path / "run", seed=1)
    other, _ = load_base(save_llama(tmp_path / "other", seed=5))  # same shapes, other weights
    with pytest.raises(KefuError, match=r"trained on .*llama.*fingerprint.*but this model is"):
        other.load_adapter(tmp_path / "run", "run")
    assert other.adapters == []

    # A bare peft folder carries no fingerprint: the shapes tell, and the base stays usable.
    wider = LlamaConfig.from_pretrained(llama)
    wider.hidden_size, wider.head_dim = 96, 24
    folder = tmp_path / "wide"
    with quiet_transformers():
        LlamaForCausalLM(wider).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((llama / name).read_bytes())
    model, _ = load_base(folder)
    plain = logits_of(model)
    with pytest.raises(KefuError, match=r"does not fit .*wide.*another base"):
        model.load_adapter(tmp_path / "run" / ADAPTER, "run")
    assert model.adapters == [] and torch.equal(logits_of(model), plain)
    gpt2_model, _ = load_base(gpt2)
    with pytest.raises(KefuError, match=r"does not fit|trained on"):
        gpt2_model.load_adapter(tmp_path / "run" / ADAPTER, "run")


# -- training and merging from the command line --------------------------------------------


@pytest.mark.slow  # two `kefu` processes, each importing torch, transformers and peft
def test_cli_lora_training_and_merge_end_to_end(gpt2, chats, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        yaml.safe_dump(recipe(chats, steps=4).model_dump(exclude={"gpt", "lstm"}))
    )
    run, merged = tmp_path / "run", tmp_path / "merged"
    trained = kefu(
        "train", "chat", "--recipe", str(recipe_file), "--base", str(gpt2),
        "--lora", "4,8", "--out", str(run),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "hf" in trained.stdout
    assert read_run_config(run)["model"]["lora"]["targets"] == ["c_attn"]  # peft's GPT-2 default
    merging = kefu("models", "merge", str(run), "--out", str(merged))
    assert merging.returncode == 0, merging.stderr
    assert torch.allclose(
        logits_of(load_run(merged).model), logits_of(load_run(run).model), atol=TOLERANCE
    )
    with pytest.raises(KefuError, match="already holds a run"):
        merge_run(run, merged)
