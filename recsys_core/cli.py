"""Command line: the same engine as the app, for scripts and GPU boxes.

    python -m recsys_core ingest FILE [--items FILE] [--name NAME]
    python -m recsys_core train --dataset demo --model bert4rec [--set epochs=5 ...]
    torchrun --standalone --nproc_per_node N -m recsys_core train --dataset demo --model sasrec [--set ...]
    python -m recsys_core evaluate --model-dir DIR --dataset demo
    python -m recsys_core recommend --model-dir DIR --dataset demo --user 42 [-k 10]
    python -m recsys_core serve --dataset demo [--port 8000 --workers 2]   (HTTP API, docs at /docs)

Results are printed as JSON on stdout; progress goes to stderr. Errors print one JSON line on stderr,
`{"error": {"type", "message", "hint", ...}}`, and no traceback: bad input (a `RecsysError`) exits with
status 2 and says what to fix, Ctrl-C with 130, a bug with 1 (`recsys --debug ...` adds the traceback).
Under torchrun, BERT4Rec, SASRec+ and the text tower train data-parallel (one process per GPU, or gloo
on CPU) and rank 0 alone prints, saves and records the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import numpy as np

from recsys_core.data.resolve import resolve_dataset
from recsys_core.errors import ConfigError, RecsysError
from recsys_core.progress import Progress


def _workspace(args: argparse.Namespace):
    from recsys_core.workspace.registry import Workspace

    return Workspace(args.workspace)


_BARS: list = []  # progress bars this command drew on stderr


def _tqdm_progress() -> Progress:
    from tqdm import tqdm

    bar = tqdm(total=0, file=sys.stderr, unit="step", dynamic_ncols=True)
    _BARS.append(bar)  # closed before an error is printed, so the error has a line of its own

    def render(event):
        if bar.total != event.total:
            bar.total = event.total
        bar.n = event.step
        post = {"epoch": event.epoch}
        if event.loss is not None:
            post["loss"] = f"{event.loss:.4f}"
        post.update({k: f"{v:.4f}" for k, v in event.metrics.items() if isinstance(v, float)})
        bar.set_postfix(post, refresh=False)
        if event.message:
            bar.write(event.message, file=sys.stderr)  # stdout carries only the JSON result
        bar.refresh()

    return Progress(render)


def cmd_ingest(args) -> dict:
    from recsys_core.data import LoadOptions, load_dataset

    options = LoadOptions(min_user_interactions=args.min_user, min_item_interactions=args.min_item,
                          implicit_threshold=args.implicit_threshold, duplicates=args.dedup,
                          file_order_is_time=args.file_order_is_time)
    ds, report = load_dataset(args.file, items=args.items, options=options, name=args.name)
    ws = _workspace(args)
    record = ws.save_dataset(ds, name=args.name or ds.name, source_file=str(args.file), overwrite=args.overwrite)
    return {"dataset": record.name, "stats": ds.stats(), "report": report.lines()}


def cmd_train(args) -> dict | None:
    from recsys_core.models import distributed
    from recsys_core.threads import training_threads, use_threads
    from recsys_core.training.experiment import make_model, make_split, parse_overrides, run_experiment

    distributed.init_from_env()  # a no-op without torchrun
    use_threads(training_threads())  # as a Train-page job: a CPU-second budget buys the same model at any load
    main = distributed.is_main()
    ws = _workspace(args) if main else None
    distributed.barrier()  # rank 0 creates the workspace before the others open it
    ws = ws or _workspace(args)
    ds = resolve_dataset(args.dataset, ws, args.items)
    model = make_model(args.model, {**_profile_settings(args.profile, args.model), **parse_overrides(args.set)})
    if (refused := model.refusal(ds)) is not None:
        raise refused.error()  # before a split, a time measurement or a process group's work
    overrides = _changed_settings(model)  # typed and by flat name, as the Train form hands them on
    split = make_split(ds, args.split)
    if main and distributed.world() == 1 and not args.no_estimate:
        _say_expected_time(ds, args.model, overrides, split)
    result = run_experiment(ds, args.model, overrides, split=split, progress=_tqdm_progress() if main else Progress(),
                            workspace=None if args.no_save else ws, dataset_name=ds.name)
    return _with_ending(result.summary(), args.profile) if main else None


def cmd_tune(args) -> dict:
    """Search the family's settings on the validation split within a CPU budget (training/tune.py), then test the
    winner over the seeds: the highest trial, or the defaults when no trial beats them beyond the validation's noise
    (`best.vs_defaults` in the output says by how much). The study is stored in the workspace, so the same command
    resumes and extends it."""
    from recsys_core.threads import training_threads, use_threads
    from recsys_core.training.experiment import parse_overrides
    from recsys_core.training.tune import default_budget_s, read_study, studies_path, study_name, tune

    use_threads(training_threads())  # as a job: a CPU budget buys the same trials at any load
    ws = _workspace(args)
    ds = resolve_dataset(args.dataset, ws, args.items)
    if args.show:
        name = study_name(ds.name, args.model, args.split)
        return read_study(studies_path(ws.root), name) or {"study": name, "trials": []}
    budget = args.budget_cpu_s or default_budget_s(ds)
    seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip()) if args.seeds else ()
    result = tune(ds, args.model, budget_cpu_s=budget, storage=studies_path(ws.root), dataset_name=ds.name,
                  overrides=parse_overrides(args.set), split_kind=args.split, trial_cpu_s=args.trial_cpu_s,
                  max_trials=args.max_trials, seed=args.seed, final_seeds=seeds, progress=_tqdm_progress(),
                  workspace=None if args.no_save else ws)
    return {"dataset": ds.name, **result.summary()}


AUTO, NO_PROFILE = "auto", "none"


def _profile_settings(name: str, family: str) -> dict:
    """The flat settings `--profile` gives `family`: a profile by name, the device's proposal (`auto`, as the Train
    page proposes it), or none (the models' own defaults, no time budget)."""
    from recsys_core.models.profiles import profile_for

    if name == NO_PROFILE:
        return {}
    return profile_for(name=None if name == AUTO else name).overrides(family)


def _changed_settings(model) -> dict:
    """The configured model's settings that differ from its family's defaults, by flat name (`train.lr`)."""
    from recsys_core.models.settings import flatten_config

    defaults = flatten_config(model.config_class())
    return {name: value for name, value in flatten_config(model.config).items() if value != defaults[name]}


def _say_expected_time(ds, family: str, overrides: dict, split) -> None:
    """On stderr, before the run starts: how long it will take, measured by a few real steps here."""
    from recsys_core.models.profiles import can_estimate, estimate_training, human_duration

    if not can_estimate(family, overrides):
        return
    print("measuring a few training steps to estimate the time...", file=sys.stderr)
    estimate = estimate_training(ds, family, overrides, split)
    ends = {"cpu_budget": "the CPU budget is spent", "max_steps": "the step cap is reached",
            "epochs": "every epoch has run"}
    print(f"expected time: {estimate.text()}; it ends at the latest when {ends.get(estimate.bound, estimate.bound)}",
          file=sys.stderr)
    if estimate.upper_s > LONG_RUN_S:
        print(f"warning: a long run (up to {human_duration(estimate.upper_s)}); `--profile demo` (or "
              "`--set train.cpu_budget_s=SECONDS`) bounds it, Ctrl-C stops it", file=sys.stderr)


LOOP_DEFAULTS = ("train.epochs", "train.patience", "train.max_steps", "train.cpu_budget_s", "train.lr",
                 "train.batch_size")  # shown per model in `train --help` (0: no cap)
LONG_RUN_S = 30 * 60  # a run that may take longer than this is called long before it starts


def _with_ending(summary: dict, profile: str) -> dict:
    """The run's JSON with how it ended for every family: the profile, the budget (None without a training loop),
    epochs run, best epoch and the stop reason in words."""
    budget = {key: summary[key] for key in ("cpu_budget_s", "max_steps", "epochs") if key in summary} or None
    one_pass = "one pass over the data (no training loop: no epochs, no budget)"
    return {**summary, "profile": profile, "budget": budget, "epochs_run": summary.get("epochs_run"),
            "best_epoch": summary.get("best_epoch"), "stop_reason": summary.get("stop_reason", one_pass)}


def cmd_evaluate(args) -> dict:
    from recsys_core.evaluation.metrics import evaluate, train_popularity
    from recsys_core.models.base import load_model
    from recsys_core.training.experiment import make_split

    model = load_model(args.model_dir)
    ds = resolve_dataset(args.dataset, _workspace(args), args.items)
    model.check_fits(ds)
    split = make_split(ds, args.split)
    out = {"model": model.family, "dataset": ds.name, "split": split.kind,
           "metrics": evaluate(model, split.test, item_popularity=train_popularity(split))}
    if args.per_user:  # Compare's breakdown; the per-user table is read from the folder, or scored and stored there
        from recsys_core.evaluation.compare import segment_breakdown
        from recsys_core.training.per_user import per_user_results

        table = per_user_results(args.model_dir, ds, args.split)
        segments = segment_breakdown({model.family: table}).drop(columns="model")
        out["segments"] = segments.astype(object).where(segments.notna(), None).to_dict("records")  # no NaN in JSON
    return out


def cmd_recommend(args) -> dict:
    from recsys_core.models.base import load_model
    from recsys_core.recommend.catalogue import catalogue_of
    from recsys_core.recommend.usecases import UNKNOWN_ERROR, UNKNOWN_IGNORE, Query, recommend_batch

    model = load_model(args.model_dir)
    ds = resolve_dataset(args.dataset, _workspace(args), args.items)
    model.check_fits(ds)
    options = {"k": args.k, "any_of": _pairs(args.filter, "--filter", lambda v: v.split(",")),
               "between": _pairs(args.range, "--range", _bounds), "hide_popular_top": args.hide_popular,
               "exclude_seen": not args.include_seen,
               "unknown_items": UNKNOWN_IGNORE if args.ignore_unknown else UNKNOWN_ERROR}
    queries = [Query.of(user=u, **options) for u in args.user] if args.user else [Query.of(history=args.history,
                                                                                           **options)]
    catalogue = catalogue_of(ds)
    results = [r.to_dict(catalogue) for r in recommend_batch(model, ds, queries)]
    return results[0] if len(results) == 1 else {"model": model.family, "results": results}


def _pairs(values: list[str], flag: str, parse) -> dict:
    """`COLUMN=VALUE` options as {column: parse(value)} (ConfigError naming the flag for a malformed one)."""
    out = {}
    for text in values:
        column, sep, value = text.partition("=")
        if not sep or not column:
            raise ConfigError(f"{flag} {text!r} is not COLUMN=VALUE", setting=flag,
                              hint=f"e.g. {flag} genres=Horror,Drama or {flag} year=1990:2000")
        out[column] = parse(value)
    return out


def _bounds(text: str) -> tuple[float | None, float | None]:
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        return (float(low) if low else None, float(high) if high else None)
    except ValueError:
        raise ConfigError(f"range {text!r} is not LOW:HIGH", setting="--range",
                          hint="numbers, either end may be empty: 1990:2000, 1990:, :2000") from None


def cmd_serve(args) -> None:
    from recsys_core.api.server import serve
    from recsys_core.api.settings import ServeSettings

    names = ("dataset", "model_dir", "host", "port", "workers", "poll_s", "batch", "batch_max", "batch_wait_ms",
             "max_k", "max_history", "max_body_bytes", "explain_budget_ms", "threads")
    serve(ServeSettings(workspace=args.workspace, **{name: getattr(args, name) for name in names}))


def _serve_parser(sub) -> None:
    from recsys_core.api.settings import BATCH_MODES, ServeSettings

    d = ServeSettings()
    s = sub.add_parser("serve", help="HTTP API of a dataset's active run (FastAPI + uvicorn; docs at /docs)",
                       description="Serve the best finished run of a dataset (checked every --poll-s seconds and "
                                   "swapped without dropping a request), or --model-dir. RECSYS_API_KEY, when set, "
                                   "is required on /v1 as 'Authorization: Bearer KEY'.")
    s.add_argument("--dataset", default=d.dataset, help="'demo' or a saved dataset name (or a file path)")
    s.add_argument("--model-dir", default=None, help="serve this model folder instead of the active run")
    s.add_argument("--host", default=d.host, help="address to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=d.port)
    s.add_argument("--workers", type=int, default=d.workers, help="uvicorn worker processes")
    s.add_argument("--poll-s", type=float, default=d.poll_s, help="how often to check for a new active run (0: never)")
    s.add_argument("--batch", default=d.batch, choices=BATCH_MODES,
                   help="coalesce concurrent requests into one forward pass (auto: for sequential models)")
    s.add_argument("--batch-max", type=int, default=d.batch_max, help="requests per forward pass at most")
    s.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long a batch's first request waits for others (0: none; requests arriving while a "
                        "batch is scored form the next)")
    s.add_argument("--max-k", type=int, default=d.max_k)
    s.add_argument("--max-history", type=int, default=d.max_history, help="history items per request at most")
    s.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    s.add_argument("--explain-budget-ms", type=float, default=d.explain_budget_ms,
                   help="time bound of the leave-one-out contributors of an explain request")
    s.add_argument("--threads", type=int, default=d.threads, help="torch threads per worker")
    s.set_defaults(func=cmd_serve)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog can be written when help is asked for: listing the models imports them
    (seconds), which no other command should pay for."""

    def __init__(self, *args, epilog_from=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_from = epilog_from

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def train_epilog() -> str:
    """The models `--model` takes with their training defaults, and the profiles `--profile` takes."""
    from recsys_core.models.base import family_class
    from recsys_core.models.profiles import PROFILES, profile_for
    from recsys_core.models.settings import flatten_config, has_training_loop
    from recsys_core.training.experiment import families

    lines = ["models (--model; every setting can be changed with --set KEY=VALUE):"]
    for family in families():
        cls = family_class(family)
        lines.append(f"  {family:<11} {cls.description}")
        flat = flatten_config(cls.config_class())
        loop = ", ".join(f"{k.split('.')[-1]} {flat[k]:g}" for k in LOOP_DEFAULTS if k in flat)
        lines.append(f"  {'':<11} defaults: {loop}" if has_training_loop(cls.config_class)
                     else f"  {'':<11} one pass over the data: no epochs, no budget")
    proposed = profile_for()
    lines += ["", f"profiles (--profile; default here: auto = {proposed.name}, as the Train page proposes):"]
    for profile in PROFILES.values():
        lines.append(f"  {profile.name:<11} {profile.label}: {profile.help}")
    lines.append(f"  {NO_PROFILE:<11} the models' own defaults above, with no time budget")
    return "\n".join(lines) + "\n\n" + TRAIN_HELP


TRAIN_HELP = """distributed (data-parallel) training of bert4rec, sasrec and text_tower (fine_tune):
  torchrun --standalone --nproc_per_node N -m recsys_core train --dataset NAME --model sasrec [--set ...]
one process per GPU (nccl), or per CPU share with gloo; each step's batch of batch_size examples is
split among the N processes, so the run matches one process with the same batch_size; rank 0 prints
the result, writes checkpoints and saves the model."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="RecSys Explorer engine (also: python -m recsys_core)")
    p.add_argument("--workspace", default=None, help="workspace folder (default $RECSYS_WORKSPACE or ./workspace)")
    p.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ing = sub.add_parser("ingest", help="read, validate and save an interactions file")
    ing.add_argument("file")
    ing.add_argument("--items", help="optional item metadata file")
    ing.add_argument("--name")
    ing.add_argument("--min-user", type=int, default=1, help="k-core: minimum interactions per user")
    ing.add_argument("--min-item", type=int, default=1, help="k-core: minimum interactions per item")
    ing.add_argument("--implicit-threshold", type=float, default=None,
                     help="keep rows whose rating (or count) is >= this")
    ing.add_argument("--overwrite", action="store_true", help="replace a saved dataset of the same name")
    ing.add_argument("--file-order-is-time", action="store_true",
                     help="no timestamp column, but the file lists each user's interactions in time order")
    ing.add_argument("--dedup", default="keep_last", choices=["keep_last", "keep_first", "error", "keep_all"])
    ing.set_defaults(func=cmd_ingest)
    _serve_parser(sub)

    for name, func, help_ in (("train", cmd_train, "train, evaluate and save a model"),
                              ("evaluate", cmd_evaluate, "full-ranking metrics of a saved model"),
                              ("recommend", cmd_recommend, "top-K for a user or a history")):
        c = sub.add_parser(name, help=help_, description=help_, epilog_from=train_epilog if name == "train" else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("--dataset", default="demo", help="'demo', a saved dataset name, or a file/folder path")
        c.add_argument("--items", help="item metadata file when --dataset is a path")
        c.set_defaults(func=func)
        if name == "train":
            c.add_argument("--model", required=True, help="model family (listed below)")
            c.add_argument("--profile", default=AUTO, choices=[AUTO, "demo", "full", NO_PROFILE],
                           help="training preset, as on the Train page (listed below; default: auto, the device's "
                                "proposal); --set overrides it")
            c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
            c.add_argument("--no-save", action="store_true", help="do not save the model or record the run")
            c.add_argument("--no-estimate", action="store_true",
                           help="start at once, without timing a few steps first to print the expected time")
        else:
            c.add_argument("--model-dir", required=True, help="folder of a saved model")
        if name in {"train", "evaluate"}:
            c.add_argument("--split", default="leave_one_out", choices=["leave_one_out", "temporal"])
        if name == "evaluate":
            c.add_argument("--per-user", action="store_true",
                           help="add NDCG@10 by history length and by the held-out item's popularity, as on Compare (the "
                                "per-user table is stored in the model's folder for the next call)")
        if name == "recommend":
            who = c.add_mutually_exclusive_group(required=True)
            who.add_argument("--user", nargs="+", help="user id(s) as in the data (several: one JSON with results)")
            who.add_argument("--history", nargs="+", help="item ids, oldest first")
            c.add_argument("-k", type=int, default=10)
            c.add_argument("--filter", action="append", default=[], metavar="COLUMN=V1,V2",
                           help="only items whose column holds one of the values (e.g. genres=Horror,Drama)")
            c.add_argument("--range", action="append", default=[], metavar="COLUMN=LOW:HIGH",
                           help="only items whose numeric column lies in the range (e.g. year=1990:2000)")
            c.add_argument("--hide-popular", type=float, default=0.0, metavar="FRACTION",
                           help="drop this share of the most popular items (0.1: the top 10 %%)")
            c.add_argument("--include-seen", action="store_true", help="allow items of the history")
            c.add_argument("--ignore-unknown", action="store_true",
                           help="score the known ids of --history and list the unknown ones instead of failing")
    tune = sub.add_parser("tune", help="find a model's best settings within a CPU budget (validation split only), "
                                       "then test the winner over seeds", description=cmd_tune.__doc__)
    tune.add_argument("--dataset", default="demo", help="'demo', a saved dataset name, or a file/folder path")
    tune.add_argument("--items", help="item metadata file when --dataset is a path")
    tune.add_argument("--model", required=True, help="model family with a search space: sasrec, bert4rec, hybrid, "
                                                     "ease, itemknn")
    tune.add_argument("--budget-cpu-s", type=float, default=None,
                      help="CPU seconds this search may spend (default: fitted to the data, 900 on the demo)")
    tune.add_argument("--trial-cpu-s", type=float, default=None,
                      help="most CPU seconds one trial trains (default: a quarter of the budget)")
    tune.add_argument("--max-trials", type=int, default=None, help="stop after this many trials of this call")
    tune.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial's training")
    tune.add_argument("--seeds", default="0,1,2", help="seeds the winner is trained and tested on ('' = none)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a setting fixed for every trial (then not searched)")
    tune.add_argument("--split", default="leave_one_out", choices=["leave_one_out", "temporal"])
    tune.add_argument("--no-save", action="store_true", help="do not save or record the winner's runs")
    tune.add_argument("--show", action="store_true", help="print the stored study without running a trial")
    tune.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = args.func(args)
    except RecsysError as err:  # the user's move: what, where and what to do, as one JSON document
        _say_error(err.__class__.__name__, err.message, err.hint, args.debug, file=err.file, line=err.line,
                   column=err.column, setting=err.setting, examples=err.examples[:5], text=str(err))
        return 2
    except KeyboardInterrupt:
        _say_error("Interrupted", "stopped by Ctrl-C before it finished; nothing was printed on stdout",
                   "run the command again", args.debug)
        return 130
    except Exception as err:  # noqa: BLE001  a bug, not the user's input: one line, the traceback on request
        _say_error("InternalError", f"unexpected {type(err).__name__}; the command did not finish",
                   "run it again with --debug (recsys --debug ...) for the traceback, and report it", args.debug)
        return 1
    finally:
        if "torch.distributed" in sys.modules:  # only a command that trained has loaded it
            from recsys_core.models import distributed

            distributed.close()
    if out is not None:  # None: a torchrun process other than rank 0
        print(json.dumps(out, indent=2, default=_json_default))
    return 0


def _say_error(kind: str, message: str, hint: str | None, debug: bool, **where) -> None:
    """One JSON error document, one line, last on stderr (stdout stays empty: it carries only results); with --debug
    the traceback comes first."""
    for bar in _BARS:
        bar.close()
    if debug:
        traceback.print_exc()
    fields = {k: v for k, v in where.items() if v not in (None, [], "")}
    print(json.dumps({"error": {"type": kind, "message": message, "hint": hint, **fields}}, ensure_ascii=False,
                     default=_json_default), file=sys.stderr)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)


def run() -> None:
    """Entry point of the `recsys` console script (`pip install -e .`)."""
    sys.exit(main())
