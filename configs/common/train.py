# Training-loop settings shared by every pretraining config (detectron2's configs/common/train.py
# plus the keys d2ssl adds: epochs, seed, reference_world_size).
from detectron2.config import LazyCall as L

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.data.splits import knn_monitor_part
from d2ssl.evaluation.knn_monitor import build_knn_monitor

train = dict(
    output_dir="./output",
    init_checkpoint="",
    # Trunk weights to start from (VISSL's MODEL.WEIGHTS_INIT, same field names): torchvision, VISSL,
    # JigClu, MoCo, d2ssl or detectron2 checkpoints are recognised from their keys
    # (d2ssl.checkpoint.load_pretrained_weights). Loaded before init_checkpoint / resume.
    weights_init=dict(
        PARAMS_FILE="",
        STATE_DICT_KEY_NAME="",  # e.g. classy_state_dict, state_dict, model; empty: found automatically
        SKIP_LAYERS=["num_batches_tracked"],
        REMOVE_PREFIX="",
        APPEND_PREFIX="",  # where the detectron2-named weights go; empty: the model's trunk
        # d2ssl's own safety switch (not a VISSL field): True lets weights_init, init_checkpoint and
        # resume unpickle Python objects besides tensors, which runs code stored in the file. Trusted
        # files only; --allow-pickle on the command line sets it.
        ALLOW_PICKLE=False,
    ),
    max_iter=90000,
    # If set, max_iter = ceil(epochs * data set size / total_batch_size), computed at start.
    epochs=None,
    # Mixed precision (d2ssl.engine.train_loop.build_trainer): detectron2's AMPTrainer on CUDA; on CPU
    # torch.autocast with bfloat16. precision: "float16" | "bfloat16" | None (float16 on CUDA, bfloat16
    # on CPU). The NCE memory bank, Z and scores stay float32 either way (d2ssl.losses.nce).
    amp=dict(enabled=False, precision=None),
    # Trunk weights and activations in channels-last memory format (faster convolutions with AMP on
    # tensor-core GPUs); the numbers are the same, checkpoints unchanged.
    channels_last=False,
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # max_to_keep: keep the last K periodic checkpoints (the final one is always kept).
    checkpointer=dict(period=5000, max_to_keep=5),
    log_period=20,
    # kNN top-1 of the trunk's features on a small labelled subset, logged as knn_top1 every `period`
    # iterations (d2ssl.evaluation.knn_monitor.KNNMonitor, NPID's weighted kNN: k 200, temperature 0.07).
    # period 0: off. memory (images that vote), queries (images classified), mapper: L(...) calls;
    # knn_monitor_on() below fills them. A lazy call, so that the training loop builds it without
    # importing d2ssl.evaluation.
    knn_monitor=L(build_knn_monitor)(period=0, memory=None, queries=None, mapper=None, k=200,
                                     temperature=0.07, layer="res5", batch_size=256),
    device="cuda",
    seed=0,
    # Number of processes the batch size and lr below are written for; on another number of GPUs the
    # linear scaling rule adapts them (d2ssl.engine.train_loop.scale_to_world_size). 0 = never scale.
    reference_world_size=8,
)


def on_cpu_for_minutes(train, output_dir: str, max_iter: int = 200) -> None:
    """Turns ``train`` into the short single-process CPU run every configs/tiny/ file makes."""
    train.update(epochs=None, max_iter=max_iter, device="cpu", reference_world_size=0, log_period=20,
                 output_dir=output_dir)
    train.checkpointer.period = 100


def knn_monitor_on(train, num_memory: int, num_queries: int, image_size: int, period: int) -> None:
    """Turns the kNN monitor on: ``num_memory`` labelled images of the training data set vote for
    ``num_queries`` others held out from them (d2ssl.data.splits.knn_monitor_part, seed 0: the same images
    whatever train.seed), seen at ``image_size`` (shorter side resize and centre crop, as
    d2ssl.data.mappers.ClassificationMapper's test view). Both follow dataloader.train.dataset, so
    ``dataloader.train.dataset=folder:PATH`` scores the monitor on PATH's images (off, with a log line,
    if they have no labels). The labels are used only to score, never to train."""
    train.knn_monitor.update(
        period=period,
        memory=L(knn_monitor_part)(dataset="${dataloader.train.dataset}", part="memory", limit=num_memory),
        queries=L(knn_monitor_part)(dataset="${dataloader.train.dataset}", part="queries", limit=num_queries),
        mapper=L(ClassificationMapper)(train=False, resize_size=image_size, crop_size=image_size),
    )
