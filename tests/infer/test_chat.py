from kefu.infer.chat import chat_loop
from kefu.infer.generate import SamplingConfig
from tests.infer.conftest import REPLIES, prompt_for


class Recording:
    """A model that remembers every prompt it was given."""

    def __init__(self, model) -> None:
        self.model = model
        self.config = model.config
        self.prompts: list[list[int]] = []

    def eval(self):
        self.model.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    def prefill(self, prompts, max_new_tokens):
        self.prompts += prompts
        return self.model.prefill(prompts, max_new_tokens)

    def decode(self, ids, state):
        return self.model.decode(ids, state)


class Terminal:
    """Collects what chat_loop writes; `replies` are the texts written after "assistant> "."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def __call__(self, text: str) -> None:
        self.writes.append(text)

    @property
    def output(self) -> str:
        return "".join(self.writes)

    @property
    def replies(self) -> list[str]:
        replies, current = [], None
        for text in self.writes:
            if text == "assistant> ":
                current = []
            elif current is not None and text == "\n":
                replies.append("".join(current))
                current = None
            elif current is not None:
                current.append(text)
        return replies


def test_commands_reset_skip_and_exit(trained_gpt, tokenizer):
    model, terminal = Recording(trained_gpt), Terminal()
    read = []

    def lines():
        for line in ["hello\n", "/reset", "", "  ", "你好\n", "/exit\n", "never read"]:
            read.append(line)
            yield line

    sampling = SamplingConfig(max_new_tokens=40)
    replies = chat_loop(model, tokenizer, sampling, lines(), terminal, context_length=128)
    assert replies == 2
    assert terminal.output.count("assistant> ") == 2
    assert terminal.replies == [REPLIES["hello"], REPLIES["你好"]]
    assert terminal.output.endswith(REPLIES["你好"] + "\n")
    assert "never read" not in read
    # After /reset the second message is sent alone, without the first exchange.
    assert model.prompts == [prompt_for(tokenizer, "hello"), prompt_for(tokenizer, "你好")]


def test_quit_ends_the_chat(trained_gpt, tokenizer):
    terminal = Terminal()
    sampling = SamplingConfig(max_new_tokens=8)
    assert chat_loop(trained_gpt, tokenizer, sampling, ["/quit", "hello"], terminal) == 0
    assert terminal.writes == []


def test_history_is_sent_and_oldest_exchanges_dropped_to_fit(trained_gpt, tokenizer):
    model, terminal = Recording(trained_gpt), Terminal()
    sampling = SamplingConfig(max_new_tokens=40)
    system = {"role": "system", "content": "Be kind."}

    def render(*messages):
        return tokenizer.render(list(messages), add_generation_prompt=True).ids

    def exchange(user, assistant):
        return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]

    # A first run without a limit tells the replies, and so the size of each prompt.
    chat_loop(model, tokenizer, sampling, ["hello", "你好"], terminal, system="Be kind.")
    first, second = terminal.replies
    prompts = [
        render(system, {"role": "user", "content": "hello"}),
        render(system, *exchange("hello", first), {"role": "user", "content": "你好"}),
        render(system, *exchange("你好", second), {"role": "user", "content": "hello"}),
    ]
    third_in_full = render(
        system,
        *exchange("hello", first),
        *exchange("你好", second),
        {"role": "user", "content": "hello"},
    )
    # Room for the system message and one exchange, not two.
    context = max(len(p) for p in prompts) + sampling.max_new_tokens
    assert len(third_in_full) + sampling.max_new_tokens > context

    model.prompts, terminal.writes = [], []
    lines = ["hello", "你好", "hello"]
    replies = chat_loop(model, tokenizer, sampling, lines, terminal, "Be kind.", context)
    assert replies == 3
    assert terminal.replies[:2] == [first, second]
    assert model.prompts == prompts
    assert all(len(p) + sampling.max_new_tokens <= context for p in model.prompts)


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on(trained_gpt, tokenizer):
    model, terminal = Recording(trained_gpt), Terminal()
    sampling = SamplingConfig(max_new_tokens=8)
    long_line = "please tell me everything about my card " * 10
    lines = ["hello", long_line, "你好"]
    replies = chat_loop(model, tokenizer, sampling, lines, terminal, context_length=24)
    assert replies == 2
    refusals = [line for line in terminal.output.splitlines() if line.startswith("(not sent")]
    assert len(refusals) == 1
    assert "more than the model's context of 24" in refusals[0]
    assert all(len(p) + 8 <= 24 for p in model.prompts)
    assert len(model.prompts) == 2  # the long message never reached the model


def test_lstm_chat_keeps_the_whole_history(lstm, tokenizer):
    model, terminal = Recording(lstm), Terminal()
    sampling = SamplingConfig(max_new_tokens=5)
    assert chat_loop(model, tokenizer, sampling, ["hi", "again", "more"], terminal) == 3
    lengths = [len(p) for p in model.prompts]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    history = tokenizer.decode(model.prompts[-1])
    assert "hi" in history and "again" in history and history.endswith("more<|end|><|assistant|>")
