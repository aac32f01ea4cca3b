"""The training recipe as one frozen dataclass; defaults are Myrtle.ai's 10-epoch "bag of tricks" run.

Sources: D. Page, "How to Train Your ResNet" posts 1-8 (Myrtle.ai, 2018-2019), final recipe of post 8
(94.1% with flip TTA in 26 s on a V100), as reproduced in T. Germer's cifar10-fast-simple.
Learning rates are in mean-loss units (PyTorch SGD on a batch-mean loss): the post's ``lr/batch_size`` on a
summed loss is the same update.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# ModelConfig fields added after checkpoint version 1 was defined. A checkpoint that lacks them was made before
# they existed, i.e. with these values, which reproduce the network it was trained as.
MODEL_FIELDS_ADDED = {"bn_momentum": 0.1, "whiten_bias": False, "preact": False, "stochastic_depth": 0.0}
DEFAULT_SELECTIVE_TARGET = 0.2  # hold-out fraction; also what `auto` falls back to on a too-small flip gain


@dataclass(frozen=True)
class ModelConfig:
    """Architecture switches; the defaults are the post-8 ("bag of tricks") network."""

    width: float = 1.0  # channel multiplier on 64/128/256/512; tests use 1/8
    num_classes: int = 10
    whitening: bool = True  # fixed 3x3 PCA-whitening first layer (27 filters) + 1x1 conv; post 8
    ghost_batch: int = 32  # images per ghost batch-norm group (512/16 splits); 0 = plain BN; post 8
    freeze_bn_scale: bool = True  # BN scales fixed at 1, only biases learn; post 8
    celu_alpha: float = 0.3  # CELU(0.3) instead of ReLU, smooths the loss surface; post 8 (0 = ReLU)
    output_scale: float = 0.125  # logits multiplied by this constant; post 4 "Mul(0.125)"
    # Recipe switches measured in bench/recipe.py (README "Recipe ablation"); the defaults are post 8's network.
    bn_momentum: float = 0.1  # running-statistics update per step (PyTorch's convention and default, as in post 8;
    # airbench94 uses 0.4, written there as momentum 0.6 in the other convention)
    whiten_bias: bool = False  # learnable bias after the fixed whitening conv (airbench94); it learns only for the
    # first TrainConfig.whiten_bias_frac of training
    preact: bool = False  # residual branches as pre-activation BN-act-conv, BN-act-conv (He et al. 2016, "Identity
    # mappings"; the Stanford CS230 report's switch) instead of conv-BN-act twice
    stochastic_depth: float = 0.0  # probability of dropping each residual branch per image in training (Huang et
    # al. 2016); survivors are scaled by 1/(1-p), so the evaluated and exported network is unchanged

    def channels(self) -> tuple[int, int, int, int]:
        """Channel counts of prep, layer1, layer2, layer3."""
        return tuple(max(1, round(c * self.width)) for c in (64, 128, 256, 512))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """Plain dict for checkpoints and manifests."""
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Units in comments."""

    # data
    data: str | None = None  # path to CIFAR-10 in any supported form; None = official archive from the cache
    train_limit: int | None = None  # images; use only the first N (class-balanced) training images
    test_limit: int | None = None  # images; evaluate on the first N (class-balanced) test images
    # schedule (post 8)
    epochs: int = 10  # passes over the training set
    batch_size: int = 512  # images per step
    lr_peak: float = 1.0  # mean-loss lr at the peak; post 8: PiecewiseLinear([0, e/5, e-2], [0, 1.0, 0.1])
    lr_warmup_frac: float = 0.2  # fraction of training spent rising linearly from 0 to lr_peak (epochs/5)
    lr_final: float = 0.1  # lr at the end of the decay, held to the end; post 8
    lr_hold_frac: float = 0.2  # fraction of training held at lr_final (post 8: the last 2 of 10 epochs)
    lr_scaling: str = "linear"  # "linear": lr x batch_size/lr_base_batch (Goyal et al. 2017); "none"
    lr_base_batch: int = 512  # images; the batch the lr values above were tuned for (post 8)
    bias_lr_scale: float = 64.0  # BN biases: lr x64 and weight decay /64 (post 8)
    momentum: float = 0.9  # Nesterov momentum; post 8
    weight_decay: float = 5e-4  # per mean-loss step; post 8's 5e-4*batch_size on a summed loss
    label_smoothing: float = 0.2  # post 8
    fp16_loss_scale: float = 512.0  # loss scale under fp16 autocast: the posts sum the loss over a batch of 512 (an
    # implicit x512 scale); it never grows, and an overflowing step is skipped on the device (train.loss_scaling)
    # augmentation (post 2: pad 4 + random crop + flip); cutout is post 4's option, off in post 8's final run
    crop_pad: int = 4  # pixels of reflect padding before the random 32x32 crop
    flip: bool = True  # horizontal flip
    flip_mode: str = "random"  # random: each image p=0.5 every epoch; alternating: flipped in alternate epochs
    # (random half in epoch 1; airbench, arXiv 2404.00498 sec. 3.6)
    cutout: int = 0  # side in pixels of a zeroed square; 0 = off (post 4 used 8)
    # EMA of weights and BN buffers (post 8: momentum 0.99 applied every 5 steps)
    ema_every: int = 5  # steps between EMA updates
    ema_decay: float = 0.99  # per step; applied as decay**ema_every every ema_every steps
    ema_warmup: bool = True  # decay min(d, (1+u)/(10+u)) at update u, so short runs are not stuck near init
    lookahead: bool = False  # every ema_every steps pull the weights back to the EMA (hlb-CIFAR10/airbench), decay
    # lookahead_decay**ema_every x (progress)**3 rising from 0; at the end the weights become the EMA
    lookahead_decay: float = 0.95  # per step, at the end of training (airbench94's value)
    whiten_bias_frac: float = 0.375  # with model.whiten_bias: fraction of training steps in which that bias learns,
    # at the BN biases' lr (airbench94: the first 3 of its 8 epochs); afterwards its learning rate is 0
    # model
    model: ModelConfig = field(default_factory=ModelConfig)
    whitening_images: int = 10_000  # training images whose 3x3 patches set the whitening layer (post 8)
    # selective TTA calibration: a class-balanced hold-out of the training images, never trained on and never
    # test images, on which the per-image confidence threshold is set so `selective_target` of them fall below
    holdout: int | None = None  # images; None = 1000 (100 per class) or a tenth of a smaller training set; 0 = none
    selective_target: float | str = DEFAULT_SELECTIVE_TARGET  # fraction of held-out images that selective TTA
    # gives extra views, or "auto": per run, the smallest fraction keeping 90% of full flip's hold-out gain, at most
    # 0.5, this default when flip's hold-out gain is under 10 images (train.calibration.auto_target)
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16: the step's compute precision (common.device.choose_device;
    # auto: fp16 autocast on CUDA, bf16 on a CPU with native bf16, else fp32); refused where it cannot run
    eval_every: int = 1  # epochs between EMA test evaluations (the last epoch is always evaluated)
    out: str = "runs"  # parent folder of run folders
    name: str | None = None  # run folder name; None = from time and seed
    sync_bn: bool = False  # DDP only: SyncBatchNorm instead of per-rank statistics (refused: it drops ghost BN)
    compile: bool = False  # torch.compile the training forward/backward (inductor); eager with a notice if it fails
    cuda_graph: bool = True  # on CUDA, eager, one process: capture the whole step (and the EMA update) as CUDA graphs
    # and replay them, one launch per step (train.step); eager with a notice if the capture fails
    warmup_steps: int | None = None  # untimed steps on the real shapes before epoch 1, their effects undone (cuDNN
    # autotuning, lazy loading, compilation, allocator growth land there, not in the training clock); None: 3 on
    # CUDA, 0 on a CPU (nothing to warm there)
    resume: str | None = None  # run folder (or checkpoint) to continue instead of starting over
    preset: str = "page"  # the named recipe these values started from (train/presets.py); recorded, not applied
    overwrite: bool = False  # replace a finished or interrupted run of the same name (refused otherwise)
    unofficial_batches: bool = False  # accept CIFAR pickle batches whose md5 is not the published one

    def to_dict(self) -> dict:
        """Plain dict for the checkpoint and manifest."""
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> TrainConfig:
        """Inverse of to_dict (ignores unknown keys so older checkpoints still load)."""
        known = {k: v for k, v in data.items() if k in TrainConfig.__dataclass_fields__}
        if isinstance(known.get("model"), dict):
            known["model"] = ModelConfig(**known["model"])
        return TrainConfig(**known)
