"""Training and model configuration: plain dataclasses, saved with every checkpoint and ONNX file.

No torch here: the inference path reads these too. Presets are dictionaries of overrides applied
on top of the defaults; every field can be overridden again by its own command-line flag.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sgpt_cli.errors import UsageError


# the longest context window sgpt trains, exports or opens: a window's attention costs T^2 per head, and
# at 65536 one window is already ~17 GB of float32 scores per head; a larger claim is a damaged file
MAX_BLOCK_SIZE = 1 << 16
# the largest shapes sgpt builds: checked before any model is (a checkpoint claiming n_layer 10**6 would
# take minutes to build even on PyTorch's meta device, one claiming n_embd 2**40 overflows its size
# arithmetic). Far past any character model: GPT-3 is 96 layers of 12,288; a character vocabulary holds
# at most every Unicode code point
MAX_LAYERS = 1024
MAX_EMBD = 1 << 16
MAX_VOCAB = 0x110000


def heads_text(n_head: int, n_kv_head: int) -> str:
    """'6 heads', or '6 heads (2 key/value)' for grouped-query attention: how reports show a model's heads."""
    return f"{n_head} heads" + (f" ({n_kv_head} key/value)" if n_kv_head != n_head else "")


MLP_ACTIVATIONS = ("gelu", "relu2")


@dataclass(frozen=True)
class ModelConfig:
    """The transformer's shape: everything needed to rebuild the network from a state dict."""

    vocab_size: int = 65  # tiny-shakespeare's 65 characters; replaced by the real vocabulary's size
    block_size: int = 256  # context window in characters (nanoGPT's shakespeare_char)
    n_layer: int = 6  # depth of nanoGPT's shakespeare_char model
    n_head: int = 6  # 64-wide heads at n_embd 384, the width flash attention likes
    n_embd: int = 384  # residual width of nanoGPT's shakespeare_char model
    dropout: float = 0.0  # regularisation; 0 is best per second when data is not repeated often
    rope_base: float = 10000.0  # rotary frequency base (RoFormer); ample for windows of a few hundred
    # key/value heads (grouped-query attention): n_head / n_kv_head query heads share each. A decode
    # step of many rows is bound by reading the cache, which is n_kv_head / n_head the size. 0 = n_head
    n_kv_head: int = 0
    # the defaults below are the original model's, so a file written before a field existed reads as it was
    mlp: str = "gelu"  # the MLP's activation: "gelu" (GPT-2) or "relu2" (ReLU squared, modded-nanogpt)
    tied_head: bool = True  # the output head shares the embedding's weights; False: its own, zero at the start
    qk_norm: bool = False  # queries and keys RMS-normalised per head before rotation (steadier at high rates)
    logit_cap: float = 0.0  # logits squashed smoothly into (-cap, cap) by cap * tanh(x / cap); 0 = none

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def kv_width(self) -> int:
        """Features per position in one layer's key (or value) cache."""
        return self.kv_heads * self.head_dim

    def validate(self) -> None:
        checks = [
            (1 <= self.vocab_size <= MAX_VOCAB,
             f"the vocabulary must hold from 1 to {MAX_VOCAB:,} characters (got {_number_text(self.vocab_size)})"),
            (1 <= self.block_size <= MAX_BLOCK_SIZE,
             f"--block-size must be from 1 to {MAX_BLOCK_SIZE} (got {_number_text(self.block_size)})"),
            (1 <= self.n_layer <= MAX_LAYERS, f"--n-layer must be from 1 to {MAX_LAYERS} (got {_number_text(self.n_layer)})"),
            (self.n_head >= 1, f"--n-head must be at least 1 (got {_number_text(self.n_head)})"),
            (1 <= self.n_embd <= MAX_EMBD, f"--n-embd must be from 1 to {MAX_EMBD} (got {_number_text(self.n_embd)})"),
            (
                self.n_head >= 1 and self.n_embd % self.n_head == 0,
                f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})",
            ),
            (
                self.n_head >= 1 and (self.n_embd // self.n_head) % 2 == 0,
                f"--n-embd / --n-head must be even for rotary positions "
                f"(got {_number_text(self.n_embd)}/{_number_text(self.n_head)})",
            ),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1) (got {_number_text(self.dropout)})"),
            (
                self.n_kv_head >= 0 and self.n_head >= 1 and self.n_head % self.kv_heads == 0,
                f"--n-kv-head ({self.n_kv_head}) must divide --n-head ({self.n_head}); 0 means one per head",
            ),
            (self.mlp in MLP_ACTIVATIONS, f"--mlp must be {' or '.join(MLP_ACTIVATIONS)} (got {self.mlp!r})"),
            (self.logit_cap >= 0, f"--logit-cap must not be negative (got {_number_text(self.logit_cap)}); 0 means none"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


LR_SCHEDULES = ("cosine", "trapezoid")
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    """One training run. Field names match the `sgpt train` flags (underscores become dashes)."""

    # model shape (copied into ModelConfig); defaults are the 'cpu' preset, tuned on 2 cores
    n_layer: int = 4  # 4 x 128 keeps a 2-core CPU at full speed with small batches (many updates)
    n_head: int = 4  # 32-wide heads: enough for character patterns at this width
    n_embd: int = 128  # a larger width loses at equal wall time on 2 cores (fewer steps)
    n_kv_head: int = 0  # key/value heads; 0 = one per query head (see ModelConfig)
    # the modded-nanogpt options (see ModelConfig), each measured for this preset on the whole validation
    # split and left off: none beat these defaults by more than noise, and QK-norm costs a dearer step
    # (the runs: benchmarks/LOG.md)
    mlp: str = "gelu"
    tied_head: bool = True
    qk_norm: bool = False
    logit_cap: float = 0.0
    # 128 beat 64 in the 5-minute default run; 256 with a batch of 8 (the same characters a step) did no
    # better (benchmarks/LOG.md)
    block_size: int = 128
    dropout: float = 0.0  # 0.1 lost at equal steps, in 1.5x the time: the default run does not overfit
    # optimisation
    batch_size: int = 16  # 2048 characters a step: Muon's orthogonalised steps like fuller batches
    learning_rate: float = 3e-3  # 3x nanoGPT's 1e-3: a 0.8M model takes it and descends far faster
    min_lr: float = 3e-4  # the schedule's floor, a tenth of the peak (Chinchilla)
    # after warmup: "cosine" to min_lr, or "trapezoid" (flat, then linear to min_lr over the last
    # `cooldown`): the trapezoid beat the cosine in the default run (benchmarks/LOG.md)
    lr_schedule: str = "trapezoid"
    cooldown: float = 0.4  # trapezoid: the last fraction of the run that decays (modded-nanogpt's cooldown)
    warmup_iters: int = 50  # short warmup: Adam's second moments settle within a few dozen steps
    max_iters: int = 1_000_000  # no real bound: the time budget ends the default run
    lr_decay_iters: int = 0  # 0 = decay over the whole run (max_iters or the time budget)
    weight_decay: float = 0.1  # nanoGPT's value, applied to matrices only
    beta1: float = 0.9  # AdamW default
    beta2: float = 0.99  # nanoGPT's choice for small batches: a shorter memory of gradient scale
    grad_clip: float = 1.0  # guards against the odd spike at a high learning rate; 0 disables
    optimizer: str = "muon"  # Muon on the blocks' matrices, AdamW for the rest: lower loss per second on a CPU
    muon_lr_scale: float = 3.0  # Muon's rate as a multiple of AdamW's (its updates are RMS-matched)
    muon_momentum: float = 0.95  # Keller Jordan's default for Muon's Nesterov momentum
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update (Keller Jordan's default)
    # run control
    time_budget: float = 280.0  # seconds for the whole run: with start-up and the plot, `sgpt train` ends within 5 minutes. 0 = no limit
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    eval_iters: int = 20  # batches per evaluation; 20 as in nanoGPT's CPU recipe
    sample_chars: int = 200  # characters sampled at each evaluation to show progress
    seed: int = 1337  # nanoGPT's seed, so runs are repeatable
    # torch.compile: faster steps on CUDA after a minute of compiling. On a 2-core AMX CPU in bfloat16 a
    # step is 1.2x cheaper after ~20 s of compiling: the default run made 3,509 and 3,418 iterations
    # (val 1.4702, 1.4889) vs 3,427 and 3,362 (1.4650, 1.4694) without: off
    compile: bool = False
    # matmuls in bfloat16 (autocast; weights, optimizer state, attention and losses stay float32). auto:
    # bfloat16 on CUDA; on a CPU, for models 64 wide or more, whichever a probe of the run's own model
    # measures faster (train/precision.py): bf16 pays where the CPU multiplies it natively (AMX,
    # avx512_bf16) and is emulated, slower than float32, on AVX2 alone (figures: benchmarks/LOG.md)
    precision: str = "auto"
    preset: str = "cpu"  # the preset these values started from, recorded for the record

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The network this run trains: every ModelConfig field this config also holds (the shape
        fields, dropout), the rest (rope_base) at ModelConfig's default."""
        return ModelConfig(vocab_size=vocab_size, **{name: getattr(self, name) for name in MODEL_FIELDS})

    def validate(self) -> None:
        self.model_config(vocab_size=1).validate()
        for f in dataclasses.fields(self):  # inf and nan are no settings (and would mislead later checks)
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number (got {value})")
        checks = [
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {_number_text(self.batch_size)})"),
            (self.learning_rate > 0, f"--learning-rate must be positive (got {_number_text(self.learning_rate)})"),
            (self.min_lr >= 0, f"--min-lr must not be negative (got {_number_text(self.min_lr)})"),
            (self.warmup_iters >= 0, f"--warmup-iters must not be negative (got {_number_text(self.warmup_iters)})"),
            (self.max_iters >= 1, f"--max-iters must be at least 1 (got {_number_text(self.max_iters)})"),
            (self.lr_decay_iters >= 0, "--lr-decay-iters must not be negative"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)"),
            (self.grad_clip >= 0, "--grad-clip must not be negative"),
            (self.optimizer in ("adamw", "muon"), f"--optimizer must be adamw or muon (got {self.optimizer!r})"),
            (self.muon_lr_scale > 0, "--muon-lr-scale must be positive"),
            (0 <= self.muon_momentum < 1, "--muon-momentum must be in [0, 1)"),
            (1 <= self.muon_ns_steps <= 20, f"--muon-ns-steps must be from 1 to 20 (got {_number_text(self.muon_ns_steps)})"),
            (self.lr_schedule in LR_SCHEDULES,
             f"--lr-schedule must be {' or '.join(LR_SCHEDULES)} (got {self.lr_schedule!r})"),
            (self.precision in PRECISIONS,
             f"--precision must be {', '.join(PRECISIONS)} (got {self.precision!r})"),
            (0 < self.cooldown <= 1, f"--cooldown must be in (0, 1] (got {_number_text(self.cooldown)})"),
            (self.time_budget >= 0, f"--time-budget must not be negative (got {_number_text(self.time_budget)})"),
            (self.eval_interval >= 1, f"--eval-interval must be at least 1 (got {_number_text(self.eval_interval)})"),
            (self.eval_iters >= 1, f"--eval-iters must be at least 1 (got {_number_text(self.eval_iters)})"),
            (self.sample_chars >= 0, "--sample-chars must not be negative"),
            # torch seeds are 64-bit and each rank adds its rank: keep clear of the top
            (0 <= self.seed < 2**63, f"--seed must be between 0 and 2**63 - 1 (got {_number_text(self.seed)})"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        for f in dataclasses.fields(self):  # no count past int64 reaches torch or numpy (10**400 steps: a typo)
            value = getattr(self, f.name)
            if isinstance(value, int) and abs(value) >= 2**63:
                raise UsageError(f"--{f.name.replace('_', '-')} must be below 2**63 (got {_number_text(value)})")


# the ModelConfig fields a TrainConfig sets (and its flags name); the shape is all of them but dropout,
# which a fine-tuning run may change
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name in _TRAIN_FIELDS)
SHAPE_FIELDS = tuple(name for name in MODEL_FIELDS if name != "dropout")


PRESETS: dict[str, dict] = {
    # seconds: for tests and smoke checks
    "tiny": dict(
        n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, learning_rate=3e-3,
        min_lr=3e-4, warmup_iters=5, max_iters=60, eval_interval=30, eval_iters=4, sample_chars=40,
        optimizer="adamw", time_budget=0.0, lr_schedule="cosine",
    ),
    # the default: five minutes on a 2-core laptop, Muon; beats nanogpt-cpu at equal wall time
    "cpu": {},
    # nanoGPT's config/train_shakespeare_char.py
    "gpu": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
        learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000, eval_interval=250,
        eval_iters=200, beta2=0.99, optimizer="adamw", time_budget=0.0, lr_schedule="cosine",
    ),
    # nanoGPT README's "I only have a MacBook" recipe, with our code: the baseline to beat
    "nanogpt-cpu": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
        learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000, lr_decay_iters=2000,
        eval_interval=250, eval_iters=20, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
        optimizer="adamw", time_budget=0.0, lr_schedule="cosine",
    ),
}


@dataclass(frozen=True)
class IdleFigures:
    """What a preset does on an idle machine: the yardstick a run's summary is held against (a run
    far below it was starved of steps, by a busy machine or fewer cores, not badly configured)."""

    machine: str  # where they were measured, in words
    cpu: str  # that machine's CPU as precision.cpu_name() gives it: a run on another says so, not "slower"
    how: str  # the commands (docs/benchmarks.md)
    iters_per_s: float  # optimizer steps per second of time budget, estimates and final measurement included
    budget: float  # the preset's own time budget, the one val_loss belongs to
    val_loss: float  # whole validation split of tiny-shakespeare after that budget
    precision: str  # the matmuls' (TrainConfig.precision as resolved there)


IDLE_FIGURES: dict[str, IdleFigures] = {
    "cpu": IdleFigures(
        machine="an idle 2-core Intel Xeon VM (AVX-512, AMX), 2 threads, bfloat16 matmuls",
        # its model name was not recorded: re-measuring the default run (bench_train.py prints the
        # name) puts the exact one here
        cpu="Intel Xeon with AMX",
        how="benchmarks/bench_train.py --default-run --repeats 2 (3,427 and 3,362 iterations in the 280 s "
            "budget, val 1.4650 and 1.4694: median 1.4672; docs/benchmarks.md)",
        iters_per_s=3394 / 280, budget=280.0, val_loss=1.4672, precision="bfloat16",
    ),
}


def idle_figures(cfg: TrainConfig) -> IdleFigures | None:
    """The idle machine's figures for a run of `cfg`, if measured: same preset, and the same model
    shape, batch and optimizer as the preset's (they set the cost of a step)."""
    figures = IDLE_FIGURES.get(cfg.preset)
    if figures is None:
        return None
    preset = build_train_config(cfg.preset, {})
    same = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "optimizer")
    return figures if all(getattr(cfg, k) == getattr(preset, k) for k in same) else None


def build_train_config(preset: str, overrides: dict) -> TrainConfig:
    """Defaults, then the preset, then every override that is not None."""
    if preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = preset
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise UsageError(f"unknown training options: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


# what a field meant in checkpoints written before it existed, where that differs from today's default
FORMER_DEFAULTS = {"lr_schedule": "cosine"}


def _number_text(value) -> str:
    """A number as a one-line message quotes it: a whole number past 30 digits by its size (repr of one
    past Python's 4,300-digit limit fails)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    return repr(value)


_TYPE_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a text"}


def _typed_fields(cls, values: dict) -> dict:
    """The values a file gives for `cls`'s fields (others ignored), each strictly of its field's type:
    TypeError naming the first that is not. A file is not a command line: qk_norm "yes" or 1 is a
    damaged file, not true; a whole-number field takes no 2.0; a number field takes a whole number."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # "int", ...: annotations are strings here
    out = {}
    for name, value in values.items():
        kind = kinds.get(name)
        if kind is None:
            continue
        if kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                try:
                    value = float(value)  # a 400-digit whole number overflows
                except OverflowError:
                    ok = False
                ok = ok and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            text = repr(value) if not isinstance(value, int) or value.bit_length() < 100 else "a huge number"
            raise TypeError(f"{name} is {text[:40]}, not {_TYPE_WORDS.get(kind, kind)}")
        out[name] = value
    return out


def train_config_from_dict(values: dict) -> TrainConfig:
    """Rebuild a TrainConfig saved in a checkpoint, ignoring fields this version does not know; a
    field it lacks takes the value it had when the checkpoint was written (a resumed run keeps its schedule).
    TypeError for a field of the wrong type (`_typed_fields`)."""
    return TrainConfig(**{**FORMER_DEFAULTS, **_typed_fields(TrainConfig, values)})


def model_config_from_dict(values: dict) -> ModelConfig:
    """A ModelConfig saved in a checkpoint; TypeError for a field of the wrong type (`_typed_fields`)."""
    return ModelConfig(**_typed_fields(ModelConfig, values))


__all__ = [
    "ModelConfig", "TrainConfig", "PRECISIONS", "MODEL_FIELDS", "SHAPE_FIELDS", "PRESETS", "IdleFigures", "IDLE_FIGURES", "idle_figures", "build_train_config",
    "train_config_from_dict", "model_config_from_dict",
]
