"""generate and chat: stream tokens of a saved or embedded model to stdout, and a prefill /
decode tok/s line to stderr. --model is a packed directory, a Hugging Face directory, a .gguf
file, a compressed-tensors directory or an embedded name (workbench.formats.open_model)."""

from __future__ import annotations

import sys

from workbench.cli_common import UsageError

# generation.RUNTIMES, named here so that parsing arguments does not import torch
RUNTIME_NAMES = ("int8", "fp32", "hf")


def sampling_args(args) -> dict:
    """stream_tokens' decoding arguments from generate / chat's flags; UsageError before
    anything is loaded."""
    given = [flag for flag, value in (("--temperature", args.temperature), ("--top-k", args.top_k),
                                      ("--seed", args.seed)) if value is not None]
    if given and not args.sample:
        raise UsageError(f"{', '.join(given)} need --sample (decoding is greedy without it)")
    if args.temperature is not None and not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {args.temperature}")
    for flag, value in (("--top-k", args.top_k), ("--max-new-tokens", args.max_new_tokens),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    return {"do_sample": args.sample, "temperature": args.temperature or 1.0,
            "top_k": args.top_k, "seed": args.seed}


def open_runner(args):
    """(runner, tokenizer, stop ids, stats label) of --model on --runtime."""
    import torch

    from workbench import formats, generation

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model, tok, kind = formats.open_model(args.model)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot open --model {args.model}: {err}") from None
    if tok is None:
        raise UsageError(f"{args.model} was saved without a tokenizer: generation needs one")
    try:
        runner, runtime = generation.prepare(model, args.runtime, n_threads=args.threads)
    except ValueError as err:
        raise UsageError(f"{args.model}: {err}") from None
    return runner, tok, generation.stop_ids(model, tok), f"{runtime} runtime, {kind}"


def stream_reply(runner, tok, ids, args, stop, sampling) -> str:
    """Stream the continuation of ids [1, T] to stdout, then the stats line to stderr; the text."""
    from workbench import generation

    stream = generation.stream_tokens(runner, ids, args.max_new_tokens, stop_ids=stop, **sampling)
    pieces = []
    for piece in generation.stream_text(tok, stream):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print()
    print(f"{stream.stats.summary()} ({args.label})", file=sys.stderr, flush=True)
    return "".join(pieces)


def cmd_generate(args) -> int:
    """Stream one completion of --prompt (in the chat template when the tokenizer has one)."""
    from workbench import generation

    sampling = sampling_args(args)
    runner, tok, stop, args.label = open_runner(args)
    template = args.chat_template if args.chat_template is not None else bool(tok.chat_template)
    try:
        ids = generation.prompt_ids(tok, args.prompt, chat_template=template)
        stream_reply(runner, tok, ids, args, stop, sampling)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return 0


def cmd_chat(args) -> int:
    """A conversation in the tokenizer's chat template: each turn re-reads the whole history."""
    from workbench import generation

    sampling = sampling_args(args)
    runner, tok, stop, args.label = open_runner(args)
    if not tok.chat_template:
        raise UsageError(f"{args.model}: the tokenizer has no chat template")
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    print("/reset clears the history, /exit (or end of input) ends the chat", file=sys.stderr)
    while True:
        try:
            text = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = list(start)
            continue
        if text:
            history.append({"role": "user", "content": text})
            try:
                reply = stream_reply(runner, tok, generation.prompt_ids(tok, history), args, stop, sampling)
            except ValueError as err:       # the history outgrew the model's positions
                history.pop()
                print(f"error: {err}; /reset starts over", file=sys.stderr)
                continue
            history.append({"role": "assistant", "content": reply})
