"""What every task's training shares: one skeleton (run folder, plan, fit, finish, metrics and curves), loaders,
the Lightning trainer, optimisers and schedules, and a per-epoch history that survives ``--resume``.

Training only: nothing on an inference path imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cnnapps.apps.common.config import ConfigError, TrainConfig, check_run_folder, resumed_settings, write_config
from cnnapps.errors import CnnappsError, in_one_line
from cnnapps.terminal import plural

log = logging.getLogger("cnnapps")

# Lightning notices that say nothing to a user of this command: a resumed run's checkpoint folder is
# meant to exist, worker counts are chosen on purpose, frozen stages keep batch norm in eval mode.
_EXPECTED_LIGHTNING_WARNINGS = (
    r"Checkpoint directory .* exists and is not empty",
    r".*does not have many workers.*",
    r"Found \d+ module\(s\) in eval mode",
    r".*LeafSpec.*",
    # every rank validates on the whole validation set, so validation values are the same on all of them
    r"It is recommended to use `self\.log\('val_.*sync_dist=True",
)

#: callbacks that code around a training run adds to its trainer (``tune``'s pruning): each is made from the plan
_EXTRA_CALLBACKS: ContextVar[tuple[Callable[[Any], Any], ...]] = ContextVar("cnnapps_extra_callbacks", default=())


@contextmanager
def extra_callbacks(*factories: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, every training run also gets ``factory(plan)`` for each factory among its Lightning
    callbacks (so a search can watch any task's epochs without the task knowing)."""
    token = _EXTRA_CALLBACKS.set(_EXTRA_CALLBACKS.get() + factories)
    try:
        yield
    finally:
        _EXTRA_CALLBACKS.reset(token)


def backbone_for(config: TrainConfig) -> tuple[Any, Any]:
    """The backbone to train on and its preprocessing.

    With ``config.trunk`` (a registry name, seeded with ``config.weights``, or a model file whose trunk is taken as
    it is) the whole trunk is frozen and keeps its own preprocessing, so heads trained on it can share one pass.
    Otherwise ``config.backbone`` with ``config.weights``, frozen as asked, resized when ``input_size`` is set."""
    if config.trunk:
        from cnnapps.apps.modelfile import load_trunk

        if config.input_size:
            raise ConfigError("input_size: a --trunk brings its own preprocessing; leave input_size out")
        backbone, spec = load_trunk(config.trunk, config.weights)
        return backbone.freeze_all(), spec
    from cnnapps.backbones import create_backbone

    try:
        backbone = create_backbone(config.backbone, weights=config.weights, **config.backbone_kwargs)
    except TypeError as exc:  # an argument the backbone's constructor does not take, or a value of the wrong kind
        raise ConfigError(f"backbone_kwargs: {config.backbone} does not take {config.backbone_kwargs} "
                          f"({in_one_line(exc)})") from None  # fmt: skip
    spec = backbone.preprocess
    if config.input_size:
        s = config.input_size
        check_input_size(backbone, s)
        resize = s if spec.resize_mode == "squash" else round(s / 0.875)
        spec = dataclasses.replace(spec, input_size=(spec.input_size[0], s, s), resize=resize)
    if config.freeze:
        backbone.freeze(config.freeze)
    return backbone, spec


def check_input_size(backbone: Any, size: int) -> None:
    """Refuse, in one line, a side length below the backbone's own that its kernels and pools cannot take (a torch
    error in the first training step otherwise), naming the smallest it takes. One zero image through the trunk, in
    eval mode and without gradients, costs less than the pass at its own size; only a refused size searches more."""
    default = backbone.preprocess.input_size[1]
    if size >= default:
        return
    why = _why_not(backbone, size)
    if why is None:
        return
    smallest = _smallest_size(backbone, size, default)
    hint = f"; the smallest size it takes is {smallest}" if smallest else ""
    raise ConfigError(f"input_size {size}: {backbone.name} cannot take images this small ({why}){hint}")


def _why_not(backbone: Any, size: int) -> str | None:
    """Why one zero image of ``size`` x ``size`` cannot pass through ``backbone`` (None when it can)."""
    training = backbone.training
    backbone.eval()  # batch norm over one image of 1 x 1 pixels would fail for another reason
    try:
        with torch.no_grad():
            backbone.embed(torch.zeros(1, backbone.preprocess.input_size[0], size, size))
    except (RuntimeError, ValueError, AssertionError) as exc:
        return in_one_line(exc)
    finally:
        backbone.train(training)
    return None


def _smallest_size(backbone: Any, refused: int, default: int) -> int | None:
    """The smallest side between ``refused`` (which fails) and ``default`` that passes (by bisection: sizes pass
    from some side up), or None when even ``default`` fails."""
    if _why_not(backbone, default) is not None:
        return None
    low, high = refused, default
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _why_not(backbone, middle) is None else (middle, high)
    return high


def trunk_identity(config: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The registry name and constructor arguments of the trunk a run trains (what its model file records)."""
    if config.trunk:
        from cnnapps.bundle import is_bundle_path

        if is_bundle_path(config.trunk):
            from cnnapps.apps.modelfile import read_model_file

            model_file = read_model_file(config.trunk)
            return model_file.trunk["name"], dict(model_file.trunk.get("kwargs", {}))
        return config.trunk, {}
    return config.backbone, dict(config.backbone_kwargs)


def default_workers(config: TrainConfig, device: torch.device) -> int:
    """DataLoader worker processes when ``workers`` is not set.

    On a CPU, up to 4: the training itself needs the cores. On a GPU the CPU's only work is the data, and a
    ResNet-50 at 224 px was starved with 4 workers (1,192 images/s of the 4,106 the GPU trains from memory),
    less so with 15 (1,787): every core of this process's share but the one that drives the GPU, up to 16. The
    share is the cores this process may use, divided among the processes of this node, unless a scheduler
    (SLURM's --cpus-per-task) has already given it fewer than the machine has."""
    from cnnapps.runtime import available_cores

    cores = available_cores()
    if device.type != "cuda":
        return min(4, cores)
    if cores >= (os.cpu_count() or cores):  # the whole machine: shared by this node's processes
        cores //= max(1, config.devices)
    return max(1, min(16, cores - 1))


def augment_on_device(config: TrainConfig, device: torch.device) -> bool:
    """Whether colour jitter and normalisation run on the training device, on uint8 batches (``augment_on``)."""
    return config.augment_on == "device" or (config.augment_on == "auto" and device.type == "cuda")


def labelled_loaders(config: TrainConfig, model: Any, module: Any, train_set: Any, val_set: Any, spec: Any,
                     device: torch.device, with_index: bool = False,
                     sampler: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """Loaders over labelled images for a model whose ``module`` trains it: the augmentation preset in the workers,
    and on a GPU uint8 batches whose colour jitter and normalisation the module runs on the device (in
    channels_last, as ``model`` is put). ``with_index``: validation items carry their index; ``sampler``: how
    training items are drawn (shuffled when None)."""
    from cnnapps.datasets.training import LabeledImageDataset
    from cnnapps.datasets.transforms import batch_transform, eval_transform, train_transform
    from cnnapps.runtime import to_channels_last

    cuda = device.type == "cuda"
    if cuda:
        to_channels_last(model)
    on_device = augment_on_device(config, device)  # uint8 batches, jitter and normalisation on the device
    output = "uint8" if on_device else "float32"
    train = LabeledImageDataset(train_set, train_transform(config.augment, spec, output))
    val = LabeledImageDataset(val_set, eval_transform(spec, output), with_index=with_index)
    if on_device:
        module.batch_transform = batch_transform(config.augment, spec, channels_last=cuda)
    return make_loaders(config, train, val, device, sampler=sampler)


def loader_args(config: TrainConfig, device: torch.device, collate_fn: Any = None) -> dict[str, Any]:
    """DataLoader settings from the config: batch size, worker processes (:func:`default_workers`) kept alive
    between epochs, each seeding its augmentation (:func:`~cnnapps.datasets.transforms.seed_worker`), pinned memory
    on CUDA."""
    workers = default_workers(config, device) if config.workers is None else config.workers
    args = {"batch_size": config.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    if workers > 0:
        from cnnapps.datasets.transforms import seed_worker

        args["worker_init_fn"] = seed_worker  # each worker's albumentations draws, seeded
    args["pin_memory"] = device.type == "cuda"
    if collate_fn is not None:
        args["collate_fn"] = collate_fn
    return args


def make_loaders(config: TrainConfig, train_set: Any, val_set: Any, device: torch.device,
                 collate_fn: Any = None, sampler: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """The training loader (shuffled, or drawn by ``sampler``) and a loader over the whole validation set in order.

    Unreadable validation images are left out of their batches (a batch of none readable is None, which
    :class:`TaskModule` skips); the training set puts the next readable image in an unreadable one's place.

    A training ``sampler`` in a distributed run is wrapped by Lightning (``DistributedSamplerWrapper``): every
    process draws the sampler's indices and takes its own share of them.

    In a distributed run Lightning would give each process a shard of the validation set (padded with repeats
    to equal length); a sampler that is already a ``DistributedSampler`` is left alone, so one over a single
    replica keeps the whole set. Every rank then computes the same, exact validation figures, and checkpoint
    choice and early stopping agree across ranks without gathering predictions."""
    from torch.utils.data import DataLoader, default_collate
    from torch.utils.data.distributed import DistributedSampler

    from cnnapps.datasets.training import readable_only
    from cnnapps.datasets.transforms import seed_augmentation

    args = loader_args(config, device, collate_fn)
    if not args["num_workers"]:  # augmented in this process: seeded from --seed (workers seed their own copies)
        seed_augmentation(getattr(train_set, "transform", None), config.seed)
    train = DataLoader(train_set, **({"sampler": sampler} if sampler is not None else {"shuffle": True}), **args)
    whole = DistributedSampler(val_set, num_replicas=1, rank=0, shuffle=False)
    val_set.substitute = False  # an unreadable validation image is left out, not scored twice in another's place
    val_args = {**args, "collate_fn": readable_only(collate_fn or default_collate)}
    return train, DataLoader(val_set, sampler=whole, **val_args)


@dataclass
class Plan:
    """A task's part of a training run: the module to fit, its data, and how epochs are judged."""

    module: Any  # a TaskModule
    train_loader: Any
    val_loader: Any
    describe: str  # the first line the run logs
    best: str  # the history value the best epoch maximises (also what the best checkpoint keeps)
    train_images: int
    val_images: int
    curves: tuple[str, ...] = ()  # history values drawn in curves.png beside the losses
    logged: str | None = None  # the name the module logs ``best`` under, when it differs
    stop_on: tuple[str, str] = ("val_loss", "min")  # early stopping: a logged value and "min" or "max"
    extra: dict[str, Any] = field(default_factory=dict)  # anything the task's finish step needs
    header: tuple[str, ...] = ()  # more lines the run logs when it starts (training options in force)


@dataclass
class FitResult:
    module: Any
    best_path: str
    seconds: float
    precision: str
    global_rank: int = 0  # in a distributed run, only rank 0 writes the run folder
    facts: dict[str, Any] = field(default_factory=dict)  # how the run ran, for metrics.json
    loggers: list[Any] = field(default_factory=list)  # the Lightning loggers the run wrote to

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.module.history


def run_training(
    config: TrainConfig,
    prepare: Callable[[Any, torch.device], Plan],
    finish: Callable[[Any, Plan, FitResult, torch.device], dict[str, Any]],
) -> dict[str, Any]:
    """The one training skeleton: check the run folder, ``prepare`` the task's plan, fit, then ``finish`` (the
    task saves its model file and returns its metrics) and write metrics.json and curves.png.

    Returns the metrics written to metrics.json (``{"global_rank": n}`` on the other processes of a distributed
    run, which write nothing)."""
    from cnnapps.runtime import select_device

    started = time.perf_counter()
    config.validate()
    try:
        check_launched_processes(config)
    except ConfigError:
        from cnnapps.datasets.transforms import process_rank

        if process_rank():  # every process meets this one: rank 0 says it
            leave_it_to_rank_zero(os.getppid(), said_by_all=True)
        raise
    check_run_folder(config)
    if config.resume:  # a setting that changes what is trained is the run's own (load_config took the rest from it)
        config = resumed_settings(config)
        done = finished_results(config)
        if done is not None:  # nothing to train: the run folder stays as it is
            return done
    L.seed_everything(config.seed, verbose=False)
    device = select_device(config.device)
    from cnnapps.datasets.folders import SPLIT_FILE, SplitRecord, recording_split

    with recording_split(SplitRecord(Path(config.out) / SPLIT_FILE, config.resume)) as split:  # kept when resumed
        plan = prepare(config, device)
    prepared = time.perf_counter()
    with _tracking_uri_kept():
        return _fitted_run(config, plan, device, split, finish, started, prepared)


@contextmanager
def _tracking_uri_kept() -> Iterator[None]:
    """$MLFLOW_TRACKING_URI as it was before the block, after it: MLflow sets it to the store a run logs to, and the
    next run of this process (a fold, a trial, a caller's next run) then logged to that store, not its own."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _fitted_run(config: TrainConfig, plan: Plan, device: torch.device, split: Any, finish: Callable[..., Any],
                started: float, prepared: float) -> dict[str, Any]:  # fmt: skip
    """The rest of :func:`run_training`: fit, ``finish``, then metrics.json, curves.png and the trackers' files."""
    result = fit(config, plan, device, split)
    if result.global_rank:
        return {"global_rank": result.global_rank}
    history = result.history
    best = best_epoch(history, plan.best)
    fitted = time.perf_counter()
    finished = finish(config, plan, result, device)
    # where a run's time went besides its epochs (what the epochs cost is in history and train_seconds)
    timing = {
        "prepare_seconds": round(prepared - started, 2),
        "epoch_seconds": round(result.facts.get("epoch_seconds", 0.0), 2),
        "fit_other_seconds": round(result.seconds - result.facts.get("epoch_seconds", 0.0), 2),
        "finish_seconds": round(time.perf_counter() - fitted, 2),
    }
    log.debug("timing: %s", timing)
    metrics = {
        **finished,
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "train_images": plan.train_images,
        "val_images": plan.val_images,
        # what chose the best epoch, and its value there (what k-fold summaries and searches compare)
        "selected_by": {"metric": plan.best, "value": best.get(plan.best)},
        **{k: v for k, v in result.facts.items() if k != "epoch_seconds"},
        "timing": timing,
        "history": history,
    }
    out = Path(config.out)
    from cnnapps.files import atomic_write

    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2).encode(), overwrite=True)
    if history and plan.curves:
        from cnnapps.apps.common.plots import plot_curves

        plot_curves(history, out / "curves.png", metrics=plan.curves)
    publish(result.loggers, out, metrics)
    return metrics


def launched_processes() -> int:
    """The processes a launcher started for this run, as Lightning reads them: SLURM's ``srun`` (SLURM_NTASKS),
    ``torchrun`` (WORLD_SIZE); 1 when none did (Lightning then starts ``devices`` x ``num_nodes`` itself)."""
    from cnnapps.datasets.transforms import slurm_launched

    if slurm_launched():
        return int(os.environ["SLURM_NTASKS"])
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        return int(os.environ.get("WORLD_SIZE", 1))
    return 1


def check_launched_processes(config: TrainConfig) -> None:
    """Refuse, in one line and before anything is written, processes started by a launcher that ``devices`` x
    ``num_nodes`` does not account for: each would train the whole run on its own, into the same run folder. A run on
    several machines with no launcher and neither NODE_RANK nor MASTER_ADDR set is refused too: Lightning would start
    this machine's processes as node 0 and wait for the others (up to its 30-minute timeout) without a word."""
    started = launched_processes()
    if config.num_nodes > 1 and started == 1 and not ({"NODE_RANK", "MASTER_ADDR"} & os.environ.keys()):
        raise ConfigError(f"--num-nodes {config.num_nodes}: start each machine's processes with torchrun or srun (or "
                          f"set NODE_RANK and MASTER_ADDR on each)")  # fmt: skip
    if started > 1 and started != config.world_size:
        variable = "SLURM_NTASKS" if "SLURM_NTASKS" in os.environ else "WORLD_SIZE"
        raise ConfigError(f"devices: the launcher started {started} processes ({variable}={started}) but devices x "
                          f"num_nodes is {config.devices} x {config.num_nodes}; pass --devices (and --num-nodes) so "
                          f"that they make {started}")  # fmt: skip


#: how long a process other than rank 0 that failed waits for rank 0 to say why and end the run (seconds)
RANK_ZERO_GRACE = 10.0


def leave_it_to_rank_zero(parent: int, grace: float | None = None, said_by_all: bool = False) -> None:
    """On a process other than rank 0 that failed: an error every process meets is rank 0's to report. Rank 0 says it
    and ends, and so does its launcher (Lightning's, whose children this process is among; ``torchrun`` ends the
    other processes itself): this process then leaves without a word. When ``grace`` seconds pass without that (a
    launcher such as ``srun`` leaves the other tasks running), it leaves without a word too if the error is one
    every process meets (``said_by_all``); else it returns, for the caller to report the error as its own."""
    deadline = time.monotonic() + (RANK_ZERO_GRACE if grace is None else grace)
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            raise SystemExit(1)
        time.sleep(0.1)
    if said_by_all:
        raise SystemExit(1)


def make_loggers(config: TrainConfig, out: Path, version: int) -> list[Any]:
    """The Lightning loggers ``config.logger`` names. CSV and TensorBoard write to OUT/logs/version_N; MLflow to
    ``mlflow_uri`` or $MLFLOW_TRACKING_URI, else a file store in OUT/mlruns; W&B to OUT/wandb, offline unless an
    API key is set."""
    loggers: list[Any] = []
    names = config.loggers
    if "csv" in names:
        from lightning.pytorch.loggers import CSVLogger

        loggers.append(CSVLogger(out, name="logs", version=version))
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="logs", version=version, default_hp_metric=False))
    experiment = config.experiment or f"cnnapps-{config.task_name}"
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 keeps its file store only on request; a database would cost seconds per run
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (out / "mlruns").resolve().as_uri()
        logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)  # "... Creating it."
        loggers.append(MLFlowLogger(experiment_name=experiment, run_name=f"{out.name}-v{version}", tracking_uri=uri))
    if "wandb" in names:
        from lightning.pytorch.loggers import WandbLogger

        offline = not _wandb_key() and os.environ.get("WANDB_MODE") != "online"
        loggers.append(WandbLogger(project=experiment, name=out.name, save_dir=str(out), offline=offline))
    return loggers


def _wandb_key() -> bool:
    """Whether a W&B API key is at hand ($WANDB_API_KEY or a ~/.netrc entry from ``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def log_params(loggers: list[Any], config: TrainConfig) -> None:
    """The run's settings as the loggers' hyper-parameters (MLflow params, TensorBoard hparams, hparams.yaml)."""
    params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(config).items()}
    for logger in loggers:
        logger.log_hyperparams(params)


def tracker_name(key: str) -> str:
    """A metric's name as every tracker takes it (MLflow takes no "@", as in val_recall@1)."""
    return key.replace("@", "_at_")


def publish(loggers: list[Any], out: Path, metrics: dict[str, Any]) -> None:
    """After the run: the final scores, the model file and metrics.json to the trackers that keep artifacts."""
    scores = {f"final_{tracker_name(k)}": float(v) for k, v in metrics.items()
              if k.startswith("val_") and isinstance(v, float)}  # fmt: skip
    files = [path for path in (out / "model.safetensors", out / "metrics.json") if path.is_file()]
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "MLFlowLogger":
            client = logger.experiment
            for key, value in scores.items():
                client.log_metric(logger.run_id, key, value)
            for path in files:
                client.log_artifact(logger.run_id, str(path))
            name = client.get_experiment(logger.experiment_id).name
            log.info("mlflow: run %s of experiment %s in %s", logger.run_id, name, client.tracking_uri)
        elif kind == "WandbLogger":
            import wandb

            run = logger.experiment
            run.summary.update(scores)
            for path in files:
                run.save(str(path), base_path=str(out), policy="now")
            wandb.finish()  # the next run in this process (a fold, a trial) starts its own


def epoch_rank(entry: dict[str, Any], key: str) -> tuple[float, float]:
    """How two epochs compare: by ``key`` (higher is better), a tie by the validation loss of the weights ``key``
    scored (``val_select_loss`` where the run chose between two sets of weights, else ``val_loss``; lower is better).
    A value that is missing or not finite counts as the worst."""

    def finite(value: Any) -> float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else None

    score, loss = finite(entry.get(key)), finite(entry.get("val_select_loss", entry.get("val_loss")))
    return (-math.inf if score is None else score, -math.inf if loss is None else -loss)


def best_epoch(history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The history entry of the best epoch by :func:`epoch_rank`, the earliest of equals: the epoch whose weights the
    best checkpoint holds, the model file is saved from and metrics.json reports ({} for no epoch)."""
    return max(history, key=lambda entry: epoch_rank(entry, key)) if history else {}


def newest_is_best(history: list[dict[str, Any]], key: str) -> bool:
    """Whether the last epoch of ``history`` is better than every earlier one (:func:`best_epoch`)."""
    return bool(history) and best_epoch(history, key) is history[-1]


def best_epoch_values(history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The validation values of the best epoch by ``key`` (:func:`best_epoch`: what the best checkpoint holds)."""
    return {k: v for k, v in best_epoch(history, key).items() if k.startswith("val_")}


class _BestCheckpoint(ModelCheckpoint):
    """OUT/checkpoints/best.ckpt: saved at each epoch better than every earlier one by :func:`best_epoch` (the
    plan's value, a tie broken by the validation loss). Lightning's own rule kept the first of equal values: a
    60-epoch run kept epoch 4 (val_loss 0.34) over epoch 60 (the same top-1, val_loss 0.017). Every process decides
    alike: each holds the same history."""

    def __init__(self, dirpath: Path, monitor: str, key: str) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode="max")
        self.key = key

    @property
    def state_key(self) -> str:  # ModelCheckpoint's: a run saved before this class resumes with its best kept
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        history = getattr(trainer.lightning_module, "history", None) or []
        this_epoch = bool(history) and history[-1].get("epoch") == trainer.current_epoch + 1
        decision = current is not None and this_epoch and newest_is_best(history, self.key)
        return trainer.strategy.reduce_boolean_decision(decision)  # as Lightning's: all processes save, or none


def fit(config: TrainConfig, plan: Plan, device: torch.device, split: Any = None) -> FitResult:
    """Train with checkpoints (best on the plan's value, and last), optional early stopping (on ``plan.stop_on``
    after ``config.patience`` epochs without improvement), the loggers ``config.logger`` names (:func:`make_loggers`).

    With ``config.devices``/``num_nodes`` above 1 this is Lightning's DDP: one process per device, each
    training on its shard of every global batch, gradients averaged; launched by Lightning itself, by
    ``torchrun`` or by SLURM's ``srun`` (Lightning reads their environment)."""
    from lightning.pytorch.callbacks import EarlyStopping

    module, train_loader, val_loader = plan.module, plan.train_loader, plan.val_loader
    monitor = plan.logged or plan.best
    # lightning sets its own loggers to INFO when imported; its banners and tips say nothing to our users
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)  # "Initializing distributed: ..." per rank
    out = Path(config.out)
    last = out / "checkpoints" / "last.ckpt"
    precision = config.precision if config.precision != "auto" else ("16-mixed" if device.type == "cuda" else "32-true")
    checkpoint = _BestCheckpoint(out / "checkpoints", monitor, plan.best)
    # last.ckpt after every epoch, for --resume (ModelCheckpoint's own save_last follows only improving epochs)
    last_epoch = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", enable_version_counter=False)
    # a run that stopped early is finished, as one that trained all its epochs is: a --resume trains nothing more
    saved = read_resume_checkpoint(last) if config.resume else None
    stopped = stopped_early_at(saved) if saved is not None else None
    epochs = stopped or config.epochs
    trained = int(saved.get("epoch", -1)) + 1 if saved is not None else 0  # the epochs the checkpoint has done
    clock = _Clock(config.compile)
    seed = reseed_session(config, train_loader, trained)
    callbacks: list[Any] = [_RankSeed(seed), _SomethingValidated(), clock, checkpoint, last_epoch,
                            _ConfigFile(config, out / "config.yaml", split)]  # fmt: skip
    bar = config.progress and sys.stderr.isatty()  # a bar on a terminal; in a log, a line per epoch instead
    callbacks.append(epoch_bar() if bar else _EpochLines(config.epochs))
    if config.patience:
        callbacks.append(EarlyStopping(monitor=plan.stop_on[0], patience=config.patience, mode=plan.stop_on[1]))
    callbacks += [factory(plan) for factory in _EXTRA_CALLBACKS.get()]
    if config.sync_batchnorm and config.world_size > 1 and device.type != "cuda":
        raise CnnappsError("sync_batchnorm: torch's SyncBatchNorm runs on GPUs only; train on cuda or leave it off")
    out.mkdir(parents=True, exist_ok=True)
    version = next(n for n in range(10_000) if not (out / "logs" / f"version_{n}").exists())
    loggers = make_loggers(config, out, version)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=ddp_strategy(config),
        sync_batchnorm=config.sync_batchnorm,
        precision=precision,
        callbacks=callbacks,
        # logs/version_N: each run or resumption gets its own folder (CSV and TensorBoard files together),
        # so no earlier log is replaced; MLflow and W&B runs beside them as asked
        logger=loggers or False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(train_loader) // config.world_size)),
        num_sanity_val_steps=0,
        accumulate_grad_batches=config.accumulate,
    )
    _sigterm_without_broadcast(trainer)
    if trainer.is_global_zero:
        processes = f", {trainer.world_size} processes" if trainer.world_size > 1 else ""
        log.info("%s; %s%s, %s, %s", plan.describe, device, processes, precision, plural(config.epochs, "epoch"))
        log.info("%s", config.scaling_report())
        if (crowded := crowded_cores(config, device)) is not None:
            log.warning("%s", crowded)
        for line in plan.header:
            log.info("%s", line)
        if stopped:
            log.info("%s", finished_line(out, stopped, trained))
        elif saved is not None and (before := lr_trained_at(saved, config.learning_rate)) is not None:
            log.info("%s: trained at lr %g, resumed at lr %g (%s scaling for %s): the optimiser's and schedule's "
                     "rates are scaled by %g", out, before, config.learning_rate, config.lr_scaling,
                     plural(config.world_size, "process"), config.learning_rate / before)  # fmt: skip
        if config.resume and trained >= epochs and not stopped:
            log.info("%s", finished_line(out, None, epochs))
        log_params(loggers, config)
    if config.compile:
        for part in module.compile_targets():
            part.compile(**module.compile_options())
    started = module.session_started = time.perf_counter()
    parent = os.getppid()
    with warnings.catch_warnings():
        for message in _EXPECTED_LIGHTNING_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if config.resume else None)
        except SystemExit:  # how Lightning ends a run a signal stopped: a SIGTERMException, or exit 1 after Ctrl-C
            if trainer.interrupted:
                raise _stopped(trainer, out, config.epochs) from None
            raise
        except Exception as exc:
            # a SIGTERM to the whole process group (a scheduler's time limit) ends the loader's workers too, and
            # their end is what reaches here first
            if trainer.received_sigterm or "killed by signal: Terminated" in str(exc):
                raise _stopped(trainer, out, config.epochs, sigterm=True) from None
            # torch's many-line list of every tensor, or the optimiser's groups of another set of trained parameters
            if (
                config.resume
                and isinstance(exc, (RuntimeError, ValueError))
                and ("loading state_dict" in str(exc) or "parameter group" in str(exc))
            ):
                raise CnnappsError(
                    f"{last}: --resume with settings of another model (the checkpoint's tensors do not fit); "
                    f"resume with the settings the run was started with: {out / 'config.yaml'}"
                ) from None
            if trainer.global_rank:  # said once, by rank 0
                leave_it_to_rank_zero(parent)
            raise
    seconds = time.perf_counter() - started
    best = checkpoint.best_model_path
    if trainer.is_global_zero and best and Path(best).is_file():
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    facts = {
        # the whole run's, as optimizer_steps and the history are: a resumed run adds this session's to its checkpoint's
        "train_seconds": round(module.seconds_before + seconds, 2),
        "device": str(device),
        "precision": precision,
        "processes": trainer.world_size,
        "global_batch_size": config.batch_size * trainer.world_size * config.accumulate,
        "accumulate": config.accumulate,
        "optimizer_steps": trainer.global_step,
        "lr": config.learning_rate,
        "epoch_seconds": clock.epoch_seconds,
    }
    if config.compile:
        facts["compile_seconds"] = round(clock.compile_seconds, 2)
    return FitResult(module, best, seconds, precision, trainer.global_rank, facts, loggers)


def crowded_cores(config: TrainConfig, device: torch.device) -> str | None:
    """A warning when a CPU run starts more processes on this machine than it has cores: they share the cores, and
    every step waits for the slowest (nothing else says why such a run is slower than one process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.type != "cpu" or config.devices <= cores:
        return None
    return (f"--devices {config.devices} on a CPU with {plural(cores, 'core')}: its processes share the cores, "
            f"so each step waits on the others; --devices {cores} or fewer, or GPUs, train faster")  # fmt: skip


def reseed_session(config: TrainConfig, train_loader: Any, trained: int) -> int:
    """The seed of this session's random draws: ``--seed`` in a fresh run; ``--seed`` plus the epochs the checkpoint
    has trained in a resumed one, whose draws (the training order, the workers' and this process's augmentation,
    dropout) are reseeded with it. Every session starts from ``--seed`` (the split and the initial weights need it),
    so without this a resumed run's first epoch repeated epoch 1's order and augmented pixels. The split and the
    initial weights are made by then; a distributed run's shuffle is already its own per epoch (seed and epoch)."""
    if not trained:
        return config.seed
    import random

    import numpy as np

    from cnnapps.datasets.transforms import seed_augmentation

    seed = (config.seed + trained) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not getattr(train_loader, "num_workers", 0):  # augmented here (workers seed theirs from torch's draws)
        seed_augmentation(getattr(getattr(train_loader, "dataset", None), "transform", None), seed)
    return seed


def _sigterm_without_broadcast(trainer: L.Trainer) -> None:
    """Lightning's SIGTERM handler, without its broadcast: it sent the signal to the other processes with a
    collective call from inside the handler, which runs between any two of the main thread's Python steps, in the
    middle of the training step's own collectives too; two processes on the CPU then waited on each other for good
    (Lightning-AI/pytorch-lightning#20806). The training loop broadcasts rank 0's flag itself before each step; the
    handler sets the flag and passes the signal on to the processes it launched, as Lightning's does."""
    connector = trainer._signal_connector

    def notify(signum: int, frame: Any) -> None:
        first = not connector.received_sigterm
        connector.received_sigterm = True
        if first and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)

    connector._sigterm_notifier_fn = notify


def _stopped(trainer: L.Trainer, out: Path, epochs: int, sigterm: bool = False) -> BaseException:
    """What a run a signal stopped says (rank 0; the other processes say nothing): where its last checkpoint is.
    ``sigterm``: the signal was SIGTERM, whether or not the trainer's handler saw it."""
    from cnnapps.errors import Interrupted

    name = "SIGTERM" if sigterm or trainer.received_sigterm else "SIGINT"
    if trainer.global_rank:
        return Interrupted("", name)
    last, done = out / "checkpoints" / "last.ckpt", trainer.current_epoch  # the epochs finished, resumed ones too
    if not last.is_file():
        said = "before its first epoch had finished: nothing to resume"
    elif done >= epochs:  # stopped as the last epoch ended, before the model file was written
        said = f"after its last epoch ({done} of {epochs}): the same command with --resume writes its model"
    else:
        said = f"after {done} of {epochs} epochs, which {last} keeps: continue with the same command and --resume"
    return Interrupted(f"{out}: training stopped by {name} {said}", name)


def finished_results(config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a finished run that ``--resume`` would train no further (all its epochs trained, or stopped
    early), read from its metrics.json, or None when it has more to train or its results were never written (a run
    stopped while finishing: resuming writes them). Marked ``unchanged``; other processes get ``global_rank``."""
    from cnnapps.datasets.transforms import process_rank

    out = Path(config.out)
    last, written = out / "checkpoints" / "last.ckpt", out / "metrics.json"
    if not (last.is_file() and written.is_file() and (out / "model.safetensors").is_file()):
        return None
    saved = read_resume_checkpoint(last)
    stopped = stopped_early_at(saved)
    trained = int(saved.get("epoch", -1)) + 1
    if not stopped and trained < config.epochs:
        return None
    try:
        metrics = json.loads(written.read_text())
    except (OSError, ValueError):
        return None  # damaged: resuming writes it anew
    if rank := process_rank():
        return {"global_rank": rank}
    log.info("%s; its files stand as they are", finished_line(out, stopped, trained))
    return {**metrics, "unchanged": True}


def finished_line(out: Path, stopped: int | None, trained: int) -> str:
    """What a --resume of a finished run says: it stopped early at epoch ``stopped``, or trained its ``trained``."""
    if stopped:
        return f"{out}: the run stopped early at epoch {stopped} (patience); it is finished, nothing more to train"
    return (f"{out}: the run has trained its {plural(trained, 'epoch')}; it is finished, nothing more to train (a "
            "larger --epochs trains on)")  # fmt: skip


def read_resume_checkpoint(last: Path) -> dict[str, Any]:
    """``last`` (OUT/checkpoints/last.ckpt) as --resume reads it, or a one-line error when it cannot be read."""
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a truncated or overwritten file: torch's zip reader, unpickler or the OS says why
        raise CnnappsError(f"{last} is damaged ({in_one_line(exc)}); cannot resume") from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise CnnappsError(f"{last} is damaged (not a training checkpoint); cannot resume")
    return saved


def stopped_early_at(saved: dict[str, Any]) -> int | None:
    """The epoch (from 1) at which the run that saved this checkpoint stopped early (``patience``), or None."""
    for key, state in (saved.get("callbacks") or {}).items():
        if key.startswith("EarlyStopping") and (state.get("stopping_reason") or state.get("stopped_epoch", 0) > 0):
            return int(saved.get("epoch", state.get("stopped_epoch", 0))) + 1
    return None


def point_into(saved: dict[str, Any], dirpath: str) -> None:
    """Make the checkpoint callbacks' state in ``saved`` name files in ``dirpath`` where it names another folder
    (a run folder moved or copied since it was saved), so the resumed run keeps its best checkpoint and score and
    replaces only files of its own folder."""
    for key, state in (saved.get("callbacks") or {}).items():
        old = state.get("dirpath") if key.startswith("ModelCheckpoint") else None
        if not old or old == dirpath:
            continue

        def here(path: str, old: str = old) -> str:
            return str(Path(dirpath) / Path(path).name) if path and Path(path).parent == Path(old) else path

        state["dirpath"] = dirpath
        for name in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if name in state:
                state[name] = here(state[name])
        if state.get("best_k_models"):
            state["best_k_models"] = {here(path): score for path, score in state["best_k_models"].items()}


def ddp_strategy(config: TrainConfig) -> Any:
    """The Lightning strategy for ``config.strategy``: the DDP ones with ``gradient_as_bucket_view``.

    Each gradient is then a view into DDP's communication bucket instead of a tensor DDP copies into it every
    step (less memory, one copy fewer), and it keeps the bucket's strides: channels_last models otherwise made
    DDP warn "grad strides do not match bucket view strides" and copy such gradients each step."""
    names = {
        "ddp": {},
        "ddp_find_unused_parameters_true": {"find_unused_parameters": True},
    }
    # "auto" over several processes is what Lightning would make "ddp"
    name = "ddp" if config.strategy == "auto" and config.world_size > 1 else config.strategy
    if name not in names:
        return config.strategy
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(gradient_as_bucket_view=True, **names[name])


def epoch_bar() -> Any:
    """Lightning's progress bar (rich's where rich is installed, as Lightning itself chooses), counting epochs
    from 1 as every other line of ours does: "Epoch 8/8" for the last of 8, not Lightning's "Epoch 7/7"."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    class RichEpochBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return epoch_description(current_epoch, self.trainer.max_epochs, len(self.validation_description))

    class TQDMEpochBar(TQDMProgressBar):
        def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
            super().on_train_epoch_start(trainer, *args)
            self.train_progress_bar.set_description(epoch_description(trainer.current_epoch, trainer.max_epochs))

    return RichEpochBar() if _RICH_AVAILABLE else TQDMEpochBar()


def epoch_description(current_epoch: int, max_epochs: int | None, width: int = 0) -> str:
    """A progress bar's label for Lightning's 0-based ``current_epoch``: "Epoch 8/8" for the last of 8 (padded to
    ``width``, so the label does not flicker against the validation bar's)."""
    text = f"Epoch {current_epoch + 1}" + (f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else "")
    return f"{text:{width}}" if width > len(text) else text


class _EpochLines(L.Callback):
    """Where a progress bar cannot show (a log file, a pipe, --json): one line per epoch with its figures, and a
    line every ``heartbeat`` seconds within a long epoch, on the ``cnnapps`` logger (stderr on the command line)."""

    def __init__(self, epochs: int, heartbeat: float = 60.0) -> None:
        self.epochs, self.heartbeat = epochs, heartbeat
        self._started = self._said = 0.0

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._started = self._said = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if trainer.is_global_zero and now - self._said >= self.heartbeat:
            self._said = now
            steps = trainer.num_training_batches
            log.info("epoch %d of %d: step %d of %s (%.0f s)", trainer.current_epoch + 1, self.epochs, batch_idx + 1,
                     steps, now - self._started)  # fmt: skip

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:  # after the epoch's validation
        if not trainer.is_global_zero or not getattr(module, "history", None):
            return
        figures = ", ".join(f"{k} {v:.4g}" for k, v in module.history[-1].items() if k != "epoch" and
                            isinstance(v, float))  # fmt: skip
        log.info("epoch %d of %d: %s (%.0f s)", module.history[-1]["epoch"], self.epochs, figures,
                 time.perf_counter() - self._started)  # fmt: skip


class _RankSeed(L.Callback):
    """In a distributed run, each process other than rank 0 draws random numbers of its own once the process group is
    up (colour jitter on the device, dropout masks, torchvision's augmentation without workers, its workers' seeds):
    seeded from ``seed`` and its rank, as albumentations is (:func:`~cnnapps.datasets.transforms.seed_augmentation`).
    Rank 0, like a single process, goes on with the draws seeded at the start; Lightning's shuffling of each
    process's share keeps its own seed, the same on every rank."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        if trainer.global_rank:
            import random

            import numpy as np

            seed = (self.seed + 1_000_003 * trainer.global_rank) % 2**32
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)


class _ConfigFile(L.Callback):
    """Writes the run's settings to ``path`` once training starts: after a --resume has loaded its checkpoint, so
    a resumption with settings the checkpoint does not fit fails with the run's own settings still in the file. A
    --val-split run's split (a :class:`~cnnapps.datasets.folders.SplitRecord`) is written beside them."""

    def __init__(self, config: Any, path: Path, split: Any = None) -> None:
        self.config, self.path, self.split = config, path, split

    def on_train_start(self, trainer: Any, module: Any) -> None:
        if trainer.is_global_zero:
            write_config(self.config, self.path)
            if self.split is not None:
                self.split.write()


class _SomethingValidated(L.Callback):
    """A validation epoch of which no image could be read is the validation set's one-line error (its batches are
    empty, :func:`make_loaders`), before the module scores nothing and the best checkpoint finds no score."""

    def __init__(self) -> None:
        self.batches = 0

    def on_validation_epoch_start(self, trainer: Any, module: Any) -> None:
        self.batches = 0

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, *args: Any) -> None:
        self.batches += batch is not None

    def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
        if self.batches or trainer.sanity_checking:
            return
        dataset = getattr(trainer.val_dataloaders, "dataset", None)
        nothing = getattr(dataset, "nothing_readable", None)
        raise nothing() if nothing is not None else CnnappsError("validation: no image could be read")


class _Clock(L.Callback):
    """Times the epochs (training and validation) and, with ``compile``, the first training and validation steps,
    which include compiling: the compile time is logged once (first step minus the next one)."""

    def __init__(self, compile: bool) -> None:
        self.compile = compile
        self.epoch_seconds = 0.0
        self.compile_seconds = 0.0
        self._epoch_start = 0.0
        self._steps: dict[str, list[float]] = {"train": [], "val": []}
        self._step_start = 0.0

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.epoch_seconds += time.perf_counter() - self._epoch_start

    def _start(self) -> None:
        self._step_start = time.perf_counter()

    def _end(self, kind: str, trainer: Any) -> None:
        steps = self._steps[kind]
        if not self.compile or len(steps) >= 2:  # only the first two steps of each kind are timed
            return
        if torch.cuda.is_available():  # the step's kernels, not just their launches
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - self._step_start)
        if len(steps) == 2:
            seconds = max(0.0, steps[0] - steps[1])
            self.compile_seconds += seconds
            if trainer.is_global_zero:
                what = "training" if kind == "train" else "validation"
                log.info("torch.compile: %s steps compiled in %.1f s (first step %.1f s, next %.2f s)",
                         what, seconds, steps[0], steps[1])  # fmt: skip

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self._start()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._end("train", trainer)

    def on_validation_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:  # fmt: skip
        self._start()

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:  # fmt: skip
        self._end("val", trainer)


#: the key of a training checkpoint that holds the seconds its run has trained up to it, over every session
SECONDS_KEY = "cnnapps_train_seconds"

#: the key of a training checkpoint that holds the learning rate its run trained at (scaled for its processes)
LR_KEY = "cnnapps_lr"


def lr_trained_at(checkpoint: dict[str, Any], lr: float) -> float | None:
    """The learning rate a checkpoint's run trained at, when it is not ``lr`` (else None, as for a checkpoint from
    before the rate was kept in it)."""
    saved = checkpoint.get(LR_KEY)
    if not isinstance(saved, (int, float)) or saved <= 0 or math.isclose(saved, lr, rel_tol=1e-9):
        return None
    return float(saved)


def rescale_lrs(checkpoint: dict[str, Any], lr: float) -> float | None:
    """A run resumed at learning rate ``lr`` where its checkpoint trained at another (``--lr-scaling`` on another
    number of processes): every rate its optimiser and schedule hold (group rates, the schedule's base and last
    rates) is scaled by ``lr`` over the checkpoint's, so the run trains at the rate it reports. Returns the
    checkpoint's rate when it differed (None: the same, or a checkpoint from before the rate was kept in it)."""
    saved = lr_trained_at(checkpoint, lr)
    if saved is None:
        return None
    ratio = lr / saved
    for optimizer in checkpoint.get("optimizer_states") or []:
        for group in optimizer.get("param_groups", []):
            for key in ("lr", "initial_lr"):
                if isinstance(group.get(key), (int, float)):
                    group[key] *= ratio
    for state in checkpoint.get("lr_schedulers") or []:
        for key in ("base_lrs", "_last_lr"):
            if isinstance(state.get(key), list):
                state[key] = [value * ratio for value in state[key]]
    return float(saved)


def replan_schedule(checkpoint: dict[str, Any], epochs: int) -> None:
    """A resumed run given more (or fewer) epochs than its checkpoint was planned for: its cosine or step schedule
    (saved with the old length: the added epochs trained at lr 0, or back at the full lr) is made the one a run of
    ``epochs`` would be at this point, lrs included; other schedules, and the same length, are left as they are."""
    optimizers = checkpoint.get("optimizer_states") or []
    for state in checkpoint.get("lr_schedulers") or []:
        t, bases = int(state.get("last_epoch", 0)), list(state.get("base_lrs") or [])
        if "T_max" in state and state["T_max"] != max(1, epochs):  # CosineAnnealingLR
            state["T_max"], low = max(1, epochs), float(state.get("eta_min", 0.0))
            lrs = [low + (base - low) * (1 + math.cos(math.pi * t / state["T_max"])) / 2 for base in bases]
        elif "step_size" in state and "gamma" in state and state["step_size"] != max(1, epochs // 3):  # StepLR
            state["step_size"] = max(1, epochs // 3)
            lrs = [base * state["gamma"] ** (t // state["step_size"]) for base in bases]
        else:
            continue
        state["_last_lr"] = lrs
        for optimizer in optimizers[:1]:
            for group, lr in zip(optimizer.get("param_groups", []), lrs, strict=False):
                group["lr"] = lr


class TaskModule(L.LightningModule):
    """Optimiser and schedule from the config, training-loss averaging, and an epoch history kept in
    checkpoints (so a resumed run's curves cover every epoch). Subclasses add steps and metrics."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.lr, self.optimizer_name, self.momentum = config.learning_rate, config.optimizer, config.momentum
        self.weight_decay, self.schedule, self.epochs = config.weight_decay, config.schedule, config.epochs
        self.history: list[dict[str, float]] = []
        self._loss_sum: torch.Tensor | None = None  # on the training device: no host sync per step
        self._loss_images = 0  # the images those losses were of
        self._batch_images = 1
        self._epoch_lr = float("nan")
        # uint8 batches from the workers become the model's input here, on the device (augment_on_device)
        self.batch_transform: torch.nn.Module | None = None
        self._grads_in_buckets = False
        self._past_stages: list[torch.nn.Parameter] = []  # what setup stopped training (stage_readers)
        self._logged: set[str] = set()  # the names the task logged itself since the last epoch's record
        # the run's training time: the sessions before this one (kept in its checkpoints), and this one's start
        self.seconds_before = 0.0
        self.session_started = time.perf_counter()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batch_transform is None or batch is None:
            return batch
        return self.transform_batch(batch, train=self.trainer.training)

    def transform_batch(self, batch: Any, train: bool) -> Any:
        """``batch_transform`` on a batch's images: the first element of a tuple batch (tasks whose batches
        are laid out otherwise override this)."""
        images, *rest = batch
        return (self.batch_transform(images, train=train), *rest)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is not None:  # None: not one image of the batch could be read (make_loaders)
            self.validate_batch(batch)

    def validate_batch(self, batch: Any) -> None:
        """One validation batch of images that were read: the task's outputs and metrics."""
        raise NotImplementedError

    def compile_targets(self) -> list[torch.nn.Module]:
        """The parts ``--compile`` compiles in place (their state-dict keys stay the same): the model."""
        return [self.model]

    def compile_options(self) -> dict[str, Any]:
        return {}

    def stage_readers(self) -> list[Any]:
        """The backbones of which the training step reads only the stage maps (``forward_stages``): their layers past
        the last stage are not trained (:meth:`setup`). None here; a task whose heads read only the stages says so."""
        return []

    def setup(self, stage: str) -> None:
        from lightning.pytorch.strategies import DDPStrategy

        trained = [p for p in self.parameters() if p.requires_grad]
        for backbone in self.stage_readers():  # before DDP wraps the model: every trained parameter gets a gradient
            backbone.freeze_past_stages()
        self._past_stages = [p for p in trained if not p.requires_grad]
        strategy = self.trainer.strategy
        kwargs = getattr(strategy, "_ddp_kwargs", {}) if isinstance(strategy, DDPStrategy) else {}
        self._grads_in_buckets = bool(kwargs.get("gradient_as_bucket_view")) and not kwargs.get(
            "find_unused_parameters"
        )
        if self._grads_in_buckets:
            # gradients that exist when DDP wraps the model become views into its buckets there, with the
            # parameters' own strides; zeroed in place each step (optimizer_zero_grad), they stay there
            for p in self.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        optimizer.zero_grad(set_to_none=not self._grads_in_buckets)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Lightning also zeroes gradients before fitting and before each validation: in place, when they are
        DDP's buckets."""
        super().zero_grad(set_to_none=set_to_none and not self._grads_in_buckets)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the batch's images (its first element): what a step's loss is weighted by in the epoch's mean
        first = batch[0] if isinstance(batch, (tuple, list)) and batch else None
        self._batch_images = len(first) if isinstance(first, (torch.Tensor, list, tuple)) else 1

    def track_train_loss(self, loss: torch.Tensor) -> None:
        """Add a step's loss to the epoch's mean (kept on the device; read once per epoch), weighted by the step's
        images, as Lightning's logged epoch ``train_loss`` is."""
        value = loss.detach().float() * self._batch_images
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._loss_images += self._batch_images

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        self._logged.add(name)
        super().log(name, value, *args, **kwargs)

    def record_epoch(self, values: dict[str, float]) -> None:
        """Append this epoch's validation values with the mean training loss and current learning rate, and log
        those of them the task did not log itself, so the experiment trackers get every value of the history."""
        images = max(1, self._loss_images)
        mean = self._loss_sum / images if self._loss_sum is not None else torch.zeros((), device=self.device)
        # each process saw its own shard: the mean over processes (every rank calls this, so the collective
        # matches); the tensor stays on the module's device, which NCCL needs
        train_loss = float(self.trainer.strategy.reduce(mean.to(self.device), reduce_op="mean"))
        entry = {"epoch": self.current_epoch + 1, "train_loss": train_loss, **values, "lr": self._epoch_lr}
        self.history.append(entry)
        for key, value in entry.items():
            name = tracker_name(key)
            if key == "epoch" or name in self._logged or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            # the same on every rank (each validates on the whole set; train_loss is reduced above): sync_dist's
            # mean keeps it so, as Lightning asks of a value logged per epoch in a distributed run
            super().log(name, float(value), sync_dist=True)
        self._loss_sum, self._loss_images = None, 0
        self._logged = set()

    def on_train_epoch_start(self) -> None:
        # the lr this epoch trains at: by validation an epoch's scheduler (cosine, step) has stepped to the next one's
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def parameter_groups(self) -> Any:
        """What the optimiser updates: the trainable parameters (subclasses may give groups with own lrs)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.parameter_groups()
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule == "cosine":
            return {
                "optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.epochs)),
            }
        if self.schedule == "step":
            step = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, self.epochs // 3), gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": step}
        if self.schedule == "plateau":  # the lecture's recipe: divide by 10 when validation stops improving
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cnnapps_history"] = list(self.history)
        checkpoint[LR_KEY] = self.lr
        checkpoint[SECONDS_KEY] = self.seconds_before + time.perf_counter() - self.session_started

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("cnnapps_history", []))
        before = checkpoint.get(SECONDS_KEY)  # absent in checkpoints from before it was kept: this session alone
        self.seconds_before = float(before) if isinstance(before, (int, float)) and before >= 0 else 0.0
        groups = (checkpoint.get("optimizer_states") or [{}])[0].get("param_groups", [])
        saved = sum(len(group.get("params", ())) for group in groups)
        if self._past_stages and saved == sum(p.requires_grad for p in self.parameters()) + len(self._past_stages):
            for p in self._past_stages:  # a checkpoint from before they stopped training: its optimiser holds them
                p.requires_grad_(True)
        rescale_lrs(checkpoint, self.lr)  # before the schedule is replanned from its base rates
        replan_schedule(checkpoint, self.epochs)
        if self.trainer.checkpoint_callback is not None:  # read before the callbacks restore their state from it
            point_into(checkpoint, str(self.trainer.checkpoint_callback.dirpath))
